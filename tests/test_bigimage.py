"""Tests of nucseg.bigimage: lazy reading of every supported format, and whole-image statistics
gathered block by block equal to those of the whole decoded image."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from nucseg import bigimage
from nucseg.bigimage import histogram_percentile, image_statistics, open_image
from nucseg.imageio import has_dark_nuclei, intensity_range, read_image, to_rgb_uint8

from .test_infer import FIXTURE, real_tiles


@pytest.fixture
def raw() -> np.ndarray:
    if not FIXTURE.is_file():
        pytest.skip(f"{FIXTURE} not present (a fresh clone has no ../shared)")
    return tifffile.imread(FIXTURE)


def test_histogram_percentile_is_numpys():
    values = np.random.default_rng(0).integers(0, 256, 1001)
    for q in (0, 1, 37.5, 50, 99.8, 100):
        assert histogram_percentile(np.bincount(values, minlength=256), q) == pytest.approx(np.percentile(values, q))


@pytest.mark.parametrize("kind", ["plain", "tiled", "bigtiff", "float", "rgb_planar"])
def test_tiff_windows_equal_the_decoded_image(raw, tmp_path, kind):
    path = tmp_path / f"{kind}.tif"
    data = {"float": raw.astype(np.float32) / 3.5, "rgb_planar": np.stack([raw, raw // 2, raw // 3])}.get(kind, raw)
    options = {
        "tiled": dict(tile=(128, 128), compression="zlib"),
        "bigtiff": dict(bigtiff=True),
        "rgb_planar": dict(photometric="rgb", planarconfig="separate"),
    }.get(kind, {})
    tifffile.imwrite(path, data, **options)
    image = open_image(path)
    whole = read_image(path)
    assert image.shape == whole.shape[:2]
    np.testing.assert_array_equal(image.read(slice(100, 300), slice(7, 500)), whole[100:300, 7:500])
    np.testing.assert_array_equal(np.asarray(image.rgb()[5:20, 30:40]), whole[5:20, 30:40])


def test_zarr_and_ome_zarr_inputs(raw, tmp_path):
    rgb = to_rgb_uint8(raw)
    zarr.create_array(tmp_path / "plain.zarr", data=rgb, chunks=(128, 128, 3))
    root = zarr.open_group(tmp_path / "img.ome.zarr", mode="w")
    root.create_array("0", data=np.moveaxis(rgb, -1, 0)[None, :, None], chunks=(1, 3, 1, 128, 128))
    root.attrs["multiscales"] = [{"axes": [{"name": a} for a in "tczyx"], "datasets": [{"path": "0"}]}]
    for name in ("plain.zarr", "img.ome.zarr"):
        image = open_image(tmp_path / name)
        assert image.shape == rgb.shape[:2]
        np.testing.assert_array_equal(image.read(slice(10, 200), slice(0, 512)), rgb[10:200])


def test_statistics_in_bounded_memory_equal_the_whole_images(monkeypatch):
    """Percentiles from the block histogram equal intensity_range of the whole image; the modality
    guess equals has_dark_nuclei on images that fit and still holds on a strided subsample."""
    monkeypatch.setattr(bigimage, "BLOCK", 96)  # many blocks, not multiples of the image size
    for image in real_tiles(2) + real_tiles(2, side=None, fluorescence=False):
        stats = image_statistics(bigimage.LazyImage(image, "YXC", "x"))
        assert stats.stride == 1
        np.testing.assert_allclose(stats.percentiles(1.0, 99.8), intensity_range(image), atol=1e-3)
        assert stats.dark_nuclei == has_dark_nuclei(image)
        sub = image_statistics(bigimage.LazyImage(image, "YXC", "x"), max_subsample=image.shape[0] * image.shape[1] // 9 + 1)
        assert sub.stride == 3 and sub.dark_nuclei == stats.dark_nuclei


@pytest.mark.parametrize(
    "data, message",
    [
        (np.zeros((2, 30, 30), np.uint8), "1, 3 or 4 channels"),
        (np.full((20, 20), np.nan, np.float32), "NaN"),
        (np.full((20, 20), np.inf, np.float32), "NaN or infinite values"),
        (np.zeros((3, 4, 20, 20), np.uint8), "one 2-D plane"),
    ],
)
def test_bad_images_are_named(tmp_path, data, message):
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, data)
    with pytest.raises(ValueError, match=message) as exc:
        open_image(path).value_range()
    assert "bad.tif" in str(exc.value)


def test_missing_and_broken_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="nothing.png: no such file"):
        open_image(tmp_path / "nothing.png")
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="x.png: not a readable image"):
        open_image(tmp_path / "x.png")


def test_a_multi_page_tiff_is_refused_with_its_page_count(tmp_path):
    """Pages that are separate images (no stack metadata): never silently the first one."""
    import tifffile

    from nucseg.bigimage import open_image

    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        for k in range(3):
            tif.write(np.full((40, 50), 10 * k, np.uint8), metadata=None)
    with pytest.raises(ValueError, match=r"pages.tif: TIFF .*(3 pages|IYX).* one 2-D"):
        open_image(path)
