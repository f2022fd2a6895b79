"""Tests of nucseg.postprocess: probability maps to label images, and the segment stage."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pandas as pd
import pytest
import roifile
import shapely
import tifffile
import zarr

from nucseg.imageio import read_labels
from nucseg.measure import COLUMNS, IMAGE_COLUMNS
from nucseg.outputs import write_label_tiff
from nucseg.postprocess import (
    SegmentSettings,
    foreground_threshold,
    map_statistics,
    method_head,
    segment_dataset,
    segment_image,
    segment_map,
    segment_probability,
    use_border,
)
from nucseg.preprocess import preprocess_fullsize, shrunk_nuclei

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
        (dict(method="winner"), re.escape("segment method must be one of ('auto', 'paper', 'border', 'seed'), got 'winner'")),
        (dict(chunk=32), "chunk must be >= 64 .* got chunk=32"),
        (dict(overlap=-1), "overlap=-1"),
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


# ---------------------------------------------------------------- methods


def test_method_paper_ignores_the_border_map():
    """method paper on a body + border map gives the body-only result (the border is not used)."""
    prob = probability(LEFT | RIGHT)
    border = np.zeros(SHAPE, np.float32)
    border[:, 30:34] = 1.0  # would split everything at the contact line and beyond
    paper = segment_probability(prob, SegmentSettings(method="paper"), border=border)
    np.testing.assert_array_equal(paper, segment_probability(prob, SegmentSettings(method="paper")))
    assert not np.array_equal(paper, segment_probability(prob, SegmentSettings(method="border"), border=border))


def test_method_border_without_a_border_head_runs_paper():
    prob = probability(LEFT | RIGHT)
    np.testing.assert_array_equal(segment_probability(prob, SegmentSettings(method="border")), segment_probability(prob, SegmentSettings(method="paper")))
    assert use_border(SegmentSettings(method="border"), ["body"]) is False
    assert use_border(SegmentSettings(method="border"), ["body", "border"]) is True
    assert use_border(SegmentSettings(method="paper"), ["body", "border"]) is False


def test_seed_head_gives_one_label_per_seed_grown_over_the_mask():
    """Method seed: two seeds in one blob give two nuclei that cover the whole mask, whatever
    the blob's shape says (a third seed gives a third); without a seed head, the paper's method."""
    prob = probability(LEFT | RIGHT)
    seed = (disc((32, 22), 5) | disc((32, 42), 5)).astype(np.float32)
    labels = segment_probability(prob, SegmentSettings(method="seed"), seed=seed)
    assert_consecutive_uint32(labels, 2)
    assert_one_label_per_disc(labels, [LEFT, RIGHT])
    assert np.count_nonzero(labels) == np.count_nonzero(LEFT | RIGHT)
    three = np.maximum(seed, disc((32, 32), 2).astype(np.float32))  # at the contact line, apart from the two
    assert segment_probability(prob, SegmentSettings(method="seed"), seed=three).max() == 3
    # a blob with no seed keeps its own label; a seed outside the mask is no marker
    lone = probability(LEFT | disc((10, 54), 6))
    outside = np.zeros(SHAPE, np.float32)
    outside[60:63, 2:5] = 1.0
    labels = segment_probability(lone, SegmentSettings(method="seed"), seed=np.maximum(disc((32, 22), 5).astype(np.float32), outside))
    assert_consecutive_uint32(labels, 2) and not labels[60:63, 2:5].any()
    # method paper ignores a seed map; method seed without one runs paper
    paper = segment_probability(prob, SegmentSettings())
    np.testing.assert_array_equal(segment_probability(prob, SegmentSettings(), seed=seed), paper)
    np.testing.assert_array_equal(segment_probability(prob, SegmentSettings(method="seed")), paper)
    assert method_head(SegmentSettings(method="seed"), ["body", "border", "seed"]) == "seed"
    assert method_head(SegmentSettings(method="seed"), ["body", "border"]) is None
    assert method_head(SegmentSettings(method="border"), ["body", "border", "seed"]) == "border"
    with pytest.raises(ValueError, match="seed map"):
        segment_probability(prob, SegmentSettings(method="seed"), seed=seed[:10])


# ---------------------------------------------------------------- chunk by chunk


def real_mosaic(shared_data, n=4):
    """A real 2048 x 2048 label mosaic (the 512 x 512 fixture rotated 16 ways) and maps from it:
    body = the foreground smoothed, border = the touching borders between nuclei smoothed."""
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    truth = tifffile.imread(shared_data / "fixtures/dsb2018_fluo_512_uint16_labels.tif")
    mosaic = np.block([[np.rot90(truth, (i + j) % 4) for j in range(n)] for i in range(n)])
    body = ndi.gaussian_filter((mosaic > 0).astype(np.float32), 1.5)
    touching = find_boundaries(mosaic, mode="inner") & (ndi.grey_dilation(mosaic, 3) != ndi.grey_erosion(np.where(mosaic > 0, mosaic, 65535), 3)) & (mosaic > 0)
    border = ndi.gaussian_filter(touching.astype(np.float32), 1.0)
    return mosaic, body, border


def assert_same_objects(a: np.ndarray, b: np.ndarray) -> None:
    """Every object of ``a`` is exactly one object of ``b`` (numbers may differ), and background agrees."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    assert ((pairs[0] == 0) == (pairs[1] == 0)).all()


