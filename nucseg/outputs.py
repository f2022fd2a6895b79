"""Files a user opens: label TIFF, OME-Zarr (napari and other OME-NGFF viewers), GeoJSON (QuPath), ImageJ ROIs (Fiji).

For each image the segment stage writes, each switchable off (:class:`nucseg.postprocess.SegmentSettings`):

``labels/<id>.tif``
    The label image, uint16 (uint32 above 65,535 nuclei), zlib-compressed; images over
    :data:`TILED_PIXELS` are written in 512 x 512 tiles, chunk by chunk, as BigTIFF when
    they exceed 2 GiB. The pixel size, where known, as resolution tags (pixels per cm).
``ome_zarr/<id>.ome.zarr``
    OME-Zarr (NGFF) written with the ``ome-zarr`` library: the input's own pixels (axes
    ``c, y, x``: one channel for grey, three for RGB) with ``omero`` channel names, colours and
    display windows, and ``labels/nuclei`` with each nucleus's colour and area in its
    ``image-label`` metadata; each a multiscale pyramid (halved down to about 256 pixels; labels
    downsampled by nearest neighbour, as is the image); ``y`` and ``x`` in micrometres where the
    pixel size is known. ``napari --plugin napari-ome-zarr <id>.ome.zarr`` opens both.
``geojson/<id>.geojson``
    A FeatureCollection with one Polygon per nucleus: its outline on the pixel edges, in
    QuPath's coordinates (x right, y down, pixel ``(r, c)`` covering ``[c, c + 1] x [r, r + 1]``),
    so that its area is the nucleus's pixel count (:func:`outlines`); a UUID as id, the same in
    every run (:func:`feature_id`); ``objectType: detection``, classification ``Nucleus``, the
    label and the measurements (``objects.csv``'s row, whose centroid is in the same
    coordinates) as properties. QuPath: File > Import objects from file.
``rois/<id>_rois.zip``
    An ImageJ ROI set: one polygon ROI per nucleus named by its label number, the same outline
    on integer pixel-edge coordinates (:func:`nucleus_rois`). Fiji: drag it onto the window.

The GeoJSON and the ROI zip are written chunk by chunk as the nuclei are found (memory: one
chunk's nuclei), under a temporary name until complete.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import uuid
import zipfile
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import orjson
import pandas as pd
import tifffile

from nucseg.files import atomic_dir, atomic_file
from nucseg.tiling import blocks

log = logging.getLogger(__name__)

#: Label images with more pixels are written as tiled TIFFs, chunk by chunk.
TILED_PIXELS = 4096 * 4096
TIFF_TILE = 512
#: The OME-Zarr pyramids are halved until the longer side is at most this many pixels.
PYRAMID_SMALLEST = 256
OME_CHUNK = 1024
CLASSIFICATION = {"name": "Nucleus", "color": [255, 0, 255]}
#: The name of an image's ImageJ ROI zip: ``<id>_rois.zip``.
ROIS_SUFFIX = "_rois.zip"
#: The time stamp of every member of a ROI zip (zip's earliest).
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def label_dtype(count: int) -> np.dtype:
    """uint16 when ``count`` labels fit, else uint32."""
    if count > np.iinfo(np.uint32).max:
        raise ValueError(f"{count} labels do not fit in uint32")
    return np.dtype(np.uint16 if count <= np.iinfo(np.uint16).max else np.uint32)


def _tiff_resolution(pixel_size) -> dict:
    """tifffile's resolution arguments for a pixel size: pixels per centimetre (Fiji, QuPath and
    tifffile read them as the calibration); none when unknown."""
    if pixel_size is None or not pixel_size.known:
        return {}
    return dict(resolution=(1e4 / pixel_size.x, 1e4 / pixel_size.y), resolutionunit="CENTIMETER")


def write_label_tiff(path: str | os.PathLike, labels, count: int, pixel_size=None) -> Path:
    """Write a label image (numpy or zarr, read tile by tile) as a compressed TIFF, atomically.

    Parameters
    ----------
    path : path-like
    labels : (H, W) array-like of integers
    count : int
        The largest label: uint16 up to 65,535, else uint32.
    pixel_size : nucseg.calibration.PixelSize, optional
        Written as the resolution tags (pixels per centimetre) when known; none otherwise.

    Returns
    -------
    Path
    """
    path = Path(path)
    dtype = label_dtype(count)
    shape = tuple(labels.shape)
    resolution = _tiff_resolution(pixel_size)
    with atomic_file(path) as tmp:  # a full disk: NoSpaceError naming path, nothing left
        if shape[0] * shape[1] <= TILED_PIXELS:
            tifffile.imwrite(tmp, np.asarray(labels[:]).astype(dtype), compression="zlib", **resolution)
        else:
            bigtiff = shape[0] * shape[1] * dtype.itemsize > 2**31 - 2**25
            tiles = (np.asarray(labels[tile]).astype(dtype) for tile in blocks(shape, TIFF_TILE))
            tifffile.imwrite(tmp, tiles, shape=shape, dtype=dtype, tile=(TIFF_TILE, TIFF_TILE), compression="zlib", bigtiff=bigtiff, **resolution)
    return path


def pyramid_factors(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Downsampling factors 2, 4, ... until the longer side is at most :data:`PYRAMID_SMALLEST`."""
    factors, f = [], 2
    while max(shape) / (f // 2) > PYRAMID_SMALLEST:
        factors.append(f)
        f *= 2
    return tuple(factors)


@contextlib.contextmanager
def own_threads(threads: int) -> Iterator[ThreadPoolExecutor]:
    """A pool of ``threads`` threads for the block; on leaving it, queued tasks are cancelled and
    running ones waited for, so that nothing started in the block runs on after it."""
    pool = ThreadPoolExecutor(max(1, threads))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


#: Channel names and colours of the OME-Zarr's ``omero`` metadata: grey one white channel, RGB
#: red, green and blue (napari, through napari-ome-zarr, blends them into the true colours).
CHANNELS = {1: (("intensity", "FFFFFF"),), 3: (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"))}
#: Labels of more nuclei than this get no per-label colours and properties in the OME-Zarr's
#: ``image-label`` metadata (JSON, a few MB at this count; ``objects.csv`` has them all).
LABEL_METADATA_MAX = 65535


def _omero(pixels, pool) -> dict:
    """``omero`` metadata for ``(C, H, W)`` dask pixels: channel names, colours and display
    windows (8-bit RGB the full 0-255 range, so that colours stay true; others their minimum to
    maximum, one pass over the image)."""
    import dask.array as da

    dtype = np.dtype(pixels.dtype)
    full = (float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)) if np.issubdtype(dtype, np.integer) else (0.0, 1.0)
    if dtype == np.uint8 and pixels.shape[0] == 3:
        windows = [(0.0, 255.0)] * 3
    else:
        low, high = da.compute(pixels.min(axis=(1, 2)), pixels.max(axis=(1, 2)), scheduler="threads", pool=pool)
        windows = [(float(lo), float(hi)) for lo, hi in zip(low, high)]
    channels = [
        {"label": name, "color": colour, "active": True, "window": {"min": min(full[0], lo), "max": max(full[1], hi), "start": lo, "end": hi}}
        for (name, colour), (lo, hi) in zip(CHANNELS[pixels.shape[0]], windows)
    ]
    return {"channels": channels, "rdefs": {"model": "color" if pixels.shape[0] == 3 else "greyscale"}}


def label_colour(label: int) -> list[int]:
    """A bright RGBA colour for a label, the same in every run; neighbouring labels far apart in
    hue (golden-ratio steps)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((int(label) * 0.618033988749895) % 1.0, 0.75, 1.0)
    return [round(r * 255), round(g * 255), round(b * 255), 255]


def _label_metadata(objects: pd.DataFrame | None) -> dict:
    """``colors`` and ``properties`` of the ``image-label`` metadata, from the nuclei's table
    (``label``, ``area`` and, where known, ``area_um2``); none above :data:`LABEL_METADATA_MAX`."""
    if objects is None or len(objects) > LABEL_METADATA_MAX:
        if objects is not None:
            log.info("%d nuclei: no per-label colours and properties in the OME-Zarr (objects.csv has them)", len(objects))
        return {}
    columns = [c for c in ("area", "area_um2") if c in objects and objects[c].notna().all()]
    labels = objects["label"].to_numpy(np.int64).tolist()
    values = objects[columns].to_dict("records")
    return dict(
        colors=[{"label-value": k, "rgba": label_colour(k)} for k in labels],
        properties=[{"label-value": k, **v} for k, v in zip(labels, values)],
    )


def write_ome_zarr(path: str | os.PathLike, image, labels, count: int, threads: int = 1, pixel_size=None, objects: pd.DataFrame | None = None) -> Path:
    """Write an image and its nucleus labels as OME-Zarr with the ``ome-zarr`` library.

    Parameters
    ----------
    path : path-like
        The ``.ome.zarr`` folder (replaced atomically when it exists).
    image : (H, W) or (H, W, C) array-like or None
        The input's pixels, C 1 (grey) or 3 (RGB), any pixel type; written as axes ``c, y, x``
        with ``omero`` channel names, colours and display windows (:func:`_omero`). None writes
        only ``labels/nuclei``.
    labels : (H, W) array-like of integers (numpy or zarr, read chunk by chunk)
    count : int
        The largest label (uint16 or uint32, :func:`label_dtype`).
    threads : int
        dask threads computing the pyramids.
    pixel_size : nucseg.calibration.PixelSize, optional
        When known, the ``y`` and ``x`` axes are in micrometres and the levels' ``scale`` the
        pixel size (times the level's factor); else unitless, scale 1.
    objects : pandas.DataFrame, optional
        The nuclei's ``label`` and ``area`` (and ``area_um2``): each label's colour and
        properties in ``labels/nuclei``'s ``image-label`` metadata (:func:`_label_metadata`).

    Returns
    -------
    Path
    """
    import dask
    import zarr

    shape = tuple(labels.shape)
    factors = pyramid_factors(shape)
    known = pixel_size is not None and pixel_size.known
    scale = {"y": pixel_size.y, "x": pixel_size.x} if known else {"y": 1.0, "x": 1.0}
    units = {"y": "micrometer", "x": "micrometer"} if known else None
    # dask threads of its own, stopped before atomic_dir cleans up: dask raises the first failed
    # task's error (a full disk) while its other tasks still write, and a chunk written after the
    # clean-up recreated the temporary folders (zarr makes a chunk's parent folders)
    with atomic_dir(path, overwrite=True) as tmp, own_threads(threads) as pool, dask.config.set(scheduler="threads", pool=pool):
        root = zarr.open_group(tmp, mode="w")
        if image is not None:
            _write_ome_image(root, image, factors, scale, units, pool)
        _write_ome_labels(root, labels, count, factors, scale, units, objects)
    return Path(path)


def _write_ome_image(root, image, factors, scale: dict, units: dict | None, pool) -> None:
    """Write :func:`write_ome_zarr`'s image into the group ``root``: axes ``c, y, x``, a pyramid of
    ``factors``, with ``omero`` metadata (:func:`_omero`, computed on the threads of ``pool``)."""
    import dask.array as da
    from ome_zarr.scale import Methods
    from ome_zarr.writer import write_image

    pixels = da.from_array(image, chunks=(OME_CHUNK, OME_CHUNK) + tuple(image.shape[2:]))
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    chunks = (pixels.shape[0], OME_CHUNK, OME_CHUNK)
    write_image(
        pixels.rechunk(chunks),
        root,
        scale_factors=factors,
        method=Methods.NEAREST,
        axes="cyx",
        scale={"c": 1.0, **scale},
        axes_units=units,
        storage_options=dict(chunks=chunks),
        omero=_omero(pixels, pool),
    )


def _write_ome_labels(root, labels, count: int, factors, scale: dict, units: dict | None, objects: pd.DataFrame | None) -> None:
    """Write :func:`write_ome_zarr`'s ``labels/nuclei`` into the group ``root``: a pyramid of
    ``factors`` with the nuclei's ``image-label`` metadata (:func:`_label_metadata`)."""
    import dask.array as da
    from ome_zarr.classes import OMEZarrImage, OMEZarrLabels
    from ome_zarr.scale import Methods
    from ome_zarr.writer import write_label_metadata

    lab = da.from_array(labels, chunks=(OME_CHUNK, OME_CHUNK)).astype(label_dtype(count))
    # what write_labels does, without its pass over the whole label image collecting every
    # label value for colour metadata that it then drops (a sort of all pixels: ~5 % of
    # the segment stage on large images)
    pyramid = OMEZarrLabels(
        OMEZarrImage(lab, axes="yx", scale=scale, name="nuclei", axes_units=units), scale_factors=factors, method=Methods.NEAREST, auto_parse_labels=False
    )
    pyramid.to_ome_zarr(root.require_group("labels/nuclei"), storage_options=dict(chunks=(OME_CHUNK, OME_CHUNK)), compute=True, overwrite=True)
    # source: the image two levels up, which the reader then opens with the labels
    write_label_metadata(root["labels"], "nuclei", source={"image": "../../"}, **_label_metadata(objects))


def _trace(mask: np.ndarray, origin: tuple[int, int]) -> list[list[int]]:
    """The ring along the pixel edges around a 4-connected, non-empty mask (:func:`outlines`)."""
    # traced on the mask enlarged x2, where each pixel edge has a row (column) of boundary
    # sub-pixels on its inner side: sub-pixel 2c is the left half of pixel c (its left edge,
    # x = c), 2c + 1 the right half (x = c + 1), so s -> (s + 1) // 2 moves every traced point
    # onto the pixel edge it lies against
    big = np.repeat(np.repeat(mask.astype(np.uint8), 2, axis=0), 2, axis=1)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    ring = max(contours, key=len).reshape(-1, 2)  # (x, y) in the x2 grid; one piece, one contour
    xy = (ring + 1) // 2
    step = np.diff(xy, axis=0, append=xy[:1])  # to the next point, around the ring: 0 or 1 per axis
    moved = step.any(axis=1)  # not the same edge point as the next
    xy, step = xy[moved], step[moved]
    # keep the corners: the points where the step changes (the others lie on a straight run)
    xy = xy[(step != np.concatenate([step[-1:], step[:-1]])).any(axis=1)] + (origin[1], origin[0])
    return np.concatenate([xy, xy[:1]]).tolist()


def outlines(mask: np.ndarray, origin: tuple[int, int]) -> list[list[list[int]]]:
    """The outlines of a mask on its pixels' edges: one closed ring ``[[x, y], ...]`` per
    4-connected piece, largest first (QuPath's and ImageJ's coordinates: x right, y down,
    pixel ``(r, c)`` covering ``[c, c + 1] x [r, r + 1]``).

    Parameters
    ----------
    mask : (h, w) ndarray of bool
        One object (its bounding box).
    origin : (int, int)
        Row and column of ``mask[0, 0]`` in the image.

    Returns
    -------
    list of rings
        Integer vertices of each piece's outer boundary, traced along the pixel edges: a
        ring's area is its piece's pixel count (a hole, which nuclei do not have after the
        segment step's hole filling, is inside the ring), and the pixels whose centres lie
        inside it are exactly the piece's. Pieces touching only at a corner are separate
        rings (one ring through that corner twice is not a valid polygon). Straight runs are
        one segment; the first vertex is repeated last. Empty for an empty mask.
    """
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    n, pieces = cv2.connectedComponents(mask, connectivity=4)
    n -= 1  # the background is component 0
    if n <= 1:
        return [_trace(mask, origin)] if n else []
    sizes = np.bincount(pieces.ravel())[1:]
    return [_trace(pieces == k + 1, origin) for k in np.argsort(-sizes, kind="stable")]


def outline(mask: np.ndarray, origin: tuple[int, int]) -> list[list[int]] | None:
    """The ring of the largest 4-connected piece of :func:`outlines` (None for an empty mask)."""
    rings = outlines(mask, origin)
    return rings[0] if rings else None


#: The namespace of the features' UUIDs (:func:`feature_id`).
FEATURE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/nucseg/nucseg/nucleus")


def feature_id(image_id: str, label: int) -> str:
    """The GeoJSON feature id of nucleus ``label`` of image ``image_id``: a UUID (QuPath keeps
    only UUIDs as object ids), the same in every run: ``str(uuid.uuid5(FEATURE_NAMESPACE,
    f"{image_id}/{label}"))``, computed without the ``UUID`` object (a third of the time)."""
    digest = bytearray(hashlib.sha1(FEATURE_NAMESPACE.bytes + f"{image_id}/{int(label)}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _objects(labels: np.ndarray, table: pd.DataFrame, origin: tuple[int, int], offset: int) -> Iterator[tuple[int, dict, list]]:
    """``(label, measurements, rings)`` of each object of a label window: its global label, its
    row of ``table`` (NaN as None; ``label`` the global one) and :func:`outlines` of its pixels."""
    names = [c for c in table.columns if c != "image_id"]
    values = table[names].astype(object).where(table[names].notna(), None).to_dict("records")
    # the table's bounding boxes, back in window coordinates
    boxes = table[["bbox_min_y", "bbox_max_y", "bbox_min_x", "bbox_max_x"]].to_numpy() - np.repeat(origin, 2)
    for k, measurements, (y0, y1, x0, x1) in zip(table["label"].to_numpy(), values, boxes.tolist()):
        rings = outlines(labels[y0:y1, x0:x1] == k, (origin[0] + y0, origin[1] + x0))
        if rings:
            label = int(k) + offset
            yield label, {**measurements, "label": label}, rings


class _CompactMembers:
    """The members a :class:`CompactZipFile` has written, kept as numbers: :mod:`zipfile` holds a
    ``ZipInfo`` per member until it writes the central directory at the end (about 0.5 kB each:
    0.8 GB for the 1.7 million ROIs of a 65536^2 slide). Members that differ from the first only
    in name, CRC, sizes and offset are rebuilt from its ``ZipInfo`` when the directory is written."""

    _OWN = ("filename", "orig_filename", "CRC", "compress_size", "file_size", "header_offset")

    def __init__(self) -> None:
        self.template: zipfile.ZipInfo | None = None
        self.numbers = array("Q")  # CRC, compressed size, size, header offset, per member
        self.names = bytearray()
        self.ends = array("Q")  # where each member's name ends in ``names``
        self.others: dict[int, zipfile.ZipInfo] = {}  # members unlike the first in another field

    def _shared(self, info: zipfile.ZipInfo) -> tuple:
        return tuple(getattr(info, slot, None) for slot in zipfile.ZipInfo.__slots__ if slot not in self._OWN)

    def append(self, info: zipfile.ZipInfo) -> None:
        if self.template is None:
            self.template = copy.copy(info)
        if self._shared(info) != self._shared(self.template):
            self.others[len(self.ends)] = info
        self.numbers.extend((info.CRC, info.compress_size, info.file_size, info.header_offset))
        self.names += info.filename.encode()
        self.ends.append(len(self.names))

    def __len__(self) -> int:
        return len(self.ends)

    def __iter__(self) -> Iterator[zipfile.ZipInfo]:
        start = 0
        for k, end in enumerate(self.ends):
            if k in self.others:
                yield self.others[k]
            else:
                info = copy.copy(self.template)
                info.filename = info.orig_filename = self.names[start:end].decode()
                info.CRC, info.compress_size, info.file_size, info.header_offset = self.numbers[4 * k : 4 * k + 4]
                yield info
            start = end


class _NoNames(dict):
    """zipfile's name -> ZipInfo index, left empty while writing (it only warns of a repeated name;
    a label image's ROI names are its labels, each once)."""

    def __setitem__(self, key, value) -> None:
        pass


class CompactZipFile(zipfile.ZipFile):
    """A :class:`zipfile.ZipFile` for writing many small members in bounded memory
    (:class:`_CompactMembers`); the archive is the same, byte for byte."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.mode == "w":
            self.filelist, self.NameToInfo = _CompactMembers(), _NoNames()


def nucleus_features(labels: np.ndarray, table: pd.DataFrame, origin: tuple[int, int], offset: int = 0, image_id: str = "") -> Iterator[dict]:
    """GeoJSON features of the objects of a label window.

    Parameters
    ----------
    labels : (h, w) ndarray of integers
        Objects numbered as ``table["label"]``.
    table : pandas.DataFrame
        :func:`nucseg.measure.measure_objects` of ``labels`` (image coordinates).
    origin : (int, int)
        Position of ``labels[0, 0]`` in the image.
    offset : int
        Added to the labels (the chunk's first global label - 1).
    image_id : str
        The image's id, for the features' ids (:func:`feature_id`).

    Yields
    ------
    dict
        ``{"type": "Feature", "id": <uuid>, "geometry": ..., "properties": {...}}``: a Polygon
        on the pixel edges (a MultiPolygon for a nucleus in pieces that touch only at corners,
        :func:`outlines`), whose area is the nucleus's pixel count; ``measurements`` holds the
        table's columns, ``label`` (the global one) included.
    """
    for label, measurements, rings in _objects(labels, table, origin, offset):
        yield _feature(label, measurements, rings, image_id)


def _feature(label: int, measurements: dict, rings: list, image_id: str) -> dict:
    geometry = {"type": "Polygon", "coordinates": [rings[0]]} if len(rings) == 1 else {"type": "MultiPolygon", "coordinates": [[r] for r in rings]}
    return {
        "type": "Feature",
        "id": feature_id(image_id, label),
        "geometry": geometry,
        "properties": {
            "objectType": "detection",
            "name": f"nucleus {label}",
            "label": label,
            "classification": CLASSIFICATION,
            "measurements": measurements,
        },
    }


def nucleus_rois(labels: np.ndarray, table: pd.DataFrame, origin: tuple[int, int], offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """ImageJ ROIs of the objects of a label window (arguments as :func:`nucleus_features`).

    Yields
    ------
    (int, bytes)
        The global label and its polygon ROI (``roifile``), named the label number: the
        outline on the pixel edges of the nucleus's largest 4-connected piece (all of it, for
        a nucleus in one piece: :func:`outlines`), integer coordinates as ImageJ's wand traces.
    """
    for label, _, rings in _objects(labels, table, origin, offset):
        yield label, _roi(label, rings)


def _roi(label: int, rings: list) -> bytes:
    from roifile import ROI_TYPE, ImagejRoi

    points = np.asarray(rings[0][:-1], dtype=np.int32)
    roi = ImagejRoi.frompoints(points, name=str(label))
    roi.roitype = ROI_TYPE.POLYGON
    # the bounds of the polygon itself, as ImageJ's own polygons have them (the pixel-edge
    # bounding box of objects.csv), not roifile's one pixel wider
    roi.right, roi.bottom = (int(v) for v in points.max(axis=0))
    return roi.tobytes()


class ImageWriters:
    """The per-image files of the segment stage; a folder of None switches that file off.

    Parameters
    ----------
    tiff_dir, ome_zarr_dir, geojson_dir, rois_dir : path-like or None
    threads : int
        dask threads for the OME-Zarr pyramids.
    """

    def __init__(self, tiff_dir=None, ome_zarr_dir=None, geojson_dir=None, rois_dir=None, threads: int = 1) -> None:
        self.tiff_dir = None if tiff_dir is None else Path(tiff_dir)
        self.ome_zarr_dir = None if ome_zarr_dir is None else Path(ome_zarr_dir)
        self.geojson_dir = None if geojson_dir is None else Path(geojson_dir)
        self.rois_dir = None if rois_dir is None else Path(rois_dir)
        self.threads = threads

    @contextlib.contextmanager
    def _geojson_sink(self, image_id: str) -> Iterator[Callable | None]:
        """``write(label, measurements, rings)`` appending a feature to ``<id>.geojson``, or None when off."""
        if self.geojson_dir is None:
            yield None
            return
        path = self.geojson_dir / f"{image_id}.geojson"
        # under .<id>.geojson.part until the collection is closed: a killed run leaves no cut-off
        # file under the final name, nor truncates one of an earlier run
        with atomic_file(path) as tmp, open(tmp, "w") as f:
            f.write('{"type": "FeatureCollection", "features": [\n')
            first = [True]

            def write(label: int, measurements: dict, rings: list) -> None:
                # orjson: the bytes json.dumps(feature, separators=(",", ":")) writes, 5x faster
                f.write(("" if first[0] else ",\n") + orjson.dumps(_feature(label, measurements, rings, image_id)).decode())
                first[0] = False

            yield write
            f.write("\n]}\n")

    @contextlib.contextmanager
    def _rois_sink(self, image_id: str) -> Iterator[Callable | None]:
        """``write(label, measurements, rings)`` adding ``<label>.roi`` to ``<id>_rois.zip``, or None when off."""
        if self.rois_dir is None:
            yield None
            return
        with atomic_file(self.rois_dir / f"{image_id}{ROIS_SUFFIX}") as tmp, CompactZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            # a fixed member time: the same nuclei give the same zip, byte for byte, in every run
            yield lambda label, measurements, rings: archive.writestr(zipfile.ZipInfo(f"{label}.roi", ZIP_TIME), _roi(label, rings), zipfile.ZIP_DEFLATED)

    @contextlib.contextmanager
    def _streaming(self, image_id: str, geojson: bool, rois: bool) -> Iterator[Callable]:
        with contextlib.ExitStack() as stack:
            sinks = [stack.enter_context(self._geojson_sink(image_id)) if geojson else None, stack.enter_context(self._rois_sink(image_id)) if rois else None]
            sinks = [sink for sink in sinks if sink is not None]

            def add(result, table: pd.DataFrame) -> None:
                if not sinks:
                    return
                origin = (result.window[0].start, result.window[1].start)
                for label, measurements, rings in _objects(result.labels, table, origin, result.offset):  # traced once for both files
                    for sink in sinks:
                        sink(label, measurements, rings)

            yield add

    def geojson(self, image_id: str) -> contextlib.AbstractContextManager[Callable]:
        """A context whose callable ``add(chunk_result, table)`` streams the chunk's nuclei into
        ``<id>.geojson`` (:func:`nucleus_features`; written under a temporary name, renamed when
        the block ends without an error)."""
        return self._streaming(image_id, True, False)

    def rois(self, image_id: str) -> contextlib.AbstractContextManager[Callable]:
        """A context whose callable ``add(chunk_result, table)`` streams the chunk's nuclei as
        ImageJ ROIs (:func:`nucleus_rois`, entries ``<label>.roi``) into the zip
        ``<id>_rois.zip`` that Fiji's ROI Manager opens (under a temporary name, renamed when the
        block ends without an error)."""
        return self._streaming(image_id, False, True)

    def objects(self, image_id: str) -> contextlib.AbstractContextManager[Callable]:
        """:meth:`geojson` and :meth:`rois` at once (those switched on), each nucleus outlined once."""
        return self._streaming(image_id, True, True)

    def labels(self, image_id: str, labels, count: int, image=None, pixel_size=None, objects: pd.DataFrame | None = None) -> None:
        """Write the finished label image as TIFF and OME-Zarr (those switched on); ``image``,
        ``pixel_size`` and ``objects`` as :func:`write_ome_zarr` takes them."""
        if self.tiff_dir is not None:
            write_label_tiff(self.tiff_dir / f"{image_id}.tif", labels, count, pixel_size)
        if self.ome_zarr_dir is not None:
            write_ome_zarr(self.ome_zarr_dir / f"{image_id}.ome.zarr", image, labels, count, self.threads, pixel_size, objects)
