"""The napari plugin without napari: the reader's layer data (nucseg.napari.reader) and the
manifest (nucseg/napari/napari.yaml). tests/test_napari.py runs both inside napari."""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
import zarr

from nucseg.napari.reader import get_reader, is_nucseg_output, read_outputs

from .conftest import REPO

MANIFEST = REPO / "nucseg" / "napari" / "napari.yaml"


def level0(data) -> np.ndarray:
    return np.asarray(data[0] if isinstance(data, list) else data)


def write_ngff(path: Path, image: np.ndarray | None, labels: np.ndarray | None, channels: list[dict] | None = None) -> Path:
    """A one-level OME-Zarr (NGFF 0.5): ``image`` (C, H, W) or (H, W), ``labels/nuclei``."""
    root = zarr.open_group(path, mode="w", zarr_format=3)
    ome: dict = {"version": "0.5"}
    if image is not None:
        axes = [{"name": "c", "type": "channel"}] if image.ndim == 3 else []
        axes += [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
        root.create_array("s0", data=image)
        ome["multiscales"] = [{"axes": axes, "datasets": [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1.0] * image.ndim}]}]}]
        if channels is not None:
            ome["omero"] = {"channels": channels}
    root.attrs["ome"] = ome
    if labels is not None:
        group = root.require_group("labels")
        group.attrs["ome"] = {"version": "0.5", "labels": ["nuclei"]}
        nuclei = group.require_group("nuclei")
        nuclei.create_array("s0", data=labels)
        axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
        datasets = [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.5]}]}]
        nuclei.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}], "image-label": {}}
    return path


def test_reads_a_real_ome_zarr_of_nucseg_segment(sample_segmented):
    """``nucseg segment``'s ``<name>.ome.zarr``: the image pyramid, then the labels pyramid equal
    to the label TIFF, with the image's rows of objects.csv as features (index = label)."""
    png, out = sample_segmented
    path = out / "sample.ome.zarr"
    reader = get_reader(str(path))
    assert reader is not None
    (image, image_kwargs, image_type), (labels, kwargs, layer_type) = reader(str(path))
    assert (image_type, layer_type) == ("image", "labels")
    truth = tifffile.imread(out / "sample.tif")
    np.testing.assert_array_equal(level0(labels), truth)
    assert isinstance(labels, list) and labels[1].shape[0] == truth.shape[0] // 2  # the pyramid, lazily
    pixels = level0(image)
    assert pixels.shape[:2] == truth.shape and pixels.dtype == np.uint8
    assert image_kwargs.get("rgb", False) == (pixels.ndim == 3)  # 3 channels: RGB; 1: one grey plane
    table = pd.read_csv(out / "objects.csv", dtype={"image_id": str})
    features = kwargs["features"]
    assert list(features["index"]) == list(features["label"]) == list(range(1, truth.max() + 1))
    pd.testing.assert_frame_equal(features.drop(columns="index"), table.drop(columns="image_id"))
    assert kwargs["name"] == "sample nuclei" and kwargs["visible"]


def test_reads_the_label_tiff_with_its_rows_and_any_extra_columns(sample_segmented, tmp_path):
    """The label TIFF beside its images.csv; the features keep every column objects.csv has
    (other versions add columns) and only that image's rows."""
    _, out = sample_segmented
    folder = tmp_path / "out"
    shutil.copytree(out, folder)
    table = pd.read_csv(folder / "objects.csv", dtype={"image_id": str})
    other = table.head(3).assign(image_id="other")
    table = pd.concat([table, other]).assign(area_um2=lambda t: t["area"] * 0.25)
    table.to_csv(folder / "objects.csv", index=False)
    [(data, kwargs, layer_type)] = read_outputs(str(folder / "sample.tif"))
    assert layer_type == "labels"
    np.testing.assert_array_equal(data, tifffile.imread(out / "sample.tif"))
    features = kwargs["features"]
    assert len(features) == data.max() and "area_um2" in features and "image_id" not in features
    np.testing.assert_allclose(features["area_um2"], features["area"] * 0.25)


def test_the_workflow_layout_finds_the_tables_one_folder_up(sample_segmented, tmp_path):
    """results/segmentation/<model>/<dataset>/{labels/<id>.tif, ome_zarr/<id>.ome.zarr, objects.csv, images.csv}."""
    _, out = sample_segmented
    for sub, name in (("labels", "sample.tif"), ("ome_zarr", "sample.ome.zarr")):
        (tmp_path / sub).mkdir()
        (shutil.copytree if name.endswith("zarr") else shutil.copy)(out / name, tmp_path / sub / name)
    for table in ("objects.csv", "images.csv"):
        shutil.copy(out / table, tmp_path / table)
    for path in (tmp_path / "labels" / "sample.tif", tmp_path / "ome_zarr" / "sample.ome.zarr"):
        assert len(read_outputs(path)[-1][1]["features"]) == tifffile.imread(out / "sample.tif").max()