@pytest.mark.parametrize(
    "method",
    ["paper", pytest.param("border", marks=pytest.mark.slow), pytest.param("seed", marks=pytest.mark.slow)],
)
def test_chunked_equals_whole_image_on_a_real_mosaic(shared_data, method):
    """2048 x 2048 cut into 384-pixel chunks (chunk borders through many nuclei): the same
    nuclei as one whole-image pass, numbered 1..N without gaps, each whole. (About 70 s per
    method on the busy 2-core machine: the border and seed methods run with the slow tests.)"""
    truth, body, border = real_mosaic(shared_data)
    seed = shrunk_nuclei(truth).astype(np.float32)
    maps = np.stack([body, border, seed]).astype(np.float16)  # the predict stage's dtype
    settings = SegmentSettings(method=method)
    whole = segment_probability(maps[0], settings, maps[1], maps[2])
    chunked = np.zeros(body.shape, np.uint32)
    results = list(segment_map(maps, ["body", "border", "seed"], dataclasses.replace(settings, chunk=384, overlap=128)))
    assert len(results) == 36
    for result in results:
        result.paste(chunked)
    assert whole.max() > 1500
    assert_consecutive_uint32(chunked, int(whole.max()))
    assert_same_objects(whole, chunked)


def test_chunked_map_read_from_zarr_with_threads(tmp_path, shared_data):
    """A float16 zarr map in 256-pixel chunks, segmented with two threads in 512-pixel chunks:
    the same nuclei as in memory, in the same order (results come in chunk order)."""
    _, body, _ = real_mosaic(shared_data, n=2)
    store = zarr.create_array(tmp_path / "map.zarr", shape=(1,) + body.shape, chunks=(1, 256, 256), dtype=np.float16)
    store[0] = body
    settings = SegmentSettings(chunk=512, overlap=128)
    out = [np.zeros(body.shape, np.uint32) for _ in range(2)]
    for result in segment_map(store, ["body"], settings, threads=2):
        result.paste(out[0])
    for result in segment_map(store[:], ["body"], settings, threads=1):
        result.paste(out[1])
    np.testing.assert_array_equal(out[0], out[1])
    assert_same_objects(out[0], segment_probability(store[0], SegmentSettings()))


def test_statistics_are_whole_image_not_per_chunk():
    """A bright left chunk and a dim nucleus alone in the right chunk: the whole map's Otsu
    threshold (0.3604, bin centre above 0.36) leaves the dim nucleus out in every chunk, while
    the right chunk's own threshold (clipped up to 0.3) would keep it."""
    prob = np.zeros((128, 256), np.float32)
    prob[14:114, 14:114] = 0.9
    prob[54:74, 170:190] = 0.36
    threshold, spacing = map_statistics(prob[None], 0, SegmentSettings())
    assert threshold == pytest.approx(102.5 * 0.9 / 256)
    assert spacing == round(0.5 * np.sqrt(10000 / np.pi))
    labels = np.zeros(prob.shape, np.uint32)
    for result in segment_map(prob[None], ["body"], SegmentSettings(chunk=128, overlap=16)):
        result.paste(labels)
    assert labels.max() == 1 and labels[60, 60] == 1 and labels[60, 180] == 0
    assert map_statistics(prob[None, :, 128:], 0, SegmentSettings())[0] == pytest.approx(0.3)
    assert segment_probability(prob[:, 128:], SegmentSettings())[60, 52] == 1


