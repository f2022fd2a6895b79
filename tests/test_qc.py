"""Tests of nucseg.qc: which images are picked, the outlines pixel by pixel, the pictures on a tiny store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nucseg.evaluate import evaluate_dataset
from nucseg.imageio import write_labels
from nucseg.preprocess import preprocess_fullsize
from nucseg.qc import PICKS, PRED_COLOUR, TRUTH_COLOUR, outline_overlay, pick_images, qc_pictures


def test_picks_by_hand():
    table = pd.DataFrame(dict(image_id=["a", "b", "c", "d", "e"], challenge_score=[0.5, 0.9, 0.1, 0.5, np.nan]))
    # ranked: e (NaN, lowest), c 0.1, a 0.5, d 0.5 (tie: by id), b 0.9
    assert pick_images(table) == {"best": "b", "median": "a", "worst": "e"}
    assert pick_images(table.iloc[:4]) == {"best": "b", "median": "a", "worst": "c"}  # lower middle of 4
    assert pick_images(table.iloc[:1]) == {"best": "a", "median": "a", "worst": "a"}
    assert tuple(pick_images(table)) == PICKS
    with pytest.raises(ValueError, match="no per-image rows"):
        pick_images(table.iloc[:0])


def test_outlines_pixel_by_pixel():
    image = np.full((6, 6, 3), 50, np.uint8)
    truth = np.zeros((6, 6), np.uint16)
    truth[2:4, 2:4] = 1
    pred = np.zeros((6, 6), np.uint32)
    pred[2:4, 2:5] = 7
    before = image.copy(), truth.copy(), pred.copy()
    out = outline_overlay(image, truth, pred)
    green = np.all(out == TRUTH_COLOUR, axis=2)
    magenta = np.all(out == PRED_COLOUR, axis=2)
    # every pixel of the 2 x 3 prediction is on its edge; the truth's outer ring (4-neighbours,
    # no corners) shows where the prediction does not cover it
    expected_magenta = np.zeros((6, 6), bool)
    expected_magenta[2:4, 2:5] = True
    expected_green = np.zeros((6, 6), bool)
    expected_green[[1, 1, 4, 4, 2, 3], [2, 3, 2, 3, 1, 1]] = True
    np.testing.assert_array_equal(magenta, expected_magenta)
    np.testing.assert_array_equal(green, expected_green)
    assert np.all(out[~(green | magenta)] == 50)
    for array, original in zip((image, truth, pred), before):
        np.testing.assert_array_equal(array, original)


def test_grey_image_and_no_truth():
    pred = np.zeros((5, 5), np.uint16)
    pred[1:4, 1:4] = 1
    out = outline_overlay(np.zeros((5, 5), np.uint8), None, pred)
    assert out.shape == (5, 5, 3) and out.dtype == np.uint8
    assert np.all(out[2, 2] == 0) and np.all(out[1, 1] == PRED_COLOUR)


def test_shapes_must_agree():
    with pytest.raises(ValueError, match=r"\(4, 4\) do not fit the image of shape \(5, 5\)"):
        outline_overlay(np.zeros((5, 5, 3), np.uint8), None, np.zeros((4, 4), np.uint16))
    with pytest.raises(ValueError, match="uint8"):
        outline_overlay(np.zeros((5, 5, 3), np.float32), None, np.zeros((5, 5), np.uint16))


def test_qc_pictures_on_a_tiny_store(tmp_path, make_dataset, two_square_sample):
    image, labels = two_square_sample
    make_dataset(tmp_path / "ds", {"img_a": (image, labels), "img_b": (image, labels), "img_c": (image, labels)})
    preprocess_fullsize(tmp_path / "ds", tmp_path / "full.zarr", tmp_path / "index.csv")
    (tmp_path / "labels").mkdir()
    write_labels(tmp_path / "labels/img_a.tif", labels)  # perfect
    write_labels(tmp_path / "labels/img_b.tif", np.where(labels == 1, 1, 0))  # one of two
    write_labels(tmp_path / "labels/img_c.tif", np.zeros_like(labels))  # nothing
    evaluate_dataset(tmp_path / "labels", tmp_path / "full.zarr", tmp_path / "index.csv", tmp_path / "per_image.csv", dataset="tiny", model="m")
    out = {name: tmp_path / "qc" / f"{name}.png" for name in PICKS}
    picks = qc_pictures(tmp_path / "per_image.csv", tmp_path / "labels", tmp_path / "full.zarr", out)
    assert picks == {"best": "img_a", "median": "img_b", "worst": "img_c"}
    for path in out.values():
        with Image.open(path) as picture:
            assert picture.format == "PNG"
            # 40 x 48 enlarged x10 to 400 x 480, under a header of 3 title lines and the key
            # (8 + 4 x 16 pixels), at least 640 wide
            assert picture.size == (640, 472)
    with pytest.raises(ValueError, match="unknown quality-control picture"):
        qc_pictures(tmp_path / "per_image.csv", tmp_path / "labels", tmp_path / "full.zarr", {"top": tmp_path / "x.png"})
