"""Files from outside and exhausted resources: pickled payloads are refused, a full disk is named.

The full-disk tests run against two real limits, nothing simulated:

* ``tmpfs``: a 256 KiB file system mounted for the test, which fills up (the kernel's ENOSPC).
  Mounting needs root and a container that allows it (CI runs as root); elsewhere it is skipped
  with the reason.
* ``fsize``: the process's file size limit (``RLIMIT_FSIZE``) lowered to 256 KiB while the
  action runs: a write past it fails with the kernel's EFBIG (Python ignores ``SIGXFSZ``). It
  runs everywhere, and reaches the same code as a full disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from nucseg.datasets import unpack_zip
from nucseg.download import DownloadSettings, fetch
from nucseg.files import NoSpaceError, atomic_file
from nucseg.model import ModelConfig, ResUNet
from nucseg.modelfolder import load_model
from nucseg.training import TrainSettings, train_model

from .test_download import Server
from .test_train import SETTINGS, synthetic_store

LIMIT = 256 << 10


class Disk:
    """``path``: a folder to write to; ``full()``: a block in which writing there runs out of room."""

    def __init__(self, path: Path, kind: str):
        self.path, self.kind = path, kind
        # the message names what ran out, and the file
        reason = "no space left on device" if kind == "tmpfs" else "file too large (the file system's or the process's file size limit)"
        self.message = re.escape(reason + " while writing ")

    @contextlib.contextmanager
    def full(self):
        if self.kind == "tmpfs":  # the file system itself is small
            yield
            return
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@contextlib.contextmanager
def tmpfs(path: Path, kib: int):
    """A tmpfs of ``kib`` KiB mounted on ``path`` for the block (skips the test where it cannot be)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a real full disk) needs root; CI runs as root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.fixture(params=["tmpfs", "fsize"])
def disk(request, tmp_path):
    path = tmp_path / "disk"
    path.mkdir()
    if request.param == "fsize":
        yield Disk(path, "fsize")
        return
    with tmpfs(path, LIMIT >> 10):
        yield Disk(path, "tmpfs")


def incompressible(n: int) -> bytes:
    return np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_the_disk_is_really_full(disk):
    with pytest.raises(OSError, match="No space left on device|File too large"), disk.full():
        (disk.path / "big").write_bytes(incompressible(1 << 20))


def test_atomic_file_on_a_full_disk_names_the_file_and_leaves_nothing(disk):
    target = disk.path / "table.csv"
    with pytest.raises(NoSpaceError, match=disk.message + re.escape(str(target))), disk.full(), atomic_file(target) as tmp:
        tmp.write_bytes(incompressible(1 << 20))
    assert list(disk.path.iterdir()) == []


def test_local_copy_on_a_full_disk(disk, tmp_path):
    """Regression: a full disk read as "truncated or corrupt zip archive" and left a .part file."""
    source = tmp_path / "data.zip"
    source.write_bytes(incompressible(1 << 20))
    with pytest.raises(NoSpaceError, match=disk.message + re.escape(str(disk.path / "data.zip"))), disk.full():
        fetch(str(source), disk.path / "data.zip")
    assert list(disk.path.iterdir()) == []


def test_http_download_on_a_full_disk_is_not_retried(disk):
    server = Server(incompressible(1 << 20))
    try:
        with pytest.raises(NoSpaceError, match=disk.message + re.escape(str(disk.path / "data.zip"))), disk.full():
            fetch(server.url, disk.path / "data.zip", settings=DownloadSettings(retries=3, backoff=0.01, timeout=5, progress=False))
        assert len(server.requests) == 1  # a full disk is not worth another attempt
    finally:
        server.close()
    assert list(disk.path.iterdir()) == []


def test_unpacking_onto_a_full_disk(disk, tmp_path):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a/images/a.png", incompressible(1 << 20))
    with pytest.raises(NoSpaceError, match=disk.message + re.escape(str(disk.path / "ds" / "a" / "images" / "a.png"))), disk.full():
        unpack_zip(archive, disk.path / "ds")
    assert list(disk.path.iterdir()) == []