def test_otsu_equals_skimage_on_the_whole_map():
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(0)
    prob = np.clip(rng.normal(0.45, 0.2, (3000, 2100)), 0, 1).astype(np.float32)  # two blocks wide and tall
    assert foreground_threshold(prob, SegmentSettings(otsu_bounds=(0, 1))) == pytest.approx(float(threshold_otsu(prob)), abs=0)


@pytest.mark.parametrize("skew", [0.0, 3.0])
def test_otsu_of_a_float16_map_read_once_equals_skimage(skew):
    """The predict stage's float16 maps are counted by bit pattern in one pass: the threshold
    is skimage's Otsu of the whole map in float32, subnormal probabilities and exact zeros
    included."""
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(1)
    prob = np.clip(rng.normal(0.45, 0.2, (2, 2500, 2200)), 0, 1) ** (1 + skew)
    prob[0, :40] = 1e-7  # float16 subnormals
    prob = prob.astype(np.float16)
    expected = float(threshold_otsu(prob[0].astype(np.float32)))
    threshold, _ = map_statistics(prob, 0, SegmentSettings(otsu_bounds=(0, 1)))
    assert threshold == pytest.approx(expected, abs=0)
    threshold, _ = map_statistics(zarr.array(prob, chunks=(1, 1000, 1000)), 0, SegmentSettings(otsu_bounds=(0, 1)))
    assert threshold == pytest.approx(expected, abs=0)


def test_objects_wider_than_the_overlap_are_reported(caplog):
    prob = np.zeros((256, 256), np.float32)
    prob[100:160, 20:200] = 0.9  # 180 pixels wide, over a chunk border, overlap 16
    with caplog.at_level("WARNING"):
        for _ in segment_map(prob[None], ["body"], SegmentSettings(chunk=128, overlap=16)):
            pass
    assert "wider than segment.overlap (16 px)" in caplog.text


@pytest.mark.slow
def test_more_than_65535_nuclei_are_numbered_uint32(tmp_path):
    """Regression guard for label overflow: 69,696 squares in 512-pixel chunks get unique labels
    1..69696 and the TIFF is uint32."""
    side, step = 1584, 6
    prob = np.zeros((side, side), np.float32)
    for dy in range(4):
        for dx in range(4):
            prob[dy::step, dx::step] = 0.9
    labels = np.zeros(prob.shape, np.uint32)
    for result in segment_map(prob[None], ["body"], SegmentSettings(chunk=512, overlap=16, min_size=4)):
        result.paste(labels)
    n = (side // step) ** 2
    assert n > 65535
    assert_consecutive_uint32(labels, n)
    write_label_tiff(tmp_path / "many.tif", labels, n)
    back = read_labels(tmp_path / "many.tif")
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, labels)


def test_bad_maps_are_named():
    with pytest.raises(ValueError, match=re.escape("expected a (K, H, W) map with K = 2 channels ['body', 'border'], got shape (1, 8, 8)")):
        list(segment_map(np.zeros((1, 8, 8)), ["body", "border"], SegmentSettings()))
    with pytest.raises(ValueError, match="no 'body' channel"):
        list(segment_map(np.zeros((1, 8, 8)), ["border"], SegmentSettings()))


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
    preds.attrs.update(heads=list(heads), model="models/m")
    maps = {"body": probability(LEFT | RIGHT), "border": np.zeros(SHAPE, np.float32)}
    for i in image_ids:
        preds.create_array(i, data=np.stack([maps[h] for h in heads]))
    return tmp_path / "pred.zarr", tmp_path / "full.zarr", tmp_path / "index.csv"


