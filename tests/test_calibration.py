"""Pixel sizes read from the files that record them (written by tifffile and ome-zarr, as
microscopes and Fiji write them), never guessed."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from nucseg.calibration import UNKNOWN, PixelSize, from_columns, given, read_pixel_size, resolve
from nucseg.outputs import write_label_tiff, write_ome_zarr

PIXELS = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)


def test_ome_tiff_physical_size_in_its_unit(tmp_path):
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(path, PIXELS, metadata={"axes": "YX", "PhysicalSizeX": 0.325, "PhysicalSizeY": 0.325})
    assert read_pixel_size(path) == PixelSize(0.325, 0.325, "ome-tiff")
    nm = tmp_path / "nm.ome.tif"
    tifffile.imwrite(nm, PIXELS, metadata={"axes": "YX", "PhysicalSizeX": 650, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 325, "PhysicalSizeYUnit": "nm"})
    size = read_pixel_size(nm)
    assert (size.y, size.x, size.source) == pytest.approx((0.325, 0.65, "ome-tiff")) and not size.square and math.isnan(size.length)
    assert size.area == pytest.approx(0.325 * 0.65)


def test_imagej_calibration(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, PIXELS, imagej=True, resolution=(1 / 0.5, 1 / 0.5), metadata={"unit": "micron"})
    assert read_pixel_size(path) == PixelSize(0.5, 0.5, "imagej")
    tifffile.imwrite(path, PIXELS, imagej=True, resolution=(1 / 0.2, 1 / 0.2), metadata={"unit": "\\u00B5m"})  # Fiji's own spelling
    assert read_pixel_size(path) == PixelSize(pytest.approx(0.2), pytest.approx(0.2), "imagej")
    tifffile.imwrite(path, PIXELS, imagej=True, metadata={"unit": "pixel"})
    assert read_pixel_size(path) == UNKNOWN


def test_tiff_resolution_tags(tmp_path):
    path = tmp_path / "cm.tif"
    tifffile.imwrite(path, PIXELS, resolution=(1e4 / 0.65, 1e4 / 0.65), resolutionunit="CENTIMETER")
    assert read_pixel_size(path) == PixelSize(pytest.approx(0.65), pytest.approx(0.65), "tiff-resolution")
    inch = tmp_path / "inch.tif"
    tifffile.imwrite(inch, PIXELS, resolution=(25400 / 0.65, 25400 / 0.65), resolutionunit="INCH")
    assert read_pixel_size(inch).x == pytest.approx(0.65)


@pytest.mark.parametrize("dpi", [72, 300])
def test_a_screen_or_print_resolution_is_no_calibration(tmp_path, dpi, caplog):
    path = tmp_path / "editor.tif"
    tifffile.imwrite(path, PIXELS, resolution=(dpi, dpi), resolutionunit="INCH")
    with caplog.at_level(logging.INFO, "nucseg.calibration"):
        assert read_pixel_size(path) == UNKNOWN
    assert f"{dpi} dpi is a screen or print default" in caplog.text


def test_files_that_record_nothing_are_unknown(tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, PIXELS)  # tifffile writes resolution 1 with unit none
    png = tmp_path / "a.png"
    Image.fromarray(PIXELS.astype(np.uint8)).save(png)
    for path in (plain, png):
        size = read_pixel_size(path)
        assert size == UNKNOWN and not size.known and size.source == "unknown"
        assert math.isnan(size.area) and math.isnan(size.length)


def test_unusable_metadata_is_logged_and_unknown(tmp_path, caplog):
    path = tmp_path / "bad.ome.tif"
    tifffile.imwrite(path, PIXELS, metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "furlong", "PhysicalSizeY": 0.5})
    with caplog.at_level(logging.WARNING, "nucseg.calibration"):
        assert read_pixel_size(path) == UNKNOWN
    assert "unknown length unit 'furlong'" in caplog.text and str(path) in caplog.text
    zero = tmp_path / "zero.tif"
    tifffile.imwrite(zero, PIXELS, imagej=True, resolution=(1e-30, 1e-30), metadata={"unit": "um"})
    assert read_pixel_size(zero) == UNKNOWN


def test_ome_zarr_scale_and_units_read_back(tmp_path):
    labels = np.zeros((64, 48), np.uint16)
    labels[10:20, 10:20] = 1
    path = write_ome_zarr(tmp_path / "a.ome.zarr", PIXELS, labels, 1, pixel_size=PixelSize(0.25, 0.25, "given"))
    assert read_pixel_size(path) == PixelSize(0.25, 0.25, "ome-zarr")
    bare = write_ome_zarr(tmp_path / "b.ome.zarr", PIXELS, labels, 1)  # unknown: unitless axes, scale 1
    assert read_pixel_size(bare) == UNKNOWN
    group = zarr.open_group(bare, mode="r")
    assert all("unit" not in axis for axis in group.attrs["ome"]["multiscales"][0]["axes"])


def test_label_tiff_carries_the_calibration(tmp_path):
    labels = np.ones((64, 48), np.uint16)
    write_label_tiff(tmp_path / "l.tif", labels, 1, PixelSize(0.325, 0.325, "ome-tiff"))
    assert read_pixel_size(tmp_path / "l.tif") == PixelSize(pytest.approx(0.325), pytest.approx(0.325), "tiff-resolution")
    write_label_tiff(tmp_path / "u.tif", labels, 1, UNKNOWN)
    assert read_pixel_size(tmp_path / "u.tif") == UNKNOWN


def test_a_given_size_replaces_the_files_and_says_so(tmp_path, caplog):
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(path, PIXELS, metadata={"axes": "YX", "PhysicalSizeX": 0.325, "PhysicalSizeY": 0.325})
    with caplog.at_level(logging.WARNING, "nucseg.calibration"):
        assert resolve(path, 0.65) == PixelSize(0.65, 0.65, "given")
    assert "the given pixel size 0.65 µm replaces the file's 0.325 x 0.325 µm (ome-tiff)" in caplog.text
    assert resolve(path) == PixelSize(0.325, 0.325, "ome-tiff")
    assert resolve(None) == UNKNOWN and given(None) is None
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="pixel size must be a positive number of micrometres"):
            given(bad)


def test_columns_round_trip():
    size = PixelSize(0.3, 0.4, "imagej")
    assert from_columns(size.columns()) == size
    assert from_columns(UNKNOWN.columns()) == UNKNOWN
    assert from_columns({}) == UNKNOWN
