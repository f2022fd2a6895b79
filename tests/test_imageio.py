"""Tests of nucseg.imageio: decoding to (H, W, 3) uint8, normalisation, modality, label TIFFs."""

from __future__ import annotations

import doctest
import io
import re

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from nucseg import imageio
from nucseg.imageio import guess_modality, normalize_image, read_image, read_labels, to_rgb_uint8, write_labels

GREY = np.array([[0, 10, 20], [30, 40, 255]], np.uint8)


def grey_stack(grey: np.ndarray) -> np.ndarray:
    """The expected (H, W, 3) of a greyscale image: the grey repeated over three channels."""
    return np.repeat(grey[..., None], 3, axis=2)


# ---------------------------------------------------------------- to_rgb_uint8


def test_grey_uint8_is_repeated_over_three_channels():
    out = to_rgb_uint8(GREY)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out, grey_stack(GREY))


def test_single_channel_axis_is_treated_as_grey():
    np.testing.assert_array_equal(to_rgb_uint8(GREY[..., None]), grey_stack(GREY))


def test_rgb_uint8_is_kept_and_alpha_is_dropped():
    rgb = np.array([[[1, 2, 3], [4, 5, 6]]], np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(rgb), rgb)
    rgba = np.concatenate([rgb, np.full((1, 2, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_rgb_uint8(rgba), rgb)


def test_uint16_is_scaled_from_min_to_max():
    # (v - 1000) / 1020 * 255: 1000 -> 0, 1204 -> 51, 1408 -> 102, 2020 -> 255
    a = np.array([[1000, 1204], [1408, 2020]], np.uint16)
    np.testing.assert_array_equal(to_rgb_uint8(a)[..., 0], [[0, 51], [102, 255]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
def test_float_and_wide_int_are_scaled_from_min_to_max(dtype):
    # (v + 1) / 5 * 255: -1 -> 0, 0 -> 51, 1 -> 102, 4 -> 255; nothing is clipped
    a = np.array([[-1, 0], [1, 4]], dtype)
    np.testing.assert_array_equal(to_rgb_uint8(a)[..., 0], [[0, 51], [102, 255]])


def test_bool_becomes_0_and_255():
    a = np.array([[True, False], [False, True]])
    np.testing.assert_array_equal(to_rgb_uint8(a)[..., 1], [[255, 0], [0, 255]])


def test_constant_image_becomes_zeros():
    np.testing.assert_array_equal(to_rgb_uint8(np.full((2, 2), 700, np.uint16)), np.zeros((2, 2, 3), np.uint8))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64, bool])
@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1), (5, 7, 3), (5, 7, 4), (1, 1)])
def test_any_supported_input_gives_contiguous_h_w_3_uint8(dtype, shape):
    rng = np.random.default_rng(0)
    a = (rng.random(shape) * 300).astype(dtype)
    before = a.copy()
    out = to_rgb_uint8(a)
    assert out.shape == (shape[0], shape[1], 3)
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(a, before)  # the input is not modified


@pytest.mark.parametrize("shape", [(5,), (4, 5, 5), (2, 4, 5, 3)])
def test_bad_shape_raises_naming_source_and_shape(shape):
    with pytest.raises(ValueError, match=re.escape("cells.png: unsupported image shape " + str(shape))):
        to_rgb_uint8(np.zeros(shape, np.uint8), source="cells.png")


@pytest.mark.parametrize("shape, shown", [((0, 4), "(0, 4, 3)"), ((4, 0, 3), "(4, 0, 3)"), ((0, 0, 1), "(0, 0, 3)")])
def test_empty_image_raises_naming_source_and_shape(shape, shown):
    with pytest.raises(ValueError, match=re.escape(f"cells.png: empty image of shape {shown}")):
        to_rgb_uint8(np.zeros(shape, np.uint8), source="cells.png")


def test_nan_raises_naming_source():
    a = np.array([[0.0, np.nan]])
    with pytest.raises(ValueError, match=r"cells\.tif: .*NaN"):
        to_rgb_uint8(a, source="cells.tif")


def test_complex_pixels_raise_type_error():
    with pytest.raises(TypeError, match=r"cells\.tif: unsupported pixel type complex"):
        to_rgb_uint8(np.zeros((2, 2), np.complex64), source="cells.tif")


# ---------------------------------------------------------------- read_image