def test_other_files_are_left_to_other_readers(sample_segmented, tmp_path):
    """None for the input image, a TIFF no images.csv lists, an OME-Zarr without nuclei labels,
    a folder, a missing path, a table; a list of paths only when all are nucseg's."""
    png, out = sample_segmented
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((8, 8), np.uint16))
    listed_but_rgb = tmp_path / "x"
    listed_but_rgb.mkdir()
    tifffile.imwrite(listed_but_rgb / "sample.tif", np.zeros((8, 8, 3), np.uint8))
    shutil.copy(out / "images.csv", listed_but_rgb / "images.csv")
    no_labels = write_ngff(tmp_path / "image.ome.zarr", np.zeros((8, 8), np.uint8), None)
    for path in (png, plain, listed_but_rgb / "sample.tif", no_labels, out, tmp_path / "missing.ome.zarr", out / "objects.csv"):
        assert get_reader(str(path)) is None, path
        assert not is_nucseg_output(path)
    assert get_reader([str(out / "sample.tif"), str(png)]) is None
    assert len(get_reader([str(out / "sample.tif"), str(out / "sample.ome.zarr")])([str(out / "sample.tif"), str(out / "sample.ome.zarr")])) == 3


def test_one_channel_is_one_grey_plane_and_three_bytes_are_rgb(tmp_path):
    """A grey image stored as one channel: one 2-D image layer coloured from ``omero``; three
    uint8 channels: one RGB layer, channels last; no table: labels without features, at the
    scale of their own pyramid."""
    labels = np.zeros((6, 10), np.uint16)
    labels[1:3, 2:5] = 1
    grey = np.arange(60, dtype=np.uint8).reshape(1, 6, 10)
    path = write_ngff(tmp_path / "g.ome.zarr", grey, labels, [{"color": "FFFFFF", "label": "grey", "window": {"start": 0, "end": 59, "min": 0, "max": 255}}])
    (image, kwargs, _), (lab, lab_kwargs, _) = read_outputs(path)
    assert level0(image).shape == (6, 10) and kwargs["colormap"] == "gray" and kwargs["contrast_limits"] == [0.0, 59.0]
    np.testing.assert_array_equal(level0(image), grey[0])
    np.testing.assert_array_equal(level0(lab), labels)
    assert "features" not in lab_kwargs and lab_kwargs["scale"] == [0.5, 0.5]
    rgb = np.stack([grey[0], grey[0] + 1, grey[0] + 2])
    (image, kwargs, _), _ = read_outputs(write_ngff(tmp_path / "c.ome.zarr", rgb, labels))
    assert kwargs["rgb"] and level0(image).shape == (6, 10, 3)
    np.testing.assert_array_equal(level0(image), np.moveaxis(rgb, 0, -1))


def test_other_channel_counts_are_one_layer_each_with_their_omero_colours(tmp_path):
    labels = np.zeros((6, 10), np.uint16)
    two = np.stack([np.full((6, 10), 100, np.uint16), np.full((6, 10), 4000, np.uint16)])
    channels = [
        {"color": "0000FF", "label": "DAPI", "window": {"start": 0, "end": 500}},
        {"color": "ff8000", "label": "GFP", "window": {"start": 10, "end": 4095}},
    ]
    [(image, kwargs, _), _] = read_outputs(write_ngff(tmp_path / "two.ome.zarr", two, labels, channels))
    assert kwargs["channel_axis"] == 0 and kwargs["name"] == ["DAPI", "GFP"]
    assert kwargs["colormap"] == ["blue", "#ff8000"] and kwargs["contrast_limits"] == [[0.0, 500.0], [10.0, 4095.0]]
    np.testing.assert_array_equal(level0(image), two)
    three16 = two[[0, 1, 1]]  # three channels, but not bytes: not RGB
    [(image, kwargs, _), _] = read_outputs(write_ngff(tmp_path / "three.ome.zarr", three16, labels))
    assert kwargs["channel_axis"] == 0 and "rgb" not in kwargs and kwargs["name"] == ["three c0", "three c1", "three c2"]


def test_the_manifest_names_what_the_package_has():
    """napari.yaml: the reader's and the widget's python names exist (the widget's module is read,
    not imported: it needs napari), and pyproject ships the manifest and points napari at it."""
    manifest = yaml.safe_load(MANIFEST.read_text())
    assert manifest["name"] == "nucseg"
    commands = {c["id"]: c["python_name"] for c in manifest["contributions"]["commands"]}
    assert {r["command"] for r in manifest["contributions"]["readers"]} | {w["command"] for w in manifest["contributions"]["widgets"]} == set(commands)
    for python_name in commands.values():
        module, name = python_name.split(":")
        if module == "nucseg.napari.widget":
            tree = ast.parse((REPO / "nucseg" / "napari" / "widget.py").read_text())
            assert name in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        else:
            assert callable(getattr(importlib.import_module(module), name))
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11's")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["napari.manifest"] == {"nucseg": "nucseg.napari:napari.yaml"}
    assert "napari/napari.yaml" in pyproject["tool"]["setuptools"]["package-data"]["nucseg"]


def test_npe2_validates_the_manifest():
    npe2 = pytest.importorskip("npe2", reason="npe2 is in the test extra (pip install -e '.[test]')")
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == "nucseg"
    assert [r.command for r in manifest.contributions.readers] == ["nucseg.get_reader"]
    assert [w.display_name for w in manifest.contributions.widgets] == ["Segment nuclei"]


def test_import_nucseg_and_the_reader_import_no_napari_nor_qt():
    gui = "{'napari', 'magicgui', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6', 'vispy'}"
    code = f"import sys, nucseg, nucseg.napari, nucseg.napari.reader; print(sorted({{m.split('.')[0] for m in sys.modules}} & {gui}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"