@pytest.mark.parametrize("heads", [("body",), ("border", "body")])
def test_segment_dataset_writes_labels_and_objects(tmp_path, make_dataset, heads):
    pred, full, index = write_stage_inputs(tmp_path, make_dataset, ["img_a", "img_b"], heads)
    out = {name: tmp_path / name for name in ("labels", "ome_zarr", "geojson", "rois")}
    per_image = segment_dataset(
        pred,
        full,
        index,
        out["labels"],
        tmp_path / "objects.csv",
        SegmentSettings(),
        images_csv=tmp_path / "images.csv",
        ome_zarr_dir=out["ome_zarr"],
        geojson_dir=out["geojson"],
        rois_dir=out["rois"],
    )
    assert sorted(p.name for p in out["labels"].iterdir()) == ["img_a.tif", "img_b.tif"]
    assert sorted(p.name for p in out["rois"].iterdir()) == ["img_a_rois.zip", "img_b_rois.zip"]
    assert sorted(p.name for p in out["ome_zarr"].iterdir()) == ["img_a.ome.zarr", "img_b.ome.zarr"]
    assert sorted(p.name for p in out["geojson"].iterdir()) == ["img_a.geojson", "img_b.geojson"]
    for i in ["img_a", "img_b"]:
        labels = read_labels(out["labels"] / f"{i}.tif")
        assert labels.max() == 2 and labels.dtype == np.uint16
        assert_one_label_per_disc(labels, [LEFT, RIGHT])
    objects = pd.read_csv(tmp_path / "objects.csv")
    assert list(objects.columns) == ["image_id", *COLUMNS]
    assert objects["image_id"].tolist() == ["img_a", "img_a", "img_b", "img_b"]
    assert objects["label"].tolist() == [1, 2, 1, 2]
    assert objects["mean_intensity"].tolist() == pytest.approx([200.0] * 4)
    assert list(per_image.columns) == IMAGE_COLUMNS
    assert per_image["count"].tolist() == [2, 2]
    # the image's file in the dataset, the model folder of the maps, the modality guess (of the index)
    assert per_image["source"].tolist() == [str(tmp_path / "ds" / i / "images" / f"{i}.png") for i in ["img_a", "img_b"]]
    assert per_image["model"].tolist() == ["models/m"] * 2 and per_image["modality"].tolist() == ["fluorescence"] * 2
    back = pd.read_csv(tmp_path / "images.csv", dtype={"source": str, "model": str, "modality": str})
    pd.testing.assert_frame_equal(back, per_image, check_dtype=False)
    # centroids are those of the GeoJSON's polygons (QuPath's), pixel (r, c) covering [c, c + 1] x [r, r + 1]
    for i, group in objects.groupby("image_id"):
        features = json.loads((out["geojson"] / f"{i}.geojson").read_text())["features"]
        centres = [shapely.geometry.shape(f["geometry"]).centroid for f in features]
        assert group["centroid_x"].to_numpy() == pytest.approx([c.x for c in centres])
        assert group["centroid_y"].to_numpy() == pytest.approx([c.y for c in centres])
        assert [f["properties"]["measurements"]["centroid_x"] for f in features] == pytest.approx(group["centroid_x"].tolist())
        assert [r.name for r in roifile.roiread(out["rois"] / f"{i}_rois.zip")] == ["1", "2"]


