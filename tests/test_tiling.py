"""Tests of nucseg.tiling: padding to multiples of 32 and tiled processing, with no model."""

from __future__ import annotations

import doctest
import re

import numpy as np
import pytest
from scipy import ndimage as ndi

from nucseg import tiling
from nucseg.tiling import crop_padding, mirror_index, pad_to_multiple, plan_windows, process_tiled, ramp_weights, stream_tiled, window_starts

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


def test_mirror_index_is_numpys_symmetric_padding():
    for n, before, after in [(1, 15, 16), (3, 2, 4), (5, 40, 3), (100, 14, 14), (7, 0, 0)]:
        a = np.arange(n)
        np.testing.assert_array_equal(a[mirror_index(n, before, after)], np.pad(a, (before, after), mode="symmetric"))


def test_windows_cover_the_padded_image_on_the_32_grid():
    for shape, tile, margin in [((2048, 2048), 1024, 128), ((1000, 333), 256, 64), ((5, 3), 32, 16), ((700, 90), 64, 0)]:
        pads, windows = plan_windows(shape, tile, margin)
        padded = [n + a + b for n, (a, b) in zip(shape, pads)]
        seen = np.zeros(padded, int)
        for w in windows:
            assert w.y % 32 == 0 and w.x % 32 == 0 and w.h % 32 == 0 and w.w % 32 == 0
            assert w.h <= tile + 2 * margin and w.y + w.h <= padded[0] and w.x + w.w <= padded[1]
            assert w.weight.shape == (w.h, w.w) and w.weight.min() > 0
            seen[w.y : w.y + w.h, w.x : w.x + w.w] += 1
        assert seen.min() >= 1
    assert window_starts(2048, 1024, 128) == ([0, 768], 1280)


def test_overlapping_ramps_sum_to_one():
    """Two regular neighbours overlap by 2 * margin, where their weights add up to exactly 1."""
    ramp = 2 * 16
    first = ramp_weights(64 + ramp, ramp, rise=False, fall=True)
    second = ramp_weights(64 + ramp, ramp, rise=True, fall=False)
    np.testing.assert_allclose(first[-ramp:] + second[:ramp], 1, atol=1e-6)
    assert (first[:-ramp] == 1).all() and (second[ramp:] == 1).all()
    assert np.all(np.diff(second[:ramp]) > 0)  # smooth rise, no step


def identity(blocks: np.ndarray) -> np.ndarray:
    return np.moveaxis(blocks, -1, 1)


