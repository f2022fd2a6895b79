"""benchmarks/bench_stardist.py without StarDist: its mosaics, its arguments and its skip.

The benchmark itself (StarDist training, ``predict_instances_big``, ``nucseg segment`` on large
mosaics) is never run here: it takes tens of minutes (BENCHMARKS.md, "Side by side with StarDist").
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tifffile

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_stardist.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_stardist", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiles() -> list[np.ndarray]:
    return [np.arange(16, dtype=np.uint8).reshape(4, 4), np.arange(16, 32, dtype=np.uint8).reshape(4, 4)]


def test_mosaic_is_made_of_the_tiles_turned(bench):
    tiles = _tiles()
    pieces = list(bench.mosaic_pieces(12, tiles))
    assert len(pieces) == 9
    variants = [np.rot90(t, k)[:, ::f] for t in tiles for k in range(4) for f in (1, -1)]
    for piece in pieces:
        assert any(np.array_equal(piece, v) for v in variants)
    # the tiles are cycled, so the 1st and 3rd are of the same image: turned differently
    assert not np.array_equal(pieces[0], pieces[2])
    assert np.array_equal(np.sort(pieces[0], axis=None), np.sort(tiles[0], axis=None))
    assert np.array_equal(np.sort(pieces[1], axis=None), np.sort(tiles[1], axis=None))


def test_written_mosaic_equals_its_pieces(bench, tmp_path):
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, (16, 16), dtype=np.uint8) for _ in range(3)]
    bench.write_mosaic(tmp_path / "m.tif", 64, tiles)
    image = tifffile.imread(tmp_path / "m.tif")
    pieces = list(bench.mosaic_pieces(64, tiles))
    expected = np.block([[pieces[r * 4 + c] for c in range(4)] for r in range(4)])
    assert image.dtype == np.uint8 and image.shape == (64, 64)
    assert np.array_equal(image, expected)


@pytest.mark.parametrize("side", [0, 6, 10])
def test_mosaic_side_not_a_multiple_of_the_tiles_is_refused(bench, side):
    with pytest.raises(ValueError, match=f"mosaic side {side} is not a multiple of the tiles' side 4"):
        list(bench.mosaic_pieces(side, _tiles()))


def test_source_tiles_are_square_grey_uint8(bench):
    tiles, where = bench.source_tiles()
    assert tiles and where
    assert all(t.dtype == np.uint8 and t.ndim == 2 and t.shape == tiles[0].shape and t.shape[0] == t.shape[1] for t in tiles)
    assert 512 % tiles[0].shape[0] == 0  # every size the arguments allow is a whole number of tiles


def test_arguments(bench):
    args = bench.parse_args([])
    assert (args.sizes, args.threads, args.epochs, args.steps, args.random_weights) == ([4096, 16384], 1, 15, 32, False)
    assert (args.block_size, args.min_overlap, args.context, args.n_tiles) == (4096, 128, 128, 4)
    args = bench.parse_args(["4096", "8192", "--threads", "2", "--random-weights", "--max-minutes", "40"])
    assert (args.sizes, args.threads, args.random_weights, args.max_minutes) == ([4096, 8192], 2, True, 40.0)


@pytest.mark.parametrize(
    "argv, message", [(["1000"], "mosaic side 1000 is not a positive multiple of 512"), (["0"], "side 0 is not"), (["--threads", "0"], "at least 1")]
)
def test_bad_arguments_are_refused(bench, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_skips_with_the_reason_where_stardist_does_not_import(bench, monkeypatch, capsys):
    monkeypatch.setattr(bench, "stardist_versions", lambda env: (None, "ModuleNotFoundError: No module named 'stardist'"))
    assert bench.main(["4096"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("skipped: stardist / tensorflow do not import here (ModuleNotFoundError: No module named 'stardist')")


@pytest.mark.skipif(importlib.util.find_spec("stardist") is not None, reason="stardist is installed here")
def test_import_check_names_the_missing_module(bench):
    versions, reason = bench.stardist_versions(bench.child_env(1))
    assert versions is None
    assert "No module named" in reason


def test_children_get_one_thread_count(bench):
    env = bench.child_env(3)
    assert all(env[k] == "3" for k in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "MKL_NUM_THREADS"))


def test_table_row(bench):
    row = bench._row("nucseg", 4096, 33.55, {"cpu_s": 30.04, "peak_rss_mb": 1530.6, "nuclei": 7507})
    assert row.split()[:7] == ["nucseg", "4096", "16.8", "33.5", "2.00", "30.0", "1531"]
    assert row.split()[7] == "7507"


def test_source_tiles_without_shared_are_the_sample_fluorescence_images(bench, monkeypatch, tmp_path):
    """A fresh clone has no ../shared: the mosaics are made of the embedded sample's images."""
    monkeypatch.setattr(bench, "FIXTURE", tmp_path / "absent.tif")
    tiles, where = bench.source_tiles()
    assert len(tiles) > 10 and "sample" in where
    assert all(t.shape == (256, 256) and t.dtype == np.uint8 for t in tiles)
