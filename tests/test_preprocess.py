"""Tests of nucseg.preprocess: crop grids, crops/resizes, the split, and the zarr stores."""

from __future__ import annotations

import doctest
import re

import numpy as np
import pandas as pd
import pytest
import zarr

from nucseg import preprocess
from nucseg.datasets import read_sample
from nucseg.imageio import intensity_range, normalize_image
from nucseg.preprocess import (
    PreprocessSettings,
    crop_starts,
    make_crops,
    pad_to_size,
    preprocess_fullsize,
    preprocess_training,
    split_by_modality,
)
from nucseg.sizes import BINS, nucleus_diameters
from nucseg.training import CropDataset, split_items

INDEX_COLUMNS = ["image_id", "height", "width", "bit_depth", "channels", "modality", "dark_nuclei", "n_nuclei", "n_overlap_px"]
TRAINING_COLUMNS = INDEX_COLUMNS + ["split", "first_crop", "n_crops"]
FULLSIZE_COLUMNS = INDEX_COLUMNS + ["has_labels", "source", "pixel_size_y_um", "pixel_size_x_um", "pixel_size_from"]


def test_docstring_examples():
    assert doctest.testmod(preprocess).failed == 0


# ---------------------------------------------------------------- crop grid


@pytest.mark.parametrize(
    "length, size, expected",
    [
        (256, 128, [0, 128]),
        (300, 128, [0, 86, 172]),  # 3 crops, spaced (300 - 128) / 2 = 86
        (100, 128, [0]),
        (128, 128, [0]),
        (129, 128, [0, 1]),
        (512, 128, [0, 128, 256, 384]),
        (640, 256, [0, 192, 384]),
        (1, 32, [0]),
    ],
)
def test_crop_starts(length, size, expected):
    starts = crop_starts(length, size)
    assert starts == expected
    if length >= size:  # the crops cover [0, length) exactly
        assert starts[-1] + size == length
        assert all(b - a <= size for a, b in zip(starts, starts[1:]))


def test_pad_to_size_mirrors_small_arrays():
    a = np.array([[1, 2], [3, 4]])
    np.testing.assert_array_equal(pad_to_size(a, 4), [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    assert pad_to_size(a, 2) is a


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(size=0), "multiple of 32, got 0"),
        (dict(size=48), "multiple of 32, got 48"),
        (dict(size=16), "multiple of 32, got 16"),
        (dict(mode="tile"), "mode must be one of .*'tile'"),
        (dict(val_fraction=1.0), r"val_fraction must be in \[0, 1\), got 1.0"),
        (dict(val_fraction=-0.1), r"val_fraction must be in \[0, 1\), got -0.1"),
    ],
)
def test_settings_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PreprocessSettings(**kwargs)


# ---------------------------------------------------------------- make_crops


def random_pair(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 5, (h, w)).astype(np.uint16)


def test_crop_mode_cuts_the_grid_in_row_major_order():
    image, labels = random_pair(40, 70)
    before = image.copy(), labels.copy()
    imgs, labs = make_crops(image, labels, PreprocessSettings(size=32))
    # rows start at [0, 8], columns at [0, 19, 38]: 2 x 3 crops
    boxes = [(y, x) for y in (0, 8) for x in (0, 19, 38)]
    assert imgs.shape == (6, 32, 32, 3) and imgs.dtype == np.uint8
    assert labs.shape == (6, 32, 32) and labs.dtype == np.uint32
    for k, (y, x) in enumerate(boxes):
        np.testing.assert_array_equal(imgs[k], image[y : y + 32, x : x + 32])
        np.testing.assert_array_equal(labs[k], labels[y : y + 32, x : x + 32])
    np.testing.assert_array_equal(image, before[0])
    np.testing.assert_array_equal(labels, before[1])


def test_crop_mode_pads_a_small_image():
    image, labels = random_pair(20, 10)
    imgs, labs = make_crops(image, labels, PreprocessSettings(size=32))
    assert imgs.shape == (1, 32, 32, 3) and labs.shape == (1, 32, 32)
    # 12 rows of padding split 6 + 6, 22 columns 11 + 11; the image sits in the middle
    np.testing.assert_array_equal(imgs[0, 6:26, 11:21], image)
    np.testing.assert_array_equal(labs[0, 6:26, 11:21], labels)
    np.testing.assert_array_equal(imgs[0, 5, 11:21], image[0])  # mirrored, edge repeated
    np.testing.assert_array_equal(labs[0, 26, 11:21], labels[-1])


@pytest.mark.parametrize("shape", [(32, 32), (50, 70), (200, 33), (10, 10)])
def test_crop_mode_count(shape):
    image, labels = random_pair(*shape)
    imgs, _ = make_crops(image, labels, PreprocessSettings(size=32))
    assert len(imgs) == len(crop_starts(max(shape[0], 32), 32)) * len(crop_starts(max(shape[1], 32), 32))


