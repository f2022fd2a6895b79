"""Tests of nucseg.qc: which images are picked, the outlines pixel by pixel, the pictures on a tiny store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nucseg.evaluate import evaluate_dataset
from nucseg.imageio import write_labels
from nucseg.preprocess import preprocess_fullsize
from nucseg.qc import FALSE_COLOUR, MISS_COLOUR, PICKS, PRED_COLOUR, TRUTH_COLOUR, large_overview, outline_overlay, pick_images, qc_pictures, unmatched


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


def test_misses_and_false_detections_have_their_own_colours():
    truth = np.zeros((12, 12), np.uint16)
    truth[1:4, 1:4] = 1  # found (the prediction covers it exactly)
    truth[7:10, 7:10] = 2  # missed
    pred = np.zeros((12, 12), np.uint32)
    pred[1:4, 1:4] = 5
    pred[7:10, 1:4] = 6  # false
    missed, false = unmatched(truth, pred)
    assert missed.tolist() == [2] and false.tolist() == [6]
    out = outline_overlay(np.zeros((12, 12, 3), np.uint8), truth, pred)
    colour = lambda c: np.all(out == c, axis=2)  # noqa: E731
    assert colour(PRED_COLOUR)[1, 1] and colour(TRUTH_COLOUR)[0, 2]  # the match: magenta inside, green outside
    assert colour(FALSE_COLOUR)[7:10, 1:4].sum() == 8  # the ring of the 3 x 3 false detection
    assert colour(MISS_COLOUR)[6, 8] and colour(MISS_COLOUR)[10, 8] and not colour(MISS_COLOUR)[8, 8]
    assert not colour(MISS_COLOUR)[:5].any() and not colour(FALSE_COLOUR)[:5].any()


def test_large_image_overview_and_full_resolution_crops(monkeypatch, shared_data, tmp_path):
    """A real 1024 x 1024 label mosaic with the overview limit lowered to 256: an overview of
    every 4th pixel, framed crops at full resolution below it, equal to the overlay of those windows."""
    import tifffile

    from nucseg import outputs, qc

    monkeypatch.setattr(qc, "OVERVIEW_SIDE", 256)
    monkeypatch.setattr(qc, "CROP_SIDE", 128)
    truth = np.tile(tifffile.imread(shared_data / "fixtures/dsb2018_fluo_512_uint16_labels.tif"), (2, 2))
    image = np.repeat(np.where(truth > 0, 180, 20).astype(np.uint8)[..., None], 3, axis=2)
    pred = truth.astype(np.uint32).copy()
    pred[pred == np.bincount(truth.ravel())[1:].argmax() + 1] = 0  # the largest nucleus missed, in every tile
    canvas = large_overview(image, truth, pred)
    assert canvas.shape == (256 + 8 + 128, 3 * 128 + 2 * 8, 3)
    # the crops: full resolution, the windows with the most predicted pixels
    crops = [canvas[264:392, i * 136 : i * 136 + 128] for i in range(3)]
    windows = qc._crop_windows(pred[::4, ::4], 4, pred.shape)
    for crop, (ys, xs) in zip(crops, windows):
        np.testing.assert_array_equal(crop, outline_overlay(image[ys, xs], truth[ys, xs], pred[ys, xs]))
    assert np.all(canvas[:256, :256][windows[0][0].start // 4, windows[0][1].start // 4 : windows[0][1].stop // 4] == 255)  # frame
    assert np.all(canvas[:256, :256] == MISS_COLOUR, axis=2).any()
    # as a picture, from a tiled label TIFF read lazily
    monkeypatch.setattr(outputs, "TILED_PIXELS", 1)
    outputs.write_label_tiff(tmp_path / "pred.tif", pred, int(pred.max()))
    lazy = qc._open_labels(tmp_path / "pred.tif")
    assert not isinstance(lazy, np.ndarray) and lazy.shape == pred.shape
    qc.qc_picture(image, truth, lazy, "big", tmp_path / "big.png")
    with Image.open(tmp_path / "big.png") as picture:
        assert picture.size[0] == 640 and picture.size[1] > 392
