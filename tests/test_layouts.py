"""Dataset layouts: a user's own images (folder, glob, zip), archive sub-folders, tiny images."""

from __future__ import annotations

import re
import zipfile

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import zarr
from PIL import Image

from nucseg.datasets import download_dataset, list_images, read_sample
from nucseg.infer import PredictSettings, predict_image
from nucseg.model import ModelConfig, ResUNet
from nucseg.preprocess import PreprocessSettings, make_crops, preprocess_fullsize

from .conftest import SHARED


def own_images(folder):
    """One image of each kind a user may have; returns {relative path: (bit_depth, channels)}."""
    rng = np.random.default_rng(0)
    (folder / "plate1").mkdir(parents=True)
    grey8 = rng.integers(0, 255, (40, 50), dtype=np.uint8)
    Image.fromarray(grey8).save(folder / "grey8.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(folder / "plate1" / "photo.jpg")
    tifffile.imwrite(folder / "plate1" / "deep.tif", rng.integers(0, 65535, (70, 33), dtype=np.uint16))
    tifffile.imwrite(folder / "rgb.tiff", rng.integers(0, 255, (20, 21, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image; ignored")
    return {"grey8": (8, 1), "rgba": (8, 4), "plate1__photo": (8, 3), "plate1__deep": (16, 1), "rgb": (8, 3)}


def test_own_folder_is_linked_not_copied_and_every_kind_is_read(tmp_path):
    expected = own_images(tmp_path / "mine")
    before = {p: p.read_bytes() for p in (tmp_path / "mine").rglob("*") if p.is_file()}
    dest = download_dataset(str(tmp_path / "mine"), tmp_path / "ds", layout="images")
    assert list_images(dest, "images") == sorted(expected)
    assert all(p.is_symlink() for p in dest.rglob("*") if not p.is_dir())
    index = preprocess_fullsize(dest, tmp_path / "full.zarr", tmp_path / "index.csv", layout="images")
    got = {row.image_id: (row.bit_depth, row.channels) for row in index.itertuples()}
    assert got == expected
    assert not index["has_labels"].any()
    images = zarr.open_group(tmp_path / "full.zarr", mode="r")["images"]
    assert images["plate1__deep"].shape == (70, 33, 3) and images["plate1__deep"].dtype == np.uint8
    assert {p: p.read_bytes() for p in before} == before  # the user's files are untouched


def test_glob_and_zip_sources(tmp_path):
    own_images(tmp_path / "mine")
    dest = download_dataset(str(tmp_path / "mine" / "*.png"), tmp_path / "ds", layout="images")
    assert list_images(dest, "images") == ["grey8", "rgba"]
    with zipfile.ZipFile(tmp_path / "mine.zip", "w") as zf:
        for p in sorted((tmp_path / "mine").rglob("*.tif")):
            zf.write(p, p.relative_to(tmp_path))
    dest = download_dataset(str(tmp_path / "mine.zip"), tmp_path / "zipped", layout="images")
    assert list_images(dest, "images") == ["mine__plate1__deep"]


def test_empty_folder_or_glob_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "empty"))):
        download_dataset(str(tmp_path / "empty"), tmp_path / "ds", layout="images")
    assert not (tmp_path / "ds").exists()


def test_broken_image_in_own_folder_names_the_users_file(tmp_path):
    own_images(tmp_path / "mine")
    (tmp_path / "mine" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    dest = download_dataset(str(tmp_path / "mine"), tmp_path / "ds", layout="images")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "mine" / "broken.png")) + r"\).*not a readable image"):
        preprocess_fullsize(dest, tmp_path / "full.zarr", tmp_path / "index.csv", layout="images")
    assert not (tmp_path / "full.zarr").exists() and not (tmp_path / "index.csv").exists()


def test_subdir_of_an_archive(tmp_path, make_dataset, two_square_sample):
    make_dataset(tmp_path / "repo-master" / "stage1_train", {"a": two_square_sample})
    (tmp_path / "repo-master" / "README.md").write_text("readme")
    with zipfile.ZipFile(tmp_path / "repo.zip", "w") as zf:
        for p in sorted((tmp_path / "repo-master").rglob("*")):
            zf.write(p, p.relative_to(tmp_path))
    dest = download_dataset(str(tmp_path / "repo.zip"), tmp_path / "ds", subdir="repo-master/stage1_train")
    assert list_images(dest) == ["a"]
    np.testing.assert_array_equal(read_sample(dest, "a").labels, two_square_sample[1])
    with pytest.raises(ValueError, match=r"repo.zip: no member below 'nowhere'"):
        download_dataset(str(tmp_path / "repo.zip"), tmp_path / "ds2", subdir="nowhere")
    assert not (tmp_path / "ds2").exists()


def test_images_smaller_than_32_pixels_are_padded_not_refused(tmp_path):
    """Regression guard: a 10 x 7 image trains (padded crop) and predicts (padded, cropped back)."""
    image = np.zeros((10, 7, 3), np.uint8)
    image[2:6, 2:5] = 200
    labels = (image[..., 0] > 0).astype(np.uint32)
    crops, labs = make_crops(image, labels, PreprocessSettings(size=32))
    assert crops.shape == (1, 32, 32, 3) and labs.shape == (1, 32, 32)
    assert labs.sum() >= labels.sum()
    torch.manual_seed(0)
    prob = predict_image(ResUNet(ModelConfig(width=4)).eval(), image, PredictSettings())
    assert prob.shape == (1, 10, 7)


def test_real_16_bit_fixture(tmp_path):
    fixture = SHARED / "data" / "fixtures" / "dsb2018_fluo_512_uint16.tif"
    if not fixture.is_file():
        pytest.skip("../shared/data not present (a fresh clone has no ../shared)")
    dest = download_dataset(str(fixture), tmp_path / "ds", layout="images")
    index = preprocess_fullsize(dest, tmp_path / "full.zarr", tmp_path / "index.csv", layout="images")
    row = index.iloc[0]
    assert (row.image_id, row.height, row.width, row.bit_depth, row.channels, row.modality) == ("dsb2018_fluo_512_uint16", 512, 512, 16, 1, "fluorescence")
    assert not row.dark_nuclei
    assert pd.read_csv(tmp_path / "index.csv").equals(index)