@pytest.mark.parametrize("shape", [(50, 70), (20, 10), (64, 64)])
def test_resize_mode_shapes(shape):
    image, labels = random_pair(*shape)
    imgs, labs = make_crops(image, labels, PreprocessSettings(size=32, mode="resize"))
    assert imgs.shape == (1, 32, 32, 3) and imgs.dtype == np.uint8
    assert labs.shape == (1, 32, 32) and labs.dtype == np.uint32
    assert set(np.unique(labs)) <= set(np.unique(labels))  # nearest neighbour: no new labels


def test_resize_mode_keeps_a_constant_image_and_label():
    image = np.full((50, 70, 3), 123, np.uint8)
    labels = np.full((50, 70), 7, np.uint32)
    imgs, labs = make_crops(image, labels, PreprocessSettings(size=32, mode="resize"))
    assert (imgs == 123).all() and (labs == 7).all()


# ---------------------------------------------------------------- split


MODALITIES = pd.Series(["fluorescence"] * 10 + ["brightfield"] * 3 + ["histology"])


def test_split_is_stratified():
    split = split_by_modality(MODALITIES, 0.2, seed=0)
    table = pd.DataFrame(dict(modality=MODALITIES, split=split))
    n_val = table[table.split == "val"].groupby("modality").size().to_dict()
    # 10 * 0.2 = 2; 3 * 0.2 = 0.6 -> at least 1; a single histology image stays in training
    assert n_val == {"fluorescence": 2, "brightfield": 1}
    assert set(split) == {"train", "val"}


def test_split_is_seeded():
    a = split_by_modality(MODALITIES, 0.3, seed=7)
    b = split_by_modality(MODALITIES, 0.3, seed=7)
    np.testing.assert_array_equal(a, b)
    others = [split_by_modality(MODALITIES, 0.3, seed=s) for s in range(8)]
    assert any(not np.array_equal(a, o) for o in others)


@pytest.mark.parametrize("seed", range(5))
def test_every_modality_with_two_images_gets_a_val_image(seed):
    modalities = pd.Series(["a", "a", "b", "b", "b", "c", "d", "d"])
    split = split_by_modality(modalities, 0.1, seed)
    for m in ["a", "b", "d"]:
        assert (split[modalities.to_numpy() == m] == "val").sum() == 1
    assert split[modalities.to_numpy() == "c"][0] == "train"


def test_zero_val_fraction_keeps_everything_in_training():
    assert (split_by_modality(MODALITIES, 0.0, seed=0) == "train").all()


# ---------------------------------------------------------------- stores


@pytest.fixture
def small_dataset(tmp_path, make_dataset, two_square_sample):
    """Three images in the challenge layout: 40 x 48 and 70 x 40 fluorescence, 20 x 24 brightfield."""
    image, labels = two_square_sample
    tall = np.full((70, 40), 5, np.uint8)
    tall_labels = np.zeros((70, 40), np.uint32)
    for k, y in enumerate([5, 25, 45], start=1):
        tall[y : y + 12, 10:22] = 180
        tall_labels[y : y + 12, 10:22] = k
    bright = np.full((20, 24), 220, np.uint8)
    bright_labels = np.zeros((20, 24), np.uint32)
    bright[4:10, 4:10] = 30
    bright_labels[4:10, 4:10] = 1
    return make_dataset(
        tmp_path / "ds",
        {"img_a": (image, labels), "img_b": (tall, tall_labels), "img_c": (bright, bright_labels)},
    )