def test_checkpoint_on_a_full_disk(disk, tmp_path):
    """Regression: a full disk during the checkpoint gave PyTorch's inline_container.cc error with
    no path, and left ckpt.pt.part."""
    store, index = synthetic_store(tmp_path)
    ckpt = disk.path / "ckpt.pt"
    with pytest.raises(NoSpaceError, match=disk.message + re.escape(str(ckpt))), disk.full():
        train_model([store], [index], tmp_path / "model", TrainSettings(**dict(SETTINGS, epochs=1)), checkpoint=ckpt, threads=1)
    assert list(disk.path.iterdir()) == []
    assert not (tmp_path / "model").exists()


# Pickled payloads: a model folder or checkpoint holding objects is refused, never run.


class Payload:
    """Unpickling this runs ``os.mkdir(path)``: the stand-in for any code a file could run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def payload_model_folder(folder: Path, ran: Path, width: int = 4) -> Path:
    """A model folder whose weights.pt holds, besides the tensors, an object that creates ``ran`` when unpickled."""
    folder.mkdir()
    config = ModelConfig(width=width)
    normalize = {"low": 1.0, "high": 99.8, "invert_dark": False}
    (folder / "config.json").write_text(json.dumps({"architecture": "ResUNet", "model": config.to_dict(), "normalize": normalize}))
    weights = dict(ResUNet(config).state_dict(), extra=Payload(ran))
    with open(folder / "weights.pt", "wb") as out:
        torch.save(weights, out)
    return folder


def test_a_pickled_payload_in_weights_pt_is_refused(tmp_path):
    folder = payload_model_folder(tmp_path / "model", tmp_path / "ran")
    with pytest.raises(ValueError, match=r"weights\.pt: refused: it holds pickled Python objects"):
        load_model(folder)
    assert not (tmp_path / "ran").exists()


def test_a_pickled_payload_in_weights_pt_is_refused_by_the_command_line_and_train_init(tmp_path, caplog):
    """Held (issue 24): the same folder through ``nucseg segment --model`` (one line, nothing
    written) and through ``train.init`` (no model folder, no checkpoint)."""
    from nucseg.cli import main

    folder = payload_model_folder(tmp_path / "model", tmp_path / "ran")
    image = tmp_path / "a.tif"
    tifffile.imwrite(image, np.zeros((64, 64), np.uint8))
    assert main(["segment", "--model", str(folder), "--out", str(tmp_path / "out"), str(image)]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith(f"{folder / 'weights.pt'}: refused: it holds pickled Python objects")
    assert not (tmp_path / "out").exists()
    store, index = synthetic_store(tmp_path)
    settings = TrainSettings(**dict(SETTINGS, epochs=1, init=str(folder)))
    with pytest.raises(ValueError, match=re.escape(f"train.init: {folder / 'weights.pt'}: not loadable into the network")):
        train_model([store], [index], tmp_path / "tuned", settings, checkpoint=tmp_path / "ckpt.pt", threads=1)
    assert not (tmp_path / "ran").exists() and not (tmp_path / "tuned").exists() and not (tmp_path / "ckpt.pt").exists()


def test_a_pickled_payload_in_a_checkpoint_is_not_run(tmp_path, caplog):
    store, index = synthetic_store(tmp_path)
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(pickle.dumps({"epoch": 1, "rng": Payload(tmp_path / "ran")}, protocol=2))
    with caplog.at_level(logging.WARNING, logger="nucseg.training"):
        train_model([store], [index], tmp_path / "model", TrainSettings(**dict(SETTINGS, epochs=1)), checkpoint=ckpt, threads=1)
    assert not (tmp_path / "ran").exists()
    assert "not a readable checkpoint" in caplog.text
    # the checkpoint written in its place holds tensors and plain data only
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1


def test_a_checkpoint_loads_with_weights_only(tmp_path):
    """Regression: the checkpoint held numpy's and Python's random states as objects, so it could
    only be read with weights_only=False, which runs whatever a file holds."""
    store, index = synthetic_store(tmp_path)
    train_model([store], [index], tmp_path / "model", TrainSettings(**dict(SETTINGS, epochs=1)), checkpoint=tmp_path / "ckpt.pt", threads=1)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert isinstance(state["rng"]["numpy"][1], torch.Tensor) and isinstance(state["rng"]["python"][1], list)


CHECKPOINT_TO_MODEL = Path(__file__).resolve().parent.parent / "scripts" / "checkpoint_to_model.py"


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_checkpoint_to_model_refuses_a_pickled_payload(tmp_path, how):
    """Regression: scripts/checkpoint_to_model.py read checkpoints with weights_only=False, so a
    crafted checkpoint's object ran its code (here: created a folder) when converted."""
    ckpt = tmp_path / "ckpt.pt"
    contents = {"identity": {}, "history": [], "epoch": 1, "best_state": Payload(tmp_path / "ran")}
    if how == "pickle":
        ckpt.write_bytes(pickle.dumps(contents, protocol=2))
    else:
        with open(ckpt, "wb") as out:
            torch.save(contents, out)
    result = subprocess.run([sys.executable, str(CHECKPOINT_TO_MODEL), str(ckpt), str(tmp_path / "model")], capture_output=True, text=True)
    assert result.returncode == 1
    assert not (tmp_path / "ran").exists(), "the payload ran"
    assert not (tmp_path / "model").exists()
    assert result.stderr.strip() == (
        f"ERROR checkpoint_to_model: {ckpt}: refused: it holds pickled Python objects besides tensors and plain data, which could run code when loaded"
    )