def test_read_png_grey_rgb_rgba_and_palette(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [9, 9, 9]]], np.uint8)
    Image.fromarray(GREY).save(tmp_path / "grey.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full((2, 2), 128, np.uint8)])).save(tmp_path / "rgba.png")
    palette = Image.fromarray(np.array([[0, 1], [2, 3]], np.uint8), mode="P")
    palette.putpalette(rgb.reshape(-1).tolist())  # index i has the colour of pixel i
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png"), grey_stack(GREY))
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "palette.png"), rgb)


def test_read_png_16_bit_is_scaled(tmp_path):
    a = np.array([[1000, 1204], [1408, 2020]], np.uint16)
    Image.fromarray(a).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png")[..., 2], [[0, 51], [102, 255]])


def test_read_jpeg(tmp_path):
    a = np.zeros((16, 16, 3), np.uint8)
    a[:, 8:] = 200
    Image.fromarray(a).save(tmp_path / "cells.jpg", quality=95)
    out = read_image(tmp_path / "cells.jpg")
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - a).max() <= 8  # lossy, but close


def test_read_tiff_8_bit_grey_and_rgb(tmp_path):
    rgb = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    tifffile.imwrite(tmp_path / "grey.tif", GREY)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "grey.tif"), grey_stack(GREY))
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.tif"), rgb)


def test_read_tiff_16_bit_is_scaled(tmp_path):
    tifffile.imwrite(tmp_path / "deep.tif", np.array([[1000, 1204], [1408, 2020]], np.uint16))
    np.testing.assert_array_equal(read_image(tmp_path / "deep.tif")[..., 0], [[0, 51], [102, 255]])


@pytest.mark.parametrize(
    "name, data",
    [
        ("notes.png", b"these are not pixels\n"),
        ("empty.png", b""),
        ("broken.tif", b"II*\x00" + b"\xff" * 40),
    ],
)
def test_file_that_is_not_an_image_raises_naming_it(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        read_image(path)


def test_truncated_png_raises_naming_it(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        read_image(path)


def test_missing_file_raises_naming_it(tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "nothing.png"))):
        read_image(tmp_path / "nothing.png")


def test_read_png_grey_with_alpha(tmp_path):
    """Regression: a valid grey+alpha PNG must read like its grey channel, not raise."""
    Image.fromarray(np.dstack([GREY, np.full_like(GREY, 255)]), mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png"), grey_stack(GREY))


def test_read_shared_uint16_fixture(shared_data):
    path = shared_data / "fixtures" / "dsb2018_fluo_512_uint16.tif"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    raw = tifffile.imread(path)
    image = read_image(path)
    assert image.shape == raw.shape[:2] + (3,) and image.dtype == np.uint8
    assert image.min() == 0 and image.max() == 255  # scaled from min to max
    assert guess_modality(image) == "fluorescence"


def test_planar_rgb_tiff_is_read_like_its_interleaved_twin(tmp_path):
    """Regression: a (3, H, W) TIFF with the RGB photometric tag (planar samples) was refused as
    an unsupported shape."""
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    assert tifffile.TiffFile(tmp_path / "planar.tif").pages[0].planarconfig == 2  # really planar
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), rgb)


@pytest.mark.parametrize("how", ["stack", "appended"])
def test_a_multi_page_tiff_is_refused_naming_its_page_count(tmp_path, how):
    """Regression: a multi-page TIFF silently gave its first page."""
    path = tmp_path / "stack.tif"
    if how == "stack":
        tifffile.imwrite(path, np.zeros((5, 8, 9), np.uint16), photometric="minisblack")
    else:
        tifffile.imwrite(path, np.zeros((8, 9), np.uint16))
        tifffile.imwrite(path, np.ones((4, 9), np.uint16), append=True)
    pages = 5 if how == "stack" else 2
    with pytest.raises(ValueError, match=re.escape(f"{path}: TIFF of {pages} pages (a z-stack, time series or channels as pages)")):
        read_image(path)


def test_float_tiff_is_scaled_from_min_to_max(tmp_path):
    tifffile.imwrite(tmp_path / "float.tif", np.array([[-1.0, 0.0], [0.5, 3.0]], np.float32))
    np.testing.assert_array_equal(read_image(tmp_path / "float.tif")[..., 0], [[0, 64], [96, 255]])


