"""Files from outside and exhausted resources: pickled payloads are refused, a full disk is named.

The full-disk tests write onto a real, small, full file system: a 256 KiB tmpfs mounted for the
test (it needs root, as CI has; elsewhere they are skipped with the reason). Nothing is
simulated: the writes fail with the kernel's ENOSPC.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import zipfile

import numpy as np
import pytest
import torch

from nucseg.datasets import unpack_zip
from nucseg.download import DownloadSettings, fetch
from nucseg.files import NoSpaceError, atomic_file
from nucseg.model import ModelConfig, ResUNet, load_model
from nucseg.train import TrainSettings, train_model

from .test_download import Server
from .test_train import SETTINGS, synthetic_store

MESSAGE = "no space left on device while writing "


@pytest.fixture
def full_disk(tmp_path):
    """A real 256 KiB file system (tmpfs) at ``tmp_path / "disk"``; unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a real full disk) needs root; CI runs as root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def incompressible(n: int) -> bytes:
    return np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_the_disk_fixture_is_really_full(full_disk):
    with pytest.raises(OSError, match="No space left on device"):
        (full_disk / "big").write_bytes(incompressible(1 << 20))


def test_atomic_file_on_a_full_disk_names_the_file_and_leaves_nothing(full_disk):
    target = full_disk / "table.csv"
    with pytest.raises(NoSpaceError, match=MESSAGE + str(target)), atomic_file(target) as tmp:
        tmp.write_bytes(incompressible(1 << 20))
    assert list(full_disk.iterdir()) == []


def test_local_copy_on_a_full_disk(full_disk, tmp_path):
    """Regression: a full disk read as "truncated or corrupt zip archive" and left a .part file."""
    source = tmp_path / "data.zip"
    source.write_bytes(incompressible(1 << 20))
    with pytest.raises(NoSpaceError, match=MESSAGE + str(full_disk / "data.zip")):
        fetch(str(source), full_disk / "data.zip")
    assert list(full_disk.iterdir()) == []


def test_http_download_on_a_full_disk_is_not_retried(full_disk):
    server = Server(incompressible(1 << 20))
    try:
        with pytest.raises(NoSpaceError, match=MESSAGE + str(full_disk / "data.zip")):
            fetch(server.url, full_disk / "data.zip", settings=DownloadSettings(retries=3, backoff=0.01, timeout=5, progress=False))
        assert len(server.requests) == 1  # a full disk is not worth another attempt
    finally:
        server.close()
    assert list(full_disk.iterdir()) == []


def test_unpacking_onto_a_full_disk(full_disk, tmp_path):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a/images/a.png", incompressible(1 << 20))
    with pytest.raises(NoSpaceError, match=MESSAGE + str(full_disk / "ds" / "a" / "images" / "a.png")):
        unpack_zip(archive, full_disk / "ds")
    assert list(full_disk.iterdir()) == []


def test_checkpoint_on_a_full_disk(full_disk, tmp_path):
    """Regression: a full disk during the checkpoint gave PyTorch's inline_container.cc error with
    no path, and left ckpt.pt.part."""
    store, index = synthetic_store(tmp_path)
    ckpt = full_disk / "ckpt.pt"
    with pytest.raises(NoSpaceError, match=MESSAGE + str(ckpt)):
        train_model([store], [index], tmp_path / "model", TrainSettings(**dict(SETTINGS, epochs=1)), checkpoint=ckpt, threads=1)
    assert list(full_disk.iterdir()) == []
    assert not (tmp_path / "model").exists()


# Pickled payloads: a model folder or checkpoint holding objects is refused, never run.

class Payload:
    """Unpickling this runs ``os.mkdir(path)``: the stand-in for any code a file could run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_a_pickled_payload_in_weights_pt_is_refused(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    config = ModelConfig(width=4)
    (folder / "config.json").write_text(json.dumps({"model": config.to_dict()}))
    weights = dict(ResUNet(config).state_dict(), extra=Payload(tmp_path / "ran"))
    with open(folder / "weights.pt", "wb") as out:
        torch.save(weights, out)
    with pytest.raises(ValueError, match=r"weights\.pt: refused: it holds pickled Python objects"):
        load_model(folder)
    assert not (tmp_path / "ran").exists()


def test_a_pickled_payload_in_a_checkpoint_is_not_run(tmp_path, caplog):
    store, index = synthetic_store(tmp_path)
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(pickle.dumps({"epoch": 1, "rng": Payload(tmp_path / "ran")}, protocol=2))
    with caplog.at_level(logging.WARNING, logger="nucseg.train"):
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
