"""Tests of nucseg.files: an output takes its name only when it is complete."""

from __future__ import annotations

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
