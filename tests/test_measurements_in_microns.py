"""``nucseg segment`` on real nuclei (the embedded sample, the shipped model): measurements in
micrometres where the file records its pixel size, on the input's own intensities channel by
channel, and an OME-Zarr that the ome-zarr reader (napari-ome-zarr's) shows in its true colours."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from PIL import Image

from nucseg import PRETRAINED_MODEL
from nucseg.calibration import UNKNOWN, PixelSize, read_pixel_size
from nucseg.cli import main
from nucseg.export import sample_image
from nucseg.imageio import read_labels
from nucseg.measure import COLUMNS, UM_COLUMNS

SIZE = 0.325


@pytest.fixture(scope="module")
def grey():
    """A real nucleus image as 16-bit values of 1000-7375 (a camera's range, not 0-255)."""
    return sample_image(256, 256)[0, 0].astype(np.uint16) * 25 + 1000


@pytest.fixture(scope="module")
def segmented(tmp_path_factory, grey):
    """One run over a 16-bit OME-TIFF with its pixel size and an RGB PNG without one."""
    folder = tmp_path_factory.mktemp("inputs")
    tifffile.imwrite(folder / "grey.ome.tif", grey, metadata={"axes": "YX", "PhysicalSizeX": SIZE, "PhysicalSizeY": SIZE})
    rgb = sample_image(256, 256)[0].transpose(1, 2, 0).astype(np.uint8)
    # channels that differ, so that each is measured on its own; by little enough that the
    # image stays a grey fluorescence image for the modality guess (halved, it went to the
    # histology model, which measures H&E, and the test would depend on that model)
    rgb[..., 1] = (rgb[..., 1] * 0.9).astype(np.uint8)
    Image.fromarray(rgb).save(folder / "rgb.png")
    out = folder / "out"
    inputs = [str(folder / "grey.ome.tif"), str(folder / "rgb.png")]
    assert main(["segment", *inputs, "--out", str(out), "--model", str(PRETRAINED_MODEL), "--threads", "1"]) == 0
    objects = pd.read_csv(out / "objects.csv", dtype={"image_id": str})
    images = pd.read_csv(out / "images.csv", dtype={"image_id": str}).set_index("image_id")
    return out, objects, images, rgb


def per_label(values: np.ndarray, labels: np.ndarray, table: pd.DataFrame) -> dict:
    picked = [values[labels == k] for k in table["label"]]
    return dict(
        mean=[v.mean() for v in picked], integrated=[v.astype(np.float64).sum() for v in picked], min=[v.min() for v in picked], max=[v.max() for v in picked]
    )


def test_raw_intensities_of_a_16_bit_image(segmented, grey):
    out, objects, images, _ = segmented
    table = objects[objects["image_id"] == "grey"]
    assert len(table) > 20 and list(objects.columns) == ["image_id", *COLUMNS]
    labels = read_labels(out / "grey.tif")
    expected = per_label(grey, labels, table)
    for stat, values in expected.items():
        np.testing.assert_allclose(table[f"raw_{stat}_c1"], values, rtol=1e-12, err_msg=stat)
    assert table["raw_min_c1"].min() >= 1000 and table["raw_max_c1"].max() > 255  # the file's own values, not 0-255
    assert table[[f"raw_{s}_c{c}" for c in (2, 3) for s in expected]].isna().all().all()  # one channel
    assert images.loc["grey", "bit_depth"] == 16 and images.loc["grey", "channels"] == 1


def test_each_channel_of_an_rgb_image(segmented):
    out, objects, images, rgb = segmented
    table = objects[objects["image_id"] == "rgb"]
    assert len(table) > 20
    labels = read_labels(out / "rgb.tif")
    for c in range(3):
        expected = per_label(rgb[..., c], labels, table)
        for stat, values in expected.items():
            np.testing.assert_allclose(table[f"raw_{stat}_c{c + 1}"], values, rtol=1e-12, err_msg=f"{stat} c{c + 1}")
    assert (table["raw_mean_c2"] < table["raw_mean_c1"]).all()
    assert images.loc["rgb", "bit_depth"] == 8 and images.loc["rgb", "channels"] == 3


def test_micrometres_where_the_file_says(segmented):
    out, objects, images, _ = segmented
    table = objects[objects["image_id"] == "grey"]
    assert images.loc["grey", ["pixel_size_y_um", "pixel_size_x_um", "pixel_size_from"]].tolist() == [SIZE, SIZE, "ome-tiff"]
    for column, (pixels, power) in UM_COLUMNS.items():
        np.testing.assert_allclose(table[column], table[pixels] * SIZE ** (2 if power == 2 else 1), rtol=1e-12, err_msg=column)
    # the label TIFF carries the calibration (Fiji, QuPath), the GeoJSON the µm measurements
    assert read_pixel_size(out / "grey.tif") == PixelSize(pytest.approx(SIZE), pytest.approx(SIZE), "tiff-resolution")
    features = json.loads((out / "grey.geojson").read_text())["features"]
    first = table.set_index("label").loc[features[0]["properties"]["label"]]
    assert features[0]["properties"]["measurements"]["area_um2"] == pytest.approx(first["area_um2"])


def test_unknown_is_said_never_guessed(segmented):
    out, objects, images, _ = segmented
    table = objects[objects["image_id"] == "rgb"]
    assert images.loc["rgb", "pixel_size_from"] == "unknown" and np.isnan(images.loc["rgb", "pixel_size_x_um"])
    assert table[list(UM_COLUMNS)].isna().all().all() and table["area"].notna().all()
    assert read_pixel_size(out / "rgb.tif") == UNKNOWN


def test_ome_zarr_holds_the_input_in_its_true_colours(segmented, grey):
    out, objects, _, rgb = segmented
    # grey: one channel of the file's own 16-bit values, on a micrometre grid
    group = zarr.open_group(out / "grey.ome.zarr", mode="r")
    multiscale = group.attrs["ome"]["multiscales"][0]
    level0 = group[multiscale["datasets"][0]["path"]]
    assert level0.shape == (1, 256, 256) and level0.dtype == np.uint16
    np.testing.assert_array_equal(level0[0], grey)
    assert [a.get("unit") for a in multiscale["axes"]] == [None, "micrometer", "micrometer"]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, SIZE, SIZE]
    # RGB: three channels, red, green and blue, displayed 0-255 (napari blends them to the true colours)
    nodes = list(Reader(parse_url(str(out / "rgb.ome.zarr")))())
    image, labels = nodes[0], nodes[-1]
    np.testing.assert_array_equal(np.asarray(image.data[0]), rgb.transpose(2, 0, 1))
    assert image.metadata["channel_names"] == ["red", "green", "blue"]
    assert image.metadata["colormap"] == [[[0, 0, 0], [1.0, 0.0, 0.0]], [[0, 0, 0], [0.0, 1.0, 0.0]], [[0, 0, 0], [0.0, 0.0, 1.0]]]
    assert image.metadata["contrast_limits"] == [[0.0, 255.0]] * 3
    # the labels: the TIFF's, a colour and the area of each nucleus
    np.testing.assert_array_equal(np.asarray(labels.data[0]), read_labels(out / "rgb.tif"))
    table = objects[objects["image_id"] == "rgb"]
    assert labels.metadata["properties"] == {int(k): {"area": int(a)} for k, a in zip(table["label"], table["area"])}
    assert sorted(labels.metadata["color"]) == sorted(table["label"].tolist())


def test_a_given_pixel_size_replaces_the_files(tmp_path, grey):
    tifffile.imwrite(tmp_path / "a.ome.tif", grey, metadata={"axes": "YX", "PhysicalSizeX": SIZE, "PhysicalSizeY": SIZE})
    assert main(["segment", str(tmp_path / "a.ome.tif"), "--out", str(tmp_path / "out"), "--pixel-size", "0.5", "--threads", "1"]) == 0
    images = pd.read_csv(tmp_path / "out" / "images.csv")
    assert images[["pixel_size_x_um", "pixel_size_from"]].values.tolist() == [[0.5, "given"]]
    objects = pd.read_csv(tmp_path / "out" / "objects.csv")
    np.testing.assert_allclose(objects["area_um2"], objects["area"] * 0.25)


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "nan"])
def test_a_bad_pixel_size_names_the_option(tmp_path, bad, capsys):
    with pytest.raises(SystemExit):
        main(["segment", "x.tif", "--out", str(tmp_path / "out"), "--pixel-size", bad])
    assert f"--pixel-size: {bad!r} is not a positive number" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
