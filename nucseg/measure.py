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

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from nucseg.calibration import UNKNOWN

COLUMNS = [
    "label",
    "area",
    "centroid_y",
    "centroid_x",
    "bbox_min_y",
    "bbox_min_x",
    "bbox_max_y",
    "bbox_max_x",
    "equivalent_diameter",
    "eccentricity",
    "solidity",
    "mean_intensity",
    "perimeter",
    "orientation",
    "major_axis_length",
    "minor_axis_length",
    "integrated_intensity",
    # in micrometres (NaN where the pixel size is unknown: nucseg.calibration)
    "area_um2",
    "perimeter_um",
    "equivalent_diameter_um",
    "major_axis_length_um",
    "minor_axis_length_um",
    "centroid_y_um",
    "centroid_x_um",
    # the input's own values, channel by channel (NaN for channels it does not have)
    *(f"raw_{stat}_c{c}" for c in range(1, 4) for stat in ("mean", "integrated", "min", "max")),
]
#: Channels of the input measured on their own values (grey: 1; RGB: 3, alpha dropped).
RAW_CHANNELS = 3
#: The µm columns and the pixel columns they are made from, with the power of the pixel size.
UM_COLUMNS = {
    "area_um2": ("area", 2),
    "perimeter_um": ("perimeter", 1),
    "equivalent_diameter_um": ("equivalent_diameter", 1),
    "major_axis_length_um": ("major_axis_length", 1),
    "minor_axis_length_um": ("minor_axis_length", 1),
    "centroid_y_um": ("centroid_y", "y"),
    "centroid_x_um": ("centroid_x", "x"),
}

#: Columns of the per-image table (:meth:`ImageSummary.row`), in this order (new ones are added at the end).
IMAGE_COLUMNS = [
    "image_id",
    "height",
    "width",
    "count",
    "density_per_megapixel",
    "mean_area",
    "median_area",
    "coverage_fraction",
    "predict_scale",
    "source",
    "model",
    "modality",
    "bit_depth",
    "channels",
    "pixel_size_y_um",
    "pixel_size_x_um",
    "pixel_size_from",
]

#: The centre of pixel ``(r, c)`` is ``(r + 0.5, c + 0.5)`` in the coordinates that the segment
#: stage's outputs share (pixel ``(r, c)`` covers ``[c, c + 1] x [r, r + 1]``, as in QuPath and
#: ImageJ): added to :func:`measure_objects`' centroids (pixel indices, as regionprops') in
#: ``objects.csv`` and the GeoJSON's measurements.
PIXEL_CENTRE = 0.5

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


def _ragged_arange(counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(c) for c in counts])``."""
    starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum())) - np.repeat(starts, counts)


def _convex_areas(label_of_pixel: np.ndarray, yy: np.ndarray, xx: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Pixels of each object's convex hull as :func:`skimage.morphology.convex_hull_image`
    counts them: the hull of the pixels' edge midpoints, pixel centres inside or on it.

    The pixels are given in row-major order (as ``np.flatnonzero`` lists them). The row ends
    of all objects are found at once; only the hull itself (OpenCV) is computed
    object by object; the pixel centres inside are counted row by row for all objects at once.
    """
    # first and last pixel of every (object, row)
    order = np.argsort(label_of_pixel, kind="stable")  # the pixels come in row-major order
    lab, row, col = label_of_pixel[order], yy[order], xx[order]
    start = np.flatnonzero(np.r_[True, (lab[1:] != lab[:-1]) | (row[1:] != row[:-1])])
    first, last = col[start], np.r_[col[start[1:] - 1], col[-1]]
    run_label, run_row = lab[start], row[start]
    objects = np.searchsorted(present, run_label)
    bounds = np.flatnonzero(np.r_[True, objects[1:] != objects[:-1], True])
    diamond = np.array([[-0.5, 0], [0.5, 0], [0, -0.5], [0, 0.5]], np.float32)
    # the four edge midpoints of every run end, grouped object by object (first ends, then
    # last ends: the order within an object does not change its hull)
    ends = np.concatenate([np.stack([first, run_row], 1), np.stack([last, run_row], 1)]).astype(np.float32)
    ends = ends[np.argsort(np.r_[objects, objects], kind="stable")]
    points = (ends[:, None, :] + diamond).reshape(-1, 1, 2)
    cuts = 8 * bounds
    hulls = [cv2.convexHull(points[cuts[i] : cuts[i + 1]]).reshape(-1, 2) for i in range(present.size)]
    sizes = np.array([len(h) for h in hulls])
    hull = np.concatenate(hulls).astype(np.float64)
    nxt = np.arange(hull.shape[0]) + 1
    nxt[np.cumsum(sizes) - 1] -= sizes  # each hull's last vertex joins its first
    x0, y0, x1, y1 = hull[:, 0], hull[:, 1], hull[nxt, 0], hull[nxt, 1]
    edge_start = np.cumsum(sizes) - sizes
    # every (row, edge) pair of each object, rows grouped
    pair_count = sizes[objects]
    pair_edge = np.repeat(edge_start[objects], pair_count) + _ragged_arange(pair_count)
    r = np.repeat(run_row.astype(np.float64), pair_count)
    ey0, ey1, ex0, ex1 = y0[pair_edge], y1[pair_edge], x0[pair_edge], x1[pair_edge]
    crosses = (np.minimum(ey0, ey1) <= r + 1e-9) & (r - 1e-9 <= np.maximum(ey0, ey1))
    flat = ey1 == ey0
    with np.errstate(divide="ignore", invalid="ignore"):
        x = ex0 + np.clip((r - ey0) / (ey1 - ey0), 0, 1) * (ex1 - ex0)
    lo = np.where(crosses, np.where(flat, np.minimum(ex0, ex1), x), np.inf)
    hi = np.where(crosses, np.where(flat, np.maximum(ex0, ex1), x), -np.inf)
    group = np.cumsum(pair_count) - pair_count
    lo, hi = np.minimum.reduceat(lo, group), np.maximum.reduceat(hi, group)
    count = np.maximum(np.floor(hi + 1e-9) - np.ceil(lo - 1e-9) + 1, 0)
    # rows without pixels inside a bounding box (an object in several pieces) are not
    # counted; watershed regions are connected, so they do not occur
    return np.bincount(objects, weights=count, minlength=present.size)


