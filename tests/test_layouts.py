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


# ---------------------------------------------------------------------------
# Images beside label images: the StarDist and Cellpose folder conventions (nucseg.layouts)
# ---------------------------------------------------------------------------


def _labelled(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 40 x 48 grey image with three bright squares and their uint16 labels (values 3, 7, 9)."""
    labels = np.zeros((40, 48), np.uint16)
    labels[4:12, 4:12], labels[20:30, 10:20], labels[25:35, 30:44] = 3, 7, 9
    image = np.where(labels > 0, 180 + seed, 15).astype(np.uint8)
    return image, labels


def stardist_folder(root, names=("a", "b")):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k, name in enumerate(names):
        image, labels = _labelled(k)
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        tifffile.imwrite(root / "masks" / f"{name}.tif", labels)
    return root


def test_stardist_folder_and_zip(tmp_path):
    """Both sources of the stardist layout give the ids and the label images' own values."""
    folder = stardist_folder(tmp_path / "sd")
    archive = tmp_path / "sd.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.rglob("*.*")):
            zf.write(f, f"train/{f.relative_to(folder)}")
    for dest, source, subdir in ((tmp_path / "d1", folder, None), (tmp_path / "d2", archive, "train")):
        download_dataset(str(source), dest, layout="stardist", subdir=subdir)
        assert list_images(dest, "stardist") == ["a", "b"]
        sample = read_sample(dest, "b", "stardist")
        np.testing.assert_array_equal(sample.labels, _labelled(1)[1])
        assert sample.labels.dtype == np.uint32 and sample.image.shape == (40, 48, 3)
    assert all((tmp_path / "d1" / "images" / f"{n}.png").is_symlink() for n in "ab")  # linked, not copied


def test_cellpose_folder(tmp_path):
    """``<name>_img.png`` and plain ``<name>.tif`` beside ``<name>_masks.*``; Cellpose's
    ``_flows`` by-products are left out."""
    folder = tmp_path / "cp"
    folder.mkdir()
    image, labels = _labelled()
    Image.fromarray(image).save(folder / "000_img.png")
    Image.fromarray(labels.astype(np.uint8)).save(folder / "000_masks.png")
    tifffile.imwrite(folder / "cell2.tif", image)
    tifffile.imwrite(folder / "cell2_masks.tif", labels.astype(np.uint32))
    tifffile.imwrite(folder / "cell2_flows.tif", np.zeros((3, 40, 48), np.float32), photometric="minisblack")
    dest = download_dataset(str(folder), tmp_path / "d", layout="cellpose")
    assert list_images(dest, "cellpose") == ["000", "cell2"]
    for name in ("000", "cell2"):
        np.testing.assert_array_equal(read_sample(dest, name, "cellpose").labels, labels)


@pytest.mark.parametrize(
    "layout, break_it, message",
    [
        ("stardist", lambda r: (r / "masks" / "b.tif").unlink(), r"images/b\.png: no label image beside it \(expected .*masks/b\.tif"),
        ("stardist", lambda r: (r / "images" / "a.png").unlink(), r"masks/a\.tif: a label image without its image"),
        ("stardist", lambda r: tifffile.imwrite(r / "images" / "a.tif", np.zeros((4, 4), np.uint8)), r"2 image files share the image id 'a'"),
        ("stardist", lambda r: (r / "masks").rename(r / "labels"), r"no masks/ folder \(the stardist layout is"),
        ("cellpose", lambda r: (r / "x_masks.png").unlink(), r"x_img\.png: no label image beside it \(expected .*x_masks\.tif"),
    ],
)
def test_paired_layout_missing_partner_is_named(tmp_path, layout, break_it, message):
    """A missing partner stops the download naming the file, and leaves no dataset folder."""
    if layout == "stardist":
        root = stardist_folder(tmp_path / "src")
    else:
        root = tmp_path / "src"
        root.mkdir()
        image, labels = _labelled()
        Image.fromarray(image).save(root / "x_img.png")
        Image.fromarray(labels.astype(np.uint8)).save(root / "x_masks.png")
    break_it(root)
    with pytest.raises(ValueError, match=message):
        download_dataset(str(root), tmp_path / "dest", layout=layout)
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.zeros((30, 48), np.uint16), r"b\.tif: label image of size \(30, 48\) differs from its image's size \(40, 48\)"),
        (_labelled()[1].astype(np.float32), r"b\.tif: a label image must hold integers .* got float32"),
        (np.where(_labelled()[1] > 0, -1, 0).astype(np.int16), r"b\.tif: a label image must not hold negative values \(found -1\)"),
        (np.where(_labelled()[1] > 0, 255, 0).astype(np.uint8), r"b\.tif: label value 255 covers 3 separate objects .*binary or semantic mask"),
        (np.stack([_labelled()[1].astype(np.uint8), np.zeros((40, 48), np.uint8), _labelled()[1].astype(np.uint8)], -1), r"b\.tif: .*one value per pixel"),
    ],
    ids=["shape", "float", "negative", "binary-mask", "colour"],
)
def test_bad_label_image_is_named(tmp_path, labels, message):
    root = stardist_folder(tmp_path / "src")
    tifffile.imwrite(root / "masks" / "b.tif", labels)
    dest = download_dataset(str(root), tmp_path / "dest", layout="stardist")
    with pytest.raises(ValueError, match=message):
        read_sample(dest, "b", "stardist")
    read_sample(dest, "a", "stardist")  # its neighbour is fine


