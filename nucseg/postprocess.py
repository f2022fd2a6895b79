"""Segment stage: probability maps to nucleus label images, tables and viewer files.

:func:`segment_image` runs the chunked watershed (:mod:`nucseg.chunks`, :mod:`nucseg.watershed`)
over one image's maps, measures each chunk's nuclei (:mod:`nucseg.measure`) and streams them to
the files a user opens (:mod:`nucseg.outputs`); :func:`segment_dataset` does it for every image
of a dataset (the segment rule). The settings, methods and the per-window step are
:mod:`nucseg.watershed`'s; their names are importable from here too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from nucseg.calibration import UNKNOWN, from_columns
from nucseg.chunks import ChunkResult, map_heads, segment_map, segment_probability  # noqa: F401 (also nucseg.postprocess's names)
from nucseg.classmaps import SemanticClasses, class_map, write_class_map
from nucseg.files import atomic_dir, atomic_file, remove_stale, scratch_dir, write_csv
from nucseg.imageio import pixel_description
from nucseg.measure import COLUMNS, IMAGE_COLUMNS, PIXEL_CENTRE, ImageSummary, add_physical, measure_objects
from nucseg.watershed import (  # noqa: F401 (also nucseg.postprocess's names)
    METHODS,
    SegmentSettings,
    distance_transform,
    foreground_threshold,
    label_peaks,
    map_statistics,
    method_head,
    segment_window,
    use_border,
)

log = logging.getLogger(__name__)

#: Label images up to this many pixels are held in memory while they are built; larger
#: ones go to a temporary zarr store chunk by chunk.
IN_MEMORY_PIXELS = 4096 * 4096


LABEL_SCRATCH_PREFIX = ".labels."
LABEL_SCRATCH = r"\.labels\.[a-z0-9_]{8}"


@contextlib.contextmanager
def label_canvas(shape: tuple[int, int], scratch: str | os.PathLike) -> Iterator:
    """An image-sized uint32 label array, zero: in memory up to :data:`IN_MEMORY_PIXELS`,
    else a chunked zarr array in a temporary folder ``<scratch>/.labels.<8 characters>``
    (removed afterwards). Those that a killed run left in ``scratch`` are removed first: no
    other live process may use ``scratch`` (the segment job's own folder; the command line's
    scratch folder)."""
    if shape[0] * shape[1] <= IN_MEMORY_PIXELS:
        yield np.zeros(shape, np.uint32)
        return
    with scratch_dir(scratch, LABEL_SCRATCH_PREFIX) as tmp:
        # LZ4: a scratch store written and read once per chunk, where zstd's ratio buys nothing
        lz4 = zarr.codecs.BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")
        yield zarr.create_array(Path(tmp) / "labels.zarr", shape=shape, chunks=(1024, 1024), dtype=np.uint32, fill_value=0, compressors=lz4)


def segment_image(
    maps,
    heads: list[str],
    image,
    image_id: str,
    settings: SegmentSettings,
    scratch: str | os.PathLike,
    on_objects: Callable[[pd.DataFrame], None],
    writers,
    threads: int = 1,
    source: str = "",
    model: str = "",
    modality: str | None = None,
    raw=None,
    pixel_size=None,
    results: Iterable[ChunkResult] | None = None,
) -> dict:
    """Segment one image chunk by chunk, measure its nuclei and write its files.

    Parameters
    ----------
    maps : (K, H, W) array-like of float
    heads : list of str
    image : (H, W[, C]) array-like or None
        Intensities for the measurements (read window by window).
    image_id : str
    settings : SegmentSettings
    scratch : path-like
        Folder for a temporary label store (large images).
    on_objects : callable
        Called with each chunk's object table (:data:`nucseg.measure.COLUMNS` after ``image_id``).
    writers : nucseg.outputs.ImageWriters
        Receives each chunk's objects (GeoJSON, ROIs) and the finished label image (TIFF, OME-Zarr).
    threads : int
    source, model : str
        The input image's path and the model folder, for the per-image table ("" when not known).
    modality : str, optional
        The image's modality guess for the per-image table; default the one its maps were
        predicted with (their ``modality`` attribute), else "".
    raw : (H, W, C) array-like, optional
        The input's own pixels (any bit depth; read window by window): the ``raw_*`` columns, the
        per-image ``bit_depth`` and ``channels``, and the OME-Zarr's image (``image`` without it).
    pixel_size : nucseg.calibration.PixelSize, optional
        The µm columns, the label TIFF's resolution and the OME-Zarr's scale; unknown without it.
    results : iterable of nucseg.chunks.ChunkResult, optional
        The chunks' objects, numbered (``offset``) and in row-major order, when they were
        segmented already (by the region jobs of a split image: :mod:`nucseg.merge`); default
        :func:`nucseg.chunks.segment_map` of ``maps``.

    Returns
    -------
    dict
        The image's row of the per-image table (:data:`nucseg.measure.IMAGE_COLUMNS`).
    """
    pixel_size = UNKNOWN if pixel_size is None else pixel_size
    summary = _image_summary(maps, image_id, source, model, modality, raw, pixel_size)
    chunks = segment_map(maps, heads, settings, threads) if results is None else results
    return _stream_chunks(chunks, maps.shape[1:], image_id, image, raw, pixel_size, summary, scratch, on_objects, writers)


def _image_summary(maps, image_id: str, source: str, model: str, modality: str | None, raw, pixel_size) -> ImageSummary:
    """The image's row of the per-image table, to add its nuclei to: its size, the maps' predict
    scale, ``source`` and ``model``, the ``modality`` (None: the one its maps were predicted with,
    their ``modality`` attribute, else ""), ``raw``'s bit depth and channels and the pixel size."""
    height, width = maps.shape[1:]
    attrs = getattr(maps, "attrs", {})
    modality = attrs.get("modality", "") if modality is None else modality
    pixels = {} if raw is None else pixel_description(raw.dtype, raw.shape[2])
    # the maps' predict scale
    return ImageSummary(image_id, height, width, attrs.get("scale", np.nan), source, model, modality, pixels, pixel_size)


