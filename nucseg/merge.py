"""One large image over many jobs, segment side: the whole map's statistics, the regions'
watershed and the merge into one label image and its files.

After the region predicts of :mod:`nucseg.split`, the regions' maps read as one map
(:class:`RegionMaps`) and the segment stage's chunk scheme (:mod:`nucseg.chunks`) runs over it
in three rules:

1. :func:`region_statistics` (rule ``region_statistics``, once per image): the foreground
   threshold (Otsu's, over the whole map) and the marker spacing (the mean nucleus size), as
   :func:`nucseg.watershed.map_statistics` computes them for the single job;
2. :func:`segment_region` (rule ``segment_region``, one job per region): the chunks whose top-left
   corner lies in the region, each segmented inside its window (which may reach into the
   neighbouring regions' maps), with those statistics; their objects, numbered 1..n per chunk, go
   to a zarr group;
3. :func:`merge_image` (rule ``merge_regions``): the chunks in the single job's order, numbered
   as it numbers them, through the segment stage's own :meth:`nucseg.postprocess.DatasetOutputs.segment`
   (measurements, label TIFF, OME-Zarr, GeoJSON, ROIs and tables).

So the nuclei, their numbers and every file equal the single job's; the dataset's segment job
takes the merged files as they are (:func:`merge_outputs`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zarr

from nucseg.chunks import ChunkResult, chunk_cores, segment_map, warn_cut
from nucseg.files import atomic_dir, atomic_file
from nucseg.postprocess import DatasetOutputs
from nucseg.split import SplitImage, read_plan
from nucseg.watershed import SegmentSettings, map_statistics

log = logging.getLogger(__name__)

#: The merge's files in its output folder, as :class:`nucseg.postprocess.DatasetOutputs` names them.
MERGED = dict(labels="labels", ome_zarr="ome_zarr", geojson="geojson", rois="rois", objects="objects.csv", images="images.csv")


class RegionMaps:
    """The maps of a split image's regions (:func:`nucseg.split.predict_region`), read as one
    ``(K, H, W)`` array: ``maps[channel, rows, cols]`` gathers the regions it covers."""

    def __init__(self, folders: list[str | os.PathLike], entry: SplitImage) -> None:
        if len(folders) != len(entry.regions):
            raise ValueError(f"image {entry.image_id!r}: {len(entry.regions)} regions planned, {len(folders)} map folders given")
        self.arrays = [zarr.open_array(folder, mode="r") for folder in folders]
        self.regions = entry.regions
        for folder, array, (rows, cols) in zip(folders, self.arrays, self.regions):
            planned = [rows.start, rows.stop, cols.start, cols.stop]
            if list(array.attrs.get("region", [])) != planned:
                raise ValueError(f"{folder}: maps of region {array.attrs.get('region')}, the plan has {planned}: predict it again")
        first = self.arrays[0]
        self.heads = list(first.attrs["heads"])
        self.shape = (len(self.heads), *entry.shape)
        self.dtype = first.dtype
        self.attrs = {key: first.attrs.get(key) for key in ("scale", "modality", "modality_model", "model")}

    def __getitem__(self, key) -> np.ndarray:
        channel, rows, cols = key
        (r0, r1, _), (c0, c1, _) = rows.indices(self.shape[1]), cols.indices(self.shape[2])
        out = np.empty((r1 - r0, c1 - c0), self.dtype)
        for array, (ry, rx) in zip(self.arrays, self.regions):
            y0, y1, x0, x1 = max(r0, ry.start), min(r1, ry.stop), max(c0, rx.start), min(c1, rx.stop)
            if y1 > y0 and x1 > x0:
                out[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] = array[channel, y0 - ry.start : y1 - ry.start, x0 - rx.start : x1 - rx.start]
        return out


def _image(plan_json, position) -> SplitImage:
    return read_plan(plan_json).image(position, plan_json)


def _body(maps: RegionMaps) -> int:
    if "body" not in maps.heads:
        raise ValueError(f"the region maps name no 'body' channel in their 'heads' attribute ({maps.heads})")
    return maps.heads.index("body")


def region_statistics(
    plan_json: str | os.PathLike, position: int | str, map_folders: list, out_json: str | os.PathLike, settings: SegmentSettings
) -> tuple[float, int]:
    """The whole map's threshold and marker spacing (:func:`nucseg.watershed.map_statistics`) of a
    split image, from its regions' maps; written to ``out_json`` and returned."""
    entry = _image(plan_json, position)
    maps = RegionMaps(map_folders, entry)
    threshold, spacing = map_statistics(maps, _body(maps), settings)
    with atomic_file(out_json) as tmp:
        Path(tmp).write_text(json.dumps(dict(image_id=entry.image_id, threshold=threshold, spacing=spacing)) + "\n")
    log.info("%s: threshold %.4f, marker spacing %d px, over the whole map of %d regions", entry.image_id, threshold, spacing, len(entry.regions))
    return threshold, spacing


def owner(core: tuple[slice, slice], regions: list[tuple[slice, slice]]) -> int:
    """The region holding a chunk's top-left corner: the region job that segments the chunk."""
    y, x = core[0].start, core[1].start
    return next(k for k, (rows, cols) in enumerate(regions) if rows.start <= y < rows.stop and cols.start <= x < cols.stop)


