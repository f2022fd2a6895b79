"""Tests of nucseg.tiling: padding to multiples of 32 and tiled processing, with no model."""

from __future__ import annotations

import doctest
import re

import numpy as np
import pytest
from scipy import ndimage as ndi

from nucseg import tiling
from nucseg.tiling import crop_padding, iter_tiles, pad_to_multiple, process_tiled, tile_starts

SHAPES = [(1, 1), (31, 31), (32, 32), (33, 33), (100, 7), (7, 100), (64, 100), (1, 1, 3), (33, 5, 2), (100, 7, 3)]


def test_docstring_examples():
    assert doctest.testmod(tiling).failed == 0


def test_pad_tiny_examples_written_out():
    padded, pads = pad_to_multiple(np.array([[1, 2, 3]]), multiple=4)
    assert pads == ((1, 2), (0, 1))
    np.testing.assert_array_equal(padded, [[1, 2, 3, 3]] * 4)

    column = np.array([[1], [2], [3]])
    padded, pads = pad_to_multiple(column, multiple=8)
    assert pads == ((2, 3), (3, 4))
    # the mirror repeats the edge: ... 2 1 | 1 2 3 | 3 2 1
    np.testing.assert_array_equal(padded[:, 0], [2, 1, 1, 2, 3, 3, 2, 1])
    assert (padded == padded[:, :1]).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.int64])
@pytest.mark.parametrize("shape", SHAPES)
def test_pad_then_crop_is_the_input(shape, dtype):
    a = np.random.default_rng(0).integers(0, 200, shape).astype(dtype)
    before = a.copy()
    padded, pads = pad_to_multiple(a)
    h, w = shape[:2]
    assert padded.dtype == dtype
    assert padded.shape[2:] == shape[2:]
    for n, n_padded, (before_, after_) in zip((h, w), padded.shape[:2], pads):
        assert n_padded % 32 == 0 and n <= n_padded < n + 32  # the smallest multiple of 32
        assert before_ + n + after_ == n_padded
        assert after_ - before_ in (0, 1)  # split evenly, the extra pixel after
    np.testing.assert_array_equal(crop_padding(padded, pads), a)
    np.testing.assert_array_equal(a, before)


@pytest.mark.parametrize("shape", SHAPES)
def test_padding_is_a_mirror(shape):
    a = np.random.default_rng(1).integers(0, 200, shape)
    padded, ((top, bottom), (left, right)) = pad_to_multiple(a)
    h, w = shape[:2]
    if top:
        np.testing.assert_array_equal(padded[top - 1, left : left + w], a[0])
    if bottom:
        np.testing.assert_array_equal(padded[top + h, left : left + w], a[h - 1])
    if left:
        np.testing.assert_array_equal(padded[top : top + h, left - 1], a[:, 0])
    if right:
        np.testing.assert_array_equal(padded[top : top + h, left + w], a[:, w - 1])
    # pads longer than the side mirror again and again, like numpy's "symmetric"
    widths = [(top, bottom), (left, right)] + [(0, 0)] * (a.ndim - 2)
    np.testing.assert_array_equal(padded, np.pad(a, widths, mode="symmetric"))


def test_no_padding_needed():
    a = np.arange(64 * 32).reshape(64, 32)
    padded, pads = pad_to_multiple(a)
    assert pads == ((0, 0), (0, 0))
    np.testing.assert_array_equal(padded, a)


@pytest.mark.parametrize("shape", [(5,), (0, 5), (5, 0, 3)])
def test_pad_refuses_bad_shapes_naming_them(shape):
    with pytest.raises(ValueError, match=re.escape(f"cannot pad an array of shape {shape}")):
        pad_to_multiple(np.zeros(shape))


def test_crop_padding_on_other_axes():
    a = np.arange(2 * 40 * 50, dtype=np.float32).reshape(2, 40, 50)
    padded = np.pad(a, ((0, 0), (12, 12), (7, 7)))
    np.testing.assert_array_equal(crop_padding(padded, ((12, 12), (7, 7)), axes=(1, 2)), a)


def test_tile_starts_and_iter_tiles_cover_exactly():
    assert tile_starts(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert tile_starts(8, 4) == [(0, 4), (4, 8)]
    seen = np.zeros((10, 7), int)
    for read, core, inner in iter_tiles((10, 7), tile=4, margin=2):
        seen[core] += 1
        # the core inside the read box is the core inside the image
        r = np.arange(70).reshape(10, 7)[read]
        np.testing.assert_array_equal(r[inner], np.arange(70).reshape(10, 7)[core])
    assert (seen == 1).all()


def identity(block: np.ndarray) -> np.ndarray:
    return np.moveaxis(block, -1, 0)


@pytest.mark.parametrize(
    "shape, tile, margin",
    [
        ((1, 1, 1), 64, 16),
        ((20, 30, 2), 64, 16),  # smaller than one tile
        ((100, 7, 1), 64, 16),  # fits tile + 2 * margin one way only
        ((300, 250, 3), 64, 16),  # many tiles
        ((97, 96, 1), 64, 16),  # one pixel more than tile + 2 * margin
        ((130, 140, 2), 32, 8),
    ],
)
def test_process_tiled_identity_is_exact(shape, tile, margin):
    image = np.random.default_rng(2).random(shape).astype(np.float32)
    before = image.copy()
    blocks = []

    def recording(block):
        blocks.append(block.shape)
        return identity(block)

    out = process_tiled(recording, image, n_out=shape[2], tile=tile, margin=margin)
    assert out.dtype == np.float32 and out.shape == (shape[2], shape[0], shape[1])
    np.testing.assert_array_equal(out, identity(image))
    np.testing.assert_array_equal(image, before)
    assert blocks and all(h % 32 == 0 and w % 32 == 0 and c == shape[2] for h, w, c in blocks)
    whole = shape[0] <= tile + 2 * margin and shape[1] <= tile + 2 * margin
    expected = 1 if whole else len(tile_starts(shape[0], tile)) * len(tile_starts(shape[1], tile))
    assert len(blocks) == expected


def test_process_tiled_many_tiles_count_and_size():
    blocks = []
    process_tiled(lambda b: blocks.append(b.shape) or identity(b), np.zeros((300, 250, 1), np.float32), 1, tile=64, margin=16)
    assert len(blocks) == 5 * 4  # ceil(300 / 64) x ceil(250 / 64)
    assert max(h for h, _, _ in blocks) == 96 and min(h for h, _, _ in blocks) == 64  # 64 + 2*16; 44 + 16 -> 64


def test_process_tiled_local_filter_has_no_seams():
    """A filter whose reach is within the margin gives the same result tiled or whole."""
    image = np.random.default_rng(3).random((150, 170, 1)).astype(np.float32)

    def max5(block):
        return ndi.maximum_filter(block[..., 0], size=5, mode="reflect")[None]

    tiled = process_tiled(max5, image, 1, tile=32, margin=8)
    whole = process_tiled(max5, image, 1, tile=1024, margin=64)
    np.testing.assert_array_equal(tiled, whole)
    np.testing.assert_array_equal(whole[0], ndi.maximum_filter(image[..., 0], size=5, mode="reflect"))


def test_process_tiled_several_outputs():
    image = np.random.default_rng(4).random((70, 90, 1)).astype(np.float32)
    out = process_tiled(lambda b: np.stack([b[..., 0], 1 - b[..., 0]]), image, 2, tile=32, margin=8)
    np.testing.assert_array_equal(out[0], image[..., 0])
    np.testing.assert_array_equal(out[1], 1 - image[..., 0])