@pytest.mark.parametrize(
    "shape, tile, margin, batch",
    [
        ((1, 1, 1), 64, 16, 1),
        ((20, 30, 2), 64, 16, 2),  # smaller than one tile
        ((100, 7, 1), 64, 16, 1),  # fits one window one way only
        ((300, 250, 3), 64, 16, 3),  # many windows, batches across window rows
        ((97, 96, 1), 64, 16, 1),  # one pixel more than a window
        ((130, 140, 2), 32, 0, 4),  # no overlap: cut tiles
    ],
)
def test_process_tiled_identity_stitches_back_the_input(shape, tile, margin, batch):
    image = np.random.default_rng(2).random(shape).astype(np.float32)
    before = image.copy()
    calls = []

    def recording(blocks):
        calls.append(blocks.shape)
        return identity(blocks)

    out = process_tiled(recording, image, n_out=shape[2], tile=tile, margin=margin, batch=batch)
    assert out.dtype == np.float32 and out.shape == (shape[2], shape[0], shape[1])
    np.testing.assert_allclose(out, np.moveaxis(image, -1, 0), atol=1e-6)
    np.testing.assert_array_equal(image, before)
    assert all(b <= batch and h % 32 == 0 and w % 32 == 0 and c == shape[2] for b, h, w, c in calls)
    n_windows = len(plan_windows(shape[:2], tile, margin)[1])
    assert sum(b for b, *_ in calls) == n_windows and len(calls) == -(-n_windows // batch)


def test_stream_hands_out_rows_in_order_in_chunk_multiples():
    """The sink gets the result top to bottom in blocks of whole chunk rows (the last may be
    shorter), each as soon as no later window touches it: never the whole image at once."""
    image = np.random.default_rng(5).random((300, 200, 1)).astype(np.float32)
    received = []
    stream_tiled(
        identity, lambda r, c: image[np.ix_(r, c)], (300, 200), 1, lambda row, block: received.append((row, block.copy())), tile=64, margin=16, flush_rows=50
    )
    rows = [row for row, _ in received]
    assert rows == sorted(rows) and rows[0] == 0 and len(received) > 2
    assert all(b.shape[1] % 50 == 0 for _, b in received[:-1])
    np.testing.assert_allclose(np.concatenate([b for _, b in received], axis=1)[0], image[..., 0], atol=1e-6)


def test_blending_leaves_no_seam_where_windows_disagree():
    """A function whose output depends on the window (a constant per window, as a network's
    drifts with its context) is stitched without steps: neighbouring pixels differ by at most
    the ramp's slope times the difference between windows."""
    rng = np.random.default_rng(6)
    image = np.zeros((400, 400, 1), np.float32)
    out = process_tiled(
        lambda blocks: np.broadcast_to(rng.random((len(blocks), 1, 1, 1)), (len(blocks), 1) + blocks.shape[1:3]).astype(np.float32),
        image,
        1,
        tile=64,
        margin=32,
    )
    step = max(np.abs(np.diff(out[0], axis=0)).max(), np.abs(np.diff(out[0], axis=1)).max())
    assert step < 0.06  # a cut between tiles would jump by up to 1; the sin^2 ramp over 64 px rises < 0.025 a pixel


def test_process_tiled_local_filter_matches_whole_image_closely():
    """A filter whose reach is far within the margin: tiled equals whole except for the few
    pixels at window edges, which the blend weighs almost to nothing."""
    image = np.random.default_rng(3).random((150, 170, 1)).astype(np.float32)

    def max5(blocks):
        return np.stack([ndi.maximum_filter(b[..., 0], size=5, mode="reflect")[None] for b in blocks])

    tiled = process_tiled(max5, image, 1, tile=32, margin=16)
    whole = process_tiled(max5, image, 1, tile=1024, margin=64)
    np.testing.assert_array_equal(whole[0], ndi.maximum_filter(image[..., 0], size=5, mode="reflect"))
    assert np.abs(tiled - whole).max() < 0.02


def test_process_tiled_several_outputs():
    image = np.random.default_rng(4).random((70, 90, 1)).astype(np.float32)
    out = process_tiled(lambda b: np.stack([b[..., 0], 1 - b[..., 0]], axis=1), image, 2, tile=32, margin=16)
    np.testing.assert_allclose(out[0], image[..., 0], atol=1e-6)
    np.testing.assert_allclose(out[1], 1 - image[..., 0], atol=1e-6)


def test_bad_tiling_settings_are_named():
    with pytest.raises(ValueError, match="multiples of 32"):
        plan_windows((100, 100), 48, 16)
    with pytest.raises(ValueError, match="batch must be >= 1"):
        process_tiled(identity, np.zeros((10, 10, 1), np.float32), 1, batch=0)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(
    "region",
    [
        (slice(0, 300), slice(0, 200)),  # the whole image
        (slice(0, 128), slice(0, 96)),  # a corner
        (slice(128, 256), slice(96, 200)),  # inside, to the right edge
        (slice(90, 110), slice(7, 13)),  # a sliver inside one window (padded rows 100-120, columns 19-25)
        (slice(10, 290), slice(64, 128)),  # a column strip
        (slice(250, 300), slice(150, 200)),  # the bottom right corner, in four windows
    ],
)
def test_a_region_equals_the_same_pixels_of_the_whole_image_bit_for_bit(region, batch):
    """The split workflow predicts regions of an image as separate jobs: each region's maps must
    be the whole image's. The function depends on the window's whole content and on its batch
    (as a network's rounding may), so every window that reaches the region must run, in the
    whole image's batches."""
    image = np.random.default_rng(7).random((300, 200, 1)).astype(np.float32)
    calls = []

    def context(blocks):  # each pixel plus its window's mean, and its batch's size
        calls.append(len(blocks))
        means = blocks.mean(axis=(1, 2, 3), keepdims=True)
        return np.moveaxis(blocks + means + len(blocks), -1, 1) * 0.37

    def run(part):
        out = {}
        stream_tiled(
            context,
            lambda r, c: image[np.ix_(r, c)],
            (300, 200),
            1,
            lambda row, block: out.setdefault(row, block.copy()),
            tile=64,
            margin=16,
            batch=batch,
            flush_rows=7,
            region=part,
        )
        return np.concatenate([out[row] for row in sorted(out)], axis=1)

    whole = run(None)
    calls.clear()
    part = run(region)
    assert part.shape == (1, region[0].stop - region[0].start, region[1].stop - region[1].start)
    np.testing.assert_array_equal(part, whole[:, region[0], region[1]])
    if region == (slice(90, 110), slice(7, 13)):
        assert sum(calls) <= batch  # one window reaches it: only its batch runs


def test_a_region_outside_the_image_is_refused():
    with pytest.raises(ValueError, match="region"):
        stream_tiled(
            identity,
            lambda r, c: np.zeros((len(r), len(c), 1)),
            (100, 100),
            1,
            lambda row, block: None,
            tile=32,
            margin=16,
            region=(slice(100, 120), slice(0, 10)),
        )