@pytest.mark.parametrize("layout", ["dsb", "images"])
def test_segment_dataset_measures_the_inputs_own_pixels_in_micrometres(tmp_path, layout):
    """16-bit grey inputs: a PNG with masks (read whole) and a TIFF of the images layout (copied
    band by band) keep their own values in the full-size store's raw/<id>, which the segment
    stage measures and writes into the OME-Zarr; the dataset's pixel_size (µm) replaces the
    file's, and a file's own calibration is used where none is given."""
    from PIL import Image

    values = np.where(LEFT | RIGHT, 4000, 1000).astype(np.uint16)
    values[RIGHT & ~LEFT] = 6000
    truth = np.zeros(SHAPE, np.uint8)
    truth[LEFT] = 1
    truth[RIGHT & ~LEFT] = 2
    ds = tmp_path / "ds"
    if layout == "dsb":
        (ds / "img" / "masks").mkdir(parents=True)
        (ds / "img" / "images").mkdir()
        Image.fromarray(values).save(ds / "img" / "images" / "img.png")  # 16-bit grey PNG
        for k in (1, 2):
            Image.fromarray(np.where(truth == k, 255, 0).astype(np.uint8)).save(ds / "img" / "masks" / f"m{k}.png")
        pixel_size, expected = 0.5, (0.5, "given")
    else:
        ds.mkdir()
        tifffile.imwrite(ds / "img.tif", values, imagej=True, resolution=(4.0, 4.0), metadata={"unit": "um"})  # Fiji's calibration
        pixel_size, expected = None, (0.25, "imagej")
    index = preprocess_fullsize(ds, tmp_path / "full.zarr", tmp_path / "index.csv", layout, pixel_size=pixel_size)
    assert index[["pixel_size_x_um", "pixel_size_from"]].values.tolist() == [list(expected)]
    raw = zarr.open_group(tmp_path / "full.zarr", mode="r")["raw/img"]
    assert raw.dtype == np.uint16 and raw.shape == SHAPE + (1,)
    np.testing.assert_array_equal(raw[..., 0], values)
    preds = zarr.open_group(tmp_path / "pred.zarr", mode="w")
    preds.attrs.update(heads=["body"], model="models/m")
    preds.create_array("img", data=probability(LEFT | RIGHT)[None])
    table = segment_dataset(
        tmp_path / "pred.zarr",
        tmp_path / "full.zarr",
        tmp_path / "index.csv",
        tmp_path / "labels",
        tmp_path / "objects.csv",
        SegmentSettings(),
        ome_zarr_dir=tmp_path / "ome",
    )
    assert table[["bit_depth", "channels", "pixel_size_x_um", "pixel_size_from"]].values.tolist() == [[16, 1, *expected]]
    objects = pd.read_csv(tmp_path / "objects.csv")
    labels = read_labels(tmp_path / "labels" / "img.tif")
    assert objects["raw_mean_c1"].tolist() == pytest.approx([values[labels == k].mean() for k in objects["label"]])
    assert objects["raw_max_c1"].max() == 6000
    np.testing.assert_allclose(objects["area_um2"], objects["area"] * expected[0] ** 2)
    ome = zarr.open_group(tmp_path / "ome" / "img.ome.zarr", mode="r")
    np.testing.assert_array_equal(ome["s0"][0], values)


def test_segment_dataset_outputs_switched_off(tmp_path, make_dataset):
    pred, full, index = write_stage_inputs(tmp_path, make_dataset, ["img_a"])
    out = {name: tmp_path / name for name in ("labels", "ome_zarr", "geojson", "rois")}
    settings = SegmentSettings(tiff=False, ome_zarr=False, geojson=False, rois=False)
    segment_dataset(
        pred,
        full,
        index,
        out["labels"],
        tmp_path / "objects.csv",
        settings,
        images_csv=tmp_path / "images.csv",
        ome_zarr_dir=out["ome_zarr"],
        geojson_dir=out["geojson"],
        rois_dir=out["rois"],
    )
    assert all(folder.is_dir() and not any(folder.iterdir()) for folder in out.values())
    assert len(pd.read_csv(tmp_path / "objects.csv")) == 2


def test_segment_dataset_keeps_numeric_looking_ids(tmp_path, make_dataset):
    """Regression: ids like '001' (leading zeros) must survive the index CSV."""
    pred, full, index = write_stage_inputs(tmp_path, make_dataset, ["001", "002"])
    segment_dataset(pred, full, index, tmp_path / "labels", tmp_path / "objects.csv", SegmentSettings())
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["001.tif", "002.tif"]


def test_segment_dataset_names_a_missing_map(tmp_path, make_dataset):
    pred, full, index = write_stage_inputs(tmp_path, make_dataset, ["img_a"])
    with open(index, "a") as f:
        f.write("img_z" + "," * (len(pd.read_csv(index).columns) - 1) + "\n")
    with pytest.raises(ValueError, match="no probability map for image 'img_z'"):
        segment_dataset(pred, full, index, tmp_path / "labels", tmp_path / "objects.csv", SegmentSettings())
    assert not (tmp_path / "labels").exists() and not (tmp_path / "objects.csv").exists()


