"""Tests of nucseg.rle: hand-worked encodings, the real sample's masks, malformed solution files."""

from __future__ import annotations

import re
import zipfile

import numpy as np
import pytest

from nucseg.datasets import read_sample, unpack_zip
from nucseg.imageio import decode_image
from nucseg.rle import SOLUTION_COLUMNS, read_solution, rle_decode, rle_encode, write_solution

from .conftest import REPO

SAMPLE_TEST = REPO / "resources/sample/sample_test.zip"

# 3 x 3, pixels numbered down the columns from 1:   1 4 7
#                                                   2 5 8
#                                                   3 6 9
L_SHAPE = np.array([[0, 1, 0], [1, 1, 0], [1, 1, 0]], bool)  # pixels 2, 3, 4, 5, 6


def test_hand_example_is_one_run_down_the_columns():
    assert rle_encode(L_SHAPE) == "2 5"
    np.testing.assert_array_equal(rle_decode("2 5", (3, 3)), L_SHAPE)


@pytest.mark.parametrize(
    "mask, rle",
    [
        ([[0, 0, 0], [1, 1, 1], [1, 0, 0]], "2 2 5 1 8 1"),  # row-major order would give "4 4"
        ([[1, 0, 1], [0, 0, 0], [0, 0, 1]], "1 1 7 1 9 1"),
        ([[1, 1, 1], [1, 1, 1], [1, 1, 1]], "1 9"),
        ([[0, 0, 0], [0, 0, 0], [0, 0, 0]], ""),
        ([[0, 0, 0, 1], [0, 0, 0, 1]], "7 2"),  # 2 x 4: last column is pixels 7, 8
        ([[0, 7, 0], [0, 3, 0], [0, 0, 0]], "4 2"),  # any nonzero value is inside
    ],
)
def test_hand_examples_both_ways(mask, rle):
    mask = np.array(mask)
    assert rle_encode(mask) == rle
    decoded = rle_decode(rle, mask.shape)
    assert decoded.dtype == np.bool_ and decoded.shape == mask.shape
    np.testing.assert_array_equal(decoded, mask != 0)


def test_encode_does_not_modify_and_accepts_fortran_order():
    mask = np.asfortranarray(L_SHAPE.astype(np.uint8))
    before = mask.copy()
    assert rle_encode(mask) == "2 5"
    np.testing.assert_array_equal(mask, before)


def test_adjacent_runs_decode_to_one_stretch():
    np.testing.assert_array_equal(rle_decode("2 2 4 3", (3, 3)), L_SHAPE)


