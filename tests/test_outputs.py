"""Tests of nucseg.outputs: label TIFF, OME-Zarr read back by ome_zarr.reader, GeoJSON outlines
rasterised back to the labels and checked with shapely, ImageJ ROIs read back with roifile."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import roifile
import tifffile
import zarr
from scipy import ndimage as ndi
from shapely.geometry import Polygon, shape
from shapely.validation import explain_validity
from skimage.draw import polygon2mask

from nucseg import outputs
from nucseg.imageio import read_labels
from nucseg.measure import measure_objects
from nucseg.outputs import ImageWriters, feature_id, label_dtype, nucleus_features, outline, outlines, pyramid_factors, write_label_tiff, write_ome_zarr
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
    """Outlines run on the pixel edges (they ran a quarter pixel inside before issue 22): a
    single pixel is its unit square, an L shape its six corners, each ring's area its pixel count."""
    mask = np.zeros((3, 3), bool)
    mask[1, 1] = True
    ring = outline(mask[1:2, 1:2], (1, 1))
    assert ring[0] == ring[-1]
    assert sorted(map(tuple, ring[:-1])) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    np.testing.assert_array_equal(rasterise(ring, (3, 3)), mask)
    # an L shape at row 10, column 20: straight runs are one segment each
    shape = np.zeros((4, 5), bool)
    shape[:, :2] = True
    shape[2:, :] = True
    ring = outline(shape, (10, 20))
    assert len(ring) == 7
    assert sorted(map(tuple, ring[:-1])) == [(20, 10), (20, 14), (22, 10), (22, 12), (25, 12), (25, 14)]
    assert Polygon(ring).area == shape.sum()
    big = np.zeros((20, 30), bool)
    big[10:14, 20:25] = shape
    np.testing.assert_array_equal(rasterise(ring, big.shape), big)
    assert outline(np.zeros((3, 3), bool), (0, 0)) is None and outlines(np.zeros((3, 3), bool), (0, 0)) == []


def hand_made_labels() -> np.ndarray:
    """Touching nuclei (1 and 2 share an edge), nuclei touching only at a corner (3 and 4), a
    nucleus in two pieces that touch only at a corner (5), a concave one (6), one at the border (7)."""
    labels = np.zeros((24, 30), np.uint32)
    labels[2:7, 2:6] = 1
    labels[2:7, 6:11] = 2
    labels[10:13, 2:5] = 3
    labels[13:16, 5:8] = 4
    labels[10:14, 14:18] = 5
    labels[14:16, 18:20] = 5
    labels[3:9, 20:26] = 6
    labels[5:7, 22:26] = 0
    labels[18:24, 0:4] = 7
    return labels


def features_of(labels: np.ndarray, image_id: str = "img") -> list[dict]:
    table = measure_objects(labels)
    return list(nucleus_features(labels, table, (0, 0), 0, image_id))


def test_polygons_are_valid_and_their_area_is_the_pixel_count_of_hand_made_nuclei():
    """QuPath computes a detection's area from its polygon: it equals the pixel count (objects.csv's
    area) for touching nuclei, nuclei touching at a corner, a nucleus in two pieces that touch
    at a corner (a MultiPolygon: one ring through that corner twice is invalid) and a concave
    one; touching nuclei share edges and do not overlap."""
    labels = hand_made_labels()
    features = features_of(labels)
    assert [f["properties"]["label"] for f in features] == list(range(1, 8))
    shapes = {f["properties"]["label"]: shape(f["geometry"]) for f in features}
    for k, polygon in shapes.items():
        assert polygon.is_valid, (k, explain_validity(polygon))
        assert polygon.area == np.count_nonzero(labels == k)
        np.testing.assert_array_equal(rasterise_geometry(features[k - 1]["geometry"], labels.shape), labels == k)
    assert features[4]["geometry"]["type"] == "MultiPolygon" and len(features[4]["geometry"]["coordinates"]) == 2
    assert {f["geometry"]["type"] for i, f in enumerate(features) if i != 4} == {"Polygon"}
    assert shapes[1].intersection(shapes[2]).area == 0 and shapes[1].intersection(shapes[2]).length == 5  # their shared edge
    assert shapes[3].intersection(shapes[4]).area == 0 and shapes[3].touches(shapes[4])