def _stream_chunks(
    chunks: Iterable[ChunkResult],
    shape: tuple[int, int],
    image_id: str,
    image,
    raw,
    pixel_size,
    summary: ImageSummary,
    scratch: str | os.PathLike,
    on_objects: Callable[[pd.DataFrame], None],
    writers,
) -> dict:
    """Paste each chunk into the image's label canvas (:func:`label_canvas`) and measure its
    nuclei (:func:`_measure_chunk`), numbered image-wide (the chunks' ``offset``, row-major
    order), into the ``summary``, ``on_objects`` and the ``writers``; then write the finished
    label image and log the count. Returns the image's row of the per-image table."""
    height, width = shape
    nuclei = []  # label, area (and in µm²) of each nucleus: the OME-Zarr's label properties
    with label_canvas((height, width), scratch) as canvas, writers.objects(image_id) as features:
        for result in chunks:
            result.paste(canvas)
            if not result.count:
                continue
            table = _measure_chunk(result, image, raw, pixel_size)
            features(result, table)
            table["label"] += result.offset
            table.insert(0, "image_id", image_id)
            summary.add(table)
            nuclei.append(table[["label", "area", "area_um2"]])
            on_objects(table)
        row = summary.row()
        objects = pd.concat(nuclei, ignore_index=True) if nuclei else None
        writers.labels(image_id, canvas, row["count"], image if raw is None else raw, pixel_size, objects)
    log.info("%s: %d nuclei (%d x %d px)", image_id, row["count"], height, width)
    return row


def _measure_chunk(result: ChunkResult, image, raw, pixel_size) -> pd.DataFrame:
    """The object table of one chunk's nuclei (:data:`nucseg.measure.COLUMNS`, labels the chunk's
    own), measured in its window of ``image`` (None: no intensities) and of ``raw`` (the
    ``raw_*`` columns), with the µm columns of ``pixel_size``."""
    window = result.window
    grey = None if image is None else np.asarray(image[window])
    table = measure_objects(result.labels, grey, (window[0].start, window[1].start), None if raw is None else np.asarray(raw[window]))
    # centroids in the coordinates of the other outputs (GeoJSON, ROIs, bounding boxes),
    # where pixel (r, c) covers [c, c + 1] x [r, r + 1]: regionprops' (pixel indices) + 0.5
    table[["centroid_y", "centroid_x"]] += PIXEL_CENTRE
    add_physical(table, pixel_size)
    return table


