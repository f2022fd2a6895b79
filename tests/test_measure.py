"""Tests of nucseg.measure on hand-made squares, with every expected value written out."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from nucseg.measure import COLUMNS, measure_objects

# label 1: a 2 x 2 square at rows 1-2, columns 1-2; label 3: a 3 x 3 square at rows 2-4,
# columns 4-6; label 2 is absent.
#   ........
#   .11.....
#   .11.333.
#   ....333.
#   ....333.
#   ........
LABELS = np.zeros((6, 8), np.int32)
LABELS[1:3, 1:3] = 1
LABELS[2:5, 4:7] = 3


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int32, np.int64])
def test_squares_written_out(dtype):
    labels = LABELS.astype(dtype)
    before = labels.copy()
    table = measure_objects(labels)
    assert list(table.columns) == COLUMNS
    assert table["label"].tolist() == [1, 3]
    assert table["area"].tolist() == [4, 9]
    assert table["centroid_y"].tolist() == [1.5, 3.0]
    assert table["centroid_x"].tolist() == [1.5, 5.0]
    # bbox max is exclusive
    assert table[["bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x"]].values.tolist() == [[1, 1, 3, 3], [2, 4, 5, 7]]
    assert table["equivalent_diameter"].tolist() == pytest.approx([math.sqrt(16 / math.pi), math.sqrt(36 / math.pi)])
    assert table["eccentricity"].tolist() == pytest.approx([0.0, 0.0])  # squares are not elongated
    assert table["solidity"].tolist() == pytest.approx([1.0, 1.0])
    assert table["mean_intensity"].isna().all()  # no image given
    np.testing.assert_array_equal(labels, before)


def test_elongated_object():
    labels = np.zeros((5, 12), np.uint16)
    labels[2, 1:11] = 1  # a 1 x 10 line
    row = measure_objects(labels).iloc[0]
    assert row["area"] == 10 and row["centroid_y"] == 2.0 and row["centroid_x"] == 5.5
    assert row["eccentricity"] == pytest.approx(1.0)


def test_mean_intensity_grey_and_rgb():
    grey = np.zeros((6, 8), np.uint8)
    grey[1:3, 1:3] = 10
    grey[2:5, 4:7] = 20
    grey[2, 6] = 29  # label 3: (8 * 20 + 29) / 9 = 21
    assert measure_objects(LABELS, grey)["mean_intensity"].tolist() == pytest.approx([10.0, 21.0])
    rgb = np.stack([grey - grey, grey, grey * 2], axis=2)  # channel mean = grey
    before = rgb.copy()
    assert measure_objects(LABELS, rgb)["mean_intensity"].tolist() == pytest.approx([10.0, 21.0])
    np.testing.assert_array_equal(rgb, before)


@pytest.mark.parametrize("image", [None, np.zeros((6, 8, 3), np.uint8)])
def test_empty_label_image_gives_zero_rows_with_the_columns(image):
    table = measure_objects(np.zeros((6, 8), np.uint32), image)
    assert len(table) == 0
    assert list(table.columns) == COLUMNS


@pytest.mark.parametrize("image_shape", [(6, 7), (5, 8, 3), (8, 6)])
def test_size_mismatch_names_both_shapes(image_shape):
    with pytest.raises(ValueError, match=re.escape(f"image {image_shape} and labels (6, 8) differ in size")):
        measure_objects(LABELS, np.zeros(image_shape))


@pytest.mark.parametrize("labels", [np.zeros((6, 8), np.float32), np.zeros((6, 8), bool), np.zeros((2, 6, 8), np.int32)])
def test_non_2d_integer_labels_are_refused(labels):
    with pytest.raises(ValueError, match=re.escape(f"expected a 2-D integer label image, got {labels.shape} {labels.dtype}")):
        measure_objects(labels)