def test_label_value_in_two_pieces_is_kept(tmp_path):
    """Hand annotations hold a few values in two pieces (39 of MoNuSeg's 16,958): kept as one nucleus."""
    root = stardist_folder(tmp_path / "src", names=("a",))
    labels = _labelled()[1]
    labels[36:39, 2:5] = 3  # a second piece of nucleus 3
    tifffile.imwrite(root / "masks" / "a.tif", labels)
    sample = read_sample(download_dataset(str(root), tmp_path / "d", layout="stardist"), "a", "stardist")
    assert sorted(np.unique(sample.labels)) == [0, 3, 7, 9]


def test_empty_paired_folder_and_folder_with_checksum(tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    tifffile.imwrite(tmp_path / "empty" / "masks" / ".hidden.tif", np.zeros((4, 4), np.uint8))
    with pytest.raises(FileNotFoundError, match="no PNG, JPEG or TIFF image found at"):
        download_dataset(str(tmp_path / "empty"), tmp_path / "d1", layout="stardist")
    root = stardist_folder(tmp_path / "src")
    with pytest.raises(ValueError, match=r"src is a folder: a sha256 checksum is for an archive"):
        download_dataset(str(root), tmp_path / "d2", layout="stardist", sha256="0" * 64)
    assert not (tmp_path / "d1").exists() and not (tmp_path / "d2").exists()


def test_folder_in_the_challenge_layout_is_linked(tmp_path, make_dataset, two_square_sample):
    """A folder source works for the dsb layout too (it was refused as 'archive not found')."""
    src = make_dataset(tmp_path / "src", {"x": two_square_sample})
    dest = download_dataset(str(src), tmp_path / "d")
    assert list_images(dest) == ["x"]
    np.testing.assert_array_equal(read_sample(dest, "x").labels, two_square_sample[1])


def test_duplicate_member_names_in_a_zip_are_named(tmp_path):
    archive = tmp_path / "dup.zip"
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images/a.png", b"1")
        zf.writestr("images/a.png", b"2")
    with pytest.raises(ValueError, match=r"dup\.zip: two members are named 'images/a\.png'"):
        download_dataset(str(archive), tmp_path / "d", layout="images")
    assert not (tmp_path / "d").exists()


def test_real_stardist_sets(tmp_path, shared_data):
    """Other-lab fluorescence (Kromp et al.) and H&E (MoNuSeg), each a zip in the stardist layout."""
    for name, n_images, first_nuclei in (("kromp_train", 42, 300), ("monuseg_train", 30, 480)):
        dest = download_dataset(str(shared_data / name / f"{name}.zip"), tmp_path / name, layout="stardist", subdir=name)
        ids = list_images(dest, "stardist")
        assert len(ids) == n_images
        assert len(np.unique(read_sample(dest, ids[0], "stardist").labels)) - 1 == first_nuclei