def _own_pixels(store: zarr.Group, image_id: str):
    """The input's own pixels of a full-size store's image (:func:`nucseg.preprocess.preprocess_fullsize`),
    ``(H, W, C)`` of any bit depth: its ``raw/<id>`` where the input was not 8-bit RGB, else
    ``images/<id>``; None for a store written before the own pixels were kept (no ``raw`` group)."""
    if "raw" not in store:
        return None
    return store["raw"][image_id] if image_id in store["raw"] else store["images"][image_id]


class DatasetOutputs:
    """The segment stage's files of a dataset, written atomically (a context manager): label TIFFs,
    OME-Zarr, GeoJSON, ImageJ ROIs and the object table as images are added, the image table
    at the end. :meth:`segment` segments an image into them; :meth:`adopt` takes an image's
    files made by another job (the merge of a split image: :mod:`nucseg.merge`)."""

    def __init__(
        self,
        index_csv: str | os.PathLike,
        out_dir: str | os.PathLike,
        objects_csv: str | os.PathLike,
        settings: SegmentSettings,
        images_csv: str | os.PathLike | None = None,
        ome_zarr_dir: str | os.PathLike | None = None,
        geojson_dir: str | os.PathLike | None = None,
        rois_dir: str | os.PathLike | None = None,
        threads: int = 1,
    ) -> None:
        self.index = pd.read_csv(index_csv, dtype={"image_id": str, "source": str, "modality": str}, keep_default_na=False)
        self.ids = self.index["image_id"].tolist()
        self.sources = dict(zip(self.ids, self.index["source"])) if "source" in self.index else {}
        self.modalities = dict(zip(self.ids, self.index["modality"])) if "modality" in self.index else {}
        self.calibration = {image_id: from_columns(row) for image_id, row in zip(self.ids, self.index.to_dict("records"))}
        self.folders = dict(labels=out_dir, ome_zarr=ome_zarr_dir, geojson=geojson_dir, rois=rois_dir)
        self.objects_csv, self.images_csv, self.settings, self.threads = objects_csv, images_csv, settings, threads
        self.rows: list[dict] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> DatasetOutputs:
        # label stores of large images that a killed run of this job left (label_canvas); the folder
        # is this job's, no live process writes there
        remove_stale(Path(self.objects_csv).parent, LABEL_SCRATCH)
        stack, settings = self._stack.__enter__(), self.settings
        self.tmp = {name: stack.enter_context(atomic_dir(folder, overwrite=True)) if folder is not None else None for name, folder in self.folders.items()}
        objects_tmp = stack.enter_context(atomic_file(self.objects_csv))
        self.scratch = Path(objects_tmp).parent
        from nucseg.outputs import ImageWriters

        on = dict(labels=settings.tiff, ome_zarr=settings.ome_zarr, geojson=settings.geojson, rois=settings.rois)
        self.writers = ImageWriters(*(self.tmp[name] if on[name] else None for name in ("labels", "ome_zarr", "geojson", "rois")), threads=self.threads)
        self.table = stack.enter_context(open(objects_tmp, "w", newline=""))
        self.table.write(",".join(["image_id", *COLUMNS]) + "\n")
        return self

    def __exit__(self, *exc) -> bool:
        done = self._stack.__exit__(*exc)
        if exc[0] is None and self.images_csv is not None:
            write_csv(self.image_table(), self.images_csv)
        return done

    def image_table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=IMAGE_COLUMNS)

    def segment(self, image_id: str, maps, heads: list[str], store: zarr.Group, model: str = "", results: Iterable[ChunkResult] | None = None) -> dict:
        """Segment one image of the full-size ``store`` from its ``maps`` (:func:`segment_image`)."""
        images = store["images"]
        row = segment_image(
            maps,
            heads,
            images[image_id],
            image_id,
            self.settings,
            self.scratch,
            lambda t: t.to_csv(self.table, header=False, index=False),
            self.writers,
            self.threads,
            source=self.sources.get(image_id, ""),
            model=model,
            # the maps' own guess (predicted with it), else the preprocess index's
            modality=maps.attrs.get("modality") or self.modalities.get(image_id, ""),
            raw=_own_pixels(store, image_id),
            pixel_size=self.calibration[image_id],
            results=results,
        )
        self.rows.append(row)
        return row

    def adopt(self, image_id: str, outputs: dict) -> None:
        """Take one image's files from the folders and tables of another job that made that
        image alone (the merge of a split image: :func:`nucseg.merge.merge_outputs` names them):
        hard links where the file system allows, else copies."""
        for name, folder in self.folders.items():
            if folder is None or self.tmp[name] is None or outputs.get(name) is None:
                continue
            for path in sorted(Path(outputs[name]).iterdir()):
                _link_tree(path, Path(self.tmp[name]) / path.name)
        with open(outputs["objects"], newline="") as table:  # its rows as they are, less the header
            next(table)
            shutil.copyfileobj(table, self.table)
        (row,) = pd.read_csv(outputs["images"], dtype={"image_id": str, "source": str, "modality": str, "model": str}, keep_default_na=False).to_dict("records")
        if row["image_id"] != image_id:
            raise ValueError(f"{outputs['images']}: the files of image {row['image_id']!r}, not {image_id!r}")
        self.rows.append(row)