@pytest.mark.parametrize(
    "rle, message",
    [
        ("2", "odd number"),
        ("2 3 7", "odd number"),
        ("0 3", "numbered from 1"),
        ("2 0", "length 0"),
        ("8 3", "ends at pixel 10, beyond the image's 9 pixels"),
        ("2 x", "'x'"),
        ("2 -1", "'-1'"),
        ("2.5 1", "'2.5'"),
        ("5 2 1 1", "sorted"),
        ("1 3 3 2", "overlap"),
    ],
)
def test_malformed_runs_are_refused(rle, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        rle_decode(rle, (3, 3))


@pytest.mark.parametrize("shape", [(0, 3), (3,), (3, -1)])
def test_bad_shape_is_refused(shape):
    with pytest.raises(ValueError, match="shape"):
        rle_decode("1 1", shape)


def test_encode_refuses_non_2d():
    with pytest.raises(ValueError, match=r"2-D.*\(2, 2, 2\)"):
        rle_encode(np.zeros((2, 2, 2), bool))


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The embedded test sample unpacked: (root, {image_id: [(H, W) bool mask, ...] in file-name order},
    {image_id: (H, W) uint32 labels made by read_sample from the masks})."""
    root = unpack_zip(SAMPLE_TEST, tmp_path_factory.mktemp("rle") / "sample_test")
    masks: dict[str, list[np.ndarray]] = {}
    with zipfile.ZipFile(SAMPLE_TEST) as archive:
        for name in sorted(archive.namelist()):
            parts = name.split("/")
            if len(parts) == 3 and parts[1] == "masks" and parts[2].endswith(".png"):
                masks.setdefault(parts[0], []).append(decode_image(archive.read(name), name) > 0)
    labels = {image_id: read_sample(root, image_id).labels for image_id in masks}
    return root, masks, labels


def test_round_trip_of_real_sample_masks(sample):
    """Up to 40 masks of every image of the sample (all of them for 8 of the 12 images)."""
    n = 0
    for masks in sample[1].values():
        for mask in masks[:40]:
            rle = rle_encode(mask)
            assert rle  # no empty mask in the sample
            assert np.array_equal(rle_decode(rle, mask.shape), mask)
            n += 1
    assert len(sample[1]) == 12 and n == 297


def test_solution_of_the_real_sample_decodes_to_its_labels(sample, tmp_path):
    """One row per mask file, in file-name order, gives the label image read_sample makes from the masks
    (numbering, and the later mask keeping an overlapping pixel, agree)."""
    _, sample_masks, sample_labels = sample
    csv = tmp_path / "solution.csv"
    with open(csv, "w") as handle:
        handle.write("ImageId,EncodedPixels,Height,Width,Usage\n")
        for image_id, masks in sample_masks.items():
            h, w = masks[0].shape
            for mask in masks:
                handle.write(f"{image_id},{rle_encode(mask)},{h},{w},Public\n")
    decoded = read_solution(csv)
    assert sorted(decoded) == sorted(sample_masks)
    for image_id, labels in decoded.items():
        assert labels.dtype == np.uint32
        assert np.array_equal(labels, sample_labels[image_id]), image_id


def test_write_then_read_solution_gives_the_labels_back_renumbered(tmp_path):
    a = np.array([[0, 9, 9], [4, 0, 9], [4, 0, 0]], np.uint16)  # labels 4 and 9 -> 1 and 2
    empty = np.zeros((2, 5), np.uint32)
    path = write_solution({"a": a, "007": empty}, tmp_path / "out" / "solution.csv")
    lines = path.read_text().splitlines()
    assert lines == ["ImageId,EncodedPixels,Height,Width", "a,2 2,3,3", "a,4 1 7 2,3,3", "007,,2,5"]
    back = read_solution(path)
    assert list(back) == ["a", "007"]  # ids keep their leading zeros
    np.testing.assert_array_equal(back["a"], np.array([[0, 2, 2], [1, 0, 2], [1, 0, 0]]))
    np.testing.assert_array_equal(back["007"], empty)  # an image without nuclei is kept, all zero
    assert back["007"].dtype == np.uint32
    assert [p.name for p in path.parent.iterdir()] == ["solution.csv"]


def test_round_trip_of_the_real_sample_labels(sample, tmp_path):
    labels = sample[2]
    back = read_solution(write_solution(labels, tmp_path / "solution.csv"))
    assert list(back) == list(labels)
    for image_id in labels:
        assert np.array_equal(back[image_id], labels[image_id]), image_id  # labels are 1..N already


def write_csv(path, rows, header="ImageId,EncodedPixels,Height,Width"):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_overlapping_rows_later_row_keeps_the_pixel(tmp_path, caplog):
    path = write_csv(tmp_path / "s.csv", ["x,1 3,3,3", "x,3 2,3,3"])  # pixel 3 claimed by both
    with caplog.at_level("WARNING", logger="nucseg.rle"):
        labels = read_solution(path)["x"]
    np.testing.assert_array_equal(labels, [[1, 2, 0], [1, 0, 0], [2, 0, 0]])
    assert "1 pixels claimed by more than one row" in caplog.text


def test_rows_of_images_may_interleave_and_usage_ignored_is_skipped(tmp_path):
    path = write_csv(
        tmp_path / "s.csv",
        ["a,1 1,2,2,Private", "b,4 1,2,2,Public", "a,4 1,2,2,Public", "c,1 4,2,2,Ignored"],
        header="ImageId,EncodedPixels,Height,Width,Usage",
    )
    back = read_solution(path)
    assert list(back) == ["a", "b"]
    np.testing.assert_array_equal(back["a"], [[1, 0], [0, 2]])
    np.testing.assert_array_equal(back["b"], [[0, 0], [0, 1]])


@pytest.mark.parametrize(
    "rows, message",
    [
        (["a,1 2,3,3", "b,8 3,3,3"], "row 3 (ImageId 'b'): run 8 3 ends at pixel 10, beyond the image's 9 pixels"),
        (["a,1 2 5,3,3"], "row 2 (ImageId 'a'): run-length encoding needs start/length pairs"),
        (["a,1 2,3,3", "a,4 x,3,3"], "row 3 (ImageId 'a'): run-length pairs must be non-negative integers, got 'x'"),
        (["a,0 2,3,3"], "row 2 (ImageId 'a'): run starts are numbered from 1"),
        (["a,1 2,3,3", "a,5 1,3,4"], "row 3 (ImageId 'a'): size (3, 4) differs from the size (3, 3)"),
        (["a,1 2,3,zero"], "row 2 (ImageId 'a'): Height and Width must be positive integers"),
        (["a,1 2,0,3"], "row 2 (ImageId 'a'): Height and Width must be positive integers"),
        ([",1 2,3,3"], "row 2 has no ImageId"),
        # regression: OverflowError (Python int too large to convert to C long), no file, row or ImageId
        (["a,1 2,3,3", "a,99999999999999999999 1,3,3"], "row 3 (ImageId 'a'): run 99999999999999999999 1 starts at pixel 99999999999999999999, beyond"),
        (["a,1 99999999999999999999,3,3"], "row 2 (ImageId 'a'): run 1 99999999999999999999 is 99999999999999999999 pixels long, longer than"),
        (["a,1 1,99999999999,99999999999"], "row 2 (ImageId 'a'): an image of 9999999999800000000001 pixels is larger than any image can be"),
    ],
)
def test_malformed_solution_names_file_row_and_image(tmp_path, rows, message):
    path = write_csv(tmp_path / "s.csv", rows)
    with pytest.raises(ValueError, match=re.escape(f"{path}: {message}")):
        read_solution(path)


def test_missing_column_is_named(tmp_path):
    path = write_csv(tmp_path / "s.csv", ["a,1 2,3"], header="ImageId,EncodedPixels,Height")
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a solution CSV: missing column(s) Width")):
        read_solution(path)


def test_columns_in_another_order_and_a_byte_order_mark(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes("\ufeffHeight,Width,EncodedPixels,ImageId\n2,2,2 2,a\n".encode())
    np.testing.assert_array_equal(read_solution(path)["a"], [[0, 1], [1, 0]])  # pixels 2 and 3


def test_written_columns_are_the_documented_ones():
    assert SOLUTION_COLUMNS == ("ImageId", "EncodedPixels", "Height", "Width")


def test_write_refuses_a_non_label_image(tmp_path):
    with pytest.raises(ValueError, match="'a': labels must be a 2-D integer array"):
        write_solution({"a": np.zeros((2, 2), np.float32)}, tmp_path / "s.csv")
    assert not (tmp_path / "s.csv").exists()