def test_preprocess_training_store_and_index(small_dataset, tmp_path):
    out, index_csv = tmp_path / "train.zarr", tmp_path / "index.csv"
    index = preprocess_training(small_dataset, out, index_csv, PreprocessSettings(size=32, val_fraction=0.5, seed=1))
    assert list(index.columns) == TRAINING_COLUMNS
    assert index["image_id"].tolist() == ["img_a", "img_b", "img_c"]
    assert index["height"].tolist() == [40, 70, 20]
    assert index["width"].tolist() == [48, 40, 24]
    assert index["modality"].tolist() == ["fluorescence", "fluorescence", "brightfield"]
    assert index["n_nuclei"].tolist() == [2, 3, 1]
    assert index["n_overlap_px"].tolist() == [0, 0, 0]
    # crops: 40x48 -> 2 x 2; 70x40 -> 3 x 2; 20x24 -> padded, 1
    assert index["n_crops"].tolist() == [4, 6, 1]
    assert index["first_crop"].tolist() == [0, 4, 10]
    # two fluorescence images at 0.5: one of them in val; the single brightfield stays in train
    assert sorted(index["split"][:2]) == ["train", "val"] and index["split"][2] == "train"
    pd.testing.assert_frame_equal(pd.read_csv(index_csv), index)

    root = zarr.open_group(out, mode="r")
    assert root["images"].shape == (11, 32, 32, 3) and root["images"].dtype == np.uint8
    assert root["labels"].shape == (11, 32, 32) and root["labels"].dtype == np.uint32
    assert root["images"].chunks == (1, 32, 32, 3) and root["labels"].chunks == (1, 32, 32)
    assert dict(root.attrs) == dict(kind="training", size=32, mode="crop", n_images=3, border_radius=2)
    # no target arrays: training computes the targets from the labels after augmenting them
    assert sorted(root.array_keys()) == ["diameter_counts", "images", "intensity_range", "labels"]
    assert root["diameter_counts"].shape == (3, len(BINS) - 1) and root["diameter_counts"].dtype == np.int32
    for row in index.itertuples():
        sample = read_sample(small_dataset, row.image_id)
        # each whole image's nuclei by diameter (those at its edge left out), in the index's order
        np.testing.assert_array_equal(root["diameter_counts"][row.Index], np.histogram(nucleus_diameters(sample.labels), BINS)[0])
        imgs, labs = make_crops(sample.image, sample.labels, PreprocessSettings(size=32))
        np.testing.assert_array_equal(root["images"][row.first_crop : row.first_crop + row.n_crops], imgs)
        np.testing.assert_array_equal(root["labels"][row.first_crop : row.first_crop + row.n_crops], labs)
        # every crop carries the percentiles of its whole source image
        np.testing.assert_array_equal(
            root["intensity_range"][row.first_crop : row.first_crop + row.n_crops], np.float32([intensity_range(sample.image)] * row.n_crops)
        )
    assert root["intensity_range"].dtype == np.float32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "index.csv", "train.zarr"]


def test_training_crops_are_normalised_as_inference_normalises_their_image(tmp_path, make_dataset):
    """A training crop equals the same window of the whole image normalised for inference
    (percentiles of the whole image, not of the crop)."""
    # 40 x 48: a dim ramp, one bright nucleus on the right; crops at rows 0, 8 and columns 0, 16
    image = np.tile(np.linspace(0, 120, 48), (40, 1)).astype(np.uint8)
    labels = np.zeros((40, 48), np.uint32)
    labels[15:25, 36:46] = 1
    image[labels > 0] = 230
    dataset = make_dataset(tmp_path / "ds", {"ramp": (image, labels)})
    out, index_csv = tmp_path / "train.zarr", tmp_path / "index.csv"
    preprocess_training(dataset, out, index_csv, PreprocessSettings(size=32, val_fraction=0))
    data = CropDataset([str(out)], split_items([str(out)], [str(index_csv)])["train"], ("body",), None, seed=0)
    whole = normalize_image(read_sample(dataset, "ramp").image)
    windows = [whole[y : y + 32, x : x + 32] for y in crop_starts(40, 32) for x in crop_starts(48, 32)]
    assert len(data) == len(windows) == 4
    for k, window in enumerate(windows):
        np.testing.assert_allclose(data[k][0].numpy().transpose(1, 2, 0), window, rtol=1e-6, atol=1e-6)
    # the crop's own percentiles would give another image (the left crops miss the nucleus)
    left = read_sample(dataset, "ramp").image[:32, :32]
    assert not np.allclose(normalize_image(left), whole[:32, :32], atol=0.05)


def test_preprocess_training_resize_mode(small_dataset, tmp_path):
    index = preprocess_training(small_dataset, tmp_path / "t.zarr", tmp_path / "i.csv", PreprocessSettings(size=32, mode="resize"))
    assert index["n_crops"].tolist() == [1, 1, 1] and index["first_crop"].tolist() == [0, 1, 2]
    assert zarr.open_group(tmp_path / "t.zarr", mode="r")["images"].shape == (3, 32, 32, 3)


def test_preprocess_training_same_seed_same_split(small_dataset, tmp_path):
    settings = PreprocessSettings(size=32, val_fraction=0.5, seed=3)
    a = preprocess_training(small_dataset, tmp_path / "a.zarr", tmp_path / "a.csv", settings)
    b = preprocess_training(small_dataset, tmp_path / "b.zarr", tmp_path / "b.csv", settings)
    assert a["split"].tolist() == b["split"].tolist()