def _link_tree(source: Path, dest: Path) -> None:
    if source.is_dir():
        dest.mkdir()
        for child in source.iterdir():
            _link_tree(child, dest / child.name)
        return
    try:
        os.link(source, dest)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, dest)


def segment_dataset(
    pred_zarr: str | os.PathLike,
    images_zarr: str | os.PathLike,
    index_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    objects_csv: str | os.PathLike,
    settings: SegmentSettings,
    images_csv: str | os.PathLike | None = None,
    ome_zarr_dir: str | os.PathLike | None = None,
    geojson_dir: str | os.PathLike | None = None,
    rois_dir: str | os.PathLike | None = None,
    threads: int = 1,
    merged: dict[str, dict] | None = None,
) -> pd.DataFrame:
    """Segment stage for a dataset: label TIFFs, OME-Zarr, GeoJSON, ImageJ ROIs, object and image tables.

    Parameters
    ----------
    pred_zarr : path-like
        Probability maps: one (K, H, W) float array per image id, attribute ``heads``.
    images_zarr : path-like
        Full-size store with ``images/<id>`` (intensities for the measurements and the OME-Zarr image).
    index_csv : path-like
        Its index (``image_id`` column; ``source`` and ``modality`` go into the per-image table
        where it has them).
    out_dir : path-like
        Folder of label TIFFs ``<id>.tif`` (empty with ``settings.tiff`` false).
    objects_csv : path-like
        Per-nucleus table (``image_id`` + :data:`nucseg.measure.COLUMNS`), written as it goes.
    settings : SegmentSettings
    images_csv : path-like, optional
        Per-image table (:data:`nucseg.measure.IMAGE_COLUMNS`).
    ome_zarr_dir, geojson_dir, rois_dir : path-like, optional
        Folders of ``<id>.ome.zarr``, ``<id>.geojson`` and ``<id>_rois.zip`` (empty when switched
        off or not given).
    threads : int
        Chunks segmented at once, and dask's threads for the OME-Zarr pyramids.
    merged : dict, optional
        Image id -> the files the merge of that split image made (:func:`nucseg.merge.merge_outputs`),
        taken as they are (:meth:`DatasetOutputs.adopt`); these images need no map in ``pred_zarr``.

    Returns
    -------
    pandas.DataFrame
        The per-image table.
    """
    merged = merged or {}
    preds, model, heads = _prediction_store(pred_zarr, settings)
    store = zarr.open_group(images_zarr, mode="r")
    with DatasetOutputs(index_csv, out_dir, objects_csv, settings, images_csv, ome_zarr_dir, geojson_dir, rois_dir, threads) as outputs:
        for image_id in outputs.ids:
            if image_id in merged:
                outputs.adopt(image_id, merged[image_id])
                continue
            maps = _image_maps(preds, store, image_id, pred_zarr, index_csv)
            outputs.segment(image_id, maps, map_heads(maps, heads), store, model)
    return outputs.image_table()


