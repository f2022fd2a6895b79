"""Segment stage: probability maps to nucleus label images.

The published instance step (El Mokhtari): Otsu threshold of the nucleus
probability, hole filling, markers from the distance transform spaced by the
mean nucleus size, marker-controlled watershed. When the model also predicts
touching borders, they are cut out of the mask before the distance transform,
so that seeds of touching nuclei fall apart (the challenge winners' idea); the
watershed then grows them back over the full nucleus mask.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_objects
from skimage.segmentation import relabel_sequential, watershed

from nucseg.files import atomic_dir, write_csv
from nucseg.imageio import write_labels
from nucseg.measure import measure_objects

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentSettings:
    """Post-processing settings.

    Attributes
    ----------
    threshold : "otsu" or float
        Foreground threshold on the nucleus probability. ``"otsu"`` computes it
        over the whole image and clips it into ``otsu_bounds`` (an image with no
        nucleus has no meaningful Otsu split).
    otsu_bounds : (float, float)
    min_size : int
        Objects (and holes are filled regardless of size) smaller than this many pixels are removed.
    marker_spacing : float
        Minimum distance between two watershed markers, as a fraction of the
        mean nucleus radius (from the mask's connected components).
    border_weight : float
        How much of the touching-border probability is subtracted before the
        distance transform (only with a ``border`` head).
    """

    threshold: str | float = "otsu"
    otsu_bounds: tuple[float, float] = field(default=(0.3, 0.7))
    min_size: int = 10
    marker_spacing: float = 0.5
    border_weight: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "otsu_bounds", tuple(self.otsu_bounds))
        if self.threshold != "otsu":
            if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not 0 < self.threshold < 1:
                raise ValueError(f"segment threshold must be 'otsu' or a number in (0, 1), got {self.threshold!r}")
        lo, hi = self.otsu_bounds
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"otsu_bounds must satisfy 0 <= low <= high <= 1, got {self.otsu_bounds}")
        if self.min_size < 0 or self.marker_spacing <= 0:
            raise ValueError(f"min_size must be >= 0 and marker_spacing > 0, got {self.min_size}, {self.marker_spacing}")


def foreground_threshold(prob: np.ndarray, settings: SegmentSettings) -> float:
    """The threshold to apply to ``prob``: a fixed value, or Otsu's clipped into ``otsu_bounds``."""
    if settings.threshold != "otsu":
        return float(settings.threshold)
    lo, hi = settings.otsu_bounds
    if float(prob.min()) == float(prob.max()):
        return 0.5 * (lo + hi)
    return float(np.clip(threshold_otsu(prob), lo, hi))


def segment_probability(prob: np.ndarray, settings: SegmentSettings, border: np.ndarray | None = None) -> np.ndarray:
    """Instances from a nucleus probability map.

    Parameters
    ----------
    prob : (H, W) ndarray of float in [0, 1]
        Nucleus (body) probability.
    settings : SegmentSettings
    border : (H, W) ndarray of float, optional
        Touching-border probability.

    Returns
    -------
    (H, W) ndarray of uint32
        0 is background, nuclei numbered 1..N. All zeros when nothing passes the threshold.
    """
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2:
        raise ValueError(f"expected a 2-D probability map, got shape {prob.shape}")
    if border is not None and border.shape != prob.shape:
        raise ValueError(f"border map {border.shape} and probability map {prob.shape} differ in shape")
    t = foreground_threshold(prob, settings)
    mask = ndi.binary_fill_holes(prob > t)
    if settings.min_size > 1:
        mask = remove_small_objects(mask, max_size=settings.min_size - 1)
    components, n = ndi.label(mask)
    if n == 0:
        return np.zeros(prob.shape, np.uint32)
    seeds_mask = mask
    if border is not None:
        seeds_mask = mask & (prob - settings.border_weight * border > t)
    distance = ndi.distance_transform_edt(seeds_mask)
    mean_area = np.count_nonzero(mask) / n
    spacing = max(1, int(round(settings.marker_spacing * math.sqrt(mean_area / math.pi))))
    smooth = ndi.gaussian_filter(distance, 1.0)
    peaks = peak_local_max(smooth, min_distance=spacing, labels=components, exclude_border=False)
    markers = np.zeros(prob.shape, np.int32)
    markers[tuple(peaks.T)] = 1
    markers, _ = ndi.label(ndi.binary_dilation(markers, iterations=1) & seeds_mask)
    # components with no marker (tiny or cut away by the border) keep their own label
    unmarked = np.setdiff1d(np.unique(components[mask]), np.unique(components[markers > 0]))
    if unmarked.size:
        extra = np.isin(components, unmarked)
        markers[extra] = components[extra] + markers.max()
    labels = watershed(-distance if border is None else -ndi.distance_transform_edt(mask), markers, mask=mask)
    if settings.min_size > 1:
        areas = np.bincount(labels.ravel())
        labels[areas[labels] < settings.min_size] = 0
    return relabel_sequential(labels)[0].astype(np.uint32)


def segment_dataset(pred_zarr: str | os.PathLike, images_zarr: str | os.PathLike, index_csv: str | os.PathLike, out_dir: str | os.PathLike, objects_csv: str | os.PathLike, settings: SegmentSettings) -> pd.DataFrame:
    """Segment stage: label images (``<out_dir>/<id>.tif``) and a per-object table for a dataset.

    Returns the object table (see :func:`nucseg.measure.measure_objects`), also written to ``objects_csv``.
    """
    ids = pd.read_csv(index_csv, dtype={"image_id": str})["image_id"].tolist()
    preds = zarr.open_group(pred_zarr, mode="r")
    heads = list(preds.attrs["heads"])
    images = zarr.open_group(images_zarr, mode="r")["images"]
    tables = []
    with atomic_dir(out_dir, overwrite=True) as tmp:
        for image_id in ids:
            maps = preds[image_id][:]
            border = maps[heads.index("border")] if "border" in heads else None
            labels = segment_probability(maps[heads.index("body")], settings, border)
            write_labels(Path(tmp) / f"{image_id}.tif", labels)
            table = measure_objects(labels, images[image_id][:])
            table.insert(0, "image_id", image_id)
            tables.append(table)
            log.info("%s: %d nuclei", image_id, int(labels.max()))
    objects = pd.concat(tables, ignore_index=True)
    write_csv(objects, objects_csv)
    return objects
