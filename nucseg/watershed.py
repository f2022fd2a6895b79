"""The watershed of one window, and the whole-map statistics it is given.

Four instance methods (:class:`SegmentSettings` ``method``):

``paper``
    The published step (El Mokhtari): Otsu threshold of the nucleus probability, hole
    filling, markers from the distance transform spaced by the mean nucleus size,
    marker-controlled watershed.
``border``
    The challenge winners' idea, for models with a ``border`` head: the touching-border
    probability is cut out of the mask before the distance transform, so that seeds of
    touching nuclei fall apart; the watershed then grows them back over the full nucleus
    mask. A model without a border head falls back to ``paper`` (logged once per dataset).
``seed``
    de Andrade's shrunk nuclei, for models with a ``seed`` head (each nucleus's core, apart
    from its neighbours'): the markers are the connected pieces of the seed map above
    :data:`SEED_THRESHOLD` inside the nucleus mask, and the watershed grows them over the body
    probability plus :data:`SEED_FLOOD_DISTANCE` of the mask's smoothed distance transform
    (which breaks the ties of float16 plateaus: the same nuclei chunk by chunk as in one pass). A foreground component with no seed keeps its own label. A
    model without a seed head falls back to ``paper`` (logged once per dataset).
``auto`` (the default)
    ``seed`` for maps with a seed head, ``paper`` for the others, image by image (a model
    folder's model for one modality may have a seed head where its main model has none).

:func:`segment_window` is the step on one window, pure numpy (with exact, faster versions of
the scipy and scikit-image steps it uses: :func:`distance_transform`, :func:`label_peaks`,
tested value for value against the published functions). The Otsu threshold and the mean
nucleus size are computed once per map (:func:`map_statistics`), never per window; the chunk
scheduler that runs the windows of a large map is :mod:`nucseg.chunks`, the segment stage's
files and tables :mod:`nucseg.postprocess`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from nucseg.tiling import blocks as block_grid

log = logging.getLogger(__name__)

METHODS = ("auto", "paper", "border", "seed")
#: The head each method reads beside ``body`` (``paper`` reads none; ``auto``: ``seed`` where
#: the maps have it).
METHOD_HEADS = {"border": "border", "seed": "seed", "auto": "seed"}
#: Method ``seed``: a pixel of the seed map above this is part of a marker.
SEED_THRESHOLD = 0.5
#: Method ``seed``: the weight of the mask's smoothed distance beside the body probability in
#: the surface the markers flood.
SEED_FLOOD_DISTANCE = 0.1
#: Side of the blocks in which :func:`map_statistics` reads a map (fixed, so that the
#: statistics do not depend on the segmentation's chunk size).
STATS_BLOCK = 2048
#: Blocks the mean nucleus size is measured on, at most (evenly spread).
STATS_SAMPLE = 16
#: The 4-neighbour cross (scipy's default structure in 2-D), as an OpenCV kernel.
CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)


@dataclass(frozen=True)
class SegmentSettings:
    """Post-processing settings.

    Attributes
    ----------
    method : "auto", "paper", "border" or "seed"
        Instance method (module docstring). ``border`` and ``seed`` need a model with that
        head and fall back to ``paper`` without one; ``auto`` is ``seed`` where the maps have
        a seed head and ``paper`` elsewhere.
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

    method: str = "auto"
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


def method_head(settings: SegmentSettings, heads: list[str] | tuple[str, ...]) -> str | None:
    """The head the method reads beside ``body`` (``border``, ``seed``) where the model has it;
    None where the paper's method runs (method ``paper``, or the model lacks the head: under
    ``auto``, a model without a seed head)."""
    head = METHOD_HEADS.get(settings.method)
    return head if head in heads else None


def use_border(settings: SegmentSettings, heads: list[str] | tuple[str, ...]) -> bool:
    """Whether the border-seeded method runs: method ``border`` and a ``border`` head."""
    return method_head(settings, heads) == "border"