def test_segment_dataset_large_image_path(tmp_path, make_dataset, monkeypatch):
    """The path of images too large for memory (label canvas in a temporary zarr store, tiled
    TIFF and OME-Zarr read from it, 32-pixel chunks) gives the in-memory result; nothing is left
    behind in the scratch folder, and the label store a killed run left there is removed
    (regression: a killed segment job's .labels.*/ stayed through every later successful run)."""
    from nucseg import outputs, postprocess

    pred, full, index = write_stage_inputs(tmp_path, make_dataset, ["img_a"])
    segment_dataset(pred, full, index, tmp_path / "small", tmp_path / "small.csv", SegmentSettings())
    monkeypatch.setattr(postprocess, "IN_MEMORY_PIXELS", 100)
    monkeypatch.setattr(outputs, "TILED_PIXELS", 100)
    (tmp_path / "big").mkdir()
    killed = tmp_path / "big/.labels.k1lled_0/labels.zarr"  # as a job killed in label_canvas leaves it
    zarr.create_array(killed, shape=(64, 64), chunks=(32, 32), dtype=np.uint32, fill_value=0)[:] = 1
    segment_dataset(
        pred, full, index, tmp_path / "big/labels", tmp_path / "big/objects.csv", SegmentSettings(chunk=64, overlap=32), ome_zarr_dir=tmp_path / "big/ome"
    )
    np.testing.assert_array_equal(read_labels(tmp_path / "big/labels/img_a.tif"), read_labels(tmp_path / "small/img_a.tif"))
    labels = zarr.open_group(tmp_path / "big/ome/img_a.ome.zarr", mode="r")["labels/nuclei/s0"]
    np.testing.assert_array_equal(labels[:], read_labels(tmp_path / "small/img_a.tif"))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "big/objects.csv"), pd.read_csv(tmp_path / "small.csv"))
    assert sorted(p.name for p in (tmp_path / "big").iterdir()) == ["labels", "objects.csv", "ome"]


def test_segment_image_without_nuclei(tmp_path):
    """A map with nothing above the threshold: a zero label image in every file, an empty
    FeatureCollection, no object rows and a per-image row of count 0."""
    import json

    from nucseg.outputs import ImageWriters

    tables = []
    row = segment_image(
        np.zeros((1, 300, 200), np.float16),
        ["body"],
        np.zeros((300, 200, 3), np.uint8),
        "empty",
        SegmentSettings(),
        tmp_path,
        tables.append,
        ImageWriters(tmp_path, tmp_path, tmp_path),
    )
    assert tables == [] and row["count"] == 0 and row["coverage_fraction"] == 0 and np.isnan(row["median_area"])
    assert json.loads((tmp_path / "empty.geojson").read_text()) == {"type": "FeatureCollection", "features": []}
    labels = read_labels(tmp_path / "empty.tif")
    assert labels.dtype == np.uint16 and labels.shape == (300, 200) and not labels.any()
    assert not zarr.open_group(tmp_path / "empty.ome.zarr", mode="r")["labels/nuclei/s0"][:].any()


# ---------------------------------------------------------------- the fast steps, against the published functions


