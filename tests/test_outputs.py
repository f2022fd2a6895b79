"""Tests of nucseg.outputs: label TIFF, OME-Zarr read back by ome_zarr.reader, GeoJSON outlines
rasterised back to the labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr
from skimage.draw import polygon2mask

from nucseg import outputs
from nucseg.imageio import read_labels
from nucseg.measure import measure_objects
from nucseg.outputs import ImageWriters, label_dtype, nucleus_features, outline, pyramid_factors, write_label_tiff, write_ome_zarr
from nucseg.postprocess import ChunkResult


def fixture_labels(shared_data):
    return tifffile.imread(shared_data / "fixtures/dsb2018_fluo_512_uint16_labels.tif").astype(np.uint32)


def rasterise(ring: list, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside a GeoJSON ring in QuPath coordinates (pixel (r, c) covers
    [c, c + 1] x [r, r + 1], so its centre is (c + 0.5, r + 0.5))."""
    xy = np.asarray(ring)
    return polygon2mask(shape, np.stack([xy[:, 1] - 0.5, xy[:, 0] - 0.5], axis=1))


def test_label_dtype():
    assert label_dtype(0) == np.uint16 and label_dtype(65535) == np.uint16
    assert label_dtype(65536) == np.uint32
    with pytest.raises(ValueError, match="do not fit in uint32"):
        label_dtype(2**32)


def test_pyramid_factors():
    assert pyramid_factors((256, 200)) == ()
    assert pyramid_factors((512, 300)) == (2,)
    assert pyramid_factors((16384, 16384)) == (2, 4, 8, 16, 32, 64)


def test_outline_of_hand_made_shapes():
    # a single pixel: a diamond a quarter pixel inside its edges, around its centre (c + 0.5, r + 0.5)
    mask = np.zeros((3, 3), bool)
    mask[1, 1] = True
    ring = outline(mask[1:2, 1:2], (1, 1))
    assert ring[0] == ring[-1]
    xy = np.array(ring)
    assert xy[:, 0].min() == 1.25 and xy[:, 0].max() == 1.75 and xy[:, 1].min() == 1.25 and xy[:, 1].max() == 1.75
    np.testing.assert_array_equal(rasterise(ring, (3, 3)), mask)
    # an L shape at row 10, column 20: straight runs are one segment each
    shape = np.zeros((4, 5), bool)
    shape[:, :2] = True
    shape[2:, :] = True
    ring = outline(shape, (10, 20))
    assert len(ring) <= 8
    big = np.zeros((20, 30), bool)
    big[10:14, 20:25] = shape
    np.testing.assert_array_equal(rasterise(ring, big.shape), big)
    assert outline(np.zeros((3, 3), bool), (0, 0)) is None


def test_geojson_rasterises_back_to_the_real_labels(tmp_path, shared_data):
    """Every polygon of a real 125-nucleus label image covers its nucleus with IoU > 0.9
    (exactly, for nuclei without holes), and carries its label and measurements."""
    labels = fixture_labels(shared_data)
    table = measure_objects(labels)
    writers = ImageWriters(geojson_dir=tmp_path)
    with writers.geojson("img") as add:
        add(ChunkResult((slice(0, 512), slice(0, 512)), labels, int(labels.max()), 0), table)
    collection = json.loads((tmp_path / "img.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert len(features) == len(table) == 125
    ious = []
    for feature, row in zip(features, table.itertuples()):
        props = feature["properties"]
        assert props["label"] == row.label and props["objectType"] == "detection"
        assert props["classification"]["name"] == "Nucleus"
        assert props["measurements"]["area"] == row.area
        assert props["measurements"]["mean_intensity"] is None  # NaN is not JSON: null
        assert feature["geometry"]["type"] == "Polygon"
        drawn = rasterise(feature["geometry"]["coordinates"][0], labels.shape)
        truth = labels == row.label
        ious.append(np.count_nonzero(drawn & truth) / np.count_nonzero(drawn | truth))
    assert min(ious) > 0.9
    assert np.median(ious) == 1.0


def test_geojson_of_a_chunk_uses_image_coordinates_and_global_labels(tmp_path):
    window = np.zeros((10, 10), np.uint32)
    window[2:5, 3:7] = 1
    table = measure_objects(window, offset=(100, 200))
    feature = next(nucleus_features(window, table, (100, 200), offset=41))
    assert feature["properties"]["label"] == 42 and feature["id"] == "nucleus-42"
    xy = np.array(feature["geometry"]["coordinates"][0])
    assert xy[:, 0].min() == 203.25 and xy[:, 0].max() == 206.75  # columns 203..206
    assert xy[:, 1].min() == 102.25 and xy[:, 1].max() == 104.75  # rows 102..104
    assert feature["properties"]["measurements"]["centroid_y"] == 103.0


def test_ome_zarr_reads_back_image_and_labels(tmp_path, shared_data):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    labels = np.tile(fixture_labels(shared_data), (1, 2))  # 512 x 1024
    image = np.repeat((labels % 200).astype(np.uint8)[..., None], 3, axis=2)
    path = write_ome_zarr(tmp_path / "img.ome.zarr", image, labels, int(labels.max()))
    nodes = list(Reader(parse_url(path))())
    pictures = [n for n in nodes if n.load(Multiscales) and not n.load(Label)]
    masks = [n for n in nodes if n.load(Label)]
    assert len(pictures) == 1 and len(masks) == 1
    levels = pictures[0].data
    assert [tuple(a.shape) for a in levels] == [(3, 512, 1024), (3, 256, 512), (3, 128, 256)]  # down to 256
    np.testing.assert_array_equal(np.asarray(levels[0]), image.transpose(2, 0, 1))
    pyramid = masks[0].data
    assert [tuple(a.shape) for a in pyramid] == [(512, 1024), (256, 512), (128, 256)]
    assert pyramid[0].dtype == np.uint16
    np.testing.assert_array_equal(np.asarray(pyramid[0]), labels)
    assert set(np.unique(np.asarray(pyramid[1]))) <= set(np.unique(labels))  # nearest neighbour: no mixed labels
    assert masks[0].metadata["name"] == "nuclei"
    # written again over itself (a rerun): replaced whole
    write_ome_zarr(path, None, labels, int(labels.max()))
    assert "labels" in zarr.open_group(path, mode="r") and "s0" not in zarr.open_group(path, mode="r")


def test_large_label_tiff_is_tiled_from_a_zarr_store(tmp_path, shared_data, monkeypatch):
    """Above TILED_PIXELS the TIFF is written tile by tile from a chunked store."""
    monkeypatch.setattr(outputs, "TILED_PIXELS", 512 * 512 - 1)
    labels = np.tile(fixture_labels(shared_data), (2, 2))[:1000, :900]
    store = zarr.create_array(tmp_path / "labels.zarr", shape=labels.shape, chunks=(256, 256), dtype=np.uint32)
    store[:] = labels
    write_label_tiff(tmp_path / "big.tif", store, int(labels.max()))
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        page = tif.pages[0]
        assert page.is_tiled and page.tilewidth == outputs.TIFF_TILE and page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    back = read_labels(tmp_path / "big.tif")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)
    assert not list(tmp_path.glob(".*.part"))


def test_label_tiff_uint32_above_65535(tmp_path):
    labels = np.arange(70000, dtype=np.uint32).reshape(280, 250)
    write_label_tiff(tmp_path / "many.tif", labels, int(labels.max()))
    back = read_labels(tmp_path / "many.tif")
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, labels)


