"""The nucleus size of an image and the automatic predict scale (nucseg.scale)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

import nucseg
from nucseg.bigimage import LazyImage
from nucseg.datasets import read_sample, unpack_zip
from nucseg.infer import PredictSettings, open_predictor, predict_lazy
from nucseg.metrics import matching
from nucseg.postprocess import SegmentSettings, segment_probability
from nucseg.scale import BINS, choose_scale, diameter_histogram, diameter_summary, nucleus_diameters, probe_window, summary_of_histogram

ROOT = Path(__file__).resolve().parents[1]


def test_nucleus_diameters_and_the_edge():
    labels = np.zeros((40, 40), np.uint16)
    labels[10:20, 10:20] = 4  # area 100
    labels[0:5, 30:35] = 9  # touches the top edge
    np.testing.assert_allclose(nucleus_diameters(labels), [math.sqrt(400 / math.pi)])
    np.testing.assert_allclose(sorted(nucleus_diameters(labels, drop_edge=False)), sorted([math.sqrt(400 / math.pi), math.sqrt(100 / math.pi)]))
    assert nucleus_diameters(np.zeros((8, 8), np.uint8)).size == 0
    with pytest.raises(ValueError, match="2-D label image"):
        nucleus_diameters(np.zeros((2, 8, 8), np.uint8))


def test_histogram_summary_equals_the_direct_one():
    """A training set's sizes summed crop by crop give (to the 0.5 px bin) the direct percentiles."""
    rng = np.random.default_rng(0)
    crops = np.zeros((6, 64, 64), np.uint16)
    for crop in crops:
        for k in range(1, 6):
            r, c, s = rng.integers(4, 40), rng.integers(4, 40), rng.integers(3, 20)
            crop[r : r + s, c : c + s] = k
    diameters = np.concatenate([nucleus_diameters(c) for c in crops])
    binned = summary_of_histogram(diameter_histogram(crops).sum(axis=0))
    assert binned["n"] == diameters.size == diameter_summary(diameters)["n"]
    for key, q in (("p10", 10), ("median", 50), ("p90", 90)):  # the nucleus at that rank, to the 0.5 px bin
        assert abs(binned[key] - np.percentile(diameters, q, method="inverted_cdf")) <= BINS[1] - BINS[0]
    assert summary_of_histogram(np.zeros(len(BINS) - 1)) == {} and diameter_summary(np.zeros(0)) == {}


def test_choose_scale():
    """The scale whose nuclei, in the model's pixels, come nearest its training size; scales
    finding too few nuclei take no part; none at all: 1."""
    # nuclei 40 px across are found at 0.5 and 0.7; at 1.0 the model finds fragments of 12 px
    by_scale = {0.25: (2, 38.0), 0.5: (30, 40.0), 0.7: (28, 41.0), 1.0: (80, 12.0)}
    assert choose_scale(by_scale, target=20.0) == (0.5, 40.0)
    assert choose_scale({1.0: (50, 21.0), 0.7: (50, 22.0)}, target=20.0) == (1.0, 21.0)
    assert choose_scale({1.0: (0, float("nan")), 0.5: (2, 40.0)}, target=20.0)[0] == 1.0


def test_probe_window_takes_the_varied_part():
    """The probe is the candidate window of widest intensity spread: here the lower right,
    where the only nuclei are."""
    image = np.zeros((1000, 900, 3), np.float32)
    image[700:980, 600:880] = np.indices((280, 280)).sum(axis=0)[..., None] % 40 > 20

    def read(rows, cols):
        return image[np.ix_(rows, cols)]

    rows, cols = probe_window(read, image.shape[:2])
    assert (rows.stop - rows.start, cols.stop - cols.start) == (384, 384)
    assert rows.stop == 1000 and cols.stop == 900
    rows, cols = probe_window(read, (100, 50))  # smaller than the probe: the image, to a multiple of 32
    assert (rows.stop - rows.start, cols.stop - cols.start) == (96, 32)


@pytest.fixture(scope="module")
def sample_image(tmp_path_factory):
    """A fluorescence image of the embedded sample (256 x 256, 22 nuclei of a median 23 px)."""
    dest = tmp_path_factory.mktemp("sample") / "test"
    unpack_zip(ROOT / "resources" / "sample" / "sample_test.zip", dest)
    image_id = next(p.name for p in dest.iterdir() if p.name.startswith("2bf594e9d06f"))
    return read_sample(dest, image_id)


def _auto(predictor, image):
    prob = np.empty((len(predictor.heads),) + image.shape[:2], np.float32)

    def sink(r, block):
        prob[:, r : r + block.shape[1]] = block

    used = predict_lazy(predictor, LazyImage(image, "YXC", "test"), PredictSettings(scale="auto"), sink)
    return used, segment_probability(prob[predictor.heads.index("body")], SegmentSettings())


def test_auto_scale_follows_the_magnification(sample_image):
    """The shipped model on a real image and on the same image enlarged 2x and 3x: the chosen
    scale falls by the same factor (about 1/2 and 1/3 of the original's, one candidate step),
    and the nuclei found are the same ones."""
    predictor = open_predictor(nucseg.PRETRAINED_MODEL, PredictSettings())
    base_scale, base = _auto(predictor, sample_image.image)
    assert 0.7 <= base_scale <= 1.4
    for k in (2, 3):
        big = cv2.resize(sample_image.image, None, fx=k, fy=k, interpolation=cv2.INTER_LINEAR)
        scale, labels = _auto(predictor, big)
        assert base_scale / k / 1.45 <= scale <= base_scale / k * 1.45, (k, scale, base_scale)
        back = cv2.resize(labels.astype(np.float32), sample_image.image.shape[1::-1], interpolation=cv2.INTER_NEAREST).astype(np.int32)
        same = matching(base, back, 0.5)
        assert same["f1"] >= 0.8, (k, same)
    assert predictor.scale == 1.0  # restored after each image


def test_auto_scale_recorded_in_the_maps(tmp_path, sample_image):
    """The predict stage writes the chosen factor into each image's maps' attributes."""
    import zarr

    from nucseg.infer import predict_to_zarr

    predictor = open_predictor(nucseg.PRETRAINED_MODEL, PredictSettings(scale="auto"))
    group = zarr.open_group(tmp_path / "maps.zarr", mode="w")
    big = cv2.resize(sample_image.image, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
    array = predict_to_zarr(predictor, LazyImage(big, "YXC", "big"), group, "big", PredictSettings(scale="auto"))
    assert 0.25 <= array.attrs["scale"] <= 0.7
    fixed = predict_to_zarr(predictor, LazyImage(big, "YXC", "big"), group, "fixed", PredictSettings(scale=0.8))
    assert fixed.attrs["scale"] == 0.8


def test_scale_setting_values():
    assert PredictSettings(scale="auto").scale == "auto"
    with pytest.raises(ValueError, match="a number or 'auto'"):
        PredictSettings(scale="big")
    with pytest.raises(ValueError, match="between 0.05 and 20"):
        PredictSettings(scale=0.01)
