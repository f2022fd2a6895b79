"""Segment stage: probability maps to nucleus label images, tables and viewer files.

Two instance methods (:class:`SegmentSettings` ``method``):

``paper``
    The published step (El Mokhtari): Otsu threshold of the nucleus probability, hole
    filling, markers from the distance transform spaced by the mean nucleus size,
    marker-controlled watershed.
``border``
    The challenge winners' idea, for models with a ``border`` head: the touching-border
    probability is cut out of the mask before the distance transform, so that seeds of
    touching nuclei fall apart; the watershed then grows them back over the full nucleus
    mask. A model without a border head falls back to ``paper`` (logged once per dataset).

Images of any size are segmented chunk by chunk (:func:`segment_map`): each chunk is
processed inside a window ``overlap`` pixels wider on every side; an object belongs to the
chunk that holds its centroid, keeps its whole extent from that chunk's window, and is
numbered after the objects of the chunks before it. The Otsu threshold and the mean nucleus
size are computed once per image (:func:`map_statistics`), never per chunk, so an image that
fits in one chunk and the same image cut into many give the same nuclei.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import zarr
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from nucseg.calibration import UNKNOWN, from_columns
from nucseg.files import atomic_dir, atomic_file, remove_stale, scratch_dir, write_csv
from nucseg.imageio import pixel_description
from nucseg.measure import COLUMNS, IMAGE_COLUMNS, PIXEL_CENTRE, ImageSummary, add_physical, measure_objects

log = logging.getLogger(__name__)

METHODS = ("paper", "border")
#: Side of the blocks in which :func:`map_statistics` reads a map (fixed, so that the
#: statistics do not depend on the segmentation's chunk size).
STATS_BLOCK = 2048
#: Blocks the mean nucleus size is measured on, at most (evenly spread).
STATS_SAMPLE = 16
#: The 4-neighbour cross (scipy's default structure in 2-D), as an OpenCV kernel.
CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)
#: Label images up to this many pixels are held in memory while they are built; larger
#: ones go to a temporary zarr store chunk by chunk.
IN_MEMORY_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class SegmentSettings:
    """Post-processing settings.

    Attributes
    ----------
    method : "paper" or "border"
        Instance method (module docstring). ``border`` needs a model with a ``border`` head
        and falls back to ``paper`` without one.
    threshold : "otsu" or float
        Foreground threshold on the nucleus probability. ``"otsu"`` computes it
        over the whole image and clips it into ``otsu_bounds`` (an image with no
        nucleus has no meaningful Otsu split).
    otsu_bounds : (float, float)
    min_size : int
        Objects smaller than this many pixels are removed (holes are filled regardless of size).
    marker_spacing : float
        Minimum distance between two watershed markers, as a fraction of the
        mean nucleus radius (from the mask's connected components).
    border_weight : float
        How much of the touching-border probability is subtracted before the
        distance transform (method ``border``).
    chunk : int
        Side of the chunks an image is segmented in, pixels.
    overlap : int
        Context added on every side of a chunk, pixels; wider than the largest nucleus.
    ome_zarr, tiff, geojson, rois : bool
        Which files to write per image (:mod:`nucseg.outputs`); the tables are always written.
    """

    method: str = "paper"
    threshold: str | float = "otsu"
    otsu_bounds: tuple[float, float] = field(default=(0.3, 0.7))
    min_size: int = 10
    marker_spacing: float = 0.5
    border_weight: float = 1.0
    chunk: int = 2048
    overlap: int = 128
    ome_zarr: bool = True
    tiff: bool = True
    geojson: bool = True
    rois: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "otsu_bounds", tuple(self.otsu_bounds))
        if self.method not in METHODS:
            raise ValueError(f"segment method must be one of {METHODS}, got {self.method!r}")
        if self.threshold != "otsu":
            if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not 0 < self.threshold < 1:
                raise ValueError(f"segment threshold must be 'otsu' or a number in (0, 1), got {self.threshold!r}")
        lo, hi = self.otsu_bounds
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"otsu_bounds must satisfy 0 <= low <= high <= 1, got {self.otsu_bounds}")
        if self.min_size < 0 or self.marker_spacing <= 0:
            raise ValueError(f"min_size must be >= 0 and marker_spacing > 0, got {self.min_size}, {self.marker_spacing}")
        if self.chunk < 64 or self.overlap < 0:
            raise ValueError(f"segment chunk must be >= 64 and overlap >= 0 pixels, got chunk={self.chunk}, overlap={self.overlap}")


def use_border(settings: SegmentSettings, heads: list[str] | tuple[str, ...]) -> bool:
    """Whether the border-seeded method runs: method ``border`` and a ``border`` head."""
    return settings.method == "border" and "border" in heads


# ---------------------------------------------------------------- whole-image statistics


def _blocks(shape: tuple[int, int], side: int) -> Iterator[tuple[slice, slice]]:
    """Row-major ``side`` x ``side`` blocks covering an (H, W) array (smaller at the edges)."""
    for y in range(0, shape[0], side):
        for x in range(0, shape[1], side):
            yield slice(y, min(y + side, shape[0])), slice(x, min(x + side, shape[1]))


def _grow(core: tuple[slice, slice], margin: int, shape: tuple[int, int]) -> tuple[slice, slice]:
    """``core`` widened by ``margin`` on every side, clipped to ``shape``."""
    return tuple(slice(max(0, s.start - margin), min(n, s.stop + margin)) for s, n in zip(core, shape))


def _foreground(body: np.ndarray, threshold: float, settings: SegmentSettings) -> tuple[np.ndarray, np.ndarray, int]:
    """Mask of ``body > threshold``, holes filled, objects under ``min_size`` pixels removed,
    and its 4-connected components numbered 1..n in raster order (as ``ndi.label`` of the mask)."""
    mask = body > threshold
    # fill holes: the background pieces (4-connected) that do not reach the window's edge;
    # the same as ndi.binary_fill_holes, whose iterated dilation is ten times slower
    background, _ = ndi.label(~mask)
    edge = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    reaches_edge = np.zeros(int(background.max()) + 1, bool)
    reaches_edge[edge] = True
    mask |= ~reaches_edge[background]
    components, n = ndi.label(mask)
    if settings.min_size > 1 and n:
        # skimage's remove_small_objects(max_size=min_size - 1), on the components at hand;
        # numbering the kept ones in order is what labelling the smaller mask gives
        keep = np.bincount(components.ravel(), minlength=n + 1) >= settings.min_size
        keep[0] = False
        if not keep[1:].all():
            number = (np.cumsum(keep) * keep).astype(components.dtype)
            components = number[components]
            mask = components > 0
            n = int(number.max())
    return mask, components, n


def _read(maps, channel: int, window: tuple[slice, slice]) -> np.ndarray:
    """One channel of a (K, H, W) map (numpy or zarr) in a window, as float32."""
    return np.asarray(maps[(channel, *window)], dtype=np.float32)


def _histogram(maps, channel: int, blocks: list) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The 256-bin histogram of one channel between its minimum and maximum, as
    ``np.histogram`` of the whole channel in float32 gives it (None, None for a constant map).

    A float16 map (the predict stage's) is read once: its values are counted by bit pattern
    (65,536 at most), and the distinct values, weighted by their counts, are binned by
    ``np.histogram`` itself, so every value lands in the bin it would have alone. Other types
    are read twice (range, then histogram)."""
    if np.dtype(maps.dtype) == np.float16:
        patterns = np.zeros(1 << 16, np.int64)
        for w in blocks:
            patterns += np.bincount(np.ascontiguousarray(maps[(channel, *w)]).view(np.uint16).ravel(), minlength=1 << 16)
        present = np.flatnonzero(patterns)
        values = present.astype(np.uint16).view(np.float16).astype(np.float32)
        if not np.isnan(values).any():
            low, high = values.min(), values.max()
            if low == high:
                return None, None
            counts, edges = np.histogram(values, bins=256, range=(low, high), weights=patterns[present])
            return counts.astype(np.int64), edges
    mins, maxs = zip(*((float(b.min()), float(b.max())) for b in (_read(maps, channel, w) for w in blocks)))
    low, high = np.float32(min(mins)), np.float32(max(maxs))
    if low == high:
        return None, None
    counts = np.zeros(256, np.int64)
    for w in blocks:
        block_counts, edges = np.histogram(_read(maps, channel, w), bins=256, range=(low, high))
        counts += block_counts
    return counts, edges


def map_statistics(maps, channel: int, settings: SegmentSettings) -> tuple[float, int]:
    """Foreground threshold and marker spacing of a whole map, read block by block.

    Parameters
    ----------
    maps : (K, H, W) array-like of float (numpy, or a zarr array read lazily)
    channel : int
        The body channel.
    settings : SegmentSettings

    Returns
    -------
    threshold : float
        ``settings.threshold``, or Otsu's threshold over the whole map (the same 256-bin
        histogram as :func:`skimage.filters.threshold_otsu` of the whole map, summed over
        blocks) clipped into ``otsu_bounds``; the middle of the bounds for a constant map.
    spacing : int
        Minimum marker distance: ``marker_spacing`` times the mean nucleus radius, from the
        foreground pixels over the number of connected components (each counted in the
        block holding its bounding box's top-left corner; at most :data:`STATS_SAMPLE`
        blocks, evenly spread), at least 1.
    """
    return _statistics(maps, channel, settings)[:2]


def _statistics(maps, channel: int, settings: SegmentSettings) -> tuple[float, int, tuple | None]:
    """:func:`map_statistics`, and the foreground it computed (window, mask, components, n)
    when the image is one block: the segmentation of an image that small reuses it."""
    shape = tuple(maps.shape[1:])
    blocks = list(_blocks(shape, STATS_BLOCK))
    if settings.threshold != "otsu":
        threshold = float(settings.threshold)
    else:
        lo, hi = settings.otsu_bounds
        counts, edges = _histogram(maps, channel, blocks)
        if counts is None:
            threshold = 0.5 * (lo + hi)
        else:
            centres = (edges[:-1] + edges[1:]) / 2.0
            threshold = float(np.clip(threshold_otsu(hist=(counts, centres)), lo, hi))
    pixels = components = 0
    foreground = None
    # the mean nucleus size from at most STATS_SAMPLE blocks spread over the image (all of
    # an image up to 8192 x 8192)
    for core in blocks[:: -(-len(blocks) // STATS_SAMPLE)]:
        window = _grow(core, settings.overlap, shape)
        mask, labelled, n = _foreground(_read(maps, channel, window), threshold, settings)
        if len(blocks) == 1:
            foreground = (window, mask, labelled, n)
        if n == 0:
            continue
        y0, x0 = core[0].start - window[0].start, core[1].start - window[1].start
        y1, x1 = y0 + core[0].stop - core[0].start, x0 + core[1].stop - core[1].start
        pixels += int(np.count_nonzero(mask[y0:y1, x0:x1]))
        corners = np.array([(s[0].start, s[1].start) for s in ndi.find_objects(labelled)])
        components += int(np.count_nonzero((corners[:, 0] >= y0) & (corners[:, 0] < y1) & (corners[:, 1] >= x0) & (corners[:, 1] < x1)))
    mean_area = pixels / components if components else 0.0
    spacing = max(1, int(round(settings.marker_spacing * math.sqrt(mean_area / math.pi))))
    return threshold, spacing, foreground


def foreground_threshold(prob: np.ndarray, settings: SegmentSettings) -> float:
    """The threshold to apply to ``prob``: a fixed value, or Otsu's clipped into ``otsu_bounds``."""
    return map_statistics(np.asarray(prob, dtype=np.float32)[None], 0, settings)[0]


# ---------------------------------------------------------------- one window


def segment_window(
    body: np.ndarray, border: np.ndarray | None, threshold: float, spacing: int, settings: SegmentSettings, foreground: tuple | None = None
) -> np.ndarray:
    """Instances of one window, with the image's threshold and marker spacing.

    Parameters
    ----------
    body : (H, W) ndarray of float32
    border : (H, W) ndarray of float32 or None
        Touching-border probability (method ``border``), or None (method ``paper``).
    threshold, spacing : float, int
        From :func:`map_statistics` of the whole image.
    foreground : (mask, components, n), optional
        The window's foreground as the statistics pass computed it (an image of one block),
        instead of computing it again.

    Returns
    -------
    (H, W) ndarray of int32
        0 is background; labels are not consecutive (objects under ``min_size`` removed).
    """
    mask, components, n = _foreground(body, threshold, settings) if foreground is None else foreground
    if n == 0:
        return np.zeros(body.shape, np.int32)
    seeds_mask = mask
    if border is not None:
        seeds_mask = mask & (body - settings.border_weight * border > threshold)
    distance = distance_transform(seeds_mask)
    smooth = ndi.gaussian_filter(distance, 1.0)
    peaks = label_peaks(smooth, components, spacing)
    markers = np.zeros(body.shape, np.uint8)
    markers[tuple(peaks.T)] = 1
    # ndi.binary_dilation(markers, iterations=1): the 4-neighbour cross, zero beyond the edge
    grown = cv2.dilate(markers, CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    markers, _ = ndi.label(grown & seeds_mask)
    # components with no marker (tiny or cut away by the border) keep their own label
    marked = np.zeros(n + 1, bool)
    marked[components[markers > 0]] = True
    if not marked[1:].all():
        extra = ~marked[components] & mask
        markers[extra] = components[extra] + markers.max()
    labels = watershed(-distance if border is None else -distance_transform(mask), markers, mask=mask)
    if settings.min_size > 1:
        areas = np.bincount(labels.ravel())
        labels[areas[labels] < settings.min_size] = 0
    return labels


def distance_transform(mask: np.ndarray) -> np.ndarray:
    """:func:`scipy.ndimage.distance_transform_edt` of a 2-D mask, value for value, through
    OpenCV's exact Euclidean transform (Felzenszwalb's algorithm; about 8x faster): its float32
    distances are squared back to the integers they are the roots of and rooted in float64."""
    if not mask.any() or mask.all() or max(mask.shape) > 4096:  # outside what the rounding below keeps exact
        return ndi.distance_transform_edt(mask)
    d = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.sqrt(np.rint(np.square(d, dtype=np.float64)))


def _square_max(image: np.ndarray, square: np.ndarray) -> np.ndarray:
    """``ndi.maximum_filter(image, footprint=square, mode="nearest")``, value for value (a
    maximum is exact), through OpenCV's dilation: about 30x faster on a window."""
    if image.dtype not in (np.float32, np.float64, np.uint8, np.uint16, np.int16) or min(image.shape) < 1:
        return ndi.maximum_filter(image, footprint=square.astype(bool), mode="nearest")
    return cv2.dilate(image, square, borderType=cv2.BORDER_REPLICATE)


def label_peaks(image: np.ndarray, labels: np.ndarray, min_distance: int) -> np.ndarray:
    """Peaks of ``image`` per label: the same set of points as
    ``skimage.feature.peak_local_max(image, min_distance=min_distance, labels=labels, exclude_border=False)``,
    without its per-label loop where labels lie apart.

    skimage takes each label's bounding box, sets the pixels of other labels and background
    to the lowest value, keeps the pixels equal to the maximum over the ``2 * min_distance + 1``
    square around them (mode ``nearest``), above the image's minimum, and thins each label's
    peaks greedily, highest first, to a Chebyshev distance of at least ``min_distance``. For a
    label no other label comes that near, one maximum filter over the whole image (other
    pixels at the lowest value) gives the same maxima; the others (and labels with no peak
    candidates beyond a plateau, which skimage treats specially) go through skimage's steps
    on their own bounding boxes.

    Returns
    -------
    (N, 2) ndarray of int
        Row, column of each peak; order unspecified.
    """
    size = 2 * min_distance + 1
    square = np.ones((size, size), np.uint8)
    threshold = image.min()
    inside = labels > 0
    low = np.finfo(image.dtype).min if np.issubdtype(image.dtype, np.floating) else np.iinfo(image.dtype).min
    is_max = (image == _square_max(np.where(inside, image, low), square)) & inside
    # a label pixel whose square holds another label's pixel (labels as float32: exact below 2^24)
    n = int(labels.max(initial=0))
    if n >= 1 << 24:
        raise ValueError(f"label_peaks takes fewer than 2^24 labels per window, got {n}")
    numbers = labels.astype(np.float32)
    highest = _square_max(numbers, square)
    lowest = -_square_max(np.where(inside, -numbers, -np.inf).astype(np.float32), square)
    mixed = inside & ((highest != numbers) | (lowest != numbers))
    slow = np.zeros(n + 1, bool)
    slow[labels[mixed]] = True
    area = np.bincount(labels.ravel(), minlength=n + 1)
    slow |= np.bincount(labels[is_max], minlength=n + 1) == area  # a plateau: skimage's "trivial image"
    slow &= area > 0  # numbers no pixel carries
    slow[0] = False
    rows, cols = np.nonzero(is_max & ~slow[labels] & (image > threshold))  # row-major, as skimage lists them
    found = [(rows, cols)]
    objects = ndi.find_objects(labels)
    for label in np.flatnonzero(slow):  # skimage's steps on the label's bounding box
        roi = objects[label - 1]
        own = labels[roi] == label
        box = np.where(own, image[roi], low)
        if box.size == 1:
            peak = box > threshold
        else:
            peak = box == _square_max(box, square)
            if peak[own].all():  # a plateau: no peak, except isolated pixels
                peak[:] = False
                peak[own ^ ndi.binary_opening(own)] = True
            peak &= box > threshold
        r, c = np.nonzero(peak)
        found.append((r + roi[0].start, c + roi[1].start))
    rows, cols = (np.concatenate(axis) for axis in zip(*found))
    ids, values = labels[rows, cols], image[rows, cols]
    # by label, then highest first, ties in row-major order
    order = np.lexsort((rows * labels.shape[1] + cols, -values, ids))
    rows, cols, ids = rows[order], cols[order], ids[order]
    keep = np.ones(len(ids), bool)
    if min_distance > 1:  # skimage's ensure_spacing, label by label
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, int)
        for start, stop in zip(starts, np.r_[starts[1:], len(ids)]):
            for i in range(start, stop - 1):
                if keep[i]:
                    near = np.maximum(np.abs(rows[i + 1 : stop] - rows[i]), np.abs(cols[i + 1 : stop] - cols[i])) < min_distance
                    keep[i + 1 : stop] &= ~near
    return np.stack([rows[keep], cols[keep]], axis=1).astype(np.intp)


def segment_probability(prob: np.ndarray, settings: SegmentSettings, border: np.ndarray | None = None) -> np.ndarray:
    """Instances from a nucleus probability map held in memory (the whole image at once).

    Parameters
    ----------
    prob : (H, W) ndarray of float in [0, 1]
        Nucleus (body) probability.
    settings : SegmentSettings
    border : (H, W) ndarray of float, optional
        Touching-border probability; used with method ``border``.

    Returns
    -------
    (H, W) ndarray of uint32
        0 is background, nuclei numbered 1..N. All zeros when nothing passes the threshold.
    """
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2:
        raise ValueError(f"expected a 2-D probability map, got shape {prob.shape}")
    heads = ["body"]
    maps = prob[None]
    if border is not None:
        if border.shape != prob.shape:
            raise ValueError(f"border map {border.shape} and probability map {prob.shape} differ in shape")
        heads.append("border")
        maps = np.stack([prob, np.asarray(border, dtype=np.float32)])
    one = dataclasses.replace(settings, chunk=max(64, *prob.shape))  # the whole image in one window
    labels = np.zeros(prob.shape, np.uint32)
    for result in segment_map(maps, heads, one):
        result.paste(labels)
    return labels


# ---------------------------------------------------------------- chunk by chunk


@dataclass
class ChunkResult:
    """The objects a chunk owns, numbered 1..n in the window (globally: ``offset + k``).

    Attributes
    ----------
    window : (slice, slice)
        Where ``labels`` lies in the image.
    labels : (h, w) ndarray of uint32
        The owned objects, whole, 0 elsewhere.
    count : int
    cut : int
        Owned objects touching an inner edge of the window (wider than the overlap).
    offset : int
        Objects of the chunks before this one (set by :func:`segment_map`).
    """

    window: tuple[slice, slice]
    labels: np.ndarray
    count: int
    cut: int
    offset: int = 0

    def paste(self, out) -> None:
        """Write the owned objects, numbered ``offset + k``, into the image-sized ``out``."""
        if not self.count:
            return
        region = np.asarray(out[self.window])
        inside = self.labels > 0
        region[inside] = self.labels[inside] + self.offset
        out[self.window] = region


def _segment_chunk(
    maps, body: int, border: int | None, core: tuple[slice, slice], stats: tuple[float, int], settings: SegmentSettings, cached: tuple | None = None
) -> ChunkResult:
    shape = tuple(maps.shape[1:])
    window = _grow(core, settings.overlap, shape)
    foreground = cached[1:] if cached is not None and cached[0] == window else None
    labels = segment_window(_read(maps, body, window), None if border is None else _read(maps, border, window), *stats, settings, foreground)
    n = int(labels.max(initial=0))
    if n == 0:
        return ChunkResult(window, np.zeros(labels.shape, np.uint32), 0, 0)
    pixels = np.flatnonzero(labels)
    ids = labels.ravel()[pixels]
    yy, xx = np.divmod(pixels, labels.shape[1])
    area = np.bincount(ids, minlength=n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.floor(np.bincount(ids, weights=yy, minlength=n + 1) / area) + window[0].start
        cx = np.floor(np.bincount(ids, weights=xx, minlength=n + 1) / area) + window[1].start
    owned = (area > 0) & (cy >= core[0].start) & (cy < core[0].stop) & (cx >= core[1].start) & (cx < core[1].stop)
    owned[0] = False
    number = np.cumsum(owned).astype(np.uint32) * owned
    out = number[labels]
    # owned objects reaching an edge of the window that is not an edge of the image were cut
    edges = []
    if window[0].start > 0:
        edges.append(out[0])
    if window[0].stop < shape[0]:
        edges.append(out[-1])
    if window[1].start > 0:
        edges.append(out[:, 0])
    if window[1].stop < shape[1]:
        edges.append(out[:, -1])
    cut = np.unique(np.concatenate(edges)) if edges else np.zeros(0, np.uint32)
    return ChunkResult(window, out, int(number.max()), int(np.count_nonzero(cut)))


def segment_map(maps, heads: list[str] | tuple[str, ...], settings: SegmentSettings, threads: int = 1) -> Iterator[ChunkResult]:
    """Segment a (K, H, W) probability map chunk by chunk; yield each chunk's owned objects.

    Parameters
    ----------
    maps : (K, H, W) array-like of float in [0, 1]
        numpy, or a zarr array (any float dtype, any chunking), read window by window.
    heads : sequence of str
        Channel names; ``"body"`` is required, ``"border"`` is used by method ``border``.
    settings : SegmentSettings
    threads : int
        Chunks segmented at once; results are yielded in row-major chunk order.

    Yields
    ------
    ChunkResult
        With ``offset`` set: the first chunk's objects are 1..n, the next chunk's follow.
        Memory stays bounded by ``2 * threads`` windows.
    """
    heads = list(heads)
    if len(maps.shape) != 3 or maps.shape[0] != len(heads):
        raise ValueError(f"expected a (K, H, W) map with K = {len(heads)} channels {heads}, got shape {tuple(maps.shape)}")
    if "body" not in heads:
        raise ValueError(f"the map has no 'body' channel (channels: {heads})")
    body = heads.index("body")
    border = heads.index("border") if use_border(settings, heads) else None
    threshold, spacing, cached = _statistics(maps, body, settings)
    stats = (threshold, spacing)
    cores = list(_blocks(tuple(maps.shape[1:]), settings.chunk))
    offset = cut = 0
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending: deque = deque()
        queue = iter(cores)
        for core in queue:
            pending.append(pool.submit(_segment_chunk, maps, body, border, core, stats, settings, cached))
            if len(pending) >= 2 * max(1, threads):
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(queue, None)
            if nxt is not None:
                pending.append(pool.submit(_segment_chunk, maps, body, border, nxt, stats, settings, cached))
            result.offset = offset
            offset += result.count
            cut += result.cut
            yield result
    if cut:
        log.warning("%d nuclei reach the edge of their chunk's window: they are wider than segment.overlap (%d px), raise it", cut, settings.overlap)


# ---------------------------------------------------------------- the stage


#: The temporary label store of a large image (:func:`label_canvas`): its prefix, and its names.
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

    Returns
    -------
    dict
        The image's row of the per-image table (:data:`nucseg.measure.IMAGE_COLUMNS`).
    """
    height, width = maps.shape[1:]
    attrs = getattr(maps, "attrs", {})
    modality = attrs.get("modality", "") if modality is None else modality
    pixel_size = UNKNOWN if pixel_size is None else pixel_size
    pixels = {} if raw is None else pixel_description(raw.dtype, raw.shape[2])
    # the maps' predict scale
    summary = ImageSummary(image_id, height, width, attrs.get("scale", np.nan), source, model, modality, pixels, pixel_size)
    nuclei = []  # label, area (and in µm²) of each nucleus: the OME-Zarr's label properties
    with label_canvas((height, width), scratch) as canvas, writers.objects(image_id) as features:
        for result in segment_map(maps, heads, settings, threads):
            result.paste(canvas)
            if not result.count:
                continue
            window = result.window
            grey = None if image is None else np.asarray(image[window])
            table = measure_objects(result.labels, grey, (window[0].start, window[1].start), None if raw is None else np.asarray(raw[window]))
            # centroids in the coordinates of the other outputs (GeoJSON, ROIs, bounding boxes),
            # where pixel (r, c) covers [c, c + 1] x [r, r + 1]: regionprops' (pixel indices) + 0.5
            table[["centroid_y", "centroid_x"]] += PIXEL_CENTRE
            add_physical(table, pixel_size)
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


def _own_pixels(store: zarr.Group, image_id: str):
    """The input's own pixels of a full-size store's image (:func:`nucseg.preprocess.preprocess_fullsize`),
    ``(H, W, C)`` of any bit depth: its ``raw/<id>`` where the input was not 8-bit RGB, else
    ``images/<id>``; None for a store written before the own pixels were kept (no ``raw`` group)."""
    if "raw" not in store:
        return None
    return store["raw"][image_id] if image_id in store["raw"] else store["images"][image_id]


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

    Returns
    -------
    pandas.DataFrame
        The per-image table.
    """
    from nucseg.outputs import ImageWriters

    index = pd.read_csv(index_csv, dtype={"image_id": str, "source": str, "modality": str}, keep_default_na=False)
    ids = index["image_id"].tolist()
    sources = dict(zip(ids, index["source"])) if "source" in index else {}
    modalities = dict(zip(ids, index["modality"])) if "modality" in index else {}
    preds = zarr.open_group(pred_zarr, mode="r")
    model = str(preds.attrs.get("model", ""))
    heads = list(preds.attrs.get("heads", []))
    if "body" not in heads:
        raise ValueError(f"{pred_zarr}: the prediction store names no 'body' channel in its 'heads' attribute ({heads})")
    if settings.method == "border" and "border" not in heads:
        log.info("method 'border': the model has no border head (heads %s), so the paper's method runs", heads)
    store = zarr.open_group(images_zarr, mode="r")
    images = store["images"]
    calibration = {image_id: from_columns(row) for image_id, row in zip(ids, index.to_dict("records"))}
    rows = []
    # label stores of large images that a killed run of this job left (label_canvas); the folder
    # is this job's, no live process writes there
    remove_stale(Path(objects_csv).parent, LABEL_SCRATCH)
    with contextlib.ExitStack() as stack:
        labels_tmp = stack.enter_context(atomic_dir(out_dir, overwrite=True))
        ome_tmp = stack.enter_context(atomic_dir(ome_zarr_dir, overwrite=True)) if ome_zarr_dir is not None else None
        geo_tmp = stack.enter_context(atomic_dir(geojson_dir, overwrite=True)) if geojson_dir is not None else None
        rois_tmp = stack.enter_context(atomic_dir(rois_dir, overwrite=True)) if rois_dir is not None else None
        objects_tmp = stack.enter_context(atomic_file(objects_csv))
        writers = ImageWriters(
            labels_tmp if settings.tiff else None,
            ome_tmp if settings.ome_zarr else None,
            geo_tmp if settings.geojson else None,
            rois_tmp if settings.rois else None,
            threads=threads,
        )
        with open(objects_tmp, "w", newline="") as table_file:
            table_file.write(",".join(["image_id", *COLUMNS]) + "\n")
            for image_id in ids:
                if image_id not in preds:
                    raise ValueError(f"{pred_zarr}: no probability map for image {image_id!r} of {index_csv}")
                maps = preds[image_id]
                if maps.shape[1:] != images[image_id].shape[:2]:
                    raise ValueError(f"{pred_zarr}: map of {image_id!r} has shape {maps.shape}, the image {images[image_id].shape}")
                rows.append(
                    segment_image(
                        maps,
                        heads,
                        images[image_id],
                        image_id,
                        settings,
                        Path(objects_tmp).parent,
                        lambda t: t.to_csv(table_file, header=False, index=False),
                        writers,
                        threads,
                        source=sources.get(image_id, ""),
                        model=model,
                        # the maps' own guess (predicted with it), else the preprocess index's
                        modality=maps.attrs.get("modality") or modalities.get(image_id, ""),
                        raw=_own_pixels(store, image_id),
                        pixel_size=calibration[image_id],
                    )
                )
    table = pd.DataFrame(rows, columns=IMAGE_COLUMNS)
    if images_csv is not None:
        write_csv(table, images_csv)
    return table