@pytest.mark.parametrize("depth", [8, 16])
def test_grey_alpha_png_is_indexed_with_its_own_depth_and_two_channels(tmp_path, depth):
    """Regression: a 16-bit grey+alpha PNG was read as 8-bit with 4 channels (Pillow converts it)."""
    dtype = np.uint8 if depth == 8 else np.uint16
    grey = (np.arange(12).reshape(3, 4) * (20 if depth == 8 else 5000)).astype(dtype)
    alpha = np.full_like(grey, np.iinfo(dtype).max)
    path = tmp_path / "la.png"
    path.write_bytes(imagecodecs.png_encode(np.dstack([grey, alpha])))
    image, info = imageio.read_image_info(path)
    assert info == {"bit_depth": depth, "channels": 2}
    np.testing.assert_array_equal(image, to_rgb_uint8(grey))  # every bit of the grey kept, alpha dropped


def test_16_bit_rgb_png_keeps_its_16_bits(tmp_path):
    rgb = (np.arange(36).reshape(3, 4, 3) * 1800).astype(np.uint16)
    (tmp_path / "rgb16.png").write_bytes(imagecodecs.png_encode(rgb))
    image, info = imageio.read_image_info(tmp_path / "rgb16.png")
    assert info == {"bit_depth": 16, "channels": 3}
    np.testing.assert_array_equal(image, to_rgb_uint8(rgb))


def test_an_image_over_pillows_bomb_limit_is_read():
    """Regression: a PNG of more than 179 million pixels (twice Pillow's MAX_IMAGE_PIXELS) stopped
    with Pillow's DecompressionBombError; microscopy images are legitimately that large."""
    im = Image.new("1", (14000, 13000), 0)
    im.paste(1, (100, 100, 200, 200))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    assert 14000 * 13000 > 2 * Image.MAX_IMAGE_PIXELS
    pixels = imageio.decode_image(buf.getvalue(), "huge.png")
    assert pixels.shape == (13000, 14000) and int(pixels.sum()) == 100 * 100
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's own setting is left as it was


def test_an_image_over_max_pixels_is_refused_before_decoding(tmp_path):
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(tmp_path / "big.png")
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((40, 50), np.uint8))
    for name in ("big.png", "big.tif"):
        with pytest.raises(ValueError, match=re.escape(f"{tmp_path / name}: image of 40 x 50 pixels is too large to read whole (more than 1,999 pixels")):
            imageio.decode_image((tmp_path / name).read_bytes(), str(tmp_path / name), max_pixels=1999)
        assert imageio.decode_image((tmp_path / name).read_bytes(), name, max_pixels=2000).shape == (40, 50)


# ---------------------------------------------------------------- normalize_image


def test_normalize_maps_percentiles_to_0_and_1():
    a = np.arange(101, dtype=np.uint8).reshape(1, 101, 1)
    out = normalize_image(a, low=0, high=100)
    assert out.dtype == np.float32 and out.shape == a.shape
    np.testing.assert_allclose(out.ravel(), np.arange(101) / 100, rtol=0, atol=1e-6)


def test_normalize_uses_the_whole_image_not_each_channel():
    # channel 0 runs 0..100, channels 1 and 2 are 50: one scale over all channels,
    # so channels 1 and 2 land at 0.5 (per channel they would be constant -> 0).
    a = np.full((1, 101, 3), 50, np.uint8)
    a[0, :, 0] = np.arange(101)
    out = normalize_image(a, low=0, high=100)
    np.testing.assert_allclose(out[..., 1:], 0.5, atol=1e-6)
    # a tile normalised alone would differ: percentiles are over the whole image
    assert not np.allclose(normalize_image(a[:, :50], low=0, high=100), out[:, :50])


def test_normalize_clips_to_minus_half_and_one_and_a_half():
    a = np.arange(101, dtype=np.float64).reshape(101, 1, 1)
    out = normalize_image(a, low=50, high=60)  # (v - 50) / 10
    assert out.min() == -0.5 and out.max() == 1.5
    assert out[55, 0, 0] == pytest.approx(0.5)


def test_normalize_constant_image_gives_zeros_and_leaves_input():
    a = np.full((3, 4, 3), 77, np.uint16)
    before = a.copy()
    np.testing.assert_array_equal(normalize_image(a), np.zeros((3, 4, 3), np.float32))
    np.testing.assert_array_equal(a, before)