def segment_region(
    plan_json: str | os.PathLike,
    position: int | str,
    region: int | str,
    map_folders: list,
    statistics_json: str | os.PathLike,
    out_zarr: str | os.PathLike,
    settings: SegmentSettings,
    threads: int = 1,
) -> int:
    """Segment the chunks a region owns (:func:`owner`) with the whole map's statistics; writes a
    zarr group at ``out_zarr`` (atomically) with one array per chunk, named by the chunk's place
    in the image's row-major order (:func:`nucseg.chunks.chunk_cores`): its objects numbered 1..n,
    attributes ``window`` and ``count``, ``cut``. Returns the region's number of objects."""
    entry = _image(plan_json, position)
    maps = RegionMaps(map_folders, entry)
    stats = json.loads(Path(statistics_json).read_text())
    region = int(region)
    numbered = [(k, core) for k, core in enumerate(chunk_cores(entry.shape, settings)) if owner(core, entry.regions) == region]
    total = 0
    with atomic_dir(out_zarr, overwrite=True) as tmp:
        group = zarr.open_group(tmp, mode="w")
        results = segment_map(maps, maps.heads, settings, threads, statistics=(stats["threshold"], stats["spacing"]), cores=[core for _, core in numbered])
        for (k, _), result in zip(numbered, results):
            labels = result.labels if result.count else np.zeros((0, 0), np.uint32)
            array = group.create_array(str(k), shape=labels.shape, dtype=np.uint32, chunks=(1024, 1024) if labels.size else (1, 1), fill_value=0)
            array[...] = labels
            (a, b), (c, d) = ((s.start, s.stop) for s in result.window)
            array.attrs.update(window=[a, b, c, d], count=result.count, cut=result.cut)
            total += result.count
        group.attrs.update(chunks=[k for k, _ in numbered], chunk=settings.chunk, region=region)
    log.info("%s region %d: %d chunks, %d nuclei", entry.image_id, region, len(numbered), total)
    return total


def merged_chunks(entry: SplitImage, chunk_folders: list, settings: SegmentSettings) -> Iterator[ChunkResult]:
    """The regions' chunks in the image's row-major order, numbered as :func:`nucseg.chunks.segment_map`
    numbers the single job's (each chunk's objects after those of the chunks before it)."""
    groups = [zarr.open_group(folder, mode="r") for folder in chunk_folders]
    if len(groups) != len(entry.regions):
        raise ValueError(f"image {entry.image_id!r}: {len(entry.regions)} regions planned, {len(groups)} segmented regions given")
    offset = cut = 0
    for k, core in enumerate(chunk_cores(entry.shape, settings)):
        group = groups[owner(core, entry.regions)]
        if str(k) not in group:
            chunk = group.attrs.get("chunk")
            raise ValueError(f"{chunk_folders[owner(core, entry.regions)]}: no chunk {k} (segmented with chunk {chunk}, not {settings.chunk}?): rerun it")
        array = group[str(k)]
        attrs = array.attrs.asdict()
        (a, b, c, d), count = attrs["window"], int(attrs["count"])
        labels = np.asarray(array[...]) if count else np.zeros((b - a, d - c), np.uint32)
        yield ChunkResult((slice(a, b), slice(c, d)), labels, count, int(attrs["cut"]), offset)
        offset += count
        cut += int(attrs["cut"])
    warn_cut(cut, settings)


def merge_outputs(folder: str | os.PathLike) -> dict[str, Path]:
    """The files of a merged image in ``folder``, by the keys :meth:`nucseg.postprocess.DatasetOutputs.adopt` reads."""
    return {key: Path(folder) / name for key, name in MERGED.items()}


def merged_images(plan_json: str | os.PathLike, folders: list) -> dict[str, dict[str, Path]]:
    """Image id -> the merged files (:func:`merge_outputs`) of each image a plan splits, from the
    merge folders ``.../<position>/merged`` (the segment rule's input; one per split image)."""
    by_position = {Path(folder).parent.name: folder for folder in folders}
    plan = read_plan(plan_json)
    missing = sorted(set(map(str, plan.images)) - set(by_position))
    if missing:
        raise ValueError(f"{plan_json}: no merged files given for the split images at positions {missing}")
    return {entry.image_id: merge_outputs(by_position[str(position)]) for position, entry in plan.images.items()}


def merge_image(
    plan_json: str | os.PathLike,
    position: int | str,
    map_folders: list,
    chunk_folders: list,
    images_zarr: str | os.PathLike,
    index_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: SegmentSettings,
    threads: int = 1,
) -> dict:
    """Merge a split image: its regions' chunks through the segment stage's files and tables
    (label TIFF, OME-Zarr, GeoJSON, ROIs, the object table and the image's row), in ``out_dir``
    (atomically; :func:`merge_outputs` names them). Returns the image's row."""
    entry = _image(plan_json, position)
    maps = RegionMaps(map_folders, entry)
    _body(maps)
    store = zarr.open_group(images_zarr, mode="r")
    if tuple(store["images"][entry.image_id].shape[:2]) != entry.shape:
        raise ValueError(f"{images_zarr}: image {entry.image_id!r} is {store['images'][entry.image_id].shape[:2]}, the plan {plan_json} says {entry.shape}")
    with atomic_dir(out_dir, overwrite=True) as tmp:
        files = merge_outputs(tmp)
        folders = [files[key] for key in ("labels", "objects", "images", "ome_zarr", "geojson", "rois")]
        with DatasetOutputs(index_csv, folders[0], folders[1], settings, *folders[2:], threads=threads) as outputs:
            chunks = merged_chunks(entry, chunk_folders, settings)
            row = outputs.segment(entry.image_id, maps, maps.heads, store, str(maps.attrs.get("model") or ""), results=chunks)
    return row
