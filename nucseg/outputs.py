"""Files a user opens: label TIFF, OME-Zarr (napari and other OME-NGFF viewers), GeoJSON (QuPath).

For each image the segment stage writes, each switchable off (:class:`nucseg.postprocess.SegmentSettings`):

``labels/<id>.tif``
    The label image, uint16 (uint32 above 65,535 nuclei), zlib-compressed; images over
    :data:`TILED_PIXELS` are written in 512 x 512 tiles, chunk by chunk, as BigTIFF when
    they exceed 2 GiB.
``ome_zarr/<id>.ome.zarr``
    OME-Zarr (NGFF) written with the ``ome-zarr`` library: the image (axes ``c, y, x``) and
    ``labels/nuclei``, each a multiscale pyramid (halved down to about 256 pixels; labels
    downsampled by nearest neighbour, as is the image). ``napari --plugin napari-ome-zarr <id>.ome.zarr``
    opens both.
``geojson/<id>.geojson``
    A FeatureCollection with one Polygon per nucleus (its outline through the pixel-edge
    midpoints, in QuPath's coordinates: x right, y down, pixel ``(r, c)`` covering
    ``[c, c + 1] x [r, r + 1]``), ``objectType: detection``, classification ``Nucleus``, the
    label and the measurements as properties. QuPath: File > Import objects from file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import orjson
import pandas as pd
import tifffile

from nucseg.files import atomic_dir, atomic_file

log = logging.getLogger(__name__)

#: Label images with more pixels are written as tiled TIFFs, chunk by chunk.
TILED_PIXELS = 4096 * 4096
TIFF_TILE = 512
#: The OME-Zarr pyramids are halved until the longer side is at most this many pixels.
PYRAMID_SMALLEST = 256
OME_CHUNK = 1024
CLASSIFICATION = {"name": "Nucleus", "color": [255, 0, 255]}


def label_dtype(count: int) -> np.dtype:
    """uint16 when ``count`` labels fit, else uint32."""
    if count > np.iinfo(np.uint32).max:
        raise ValueError(f"{count} labels do not fit in uint32")
    return np.dtype(np.uint16 if count <= np.iinfo(np.uint16).max else np.uint32)


def _bands(shape: tuple[int, int], side: int) -> Iterator[tuple[slice, slice]]:
    for y in range(0, shape[0], side):
        for x in range(0, shape[1], side):
            yield slice(y, min(y + side, shape[0])), slice(x, min(x + side, shape[1]))


def write_label_tiff(path: str | os.PathLike, labels, count: int) -> Path:
    """Write a label image (numpy or zarr, read tile by tile) as a compressed TIFF, atomically.

    Parameters
    ----------
    path : path-like
    labels : (H, W) array-like of integers
    count : int
        The largest label: uint16 up to 65,535, else uint32.

    Returns
    -------
    Path
    """
    path = Path(path)
    dtype = label_dtype(count)
    shape = tuple(labels.shape)
    with atomic_file(path) as tmp:  # a full disk: NoSpaceError naming path, nothing left
        if shape[0] * shape[1] <= TILED_PIXELS:
            tifffile.imwrite(tmp, np.asarray(labels[:]).astype(dtype), compression="zlib")
        else:
            bigtiff = shape[0] * shape[1] * dtype.itemsize > 2**31 - 2**25
            tiles = (np.asarray(labels[tile]).astype(dtype) for tile in _bands(shape, TIFF_TILE))
            tifffile.imwrite(tmp, tiles, shape=shape, dtype=dtype, tile=(TIFF_TILE, TIFF_TILE), compression="zlib", bigtiff=bigtiff)
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


def write_ome_zarr(path: str | os.PathLike, image, labels, count: int, threads: int = 1) -> Path:
    """Write an image and its nucleus labels as OME-Zarr with the ``ome-zarr`` library.

    Parameters
    ----------
    path : path-like
        The ``.ome.zarr`` folder (replaced atomically when it exists).
    image : (H, W) or (H, W, C) array-like or None
        Written as axes ``c, y, x`` (``y, x`` for grey); None writes only ``labels/nuclei``.
    labels : (H, W) array-like of integers (numpy or zarr, read chunk by chunk)
    count : int
        The largest label (uint16 or uint32, :func:`label_dtype`).
    threads : int
        dask threads computing the pyramids.

    Returns
    -------
    Path
    """
    import dask
    import dask.array as da
    import zarr
    from ome_zarr.classes import OMEZarrImage, OMEZarrLabels
    from ome_zarr.scale import Methods
    from ome_zarr.writer import write_image, write_label_metadata

    shape = tuple(labels.shape)
    factors = pyramid_factors(shape)
    # dask threads of its own, stopped before atomic_dir cleans up: dask raises the first failed
    # task's error (a full disk) while its other tasks still write, and a chunk written after the
    # clean-up recreated the temporary folders (zarr makes a chunk's parent folders)
    with atomic_dir(path, overwrite=True) as tmp, own_threads(threads) as pool, dask.config.set(scheduler="threads", pool=pool):
        root = zarr.open_group(tmp, mode="w")
        if image is not None:
            pixels = da.from_array(image, chunks=(OME_CHUNK, OME_CHUNK) + tuple(image.shape[2:]))
            if pixels.ndim == 3:
                pixels, axes, chunks = pixels.transpose(2, 0, 1), "cyx", (pixels.shape[2], OME_CHUNK, OME_CHUNK)
            else:
                axes, chunks = "yx", (OME_CHUNK, OME_CHUNK)
            write_image(pixels.rechunk(chunks), root, scale_factors=factors, method=Methods.NEAREST, axes=axes, storage_options=dict(chunks=chunks))
        lab = da.from_array(labels, chunks=(OME_CHUNK, OME_CHUNK)).astype(label_dtype(count))
        # what write_labels does, without its pass over the whole label image collecting every
        # label value for colour metadata that it then drops (a sort of all pixels: ~5 % of
        # the segment stage on large images)
        pyramid = OMEZarrLabels(
            OMEZarrImage(lab, axes="yx", scale={"y": 1.0, "x": 1.0}, name="nuclei"), scale_factors=factors, method=Methods.NEAREST, auto_parse_labels=False
        )
        pyramid.to_ome_zarr(root.require_group("labels/nuclei"), storage_options=dict(chunks=(OME_CHUNK, OME_CHUNK)), compute=True, overwrite=True)
        write_label_metadata(root["labels"], "nuclei")
    return Path(path)


def outline(mask: np.ndarray, origin: tuple[int, int]) -> list[list[float]] | None:
    """The outer outline of a mask as a closed GeoJSON ring ``[[x, y], ...]`` (QuPath coordinates).

    Parameters
    ----------
    mask : (h, w) ndarray of bool
        One object (its bounding box).
    origin : (int, int)
        Row and column of ``mask[0, 0]`` in the image.

    Returns
    -------
    list or None
        The outer boundary of the largest 8-connected piece, traced (OpenCV) on the mask
        enlarged x2 so that it runs a quarter pixel inside the pixel edges: the pixel centres
        inside it are exactly the object's pixels (for an object without holes). Straight runs
        are one segment. None for an empty mask.
    """
    big = np.repeat(np.repeat(np.ascontiguousarray(mask, dtype=np.uint8), 2, axis=0), 2, axis=1)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    ring = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float64)  # (x, y) in the x2 grid
    xy = (ring + 0.5) / 2 + (origin[1], origin[0])  # pixel (r, c) covers [c, c + 1] x [r, r + 1]
    xy = np.concatenate([xy, xy[:1]])
    return xy.tolist()


def nucleus_features(labels: np.ndarray, table: pd.DataFrame, origin: tuple[int, int], offset: int = 0) -> Iterator[dict]:
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

    Yields
    ------
    dict
        ``{"type": "Feature", "id": ..., "geometry": Polygon, "properties": {...}}``.
    """
    names = [c for c in table.columns if c not in ("label", "image_id")]
    values = table[names].astype(object).where(table[names].notna(), None).to_dict("records")
    # the table's bounding boxes, back in window coordinates
    boxes = table[["bbox_min_y", "bbox_max_y", "bbox_min_x", "bbox_max_x"]].to_numpy() - np.repeat(origin, 2)
    for k, measurements, (y0, y1, x0, x1) in zip(table["label"].to_numpy(), values, boxes.tolist()):
        ring = outline(labels[y0:y1, x0:x1] == k, (origin[0] + y0, origin[1] + x0))
        if ring is None:
            continue
        label = int(k) + offset
        yield {
            "type": "Feature",
            "id": f"nucleus-{label}",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "detection",
                "name": f"nucleus {label}",
                "label": label,
                "classification": CLASSIFICATION,
                "measurements": measurements,
            },
        }


