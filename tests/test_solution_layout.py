"""The challenge's test layout: images without masks, ground truth in a solution CSV."""

from __future__ import annotations

import re
import shutil
import zipfile

import numpy as np
import pytest
import zarr

from nucseg.datasets import download_dataset, list_images, read_sample, unpack_zip
from nucseg.preprocess import preprocess_fullsize
from nucseg.rle import write_solution

from .conftest import REPO


@pytest.fixture(scope="module")
def sample_truth(tmp_path_factory):
    """The embedded test sample unpacked: {image_id: labels from the mask files}."""
    root = unpack_zip(REPO / "resources/sample/sample_test.zip", tmp_path_factory.mktemp("s") / "ds")
    return root, {i: read_sample(root, i).labels for i in list_images(root)}


def make_test_archive(tmp_path, sample_truth, ids=None):
    """Zip the sample's images without their masks, as the challenge's test archives are."""
    root, truth = sample_truth
    with zipfile.ZipFile(tmp_path / "test.zip", "w") as zf:
        for image_id in ids or truth:
            for p in (root / image_id / "images").iterdir():
                zf.write(p, p.relative_to(root))
    return tmp_path / "test.zip"


def test_solution_gives_the_same_truth_as_the_masks(tmp_path, sample_truth):
    _, truth = sample_truth
    archive = make_test_archive(tmp_path, sample_truth)
    write_solution(truth, tmp_path / "solution.csv")
    dest = download_dataset(str(archive), tmp_path / "ds", solution=str(tmp_path / "solution.csv"))
    assert (dest / "solution.csv").is_file()
    index = preprocess_fullsize(dest, tmp_path / "full.zarr", tmp_path / "index.csv")
    assert index["has_labels"].all() and len(index) == 12
    labels = zarr.open_group(tmp_path / "full.zarr", mode="r")["labels"]
    for image_id, expected in truth.items():
        got = labels[image_id][:]
        # same nuclei in the same order; pixels where masks overlapped may differ only in which
        # of the overlapping nuclei keeps them (both rules: the later one keeps it)
        np.testing.assert_array_equal(got, expected)


def test_images_missing_from_the_solution_have_no_truth(tmp_path, sample_truth):
    _, truth = sample_truth
    archive = make_test_archive(tmp_path, sample_truth)
    first = sorted(truth)[0]
    write_solution({first: truth[first]}, tmp_path / "solution.csv")
    dest = download_dataset(str(archive), tmp_path / "ds", solution=str(tmp_path / "solution.csv"))
    index = preprocess_fullsize(dest, tmp_path / "full.zarr", tmp_path / "index.csv")
    assert index.set_index("image_id")["has_labels"].to_dict() == {i: i == first for i in truth}


def test_unknown_image_id_is_named_and_nothing_is_left(tmp_path, sample_truth):
    _, truth = sample_truth
    first, second = sorted(truth)[:2]
    archive = make_test_archive(tmp_path, sample_truth, ids=[first])
    write_solution({first: truth[first], second: truth[second]}, tmp_path / "solution.csv")
    with pytest.raises(ValueError, match=re.escape("solution.csv: ImageId " + repr(second)) + " is not an image of the dataset"):
        download_dataset(str(archive), tmp_path / "ds", solution=str(tmp_path / "solution.csv"))
    assert not (tmp_path / "ds").exists()


def test_run_beyond_the_image_is_named(tmp_path, sample_truth):
    _, truth = sample_truth
    first = sorted(truth)[0]
    archive = make_test_archive(tmp_path, sample_truth, ids=[first])
    h, w = truth[first].shape
    (tmp_path / "solution.csv").write_text(f"ImageId,EncodedPixels,Height,Width\n{first},{h * w - 2} 5,{h},{w}\n")
    with pytest.raises(ValueError, match=re.escape(first)):
        download_dataset(str(archive), tmp_path / "ds", solution=str(tmp_path / "solution.csv"))
    assert not (tmp_path / "ds").exists()


def test_solution_size_differing_from_the_image_is_named(tmp_path, sample_truth):
    _, truth = sample_truth
    first = sorted(truth)[0]
    archive = make_test_archive(tmp_path, sample_truth, ids=[first])
    write_solution({first: np.pad(truth[first], ((0, 1), (0, 0)))}, tmp_path / "solution.csv")
    dest = download_dataset(str(archive), tmp_path / "ds", solution=str(tmp_path / "solution.csv"))
    with pytest.raises(ValueError, match=re.escape(f"ImageId {first!r} has size")):
        preprocess_fullsize(dest, tmp_path / "full.zarr", tmp_path / "index.csv")
    assert not (tmp_path / "full.zarr").exists()
    shutil.rmtree(dest)


def test_solution_errors_name_the_users_file_not_the_copy(tmp_path, sample_truth):
    """Regression: errors in a solution CSV named the copy results/datasets/<name>/solution.csv,
    a file the user never wrote, instead of the user's own file."""
    _, truth = sample_truth
    first, second = sorted(truth)[:2]
    archive = make_test_archive(tmp_path, sample_truth, ids=[first])
    mine = tmp_path / "mine" / "truth.csv"
    mine.parent.mkdir()
    h, w = truth[first].shape
    mine.write_text(f"ImageId,EncodedPixels,Height,Width\n{first},{h * w - 2} 5,{h},{w}\n")
    with pytest.raises(ValueError, match=re.escape(f"{mine}: row 2 (ImageId {first!r}): run")):
        download_dataset(str(archive), tmp_path / "ds", solution=str(mine))
    write_solution({first: truth[first], second: truth[second]}, mine)
    with pytest.raises(ValueError, match=re.escape(f"{mine}: ImageId {second!r} is not an image of the dataset")):
        download_dataset(str(archive), tmp_path / "ds", solution=str(mine))
    # a size that differs from the image is found later, by preprocess: it names the user's file too
    write_solution({first: np.pad(truth[first], ((0, 1), (0, 0)))}, mine)
    dest = download_dataset(str(archive), tmp_path / "ds", solution=str(mine))
    with pytest.raises(ValueError, match=re.escape(f"{mine}: ImageId {first!r} has size")):
        preprocess_fullsize(dest, tmp_path / "full.zarr", tmp_path / "index.csv")
