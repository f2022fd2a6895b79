"""One large image over many jobs (the workflow's ``split.region``): the plan and the region predicts.

An image larger than ``region`` pixels in either direction is cut into the grid of
:func:`nucseg.tiling.blocks` (``region`` a side; the last row and column narrower), each region
a job of its own: on the local cores, or through a cluster profile on as many nodes as the
cluster gives. The answer stays the single job's, nucleus for nucleus, because what depends on
the whole image is computed once, before the region jobs:

1. :func:`plan_dataset` (the checkpoint ``plan_regions``): per image to split, its regions and
   what predict takes from the whole image: the statistics of normalisation and the modality
   guess (:func:`nucseg.bigimage.image_statistics`, whose histogram the plan keeps), hence the
   modality model that predicts it, and the scale (``predict.scale: auto``'s estimate).
2. :func:`predict_region` (rule ``predict_region``): the maps of one region, from the windows of
   the whole image that reach it, in the whole image's batches (:func:`nucseg.tiling.stream_tiled`
   ``region``): put together, the regions' maps equal the whole image's bit for bit.

The segment side (the whole map's threshold and nucleus size, the regions' watershed, the
merge into one label image and its files) is :mod:`nucseg.merge`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from nucseg.bigimage import ImageStatistics
from nucseg.files import atomic_dir, atomic_file
from nucseg.tiling import blocks

log = logging.getLogger(__name__)

#: The plan file's format; a plan of another version is refused (the checkpoint reruns).
PLAN_VERSION = 1
#: The smallest region side: a region must hold several windows' worth of nuclei.
MIN_REGION = 256


@dataclass(frozen=True)
class SplitSettings:
    """The workflow's ``split`` section.

    Attributes
    ----------
    region : int
        Images larger than this many pixels in either direction are cut into regions of this
        side, each predicted and segmented by jobs of its own (then merged); 0: off.
    """

    region: int = 0

    def __post_init__(self) -> None:
        check_region(self.region)


@dataclass(frozen=True)
class SplitImage:
    """One image of a plan: where it is, its regions, and the whole image's predict inputs.

    Attributes
    ----------
    position : int
        Its row in the dataset's index (the workflow's ``{image}`` wildcard).
    image_id : str
    shape : (int, int)
    regions : list of (slice, slice)
        Row-major; region ``k`` of the workflow's ``{region}`` wildcard is ``regions[k]``.
    statistics : nucseg.bigimage.ImageStatistics
    scale : float
    """

    position: int
    image_id: str
    shape: tuple[int, int]
    regions: list[tuple[slice, slice]]
    statistics: ImageStatistics
    scale: float

    def to_json(self) -> dict:
        stats = self.statistics
        return dict(
            position=self.position,
            image_id=self.image_id,
            shape=list(self.shape),
            regions=[[r.start, r.stop, c.start, c.stop] for r, c in self.regions],
            histogram=stats.histogram.tolist(),
            modality=stats.modality,
            stride=stats.stride,
            scale=self.scale,
        )

    @classmethod
    def from_json(cls, entry: dict) -> SplitImage:
        stats = ImageStatistics(histogram=np.asarray(entry["histogram"], np.int64), modality=entry["modality"], stride=int(entry["stride"]))
        regions = [(slice(a, b), slice(c, d)) for a, b, c, d in entry["regions"]]
        return cls(int(entry["position"]), str(entry["image_id"]), tuple(entry["shape"]), regions, stats, float(entry["scale"]))


@dataclass(frozen=True)
class Plan:
    """The images of a dataset that are split, by position (:func:`read_plan`)."""

    region: int
    images: dict[int, SplitImage]

    def image(self, position: int | str, path: str | os.PathLike = "plan") -> SplitImage:
        if int(position) not in self.images:
            raise ValueError(f"{path}: image {position} is not split (split images: {sorted(self.images)})")
        return self.images[int(position)]

    @property
    def ids(self) -> frozenset[str]:
        """The ids of the split images (left out of the dataset's own predict and segment jobs)."""
        return frozenset(entry.image_id for entry in self.images.values())


def read_plan(path: str | os.PathLike) -> Plan:
    """A plan file written by :func:`plan_dataset`."""
    try:
        data = json.loads(Path(path).read_text())
        if data.get("version") != PLAN_VERSION:
            raise ValueError(f"plan version {data.get('version')}, this nucseg reads {PLAN_VERSION}")
        return Plan(int(data["region"]), {int(e["position"]): SplitImage.from_json(e) for e in data["images"]})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable plan of split images ({exc})") from exc


def check_region(region: int) -> None:
    if region != 0 and region < MIN_REGION:
        raise ValueError(f"split region must be 0 (off) or at least {MIN_REGION} pixels, got {region}")


def plan_dataset(
    model_dir: str | os.PathLike,
    images_zarr: str | os.PathLike,
    index_csv: str | os.PathLike,
    out_json: str | os.PathLike,
    settings,
    region: int,
    threads: int | None = None,
) -> Plan:
    """Plan the split of a full-size store's images: those larger than ``region`` in either
    direction, their regions, statistics and scale (module docstring); writes ``out_json``
    (atomically) and returns the plan. With ``region`` 0, or no image that large, the plan is
    empty. ``settings``: :class:`nucseg.infer.PredictSettings`."""
    from nucseg.bigimage import LazyImage, image_statistics
    from nucseg.infer import choose_scale, open_predictor  # (torch: not for the segment side's imports)

    check_region(region)
    ids = pd.read_csv(index_csv, dtype={"image_id": str})["image_id"].tolist()
    images = zarr.open_group(images_zarr, mode="r")["images"]
    large = [(position, image_id) for position, image_id in enumerate(ids) if region and max(images[image_id].shape[:2]) > region]
    entries = []
    predictor = open_predictor(model_dir, settings, threads) if large else None
    for position, image_id in large:
        lazy = LazyImage(images[image_id], "YXC", f"{images_zarr}:images/{image_id}")
        stats = image_statistics(lazy)
        routed, _ = predictor.route(stats.modality)
        scale = choose_scale(routed, lazy, settings, routed.normalizer(lazy, stats))
        cells = list(blocks(lazy.shape, region))
        entries.append(SplitImage(position, image_id, lazy.shape, cells, stats, scale))
        log.info("%s: %d x %d split into %d regions of up to %d px (scale %g)", image_id, *lazy.shape, len(cells), region, scale)
    plan = Plan(region, {e.position: e for e in entries})
    with atomic_file(out_json) as tmp:
        Path(tmp).write_text(json.dumps(dict(version=PLAN_VERSION, region=region, images=[e.to_json() for e in entries]), indent=1) + "\n")
    return plan


def predict_region(
    model_dir: str | os.PathLike,
    images_zarr: str | os.PathLike,
    plan_json: str | os.PathLike,
    position: int | str,
    region: int | str,
    out_zarr: str | os.PathLike,
    settings,
    threads: int | None = None,
) -> None:
    """The maps of one region of a split image: a zarr array ``(K, h, w)`` float16 at
    ``out_zarr`` (written atomically), attributes ``heads``, ``region`` ([top, bottom, left,
    right] in the image), ``image_shape``, ``scale``, ``modality`` and ``modality_model``.
    ``settings``: :class:`nucseg.infer.PredictSettings`."""
    from nucseg.bigimage import LazyImage
    from nucseg.infer import open_predictor, predict_lazy, to_float16

    entry = read_plan(plan_json).image(position, plan_json)
    if not 0 <= int(region) < len(entry.regions):
        raise ValueError(f"{plan_json}: image {entry.image_id!r} has regions 0..{len(entry.regions) - 1}, not {region}")
    rows, cols = entry.regions[int(region)]
    source = zarr.open_group(images_zarr, mode="r")["images"][entry.image_id]
    if tuple(source.shape[:2]) != entry.shape:
        raise ValueError(f"{images_zarr}: image {entry.image_id!r} is {source.shape[:2]}, the plan {plan_json} says {entry.shape}: plan again")
    predictor = open_predictor(model_dir, settings, threads)
    heads = predictor.route(entry.statistics.modality)[0].heads  # a modality model may have heads of its own
    h, w, c, k = rows.stop - rows.start, cols.stop - cols.start, settings.chunk, len(heads)
    start = time.perf_counter()
    with atomic_dir(out_zarr, overwrite=True) as tmp:
        array = zarr.create_array(tmp, shape=(k, h, w), dtype="float16", chunks=(k, min(h, c), min(w, c)), fill_value=0)

        def sink(row: int, block: np.ndarray) -> None:
            array[:, row : row + block.shape[1]] = to_float16(block)

        lazy = LazyImage(source, "YXC", f"{images_zarr}:images/{entry.image_id}")
        scale, routed = predict_lazy(predictor, lazy, settings, sink, flush_rows=min(h, c), stats=entry.statistics, scale=entry.scale, region=(rows, cols))
        array.attrs.update(
            heads=heads,
            region=[rows.start, rows.stop, cols.start, cols.stop],
            image_shape=list(entry.shape),
            scale=scale,
            modality=entry.statistics.modality,
            modality_model=routed,
            model=str(model_dir),
        )
    seconds = time.perf_counter() - start
    log.info("%s region %s (%d x %d px) predicted in %.1f s (%.2f megapixels/s)", entry.image_id, region, h, w, seconds, h * w / 1e6 / max(seconds, 1e-9))
