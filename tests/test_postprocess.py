"""Tests of nucseg.postprocess: probability maps to label images, and the segment stage."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import zarr

from nucseg.imageio import read_labels
from nucseg.measure import COLUMNS
from nucseg.postprocess import SegmentSettings, foreground_threshold, segment_dataset, segment_probability
from nucseg.preprocess import preprocess_fullsize

SHAPE = (64, 64)


def disc(center, radius=12, shape=SHAPE) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


def probability(mask: np.ndarray, inside=0.95, outside=0.02) -> np.ndarray:
    return np.where(mask, inside, outside).astype(np.float32)


LEFT, RIGHT = disc((32, 22)), disc((32, 42))  # radius 12, centres 20 px apart: they overlap


def assert_consecutive_uint32(labels: np.ndarray, n: int) -> None:
    assert labels.dtype == np.uint32
    np.testing.assert_array_equal(np.unique(labels), np.arange(n + 1))


def assert_one_label_per_disc(labels, discs, min_iou=0.8):
    for d in discs:
        best = max(iou(labels == k, d) for k in range(1, int(labels.max()) + 1))
        assert best > min_iou
    # and each label matches a different disc
    owners = [int(np.argmax([iou(labels == k, d) for d in discs])) for k in range(1, int(labels.max()) + 1)]
    assert sorted(owners) == list(range(len(discs)))


@pytest.mark.parametrize("values", [(0.95, 0.02), (1.0, 0.0), (0.7, 0.2)])
def test_two_touching_discs_give_two_labels(values):
    prob = probability(LEFT | RIGHT, *values)
    before = prob.copy()
    labels = segment_probability(prob, SegmentSettings())
    assert labels.shape == SHAPE
    assert_consecutive_uint32(labels, 2)
    assert_one_label_per_disc(labels, [LEFT, RIGHT])
    np.testing.assert_array_equal(prob, before)


def test_border_head_along_the_contact_line_gives_two_labels():
    prob = probability(LEFT | RIGHT)
    xx = np.mgrid[: SHAPE[0], : SHAPE[1]][1]
    border = np.where((np.abs(xx - 32) <= 1) & LEFT & RIGHT, 0.9, 0.0).astype(np.float32)
    before = border.copy()
    labels = segment_probability(prob, SegmentSettings(), border=border)
    assert_consecutive_uint32(labels, 2)
    assert_one_label_per_disc(labels, [LEFT, RIGHT])
    # the watershed grows the seeds back over the contact line: all the mask is labelled
    assert np.count_nonzero(labels) == np.count_nonzero(LEFT | RIGHT)
    np.testing.assert_array_equal(border, before)


def test_single_disc_gives_one_label():
    labels = segment_probability(probability(LEFT), SegmentSettings())
    assert_consecutive_uint32(labels, 1)
    assert iou(labels == 1, LEFT) > 0.9


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_all_zero_map_gives_no_labels(dtype):
    labels = segment_probability(np.zeros(SHAPE, dtype), SegmentSettings())
    assert labels.dtype == np.uint32 and labels.shape == SHAPE and not labels.any()


def test_no_labels_with_a_fixed_threshold_above_the_map():
    labels = segment_probability(probability(LEFT, 0.4, 0.0), SegmentSettings(threshold=0.5))
    assert not labels.any()
    labels = segment_probability(probability(LEFT, 0.4, 0.0), SegmentSettings(threshold=0.3))
    assert_consecutive_uint32(labels, 1)


def test_holes_are_filled():
    ring = LEFT & ~disc((32, 22), radius=3)
    labels = segment_probability(probability(ring), SegmentSettings())
    assert_consecutive_uint32(labels, 1)
    np.testing.assert_array_equal(labels > 0, LEFT)


@pytest.mark.parametrize("min_size, n", [(10, 1), (4, 1), (3, 2), (0, 2)])
def test_min_size_removes_a_three_pixel_speck(min_size, n):
    prob = probability(LEFT, 0.9, 0.0)
    prob[2, 60] = prob[2, 61] = prob[3, 60] = 1.0  # the speck: 3 pixels, far from the disc
    labels = segment_probability(prob, SegmentSettings(min_size=min_size))
    assert_consecutive_uint32(labels, n)
    assert bool(labels[2, 60]) == (n == 2)


def test_labels_are_consecutive_with_many_objects():
    mask = np.zeros((64, 64), bool)
    for y in range(4, 64, 16):
        for x in range(4, 64, 16):
            mask[y : y + 8, x : x + 8] = True
    labels = segment_probability(probability(mask), SegmentSettings())
    assert_consecutive_uint32(labels, 16)


# ---------------------------------------------------------------- settings and thresholds


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(threshold="mean"), "threshold must be 'otsu' or a number in \\(0, 1\\), got 'mean'"),
        (dict(threshold=0), "got 0"),
        (dict(threshold=1.0), "got 1.0"),
        (dict(threshold=1.5), "got 1.5"),
        (dict(threshold=True), "got True"),
        (dict(otsu_bounds=(0.8, 0.2)), re.escape("otsu_bounds must satisfy 0 <= low <= high <= 1, got (0.8, 0.2)")),
        (dict(otsu_bounds=(-0.1, 0.5)), "otsu_bounds"),
        (dict(otsu_bounds=(0.5, 1.1)), "otsu_bounds"),
        (dict(min_size=-1), "min_size must be >= 0 .* got -1"),
        (dict(marker_spacing=0), "marker_spacing > 0, got .*, 0"),
    ],
)
def test_settings_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SegmentSettings(**kwargs)


def test_settings_accept_a_list_for_bounds():
    assert SegmentSettings(otsu_bounds=[0.2, 0.8]).otsu_bounds == (0.2, 0.8)
    assert SegmentSettings(threshold=0.5).threshold == 0.5


def test_foreground_threshold():
    assert foreground_threshold(np.zeros((4, 4)), SegmentSettings(threshold=0.25)) == 0.25
    # a constant map has no Otsu split: the middle of the bounds
    assert foreground_threshold(np.full((4, 4), 0.9), SegmentSettings(otsu_bounds=(0.2, 0.6))) == pytest.approx(0.4)
    # Otsu between 0.1 and 0.9 lies inside the bounds
    two = np.array([[0.1, 0.1], [0.9, 0.9]])
    assert 0.1 <= foreground_threshold(two, SegmentSettings(otsu_bounds=(0.0, 1.0))) < 0.9
    # Otsu between 0 and 0.2 is below the bounds: clipped up to 0.3
    assert foreground_threshold(two * 0.2, SegmentSettings()) == pytest.approx(0.3)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=re.escape("expected a 2-D probability map, got shape (2, 64, 64)")):
        segment_probability(np.zeros((2,) + SHAPE), SegmentSettings())
    with pytest.raises(ValueError, match=re.escape("border map (64, 63) and probability map (64, 64) differ")):
        segment_probability(np.zeros(SHAPE), SegmentSettings(), border=np.zeros((64, 63)))


# ---------------------------------------------------------------- segment stage


def write_stage_inputs(tmp_path, make_dataset, image_ids, heads=("body",)):
    """A full-size store of two-disc images and a prediction store whose body map is the truth."""
    image = np.where(LEFT | RIGHT, 200, 10).astype(np.uint8)
    truth = np.zeros(SHAPE, np.uint32)
    truth[LEFT] = 1
    truth[RIGHT & ~LEFT] = 2
    make_dataset(tmp_path / "ds", {i: (image, truth) for i in image_ids})
    preprocess_fullsize(tmp_path / "ds", tmp_path / "full.zarr", tmp_path / "index.csv")
    preds = zarr.open_group(tmp_path / "pred.zarr", mode="w")
    preds.attrs["heads"] = list(heads)
    maps = {"body": probability(LEFT | RIGHT), "border": np.zeros(SHAPE, np.float32)}
    for i in image_ids:
        preds.create_array(i, data=np.stack([maps[h] for h in heads]))
    return tmp_path / "pred.zarr", tmp_path / "full.zarr", tmp_path / "index.csv"


@pytest.mark.parametrize("heads", [("body",), ("border", "body")])
def test_segment_dataset_writes_labels_and_objects(tmp_path, make_dataset, heads):
    pred, full, index = write_stage_inputs(tmp_path, make_dataset, ["img_a", "img_b"], heads)
    objects = segment_dataset(pred, full, index, tmp_path / "labels", tmp_path / "objects.csv", SegmentSettings())
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["img_a.tif", "img_b.tif"]
    for i in ["img_a", "img_b"]:
        labels = read_labels(tmp_path / "labels" / f"{i}.tif")
        assert labels.max() == 2
        assert_one_label_per_disc(labels, [LEFT, RIGHT])
    assert list(objects.columns) == ["image_id", *COLUMNS]
    assert objects["image_id"].tolist() == ["img_a", "img_a", "img_b", "img_b"]
    assert objects["mean_intensity"].tolist() == pytest.approx([200.0] * 4)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "objects.csv"), objects)


def test_segment_dataset_keeps_numeric_looking_ids(tmp_path, make_dataset):
    """Regression: ids like '001' (leading zeros) must survive the index CSV."""
    pred, full, index = write_stage_inputs(tmp_path, make_dataset, ["001", "002"])
    segment_dataset(pred, full, index, tmp_path / "labels", tmp_path / "objects.csv", SegmentSettings())
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["001.tif", "002.tif"]