class ImageWriters:
    """The per-image files of the segment stage; a folder of None switches that file off.

    Parameters
    ----------
    tiff_dir, ome_zarr_dir, geojson_dir : path-like or None
    threads : int
        dask threads for the OME-Zarr pyramids.
    """

    def __init__(self, tiff_dir=None, ome_zarr_dir=None, geojson_dir=None, threads: int = 1) -> None:
        self.tiff_dir = None if tiff_dir is None else Path(tiff_dir)
        self.ome_zarr_dir = None if ome_zarr_dir is None else Path(ome_zarr_dir)
        self.geojson_dir = None if geojson_dir is None else Path(geojson_dir)
        self.threads = threads

    @contextlib.contextmanager
    def geojson(self, image_id: str) -> Iterator[Callable]:
        """A callable ``add(chunk_result, table)`` streaming the chunk's nuclei into ``<id>.geojson``
        (written under a temporary name, renamed when the block ends without an error)."""
        if self.geojson_dir is None:
            yield lambda result, table: None
            return
        path = self.geojson_dir / f"{image_id}.geojson"
        # under .<id>.geojson.part until the collection is closed: a killed run leaves no cut-off
        # file under the final name, nor truncates one of an earlier run
        with atomic_file(path) as tmp, open(tmp, "w") as f:
            f.write('{"type": "FeatureCollection", "features": [\n')
            first = [True]

            def add(result, table: pd.DataFrame) -> None:
                origin = (result.window[0].start, result.window[1].start)
                for feature in nucleus_features(result.labels, table, origin, result.offset):
                    # orjson: the bytes json.dumps(feature, separators=(",", ":")) writes, 5x faster
                    f.write(("" if first[0] else ",\n") + orjson.dumps(feature).decode())
                    first[0] = False

            yield add
            f.write("\n]}\n")

    def labels(self, image_id: str, labels, count: int, image=None) -> None:
        """Write the finished label image as TIFF and OME-Zarr (those switched on)."""
        if self.tiff_dir is not None:
            write_label_tiff(self.tiff_dir / f"{image_id}.tif", labels, count)
        if self.ome_zarr_dir is not None:
            write_ome_zarr(self.ome_zarr_dir / f"{image_id}.ome.zarr", image, labels, count, self.threads)
