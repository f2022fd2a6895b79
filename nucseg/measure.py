"""Per-object measurements of a label image, and the per-image summary.

:func:`measure_objects` computes every column with whole-array operations
(``numpy.bincount`` over the label image: moments, intensities, the weighted
boundary-pixel perimeter), and only the convex hull (for ``solidity``) object
by object on its bounding box; the values equal scikit-image's
``regionprops`` (tested). :class:`ImageSummary` accumulates the per-image
figures chunk by chunk, so that neither table needs all the objects of a
large image in memory at once.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

COLUMNS = [
    "label", "area", "centroid_y", "centroid_x", "bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x",
    "equivalent_diameter", "eccentricity", "solidity", "mean_intensity",
    "perimeter", "orientation", "major_axis_length", "minor_axis_length", "integrated_intensity",
]

#: Columns of the per-image table (:meth:`ImageSummary.row`).
IMAGE_COLUMNS = ["image_id", "height", "width", "count", "density_per_megapixel", "mean_area", "median_area", "coverage_fraction"]

# skimage.measure.perimeter(image, neighborhood=4): weights of the boundary-pixel codes
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + math.sqrt(2)) / 2
_NEIGHBOURS = [(dy, dx, 2 if dy == 0 or dx == 0 else 10) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def _perimeters(labels: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Perimeter of each label in ``present`` as :func:`skimage.measure.perimeter` (4-neighbourhood)
    of its own mask: boundary pixels weighted by the pattern of their boundary neighbours."""
    padded = np.pad(labels, 1)
    flat = padded.ravel()
    step = padded.shape[1]
    inside = np.flatnonzero(flat)
    own = flat[inside]
    border = np.zeros(inside.size, bool)
    for shift in (-step, step, -1, 1):
        border |= flat[inside + shift] != own
    edge = inside[border]
    is_border = np.zeros(flat.size, bool)
    is_border[edge] = True
    own = flat[edge]
    code = np.ones(edge.size, np.int64)
    for dy, dx, weight in _NEIGHBOURS:
        other = edge + dy * step + dx
        code += weight * ((flat[other] == own) & is_border[other])
    sums = np.bincount(own.astype(np.intp), weights=_PERIMETER_WEIGHTS[code], minlength=int(present[-1]) + 1)
    return sums[present]