def test_geojson_file_holds_the_bytes_json_would_write(tmp_path):
    """The writer's fast encoder (orjson) writes exactly what ``json.dumps`` with compact
    separators writes, feature for feature, missing intensities (null) included."""
    rng = np.random.default_rng(0)
    labels = np.zeros((120, 150), np.uint32)
    for k in range(1, 30):
        y, x = rng.integers(5, 110), rng.integers(5, 140)
        labels[y : y + rng.integers(2, 9), x : x + rng.integers(2, 9)] = k
    table = measure_objects(labels)  # no image: the intensity columns are NaN
    result = ChunkResult((slice(0, 120), slice(0, 150)), labels, int(labels.max()), 0, offset=7)
    with ImageWriters(geojson_dir=tmp_path).geojson("x") as add:
        add(result, table)
    text = (tmp_path / "x.geojson").read_text()
    features = list(nucleus_features(labels, table, (0, 0), 7))
    expected = '{"type": "FeatureCollection", "features": [\n' + ",\n".join(json.dumps(f, separators=(",", ":")) for f in features) + "\n]}\n"
    assert text == expected
    assert json.loads(text)["features"][0]["properties"]["measurements"]["mean_intensity"] is None


def test_ome_zarr_labels_equal_the_librarys_write_labels(tmp_path):
    """The labels group is written through ome-zarr's classes (skipping write_labels' pass
    over every label value for metadata it drops): the same attributes and pyramid arrays as
    ``ome_zarr.writer.write_labels`` writes."""
    import dask.array as da
    from ome_zarr.writer import write_labels

    labels = np.random.default_rng(0).integers(0, 50, (700, 900)).astype(np.uint16)
    write_ome_zarr(tmp_path / "ours.ome.zarr", None, labels, 50)
    root = zarr.open_group(tmp_path / "library.ome.zarr", mode="w")
    chunks = (outputs.OME_CHUNK, outputs.OME_CHUNK)
    write_labels(
        da.from_array(labels, chunks=chunks),
        root,
        name="nuclei",
        scaler=None,
        scale_factors=pyramid_factors(labels.shape),
        axes="yx",
        storage_options=dict(chunks=chunks),
    )
    for group in ("labels", "labels/nuclei"):
        ours, theirs = (zarr.open_group(tmp_path / name / group, mode="r") for name in ("ours.ome.zarr", "library.ome.zarr"))
        assert dict(ours.attrs) == dict(theirs.attrs), group
    ours, theirs = (zarr.open_group(tmp_path / name / "labels/nuclei", mode="r") for name in ("ours.ome.zarr", "library.ome.zarr"))
    assert sorted(ours.array_keys()) == sorted(theirs.array_keys()) == ["s0", "s1", "s2"]
    for key in ours.array_keys():
        np.testing.assert_array_equal(ours[key][:], theirs[key][:])
