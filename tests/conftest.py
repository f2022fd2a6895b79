"""Fixtures shared by the stage tests: the shared data folder and tiny datasets on disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


# OpenMP threads that spin while they wait take the cores from each other on a busy machine
# (a training step 0.98 s with the default policy, 0.54 s passive, beside one busy process):
# the workflow sets the same for its jobs (rules/common.smk).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: A safety net against a hung workflow, not a speed limit: the sample run takes about a minute
#: on a quiet 2-core machine and over ten on a busy one.
WORKFLOW_TIMEOUT = 3600


def snakemake(workdir: Path, *args: str, timeout: int = WORKFLOW_TIMEOUT) -> subprocess.CompletedProcess:
    """Run the workflow with its working directory ``workdir``; returns the finished process."""
    return subprocess.run(SNAKEMAKE + ["--directory", str(workdir), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The whole workflow on the embedded sample, once per test session: (workdir, process).

    Tests must not change its results; copy the folder to change anything.
    """
    workdir = tmp_path_factory.mktemp("sample_run")
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir, result


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` next to the checkout; the test is skipped where it is absent."""
    data = SHARED / "data"
    if not data.is_dir():
        pytest.skip("../shared/data not present (a fresh clone has no ../shared)")
    return data


def _write_dataset(root: Path, samples: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> Path:
    for image_id, (image, labels) in samples.items():
        (root / image_id / "images").mkdir(parents=True)
        Image.fromarray(image).save(root / image_id / "images" / f"{image_id}.png")
        if labels is None:
            continue
        (root / image_id / "masks").mkdir()
        for k in range(1, int(labels.max()) + 1):
            mask = np.where(labels == k, 255, 0).astype(np.uint8)
            Image.fromarray(mask).save(root / image_id / "masks" / f"m{k:03d}.png")
    return root


@pytest.fixture
def make_dataset():
    """``make_dataset(root, {image_id: (image, labels or None)})`` writes the challenge layout.

    ``image`` is ``(H, W)`` or ``(H, W, 3)`` uint8 (written as PNG); ``labels`` is an
    ``(H, W)`` label image with labels 1..N, written as one mask PNG per label
    (``m001.png``, ``m002.png`` ... so that sorted order is label order), or ``None``
    for an image without a ``masks`` folder.
    """
    return _write_dataset


@pytest.fixture
def two_square_sample() -> tuple[np.ndarray, np.ndarray]:
    """A 40 x 48 fluorescence-like image (dark background) with two bright squares, and its labels."""
    labels = np.zeros((40, 48), np.uint32)
    labels[5:15, 6:16] = 1
    labels[22:34, 28:40] = 2
    image = np.where(labels > 0, 200, 10).astype(np.uint8)
    return image, labels


#: The embedded sample's image that the napari and segment_one tests segment (260 x 347 px).
SAMPLE_IMAGE = "0402a81e75262469925ea893b6706183832e85324f7b1e08e634129f5d522cdd"


@pytest.fixture(scope="session")
def sample_segmented(tmp_path_factory) -> tuple[Path, Path]:
    """``nucseg segment`` of one embedded sample image with the shipped model and the command's
    default settings, once per test session: (the PNG, the ``--out`` folder). Tests must not
    change them; copy them to change anything."""
    import zipfile

    from nucseg.cli import main

    root = tmp_path_factory.mktemp("sample_segmented")
    png = root / "sample.png"
    with zipfile.ZipFile(REPO / "resources" / "sample" / "sample_test.zip") as archive:
        png.write_bytes(archive.read(f"{SAMPLE_IMAGE}/images/{SAMPLE_IMAGE}.png"))
    assert main(["segment", "--out", str(root / "out"), str(png)]) == 0
    return png, root / "out"


# napari's pytest plugin (napari.utils._testsupport), which napari (nucseg[napari]) registers for
# every test session, has three autouse fixtures; these fixtures of the same names override them.
# Its LogRecord factory turns every log argument that is not an int or float into a string for
# the whole session, which breaks ``%d`` of a numpy integer (a logging error, raised by pytest's
# log capture) in every module's log calls, in every test: the records stay Python's own here
# (tests/test_napari.py checks it). The other two import napari and Qt into every test for a
# theme clean-up and a PyQt5 warning that nucseg's tests need neither of.


@pytest.fixture(scope="session")
def use_leak_safe_log_records():
    yield


@pytest.fixture
def _clean_themes():
    yield


@pytest.fixture
def _disable_qt_warnings():
    yield
