"""Tests of nucseg.measure on hand-made squares, with every expected value written out."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from nucseg.calibration import PixelSize
from nucseg.measure import COLUMNS, IMAGE_COLUMNS, ImageSummary, measure_objects

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


def test_new_columns_written_out():
    table = measure_objects(LABELS)
    # skimage.measure.perimeter of a 2 x 2 and a 3 x 3 square
    assert table["perimeter"].tolist() == pytest.approx([4.0, 8.0])
    # squares have equal axes: major = minor = 4 sqrt(variance) and orientation pi/4 by convention
    assert table["major_axis_length"].tolist() == pytest.approx([4 * math.sqrt(0.25), 4 * math.sqrt(2 / 3)])
    assert table["minor_axis_length"].tolist() == pytest.approx(table["major_axis_length"].tolist())
    line = np.zeros((5, 12), np.uint16)
    line[2, 1:11] = 1
    row = measure_objects(line).iloc[0]
    assert row["orientation"] == pytest.approx(math.pi / 2)  # along the columns
    assert row["minor_axis_length"] == 0.0


def test_integrated_intensity():
    grey = np.zeros((6, 8), np.uint8)
    grey[1:3, 1:3] = 10
    grey[2:5, 4:7] = 20
    table = measure_objects(LABELS, grey)
    assert table["integrated_intensity"].tolist() == pytest.approx([40.0, 180.0])
    assert measure_objects(LABELS)["integrated_intensity"].isna().all()


def test_offset_moves_coordinates_only():
    moved = measure_objects(LABELS, offset=(100, 7))
    plain = measure_objects(LABELS)
    assert (moved["centroid_y"] - plain["centroid_y"]).tolist() == [100, 100]
    assert (moved["bbox_max_x"] - plain["bbox_max_x"]).tolist() == [7, 7]
    pd.testing.assert_series_equal(moved["solidity"], plain["solidity"])


def test_equal_to_regionprops_on_real_labels(shared_data):
    """Every column equals scikit-image's regionprops on a real 125-nucleus label image (the
    vectorised moments, perimeter and convex hull count)."""
    import tifffile
    from skimage.measure import regionprops_table

    labels = tifffile.imread(shared_data / "fixtures/dsb2018_fluo_512_uint16_labels.tif")
    image = tifffile.imread(shared_data / "fixtures/dsb2018_fluo_512_uint16.tif")
    table = measure_objects(labels, image)
    ref = pd.DataFrame(
        regionprops_table(
            labels,
            intensity_image=image.astype(float),
            properties=[
                "label",
                "area",
                "centroid",
                "bbox",
                "eccentricity",
                "solidity",
                "perimeter",
                "orientation",
                "axis_major_length",
                "axis_minor_length",
                "intensity_mean",
                "equivalent_diameter_area",
            ],
        )
    )
    pairs = {
        "label": "label",
        "area": "area",
        "centroid_y": "centroid-0",
        "centroid_x": "centroid-1",
        "bbox_min_y": "bbox-0",
        "bbox_min_x": "bbox-1",
        "bbox_max_y": "bbox-2",
        "bbox_max_x": "bbox-3",
        "eccentricity": "eccentricity",
        "solidity": "solidity",
        "perimeter": "perimeter",
        "orientation": "orientation",
        "major_axis_length": "axis_major_length",
        "minor_axis_length": "axis_minor_length",
        "mean_intensity": "intensity_mean",
        "equivalent_diameter": "equivalent_diameter_area",
    }
    assert len(table) == 125
    for ours, theirs in pairs.items():
        np.testing.assert_allclose(table[ours].to_numpy(float), ref[theirs].to_numpy(float), rtol=1e-9, atol=1e-9, err_msg=ours)
    np.testing.assert_allclose(table["integrated_intensity"], ref["intensity_mean"] * ref["area"])


def test_image_summary_by_chunks():
    pixel_size = PixelSize(0.325, 0.325, "ome-tiff")
    summary = ImageSummary("img", 1000, 2000, 0.5, "in/img.tif", "models/m", "fluorescence", pixels=dict(bit_depth=16, channels=1), pixel_size=pixel_size)
    summary.add(pd.DataFrame({"area": [10, 30]}))
    summary.add(pd.DataFrame({"area": [20]}))
    summary.add(pd.DataFrame({"area": pd.Series([], dtype=np.int64)}))
    row = summary.row()
    assert list(row) == IMAGE_COLUMNS
    assert row == {
        "image_id": "img",
        "height": 1000,
        "width": 2000,
        "count": 3,
        "density_per_megapixel": 1.5,
        "mean_area": 20.0,
        "median_area": 20.0,
        "coverage_fraction": 60 / 2e6,
        "predict_scale": 0.5,
        "source": "in/img.tif",
        "model": "models/m",
        "modality": "fluorescence",
        "bit_depth": 16,
        "channels": 1,
        "pixel_size_y_um": 0.325,
        "pixel_size_x_um": 0.325,
        "pixel_size_from": "ome-tiff",
    }
    summary.add(pd.DataFrame({"area": [100]}))
    assert summary.row()["median_area"] == 25.0  # 10, 20, 30, 100
    empty = ImageSummary("none", 10, 10).row()
    assert empty["count"] == 0 and np.isnan(empty["mean_area"]) and np.isnan(empty["median_area"]) and empty["coverage_fraction"] == 0