def _convex_areas(labels: np.ndarray, slices: list, present: np.ndarray) -> np.ndarray:
    """Pixels of each object's convex hull as :func:`skimage.morphology.convex_hull_image`
    counts them: the hull of the pixels' edge midpoints, pixel centres inside or on it."""
    out = np.empty(present.size)
    diamond = np.array([[-0.5, 0], [0.5, 0], [0, -0.5], [0, 0.5]])
    for i, k in enumerate(present):
        mask = labels[slices[k - 1]] == k
        rows = np.flatnonzero(mask.any(axis=1))
        first = mask[rows].argmax(axis=1)
        last = mask.shape[1] - 1 - mask[rows, ::-1].argmax(axis=1)
        ends = np.concatenate([np.stack([rows, first], 1), np.stack([rows, last], 1)])
        points = (ends[:, None, :] + diamond).reshape(-1, 2)
        try:
            equations = ConvexHull(points).equations  # n_r * r + n_c * c + d <= 0 inside
        except QhullError:  # degenerate (a single row or column): the hull is the object itself
            out[i] = np.count_nonzero(mask)
            continue
        r = np.arange(mask.shape[0], dtype=np.float64)[:, None]
        bound = -(equations[:, 2] + equations[:, 0] * r)  # n_c * c <= bound, per row and facet
        nc = equations[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            right = np.where(nc > 1e-12, bound / nc, np.inf).min(axis=1)
            left = np.where(nc < -1e-12, bound / nc, -np.inf).max(axis=1)
        ok = np.all(np.where(np.abs(nc) <= 1e-12, bound >= -1e-9, True), axis=1)
        count = np.floor(right + 1e-9) - np.ceil(left - 1e-9) + 1
        out[i] = np.sum(np.where(ok, np.maximum(count, 0), 0))
    return out


def measure_objects(labels: np.ndarray, image: np.ndarray | None = None, offset: tuple[int, int] = (0, 0)) -> pd.DataFrame:
    """One row per nucleus of a label image.

    Parameters
    ----------
    labels : (H, W) ndarray of integers
        0 is background.
    image : (H, W) or (H, W, 3) ndarray, optional
        Intensities for ``mean_intensity`` and ``integrated_intensity`` (of the mean over
        channels); NaN without it.
    offset : (int, int)
        Added to the centroid and bounding-box coordinates: the position of ``labels``
        in a larger image (a chunk of it).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COLUMNS`, one row per label present, by label. Pixels; centroid and
        bbox in row/column coordinates, bbox max exclusive; ``orientation`` in radians
        between the row axis and the major axis (-pi/2..pi/2, scikit-image's convention);
        ``perimeter`` as :func:`skimage.measure.perimeter`; axis lengths of the ellipse
        with the same second moments; ``solidity`` the area over the convex hull's.
        No rows for an image without nuclei.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool:
        raise ValueError(f"expected a 2-D integer label image, got {labels.shape} {labels.dtype}")
    grey = None
    if image is not None:
        image = np.asarray(image)
        grey = image.mean(axis=2) if image.ndim == 3 else image.astype(np.float64)
        if grey.shape != labels.shape:
            raise ValueError(f"image {image.shape} and labels {labels.shape} differ in size")
    n = int(labels.max(initial=0))
    if n == 0:
        return pd.DataFrame({c: pd.Series(dtype=np.int64 if c in ("label", "area") or c.startswith("bbox") else np.float64) for c in COLUMNS})
    pixels = np.flatnonzero(labels)
    flat = labels.ravel()[pixels].astype(np.intp)
    area_all = np.bincount(flat, minlength=n + 1)
    present = np.flatnonzero(area_all[1:]) + 1
    yy, xx = np.divmod(pixels, labels.shape[1])
    yy, xx = yy.astype(np.float64), xx.astype(np.float64)

    def total(weights: np.ndarray) -> np.ndarray:
        return np.bincount(flat, weights=weights, minlength=n + 1)[present]

    area = area_all[present].astype(np.float64)
    cy, cx = total(yy) / area, total(xx) / area
    # central second moments over the area: skimage's inertia tensor [[a, b], [b, c]]
    a = total(xx * xx) / area - cx * cx
    c = total(yy * yy) / area - cy * cy
    b = -(total(yy * xx) / area - cy * cx)
    a, c = np.maximum(a, 0), np.maximum(c, 0)
    root = np.sqrt(((a - c) / 2) ** 2 + b * b)
    l1, l2 = np.maximum((a + c) / 2 + root, 0), np.maximum((a + c) / 2 - root, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        eccentricity = np.where(l1 > 0, np.sqrt(np.clip(1 - l2 / l1, 0, 1)), 0.0)
    orientation = np.where(np.isclose(a, c, rtol=0, atol=1e-12), np.where(b < 0, math.pi / 4, -math.pi / 4), 0.5 * np.arctan2(-2 * b, c - a))
    slices = ndi.find_objects(labels, max_label=n)
    bbox = np.array([[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in (slices[k - 1] for k in present)], dtype=np.int64)
    convex = _convex_areas(labels, slices, present)
    table = pd.DataFrame(
        {
            "label": present.astype(np.int64),
            "area": area.astype(np.int64),
            "centroid_y": cy + offset[0],
            "centroid_x": cx + offset[1],
            "bbox_min_y": bbox[:, 0] + offset[0],
            "bbox_min_x": bbox[:, 1] + offset[1],
            "bbox_max_y": bbox[:, 2] + offset[0],
            "bbox_max_x": bbox[:, 3] + offset[1],
            "equivalent_diameter": np.sqrt(4 * area / math.pi),
            "eccentricity": eccentricity,
            "solidity": area / convex,
            "mean_intensity": np.nan,
            "perimeter": _perimeters(labels, present),
            "orientation": orientation,
            "major_axis_length": 4 * np.sqrt(l1),
            "minor_axis_length": 4 * np.sqrt(l2),
            "integrated_intensity": np.nan,
        }
    )
    if grey is not None:
        integrated = total(np.asarray(grey, dtype=np.float64).ravel()[pixels])
        table["integrated_intensity"] = integrated
        table["mean_intensity"] = integrated / area
    return table[COLUMNS]


class ImageSummary:
    """Per-image figures accumulated object table by object table (chunk by chunk).

    Only the histogram of integer areas is kept (for the exact median), never the objects.

    Examples
    --------
    >>> s = ImageSummary("img", 1000, 1000)
    >>> s.add(pd.DataFrame({"area": [10, 30]}))
    >>> s.row()["median_area"]
    20.0
    """

    def __init__(self, image_id: str, height: int, width: int) -> None:
        self.image_id, self.height, self.width = image_id, int(height), int(width)
        self.areas = np.zeros(1, np.int64)  # areas[a] = number of objects of area a

    def add(self, table: pd.DataFrame) -> None:
        """Count the objects of a :func:`measure_objects` table (the ``area`` column)."""
        counts = np.bincount(table["area"].to_numpy(np.int64), minlength=self.areas.size)
        counts[: self.areas.size] += self.areas
        self.areas = counts

    def row(self) -> dict:
        """:data:`IMAGE_COLUMNS`: ``count``, ``density_per_megapixel`` (count per 10^6 pixels),
        ``mean_area``/``median_area`` (pixels; NaN without objects), ``coverage_fraction``
        (share of the image's pixels inside a nucleus)."""
        count = int(self.areas.sum())
        sizes = np.arange(self.areas.size)
        pixels = int((sizes * self.areas).sum())
        median = np.nan
        if count:
            cumulative = np.cumsum(self.areas)
            lower = int(np.searchsorted(cumulative, (count + 1) // 2))  # the (count+1)//2-th smallest
            upper = int(np.searchsorted(cumulative, count // 2 + 1))  # the (count//2+1)-th smallest
            median = (lower + upper) / 2
        size = self.height * self.width
        return {
            "image_id": self.image_id,
            "height": self.height,
            "width": self.width,
            "count": count,
            "density_per_megapixel": count / size * 1e6,
            "mean_area": pixels / count if count else np.nan,
            "median_area": float(median),
            "coverage_fraction": pixels / size,
        }
