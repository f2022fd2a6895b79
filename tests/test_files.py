"""Tests of nucseg.files: an output takes its name only when it is complete."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from nucseg.files import atomic_dir, atomic_file, write_csv


def test_atomic_file_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_file(target) as tmp:
        assert tmp == tmp_path / "sub" / ".out.txt.part"
        tmp.write_text("new")
        assert not target.exists()  # not under its name while being written
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_atomic_file_failure_keeps_the_previous_file_and_leaves_no_part(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_unique_temporaries_let_two_writers_race(tmp_path):
    """atomic_file(unique=True): each writer has its own temporary; the last rename wins, whole."""
    target = tmp_path / "cache.bin"
    with atomic_file(target, unique=True) as first, atomic_file(target, unique=True) as second:
        assert first != second and first.name.startswith(".cache.bin.") and first.name.endswith(".part")
        first.write_bytes(b"a" * 1000)
        second.write_bytes(b"b" * 1000)
    assert target.read_bytes() in (b"a" * 1000, b"b" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["cache.bin"]


def test_atomic_dir_failure_keeps_the_previous_folder(tmp_path):
    target = tmp_path / "store.zarr"
    target.mkdir()
    (target / "a").write_text("old")
    with pytest.raises(ValueError, match="bad image"), atomic_dir(target, overwrite=True) as tmp:
        (tmp / "a").write_text("half")
        raise ValueError("bad image")
    assert (target / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.zarr"]
    with pytest.raises(FileExistsError, match="exists already"), atomic_dir(target):
        pass


def test_write_csv_round_trip(tmp_path):
    table = pd.DataFrame({"image_id": ["a", "b"], "score": [0.5, 1.0]})
    path = write_csv(table, tmp_path / "t.csv")
    pd.testing.assert_frame_equal(pd.read_csv(path), table)


WRITER = """
import sys, time
from nucseg.files import atomic_dir
with atomic_dir(sys.argv[1], overwrite=True) as tmp:
    (tmp / "half").write_text("half-written")
    print(tmp, flush=True)
    time.sleep(60)
"""


def test_temporaries_of_a_killed_writer_are_removed_when_the_output_is_next_written(tmp_path):
    """Regression: kill -9 during preprocess left a hidden .train.zarr.*.part folder forever."""
    target = tmp_path / "train.zarr"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    left = Path(writer.stdout.readline().strip())
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert left.is_dir() and left.name.startswith(".train.zarr.") and left.name.endswith(".part")
    other = tmp_path / ".train.zarr.csv.part"  # another output's temporary: not this output's
    other.write_text("x")
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "whole").write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".train.zarr.csv.part", "train.zarr"]
    assert (target / "whole").read_text() == "done"