def test_feature_ids_are_uuids_unique_and_stable():
    """QuPath keeps only UUIDs as object ids (it replaced 'nucleus-N' with random ones): the ids
    are UUIDs of the image id and label, the same in every run, different between images."""
    labels = hand_made_labels()
    ids = [f["id"] for f in features_of(labels, "img")]
    assert len(set(ids)) == len(ids) and all(uuid.UUID(i).version == 5 for i in ids)
    assert ids == [f["id"] for f in features_of(labels, "img")]
    assert ids[0] == feature_id("img", 1) == str(uuid.uuid5(outputs.FEATURE_NAMESPACE, "img/1"))
    assert not set(ids) & {f["id"] for f in features_of(labels, "other")}


def rasterise_geometry(geometry: dict, shape: tuple[int, int]) -> np.ndarray:
    rings = [geometry["coordinates"][0]] if geometry["type"] == "Polygon" else [p[0] for p in geometry["coordinates"]]
    return np.logical_or.reduce([rasterise(r, shape) for r in rings])


def test_geojson_rasterises_back_to_the_real_labels(tmp_path, shared_data):
    """Every polygon of a real 125-nucleus label image is valid, its area (QuPath's) is the
    nucleus's pixel count and it covers exactly the nucleus's pixels; it carries its label
    and measurements; the ids are unique and the same in a second run. (Before issue 22 the
    outlines ran a quarter pixel inside, with IoU > 0.9, and ids were 'nucleus-N'.)"""
    labels = fixture_labels(shared_data)
    table = measure_objects(labels)
    collections = []
    for run in ("one", "two"):
        with ImageWriters(geojson_dir=tmp_path / run).geojson("img") as add:
            add(ChunkResult((slice(0, 512), slice(0, 512)), labels, int(labels.max()), 0), table)
        collections.append(json.loads((tmp_path / run / "img.geojson").read_text()))
    collection = collections[0]
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert len(features) == len(table) == 125
    ids = [f["id"] for f in features]
    assert len(set(ids)) == 125 and ids == [f["id"] for f in collections[1]["features"]]
    for feature, row in zip(features, table.itertuples()):
        props = feature["properties"]
        assert props["label"] == row.label and props["objectType"] == "detection"
        assert props["classification"]["name"] == "Nucleus"
        assert props["measurements"]["label"] == row.label and props["measurements"]["area"] == row.area
        assert props["measurements"]["mean_intensity"] is None  # NaN is not JSON: null
        polygon = shape(feature["geometry"])
        assert polygon.is_valid and polygon.area == row.area
        assert polygon.bounds == (row.bbox_min_x, row.bbox_min_y, row.bbox_max_x, row.bbox_max_y)
        np.testing.assert_array_equal(rasterise_geometry(feature["geometry"], labels.shape), labels == row.label)


def test_geojson_of_a_chunk_uses_image_coordinates_and_global_labels(tmp_path):
    window = np.zeros((10, 10), np.uint32)
    window[2:5, 3:7] = 1
    table = measure_objects(window, offset=(100, 200))
    feature = next(nucleus_features(window, table, (100, 200), offset=41, image_id="img"))
    assert feature["properties"]["label"] == 42 and feature["id"] == feature_id("img", 42)
    assert feature["properties"]["measurements"]["label"] == 42
    xy = np.array(feature["geometry"]["coordinates"][0])
    assert xy[:, 0].min() == 203 and xy[:, 0].max() == 207  # columns 203..206: their edges
    assert xy[:, 1].min() == 102 and xy[:, 1].max() == 105  # rows 102..104
    assert feature["properties"]["measurements"]["centroid_y"] == 103.0


