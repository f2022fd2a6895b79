"""Nucleus sizes (nucseg.sizes) and the automatic predict scale (nucseg.scale)."""

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
from nucseg.scale import CANDIDATES, choose_scale, measure_size, probe_window
from nucseg.sizes import BINS, diameter_histogram, diameter_summary, nucleus_diameters, summary_of_histogram

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


def test_measure_size_takes_the_size_the_scales_agree_on():
    """Nuclei of 100 px are found as such at 0.25..0.7; at 1.0 and 1.4 the model finds fragments
    of its own size (about 20 px in its pixels, so 20 and 14 in the image's): the consistent
    size wins, however near the fragments come to the model's size."""
    by_scale = {0.25: (12, 111.0), 0.35: (8, 112.0), 0.5: (5, 107.0), 0.7: (3, 104.0), 1.0: (2, 108.0), 1.4: (5, 16.0)}
    assert measure_size(by_scale) == pytest.approx(np.median([111.0, 112.0, 107.0, 104.0]))  # 1.0 found too few
    assert measure_size({0.5: (40, 21.0), 1.0: (50, 20.0), 1.4: (45, 19.0)}) == 20.0
    assert np.isnan(measure_size({1.0: (0, float("nan")), 0.5: (2, 40.0)}))


def test_choose_scale():
    """1 within the model's band; else the candidate nearest 1 that brings the size into it."""
    band = (8.75, 31.25)
    assert choose_scale(20.0, band) == 1.0 and choose_scale(31.0, band) == 1.0
    assert choose_scale(40.0, band) == 0.7  # 28 px
    assert choose_scale(100.0, band) == 0.25  # 25 px (0.35 would give 35)
    assert choose_scale(7.0, band) == 1.4  # 9.8 px
    assert choose_scale(float("nan"), band) == 1.0
    assert choose_scale(500.0, band, fallback=0.25) == 0.25  # out of reach: the fallback


def test_probe_window_takes_the_varied_part():
    """The probe is the candidate window of widest intensity spread: here the lower right,
    where the only nuclei are."""
    image = np.zeros((1000, 900, 3), np.float32)
    image[700:980, 600:880] = np.indices((280, 280)).sum(axis=0)[..., None] % 40 > 20

    def read(rows, cols):
        return image[np.ix_(rows, cols)]

    rows, cols = probe_window(read, image.shape[:2], 384)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (384, 384)
    assert rows.stop == 1000 and cols.stop == 900
    rows, cols = probe_window(read, (100, 50), 384)  # smaller than the probe: the image, to a multiple of 32
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

    used, _ = predict_lazy(predictor, LazyImage(image, "YXC", "test"), PredictSettings(scale="auto"), sink)
    return used, segment_probability(prob[predictor.heads.index("body")], SegmentSettings())


def test_auto_scale_follows_the_magnification(sample_image):
    """The shipped model on a real image and on the same image enlarged 2x and 3x: the nucleus
    size measured grows by the same factor, the chosen scale brings it into the model's band
    (the factor nearest 1 that does: 0.7 at 2x, 0.5 at 3x), and the nuclei found are the same ones."""
    predictor = open_predictor(nucseg.PRETRAINED_MODEL, PredictSettings())
    base_scale, base = _auto(predictor, sample_image.image)
    base_size = _size(predictor, sample_image.image)
    assert base_scale == 1.0 and 15 <= base_size.diameter <= 30  # 23 px in the ground truth
    for k in (2, 3):
        big = cv2.resize(sample_image.image, None, fx=k, fy=k, interpolation=cv2.INTER_LINEAR)
        scale, labels = _auto(predictor, big)
        size = _size(predictor, big)
        assert size.scale == scale and size.diameter == pytest.approx(k * base_size.diameter, rel=0.2), (k, size)
        assert size.band[0] <= size.diameter * scale <= size.band[1]
        larger = [c for c in CANDIDATES if scale < c <= 1.0]
        assert larger and size.diameter * larger[0] > size.band[1]  # the largest factor that fits: 2x 0.7, 3x 0.5
        back = cv2.resize(labels.astype(np.float32), sample_image.image.shape[1::-1], interpolation=cv2.INTER_NEAREST).astype(np.int32)
        same = matching(base, back, 0.5)
        assert same["f1"] >= 0.8, (k, same)
    assert predictor.scale == 1.0  # restored after each image