def test_normalize_default_percentiles_example():
    # percentiles 1 and 99.8 of [0, 255] are 2.55 and 254.49: 0 -> -0.0101, 255 -> 1.0020
    out = normalize_image(np.array([[[0], [255]]], np.uint8)).ravel()
    np.testing.assert_allclose(out, [-2.55 / 251.94, 252.45 / 251.94], rtol=1e-5)


def test_docstring_examples():
    """Regression: the documented examples must be what the code returns."""
    result = doctest.testmod(imageio, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


# ---------------------------------------------------------------- guess_modality


def spots(background, spot) -> np.ndarray:
    """A 64 x 64 RGB image of ``background`` colour with four round spots of colour ``spot``."""
    yy, xx = np.mgrid[:64, :64]
    inside = np.zeros((64, 64), bool)
    for cy, cx in [(16, 16), (16, 48), (48, 16), (48, 48)]:
        inside |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
    image = np.empty((64, 64, 3), np.uint8)
    image[...] = background
    image[inside] = spot
    return image


@pytest.mark.parametrize(
    "background, spot, expected",
    [
        ((12, 12, 12), (220, 220, 220), "fluorescence"),
        ((225, 225, 225), (40, 40, 40), "brightfield"),
        ((235, 190, 215), (110, 50, 150), "histology"),  # pink eosin, purple haematoxylin
    ],
)
def test_guess_modality(background, spot, expected):
    image = spots(background, spot)
    before = image.copy()
    assert guess_modality(image) == expected
    np.testing.assert_array_equal(image, before)


# ---------------------------------------------------------------- write_labels / read_labels


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint32, np.int64])
def test_labels_round_trip_as_uint16(tmp_path, dtype):
    labels = np.array([[0, 1, 1], [2, 0, 3]], dtype)
    before = labels.copy()
    write_labels(tmp_path / "labels.tif", labels)
    back = read_labels(tmp_path / "labels.tif")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_array_equal(labels, before)
    assert [p.name for p in tmp_path.iterdir()] == ["labels.tif"]  # no temporary file left


@pytest.mark.parametrize("top, dtype", [(65535, np.uint16), (65536, np.uint32), (70000, np.uint32)])
def test_labels_above_65535_are_written_as_uint32(tmp_path, top, dtype):
    labels = np.array([[0, 1], [top, 2]], np.int64)
    write_labels(tmp_path / "big.tif", labels)
    back = read_labels(tmp_path / "big.tif")
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, labels)
    assert [p.name for p in tmp_path.iterdir()] == ["big.tif"]


def test_write_labels_replaces_existing_file(tmp_path):
    write_labels(tmp_path / "l.tif", np.ones((2, 2), np.uint16))
    write_labels(tmp_path / "l.tif", np.zeros((3, 1), np.uint16))
    np.testing.assert_array_equal(read_labels(tmp_path / "l.tif"), np.zeros((3, 1)))


def test_empty_label_image_round_trips(tmp_path):
    write_labels(tmp_path / "none.tif", np.zeros((4, 5), np.uint32))
    back = read_labels(tmp_path / "none.tif")
    assert back.shape == (4, 5) and back.max() == 0


@pytest.mark.parametrize("labels", [np.zeros((2, 2), np.float32), np.zeros((2, 2), bool), np.zeros((2, 2, 2), np.uint16)])
def test_write_labels_refuses_non_2d_integer_naming_file(tmp_path, labels):
    path = tmp_path / "bad.tif"
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + re.escape(str(labels.shape))):
        write_labels(path, labels)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("bad", [-1, 2**32])
def test_write_labels_refuses_labels_out_of_range(tmp_path, bad):
    """Regression: a label the TIFF cannot hold must raise, not wrap around."""
    with pytest.raises(ValueError, match="bad.tif"):
        write_labels(tmp_path / "bad.tif", np.array([[0, bad]], np.int64))


def test_read_labels_on_a_non_tiff_names_it(tmp_path):
    path = tmp_path / "labels.tif"
    path.write_text("not a tiff")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        read_labels(path)


def test_read_shared_label_fixture(shared_data):
    path = shared_data / "fixtures" / "dsb2018_fluo_512_uint16_labels.tif"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    labels = read_labels(path)
    assert labels.ndim == 2 and np.issubdtype(labels.dtype, np.integer) and labels.max() > 0