def test_roi_zip_reads_back_with_roifile(tmp_path, shared_data):
    """Fiji: one polygon ROI per nucleus named by its label number, in the zip Fiji's ROI Manager
    opens, read back with roifile: each ROI covers exactly its nucleus's pixels (the largest
    4-connected piece of a nucleus in pieces), its bounds and area are objects.csv's."""
    labels = fixture_labels(shared_data)
    table = measure_objects(labels)
    with ImageWriters(rois_dir=tmp_path).rois("img") as add:
        add(ChunkResult((slice(0, 256), slice(0, 512)), labels[:256], int(labels.max()), 0), table[table["bbox_max_y"] <= 256])
    path = tmp_path / "img_rois.zip"
    rois = roifile.roiread(path)
    assert [p.name for p in tmp_path.iterdir()] == ["img_rois.zip"]
    inside = table[table["bbox_max_y"] <= 256]
    assert [r.name for r in rois] == [str(k) for k in inside["label"]] and len(rois) > 40
    for roi, row in zip(rois, inside.itertuples()):
        assert roi.roitype == roifile.ROI_TYPE.POLYGON
        xy = roi.coordinates()
        mask = labels == row.label
        pieces, n = ndi.label(mask)
        if n > 1:
            mask = pieces == np.argmax(np.bincount(pieces.ravel())[1:]) + 1
        np.testing.assert_array_equal(rasterise(np.concatenate([xy, xy[:1]]), labels.shape), mask)
        if n == 1:
            assert Polygon(xy).area == row.area
            assert (roi.left, roi.top, roi.right, roi.bottom) == (row.bbox_min_x, row.bbox_min_y, row.bbox_max_x, row.bbox_max_y)


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
    features = list(nucleus_features(labels, table, (0, 0), 7, "x"))
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
        label_metadata={"source": {"image": "../../"}},  # ours names its image (the spec's "source")
    )
    for group in ("labels", "labels/nuclei"):
        ours, theirs = (zarr.open_group(tmp_path / name / group, mode="r") for name in ("ours.ome.zarr", "library.ome.zarr"))
        assert dict(ours.attrs) == dict(theirs.attrs), group
    ours, theirs = (zarr.open_group(tmp_path / name / "labels/nuclei", mode="r") for name in ("ours.ome.zarr", "library.ome.zarr"))
    assert sorted(ours.array_keys()) == sorted(theirs.array_keys()) == ["s0", "s1", "s2"]
    for key in ours.array_keys():
        np.testing.assert_array_equal(ours[key][:], theirs[key][:])


def test_the_compact_roi_zip_is_zipfiles_archive_byte_for_byte(tmp_path):
    """CompactZipFile (the ROI sets) keeps numbers instead of a ZipInfo per member, for the
    1.7 million ROIs of a 65536^2 slide: the archive is zipfile's own, byte for byte, past
    65,535 members (ZIP64's end record) and with a member unlike the others (another time)."""
    import zipfile

    from nucseg.outputs import ZIP_TIME, CompactZipFile

    def write(cls, path):
        with cls(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for i in range(1, 70_001):
                when = (2020, 5, 6, 7, 8, 10) if i == 500 else ZIP_TIME
                archive.writestr(zipfile.ZipInfo(f"{i}.roi", when), (b"Iout" + i.to_bytes(4, "big")) * (1 + i % 7), zipfile.ZIP_DEFLATED)
        return path.read_bytes()

    compact = write(CompactZipFile, tmp_path / "compact.zip")
    assert compact == write(zipfile.ZipFile, tmp_path / "plain.zip")
    with zipfile.ZipFile(tmp_path / "compact.zip") as archive:
        assert len(archive.namelist()) == 70_000 and archive.getinfo("500.roi").date_time == (2020, 5, 6, 7, 8, 10)
        assert archive.read("69999.roi") == (b"Iout" + (69999).to_bytes(4, "big")) * (1 + 69999 % 7)