def test_preprocess_training_without_masks_leaves_no_store(small_dataset, tmp_path, make_dataset):
    make_dataset(small_dataset, {"img_d": (np.zeros((32, 32), np.uint8), None)})
    out, index_csv = tmp_path / "train.zarr", tmp_path / "index.csv"
    with pytest.raises(ValueError, match=re.escape(str(small_dataset / "img_d")) + ": no ground truth"):
        preprocess_training(small_dataset, out, index_csv, PreprocessSettings(size=32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no store, no .part folder, no index


def test_preprocess_training_failure_keeps_previous_store(small_dataset, tmp_path, make_dataset):
    out, index_csv = tmp_path / "train.zarr", tmp_path / "index.csv"
    preprocess_training(small_dataset, out, index_csv, PreprocessSettings(size=32))
    make_dataset(small_dataset, {"img_d": (np.zeros((32, 32), np.uint8), None)})
    with pytest.raises(ValueError, match="no ground truth"):
        preprocess_training(small_dataset, out, index_csv, PreprocessSettings(size=32))
    assert zarr.open_group(out, mode="r")["images"].shape == (11, 32, 32, 3)


def test_preprocess_empty_dataset_names_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "empty")) + ": no images found"):
        preprocess_training(tmp_path / "empty", tmp_path / "t.zarr", tmp_path / "i.csv", PreprocessSettings(size=32))
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "empty")) + ": no images found"):
        preprocess_fullsize(tmp_path / "empty", tmp_path / "f.zarr", tmp_path / "f.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_preprocess_fullsize_store_and_index(small_dataset, tmp_path, make_dataset):
    big = np.zeros((1100, 40), np.uint8)  # taller than one 1024 chunk
    make_dataset(small_dataset, {"img_d": (big, None)})
    out, index_csv = tmp_path / "full.zarr", tmp_path / "index.csv"
    index = preprocess_fullsize(small_dataset, out, index_csv)
    assert list(index.columns) == FULLSIZE_COLUMNS
    assert index["image_id"].tolist() == ["img_a", "img_b", "img_c", "img_d"]
    assert index["n_nuclei"].tolist() == [2, 3, 1, 0]
    assert index["has_labels"].tolist() == [True, True, True, False]
    assert index["source"].tolist() == [str(small_dataset / i / "images" / f"{i}.png") for i in index["image_id"]]  # images.csv's source (issue 22)
    pd.testing.assert_frame_equal(pd.read_csv(index_csv), index)

    root = zarr.open_group(out, mode="r")
    assert dict(root.attrs) == dict(kind="fullsize", n_images=4)
    assert sorted(root["images"].keys()) == ["img_a", "img_b", "img_c", "img_d"]
    assert sorted(root["labels"].keys()) == ["img_a", "img_b", "img_c"]
    a = root["images"]["img_a"]
    assert a.shape == (40, 48, 3) and a.dtype == np.uint8 and a.chunks == (40, 48, 3)
    lab = root["labels"]["img_a"]
    assert lab.shape == (40, 48) and lab.dtype == np.uint32 and lab.chunks == (40, 48)
    sample = read_sample(small_dataset, "img_a")
    np.testing.assert_array_equal(a[:], sample.image)
    np.testing.assert_array_equal(lab[:], sample.labels)
    d = root["images"]["img_d"]
    assert d.shape == (1100, 40, 3) and d.chunks == (1024, 40, 3)


def test_preprocess_fullsize_copies_a_large_tiff_band_by_band(tmp_path):
    """An image without ground truth that is a tiled TIFF (16-bit, as microscopes write them)
    is copied into the store one band of chunk rows at a time: the same pixels and index row
    as reading it whole, and a peak of traced memory that does not grow with the image (four
    times the pixels: well under twice the peak; reading whole would take four times)."""
    import tracemalloc

    import tifffile

    from nucseg.imageio import guess_modality, read_image_info

    rng = np.random.default_rng(0)
    peaks = []
    for h, w in ((2600, 3000), (5200, 6000)):
        image = (rng.random((h // 8, w // 8)) * 4000).astype(np.uint16).repeat(8, 0).repeat(8, 1)
        root = tmp_path / f"own{h}"
        root.mkdir()
        tifffile.imwrite(root / "slide.tif", image, tile=(256, 256), compression="zlib")
        whole, info = read_image_info(root / "slide.tif")
        tracemalloc.start()
        index = preprocess_fullsize(root, tmp_path / f"full{h}.zarr", tmp_path / f"full{h}.csv", layout="images")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        stored = zarr.open_group(tmp_path / f"full{h}.zarr", mode="r")["images/slide"]
        np.testing.assert_array_equal(stored[:], whole)
        row = index.iloc[0]
        assert (row.height, row.width, row.bit_depth, row.channels) == (h, w, info["bit_depth"], info["channels"])
        assert row.modality == guess_modality(whole[::2, ::2]) and not row.has_labels
    assert peaks[1] < 2 * peaks[0], f"peaks {peaks[0] / 1e6:.0f} MB and {peaks[1] / 1e6:.0f} MB"