def _prediction_store(pred_zarr: str | os.PathLike, settings: SegmentSettings) -> tuple[zarr.Group, str, list[str]]:
    """The prediction store, its ``model`` and its ``heads``, which must name a ``body`` channel;
    logs that method ``border`` (``seed``) runs the paper's method where the model has no border
    (seed) head."""
    preds = zarr.open_group(pred_zarr, mode="r")
    model = str(preds.attrs.get("model", ""))
    heads = list(preds.attrs.get("heads", []))
    if "body" not in heads:
        raise ValueError(f"{pred_zarr}: the prediction store names no 'body' channel in its 'heads' attribute ({heads})")
    if settings.method in ("border", "seed") and method_head(settings, heads) is None:
        log.info("method %r: the model has no %s head (heads %s): the paper's method runs on the maps it predicted", settings.method, settings.method, heads)
    return preds, model, heads


def _image_maps(preds: zarr.Group, store: zarr.Group, image_id: str, pred_zarr: str | os.PathLike, index_csv: str | os.PathLike):
    """The probability maps of one image of the index, which must be in the prediction store and
    have the full-size ``store``'s image size."""
    if image_id not in preds:
        raise ValueError(f"{pred_zarr}: no probability map for image {image_id!r} of {index_csv}")
    maps = preds[image_id]
    if maps.shape[1:] != store["images"][image_id].shape[:2]:
        raise ValueError(f"{pred_zarr}: map of {image_id!r} has shape {maps.shape}, the image {store['images'][image_id].shape}")
    return maps


# --- the semantic task: class maps ---------------------------------------------------------


def segment_class_maps(pred_zarr: str | os.PathLike, index_csv: str | os.PathLike, outputs: Mapping[str, str], classes: SemanticClasses) -> pd.DataFrame:
    """Segment stage, semantic task: a class map per image (argmax) and a table of class areas;
    the segment settings (watershed) do not apply.

    Parameters
    ----------
    pred_zarr : path-like
        Class probabilities ``<id> (K, H, W) float32`` (predict stage); its ``heads`` attribute
        must name ``classes`` (a model trained on other classes is refused).
    index_csv : path-like
        The full-size store's index table (image ids).
    outputs : mapping
        The segment rule's outputs by name: ``labels``, the folder of class maps ``<id>.tif``
        ``(H, W) uint8`` holding the declared values; ``objects``, one row per image and class:
        ``image_id, class, value, pixels, fraction``; and any of ``images`` (each class's share
        per image), ``ome_zarr``, ``geojson`` and ``rois`` (made empty: not written for class
        maps yet).
    """
    pred = zarr.open_group(pred_zarr, mode="r")
    heads = list(pred.attrs.get("heads", []))
    if heads != list(classes.names):
        raise ValueError(f"{pred_zarr}: the model predicts the classes {heads}, the config declares {list(classes.names)}")
    ids = pd.read_csv(index_csv, dtype={"image_id": str})["image_id"].tolist()
    rows = []
    with atomic_dir(outputs["labels"], overwrite=True) as tmp:
        for image_id in ids:
            values = class_map(pred[image_id][:], classes)
            write_class_map(tmp / f"{image_id}.tif", values)
            counts = [int(np.count_nonzero(values == v)) for v in classes.values]
            rows += [
                dict(image_id=image_id, **{"class": n}, value=v, pixels=int(c), fraction=c / values.size)
                for n, v, c in zip(classes.names, classes.values, counts)
            ]
            log.info("%s: %s", image_id, ", ".join(f"{n} {c / values.size:.3f}" for n, c in zip(classes.names, counts)))
    table = pd.DataFrame(rows, columns=["image_id", "class", "value", "pixels", "fraction"])
    write_csv(table, outputs["objects"])
    if "images" in outputs:
        shares = table.pivot(index="image_id", columns="class", values="fraction")[list(classes.names)].add_prefix("share_")
        write_csv(shares.reset_index(), outputs["images"])
    for name in ("ome_zarr", "geojson", "rois"):
        if name in outputs:
            with atomic_dir(outputs[name], overwrite=True):
                pass
    return table