def measure_objects(labels: np.ndarray, image: np.ndarray | None = None, offset: tuple[int, int] = (0, 0), raw: np.ndarray | None = None) -> pd.DataFrame:
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
    raw : (H, W) or (H, W, C) ndarray, optional
        The input's own pixels (any bit depth, C up to :data:`RAW_CHANNELS`) for the
        ``raw_{mean,integrated,min,max}_c<k>`` columns of each channel; NaN without it and for
        channels beyond C.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COLUMNS`, one row per label present, by label. Pixels; centroid and
        bbox in row/column coordinates, bbox max exclusive; ``orientation`` in radians
        between the row axis and the major axis (-pi/2..pi/2, scikit-image's convention);
        ``perimeter`` as :func:`skimage.measure.perimeter`; axis lengths of the ellipse
        with the same second moments; ``solidity`` the area over the convex hull's.
        The µm columns are NaN (:func:`add_physical` fills them). No rows for an image
        without nuclei.
    """
    labels, grey, raw = _checked_inputs(labels, image, raw)
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
    table = _shape_table(labels, total, flat, yy, xx, area, present, n, offset)
    _add_intensities(table, grey, raw, pixels, flat, total, area, present, n)
    return table[COLUMNS]


def _shape_table(labels, total, flat, yy, xx, area, present, n, offset) -> pd.DataFrame:
    """:func:`measure_objects`' table of the labels ``present``: the position and shape columns,
    the intensity and µm columns NaN. ``total`` sums per-pixel weights by label, ``flat``, ``yy``
    and ``xx`` are the labelled pixels' labels and coordinates."""
    cy, cx, l1, l2, eccentricity, orientation = _moments(total, flat, yy, xx, area, present, n)
    slices = ndi.find_objects(labels, max_label=n)
    bbox = np.array([[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in (slices[k - 1] for k in present)], dtype=np.int64)
    convex = _convex_areas(flat, yy, xx, present)
    return pd.DataFrame(
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
            **{c: np.nan for c in COLUMNS[COLUMNS.index("area_um2") :]},
        }
    )


def _add_intensities(table: pd.DataFrame, grey, raw, pixels, flat, total, area, present, n) -> None:
    """Fill ``table``'s intensity columns in place: from the image ``grey`` (the mean over its
    channels) and each channel of the own pixels ``raw``, where given, at the labelled pixels
    (flat indices ``pixels``)."""
    if grey is not None:
        # the mean over channels at the objects' pixels only (the same float64 values as the
        # whole image's mean over its channel axis)
        values = grey.reshape(-1, grey.shape[2])[pixels].mean(axis=1) if grey.ndim == 3 else grey.ravel()[pixels].astype(np.float64)
        integrated = total(values)
        table["integrated_intensity"] = integrated
        table["mean_intensity"] = integrated / area
    if raw is not None:
        for c in range(raw.shape[2]):
            values = raw[..., c].ravel()[pixels]
            integrated = total(values.astype(np.float64))
            low = np.full(n + 1, np.inf)
            high = np.full(n + 1, -np.inf)
            np.minimum.at(low, flat, values)
            np.maximum.at(high, flat, values)
            table[f"raw_mean_c{c + 1}"] = integrated / area
            table[f"raw_integrated_c{c + 1}"] = integrated
            table[f"raw_min_c{c + 1}"] = low[present]
            table[f"raw_max_c{c + 1}"] = high[present]


def _checked_inputs(labels, image, raw) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """:func:`measure_objects`' arrays, checked: labels (H, W) of integers, the image and the
    own pixels of the same size (the own pixels as (H, W, C))."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool:
        raise ValueError(f"expected a 2-D integer label image, got {labels.shape} {labels.dtype}")
    if image is not None:
        image = np.asarray(image)
        if image.shape[:2] != labels.shape or image.ndim not in (2, 3):
            raise ValueError(f"image {image.shape} and labels {labels.shape} differ in size")
    if raw is not None:
        raw = np.asarray(raw)
        raw = raw[..., None] if raw.ndim == 2 else raw
        if raw.ndim != 3 or raw.shape[:2] != labels.shape or not 1 <= raw.shape[2] <= RAW_CHANNELS:
            raise ValueError(f"raw image {raw.shape} does not match labels {labels.shape} with 1 to {RAW_CHANNELS} channels")
    return labels, image, raw


def _moments(total, flat, yy, xx, area, present, n):
    """Centroids, the second-moment ellipse's eigenvalues, eccentricity and orientation of each
    object (``total`` sums a per-pixel value by object)."""
    cy, cx = total(yy) / area, total(xx) / area
    # central second moments over the area: skimage's inertia tensor [[a, b], [b, c]]
    centre_y, centre_x = np.zeros(n + 1), np.zeros(n + 1)
    centre_y[present], centre_x[present] = cy, cx
    dy, dx = yy - centre_y[flat], xx - centre_x[flat]
    a, c, b = total(dx * dx) / area, total(dy * dy) / area, -total(dy * dx) / area
    root = np.sqrt(((a - c) / 2) ** 2 + b * b)
    l1, l2 = np.maximum((a + c) / 2 + root, 0), np.maximum((a + c) / 2 - root, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        eccentricity = np.where(l1 > 0, np.sqrt(np.clip(1 - l2 / l1, 0, 1)), 0.0)
    orientation = np.where(np.isclose(a, c, rtol=0, atol=1e-12), np.where(b < 0, math.pi / 4, -math.pi / 4), 0.5 * np.arctan2(-2 * b, c - a))
    return cy, cx, l1, l2, eccentricity, orientation


def add_physical(table: pd.DataFrame, pixel_size) -> pd.DataFrame:
    """Fill the µm columns of a :func:`measure_objects` table from its pixel columns, in place.

    Parameters
    ----------
    table : pandas.DataFrame
    pixel_size : nucseg.calibration.PixelSize
        Areas use ``y * x``, centroids each axis's size, lengths the size of a square pixel (NaN
        on anisotropic pixels); all NaN when unknown.

    Returns
    -------
    pandas.DataFrame
        ``table``.
    """
    factors = {1: pixel_size.length, 2: pixel_size.area, "y": pixel_size.y, "x": pixel_size.x}
    for column, (pixels, power) in UM_COLUMNS.items():
        table[column] = table[pixels].to_numpy(np.float64) * factors[power]
    return table


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

    def __init__(
        self,
        image_id: str,
        height: int,
        width: int,
        predict_scale: float = float("nan"),
        source: str = "",
        model: str = "",
        modality: str = "",
        pixels: dict | None = None,
        pixel_size=None,
    ) -> None:
        self.image_id, self.height, self.width = image_id, int(height), int(width)
        self.predict_scale = float(predict_scale)
        self.source, self.model, self.modality = str(source), str(model), str(modality)
        self.pixels = {"bit_depth": np.nan, "channels": np.nan, **(pixels or {})}
        self.pixel_size = UNKNOWN if pixel_size is None else pixel_size
        self.areas = np.zeros(1, np.int64)  # areas[a] = number of objects of area a

    def add(self, table: pd.DataFrame) -> None:
        """Count the objects of a :func:`measure_objects` table (the ``area`` column)."""
        counts = np.bincount(table["area"].to_numpy(np.int64), minlength=self.areas.size)
        counts[: self.areas.size] += self.areas
        self.areas = counts

    def row(self) -> dict:
        """:data:`IMAGE_COLUMNS`: ``count``, ``density_per_megapixel`` (count per 10^6 pixels),
        ``mean_area``/``median_area`` (pixels; NaN without objects), ``coverage_fraction``
        (share of the image's pixels inside a nucleus), ``predict_scale`` (the factor the
        image's maps were predicted at: with ``scale: auto`` its own; NaN when not known),
        ``source`` (the input image's path), ``model`` (the model folder) and ``modality`` (the
        image's modality guess, :func:`nucseg.imageio.guess_modality`), each "" when not known;
        ``bit_depth`` and ``channels`` of the input's own pixels (:func:`nucseg.imageio.describe_pixels`,
        NaN when not known); ``pixel_size_y_um``, ``pixel_size_x_um`` and where they came from,
        ``pixel_size_from`` (:mod:`nucseg.calibration`; NaN and "unknown" when the input does not say)."""
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
            "predict_scale": self.predict_scale,
            "source": self.source,
            "model": self.model,
            "modality": self.modality,
            "bit_depth": self.pixels["bit_depth"],
            "channels": self.pixels["channels"],
            **self.pixel_size.columns(),
        }