def published_window(body, border, threshold, spacing, settings):
    """The published step as it was written with scipy/skimage before the fast versions
    (hole filling, small-object removal, Euclidean distance, per-label peak search, watershed)."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    mask = remove_small_objects(ndi.binary_fill_holes(body > threshold), max_size=settings.min_size - 1)
    components, n = ndi.label(mask)
    if n == 0:
        return np.zeros(body.shape, np.int32)
    seeds = mask if border is None else mask & (body - settings.border_weight * border > threshold)
    distance = ndi.distance_transform_edt(seeds)
    peaks = peak_local_max(ndi.gaussian_filter(distance, 1.0), min_distance=spacing, labels=components, exclude_border=False)
    markers = np.zeros(body.shape, np.int32)
    markers[tuple(peaks.T)] = 1
    markers, _ = ndi.label(ndi.binary_dilation(markers, iterations=1) & seeds)
    marked = np.zeros(n + 1, bool)
    marked[components[markers > 0]] = True
    if not marked[1:].all():
        extra = ~marked[components] & mask
        markers[extra] = components[extra] + markers.max()
    labels = watershed(-distance if border is None else -ndi.distance_transform_edt(mask), markers, mask=mask)
    areas = np.bincount(labels.ravel())
    labels[areas[labels] < settings.min_size] = 0
    return labels


def crowded_maps(seed=0, shape=(384, 416)):
    """Body and border maps of many touching, overlapping and isolated blobs of several sizes,
    some a pixel or two wide, some flat-topped: plateaus, near neighbours and specks."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    body = np.zeros(shape, np.float32)
    for _ in range(160):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.choice([1.0, 2.5, 5, 9, 14])
        body = np.maximum(body, np.clip(1.3 - np.hypot(yy - cy, xx - cx) / r, 0, 1))
    body = ndi.gaussian_filter(body, 0.7) + rng.normal(0, 0.02, shape).astype(np.float32)
    border = np.clip(ndi.gaussian_gradient_magnitude(body, 1.0) * 2, 0, 1)
    return np.clip(body, 0, 1).astype(np.float32), border.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("method", ["paper", "border"])
def test_segment_window_equals_the_published_step(seed, method):
    """The fast steps (OpenCV's exact distance transform, the vectorised peak search, one
    labelling for hole filling and size filter) give the published functions' labels, value
    for value, at several marker spacings."""
    from nucseg.postprocess import segment_window

    body, border = crowded_maps(seed)
    settings = SegmentSettings(method=method)
    border = border if method == "border" else None
    threshold, spacing = map_statistics(body[None], 0, settings)
    for s in sorted({spacing, 1, 2, 3, 6}):
        fast = segment_window(body, border, threshold, s, settings)
        assert fast.max() > 20
        np.testing.assert_array_equal(fast, published_window(body, border, threshold, s, settings), err_msg=f"marker spacing {s}")


def test_segment_window_equals_the_published_step_on_a_real_mosaic(shared_data):
    """The same on real nuclei: a 1024 x 1024 corner of the real mosaic, both methods."""
    from nucseg.postprocess import segment_window

    _, body, border = real_mosaic(shared_data, n=2)
    for method, b in (("paper", None), ("border", border)):
        settings = SegmentSettings(method=method)
        threshold, spacing = map_statistics(body[None], 0, settings)
        np.testing.assert_array_equal(segment_window(body, b, threshold, spacing, settings), published_window(body, b, threshold, spacing, settings))


def test_label_peaks_equal_skimage_on_plateaus():
    """Integer images are full of plateaus and ties: the vectorised peak search returns
    skimage's peak_local_max points, per label, at every spacing."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max

    from nucseg.postprocess import label_peaks

    rng = np.random.default_rng(3)
    image = ndi.uniform_filter(rng.integers(0, 4, (200, 230)).astype(np.float64), 3).round(1)
    labels, _ = ndi.label(ndi.uniform_filter(rng.random((200, 230)), 5) > 0.52)
    labels[0, :3] = labels.max() + 1  # a label on the image's edge, one of a single pixel
    labels[199, 229] = labels.max() + 1
    # flat labels (skimage's "trivial image": only isolated pixels count as peaks): every
    # fourth label, near others or alone; and a flat 5 x 5 square far from everything
    image[np.isin(labels, np.arange(1, labels.max() + 1, 4))] = 7.0
    labels[90:110, 100:120] = 0
    labels[97:102, 107:112] = labels.max() + 1
    image[97:102, 107:112] = 3.0
    for d in (1, 2, 4, 9):
        fast = {tuple(p) for p in label_peaks(image, labels, d)}
        assert fast == {tuple(p) for p in peak_local_max(image, min_distance=d, labels=labels, exclude_border=False)}, d


def test_distance_transform_equals_scipy():
    from scipy import ndimage as ndi

    from nucseg.postprocess import distance_transform

    rng = np.random.default_rng(4)
    masks = [ndi.uniform_filter(rng.random((300, 257)), 9) > 0.5, np.ones((40, 50), bool), np.zeros((40, 50), bool), rng.random((64, 64)) > 0.1]
    for mask in masks:
        np.testing.assert_array_equal(distance_transform(mask), ndi.distance_transform_edt(mask))