def _size(predictor, image):
    from nucseg.scale import estimate_scale

    return estimate_scale(predictor, predictor.normalizer(LazyImage(image, "YXC", "test")), image.shape[:2], predictor.nuclei)


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


@pytest.mark.slow
def test_auto_scale_of_a_semantic_model_follows_the_magnification(shared_data, tmp_path):
    """A small U-Net trained on real bright-field white blood cells (wbc3class Dataset1, three
    classes; about a minute): on held-out images the cells' size measured in the probes matches
    their true size, and on the same images enlarged 2x it doubles, the chosen factor brings it
    back near the model's size, and the class maps agree with the original's."""
    from nucseg.datasets import download_dataset
    from nucseg.preprocess import PreprocessSettings, preprocess_training, read_id_list
    from nucseg.scale import weighted_median
    from nucseg.sizes import regions
    from nucseg.tasks import make_task
    from nucseg.training import TrainSettings, train_model

    classes = {"background": 0, "cytoplasm": 1, "nucleus": 2}
    root = download_dataset(str(shared_data / "wbc3class" / "wbc3class.zip"), tmp_path / "wbc", layout="semantic", subdir="Dataset1")
    held = read_id_list(ROOT / "config" / "wbc3class_heldout.txt")
    preprocess_training(root, tmp_path / "t.zarr", tmp_path / "t.csv", PreprocessSettings(size=128, val_fraction=0.1), "semantic", held, classes)
    settings = TrainSettings(model="unet", width=8, epochs=14, samples_per_epoch=64, batch_size=8, learning_rate=2e-3, invert_dark=False, sampling="balanced")
    config = train_model([tmp_path / "t.zarr"], [tmp_path / "t.csv"], tmp_path / "model", settings, task=make_task("semantic", classes), threads=1)
    assert 50 <= config["nuclei"]["median"] <= 100  # Dataset1's cells: about 75 px across

    predictor = open_predictor(tmp_path / "model", PredictSettings(device="cpu"))
    assert predictor.sizes_recorded and "body" not in predictor.heads
    for image_id in held[:3]:
        sample = read_sample(root, image_id, "semantic", class_values=(0, 1, 2))
        cells = nucleus_diameters(regions(sample.labels > 0), drop_edge=False)
        true_size = weighted_median(cells, cells**2)
        base = _size(predictor, sample.image)
        assert base.diameter == pytest.approx(true_size, rel=0.25), (image_id, base, true_size)
        big = cv2.resize(sample.image, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
        size = _size(predictor, big)
        assert size.diameter == pytest.approx(2 * base.diameter, rel=0.25), (image_id, size, base)
        # the factor brings the cells back to about the sizes the model saw (no candidate may
        # land inside its p10-p90 band exactly: factors are steps of about sqrt(2))
        assert size.scale <= 0.7 and size.band[0] / 1.3 <= size.diameter * size.scale <= size.band[1] * 1.3
        maps = {}
        for name, image in (("base", sample.image), ("big", big)):
            prob = np.empty((3,) + image.shape[:2], np.float32)

            def sink(r, block, prob=prob):
                prob[:, r : r + block.shape[1]] = block

            predict_lazy(predictor, LazyImage(image, "YXC", name), PredictSettings(scale="auto"), sink)
            maps[name] = prob.argmax(axis=0)
        back = cv2.resize(maps["big"].astype(np.uint8), sample.image.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        cell = (maps["base"] > 0) & (back > 0)
        assert 2 * cell.sum() / ((maps["base"] > 0).sum() + (back > 0).sum()) >= 0.85