def test_checkpoint_to_model_names_a_file_that_is_no_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    with open(ckpt, "wb") as out:
        torch.save({"epoch": 3}, out)
    result = subprocess.run([sys.executable, str(CHECKPOINT_TO_MODEL), str(ckpt), str(tmp_path / "model")], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{ckpt}: not a nucseg training checkpoint (no identity, history, best_state)" in result.stderr
    assert not (tmp_path / "model").exists()


# the outputs' chunk files are each below the fsize limit: only a real full file system reaches them
@pytest.mark.parametrize("kib", [256, 2048])  # full in the probability maps; in the image's outputs (on this image, the OME-Zarr)
def test_nucseg_segment_on_a_full_disk_names_the_file_and_leaves_nothing(kib, tmp_path, caplog, capfd):
    """Regression: a full --out gave two raw tracebacks (ENOSPC from a zarr thread, then
    "Directory not empty" from the clean-up), named no path and left 23 MB of scratch."""
    from nucseg.cli import main

    from .test_infer import save_model_folder

    torch.manual_seed(0)
    model = save_model_folder(ResUNet(ModelConfig(width=4, heads=("body", "border"))).eval(), tmp_path / "model")
    image = tmp_path / "a.tif"
    tifffile.imwrite(image, np.random.default_rng(0).integers(0, 256, (1024, 1024), dtype=np.uint8))
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "out"
    with tmpfs(disk, kib):
        assert main(["segment", "--model", str(model), "--out", str(out), "--engine", "eager", str(image)]) == 1
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and re.fullmatch(re.escape(f"no space left on device while writing {out}/") + r"\S+", errors[0]), errors
        assert "Traceback" not in capfd.readouterr().err
        # nothing half-written: no scratch, no temporaries, no lock, no output of the image (the
        # tables, if they fit, list the images whose outputs were all written: none)
        left = sorted(p.name for p in out.iterdir())
        assert set(left) <= {"objects.csv", "images.csv"}, left
        for name in left:
            assert len((out / name).read_text().splitlines()) == 1  # the header