# ---------------------------------------------------------------- whole-image statistics


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
    blocks = list(block_grid(shape, STATS_BLOCK))
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
    body: np.ndarray, aux: np.ndarray | None, threshold: float, spacing: int, settings: SegmentSettings, foreground: tuple | None = None
) -> np.ndarray:
    """Instances of one window, with the image's threshold and marker spacing.

    Parameters
    ----------
    body : (H, W) ndarray of float32
    aux : (H, W) ndarray of float32 or None
        The map of the method's head (:func:`method_head`): the touching-border probability
        (method ``border``) or the seed probability (method ``seed``); None: method ``paper``.
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
    if aux is not None and settings.method != "border":  # seed, or auto on maps with a seed head
        markers, surface = _seed_markers(aux, mask, settings), -(body + SEED_FLOOD_DISTANCE * ndi.gaussian_filter(distance_transform(mask), 1.0))
    else:
        markers, surface = _distance_markers(body, aux, mask, components, threshold, spacing, settings)
    # components with no marker (tiny, cut away by the border, or without a seed) keep their own label
    marked = np.zeros(n + 1, bool)
    marked[components[markers > 0]] = True
    if not marked[1:].all():
        extra = ~marked[components] & mask
        markers[extra] = components[extra] + markers.max()
    labels = watershed(-distance_transform(mask) if surface is None else surface, markers, mask=mask)
    if settings.min_size > 1:
        areas = np.bincount(labels.ravel())
        labels[areas[labels] < settings.min_size] = 0
    return labels


def _seed_markers(seed: np.ndarray, mask: np.ndarray, settings: SegmentSettings) -> np.ndarray:
    """Method ``seed``: the connected pieces of the seed map above :data:`SEED_THRESHOLD` inside
    the mask, numbered; a piece under ``min_size`` pixels (noise, or a nucleus too small to
    keep) is no marker."""
    markers, _ = ndi.label((seed > SEED_THRESHOLD) & mask)
    if settings.min_size > 1:
        areas = np.bincount(markers.ravel())
        markers[areas[markers] < settings.min_size] = 0
    return markers


def _distance_markers(
    body: np.ndarray, border: np.ndarray | None, mask: np.ndarray, components: np.ndarray, threshold: float, spacing: int, settings: SegmentSettings
) -> tuple[np.ndarray, np.ndarray | None]:
    """Methods ``paper`` and ``border``: markers at the peaks of the (border-cut) mask's smoothed
    distance transform, and the surface the watershed floods (None: the mask's distance)."""
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
    return markers, -distance if border is None else None


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
    slow = _slow_labels(labels, inside, is_max, square)
    rows, cols = np.nonzero(is_max & ~slow[labels] & (image > threshold))  # row-major, as skimage lists them
    found = [(rows, cols), *_box_peaks(image, labels, slow, square, low, threshold)]
    rows, cols = (np.concatenate(axis) for axis in zip(*found))
    ids, values = labels[rows, cols], image[rows, cols]
    # by label, then highest first, ties in row-major order
    order = np.lexsort((rows * labels.shape[1] + cols, -values, ids))
    rows, cols, ids = rows[order], cols[order], ids[order]
    keep = _spaced(rows, cols, ids, min_distance)
    return np.stack([rows[keep], cols[keep]], axis=1).astype(np.intp)


def _slow_labels(labels: np.ndarray, inside: np.ndarray, is_max: np.ndarray, square: np.ndarray) -> np.ndarray:
    """:func:`label_peaks`' labels that go through skimage's steps, a bool per label number: those
    another label comes near (within ``square``), and plateaus (every pixel a maximum ``is_max``)."""
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
    return slow


def _box_peaks(image: np.ndarray, labels: np.ndarray, slow: np.ndarray, square: np.ndarray, low, threshold) -> list[tuple[np.ndarray, np.ndarray]]:
    """Peak rows and columns of each ``slow`` label by skimage's steps on its bounding box (other
    pixels at ``low``; peaks above ``threshold``)."""
    found = []
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
    return found


def _spaced(rows: np.ndarray, cols: np.ndarray, ids: np.ndarray, min_distance: int) -> np.ndarray:
    """Which peaks to keep (bool): skimage's ensure_spacing, label by label, on peaks sorted by
    label and highest first: each kept peak drops its label's later ones nearer than
    ``min_distance`` (Chebyshev)."""
    keep = np.ones(len(ids), bool)
    if min_distance > 1:  # skimage's ensure_spacing, label by label
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, int)
        for start, stop in zip(starts, np.r_[starts[1:], len(ids)]):
            for i in range(start, stop - 1):
                if keep[i]:
                    near = np.maximum(np.abs(rows[i + 1 : stop] - rows[i]), np.abs(cols[i + 1 : stop] - cols[i])) < min_distance
                    keep[i + 1 : stop] &= ~near
    return keep
