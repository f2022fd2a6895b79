"""The nucleus size of an image, and the predict scale that brings it to the model's.

A model sees nuclei at the sizes of its training images (the shipped one: 9.25 to 34.25 px
across for the central 80 %, a median of 20.75); nuclei five times larger come out as
speckles of their texture, much smaller ones merge. ``predict.scale: auto`` (what Cellpose's
size model is for) measures each image before it is predicted:

1. at each of :data:`CANDIDATES` ``s``, a probe of ``PROBE / s`` px (at most the image), the
   window of most varied intensities among 3 x 3 candidates, normalised with the whole image's
   statistics, is predicted at that scale: every candidate costs the network the same
   ``PROBE^2`` pixels and sees as many nuclei of the size it suits;
2. each is segmented at the network's size with the default settings: the median equivalent
   diameter of the nuclei found (those touching the probe's edge left out), in the image's
   pixels;
3. the image's nucleus size is the diameter that the most candidates agree on (within a factor
   1.3): nuclei measured at any scale the model can work at keep their size in the image's
   pixels, while the fragments of a too-large nucleus's texture (or merges of too-small ones)
   follow the scale (:func:`measure_size`);
4. the scale: 1 when that size lies within the central 80 % of the model's training nuclei
   (``p10`` to ``p90``; the model knows these sizes, and a resize costs detail), else the
   candidate nearest 1 that brings it there (none does: the one nearest the model's median).
   No size found: 1.

The probes cost the network ``len(CANDIDATES) * PROBE^2`` pixels (0.6 megapixels) per image.

A semantic model (no nucleus body head) is measured the same way on its objects: the 4-connected
regions of every class but the first (cells between membranes; a white blood cell's cytoplasm
and nucleus on the background) in the probes' class maps (argmax), against the sizes its folder
records (``config.json`` ``nuclei``, written by the train stage from the training images'
objects). Two differences: sizes are medians over *pixels* (the diameter of the region the
median pixel lies in), on both sides, so that specks of a mislabelled background do not outvote
the one cell of an image; and regions at the probe's edge count (a bright-field image around
one cell is hardly larger than the cell). One object per probe is enough
(:data:`MIN_OBJECTS`). A folder without that record is predicted at 1
(:func:`nucseg.infer.predict_lazy` says so in the log).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np

from nucseg.sizes import nucleus_diameters, regions

log = logging.getLogger(__name__)

__all__ = ["CANDIDATES", "PROBE", "ScaleEstimate", "probe_window", "measure_size", "choose_scale", "estimate_scale", "probe_objects"]

#: The scales tried, geometric steps of about sqrt(2): nuclei up to 4x and down to 0.7x the model's size.
CANDIDATES = (0.25, 0.35, 0.5, 0.7, 1.0, 1.4)
#: Side of the probe window in the network's pixels (a multiple of 32): ``PROBE / s`` image
#: pixels at scale ``s``.
PROBE = 320
#: Fewest nuclei a scale must find in the probe to take part.
MIN_NUCLEI = 3
#: The same for a semantic model's objects: a bright-field image around one cell holds one.
MIN_OBJECTS = 1
#: Diameters within this factor of each other are one size (:func:`measure_size`).
CONSISTENT = 1.3
#: The training nuclei of a model whose folder does not record them: the shipped model's
#: (diameters of the nuclei of its 531 training images, stage1_train_fixed; px).
DEFAULT_NUCLEI = {"median": 20.75, "p10": 9.25, "p90": 34.25}


def probe_window(read, shape: tuple[int, int], side: int = PROBE, multiple: int = 32) -> tuple[slice, slice]:
    """The probe of an image: the ``side`` x ``side`` window (the image's extent where smaller,
    rounded down to a multiple of 32) of highest intensity spread among 3 x 3 candidates.

    ``read(rows, cols)`` gives normalised pixels ``(len(rows), len(cols), 3)`` float32.
    """
    h, w = shape
    ph, pw = (max(32, min(side, n) // multiple * multiple) for n in (h, w))
    best, best_spread = None, -1.0
    for r0 in sorted({int(round(f * max(h - ph, 0))) for f in (0.0, 0.5, 1.0)}):
        for c0 in sorted({int(round(f * max(w - pw, 0))) for f in (0.0, 0.5, 1.0)}):
            stride = 4  # a subsample is enough to rank the candidates
            x = read(np.arange(r0, min(r0 + ph, h), stride), np.arange(c0, min(c0 + pw, w), stride))
            spread = float(np.std(x))
            if spread > best_spread:
                best, best_spread = (slice(r0, r0 + ph), slice(c0, c0 + pw)), spread
    return best


@dataclass(frozen=True)
class ScaleEstimate:
    """The outcome of :func:`estimate_scale`.

    Attributes
    ----------
    scale : float
        The chosen predict scale.
    diameter : float
        The median nucleus diameter found at that scale, in the image's pixels (NaN: none).
    target : float
        The model's training diameter (median).
    band : (float, float)
        The model's ``p10`` and ``p90`` training diameters: sizes kept at scale 1.
    by_scale : dict
        ``{scale: (nuclei found, median diameter in image pixels)}`` for every candidate.
    """

    scale: float
    diameter: float
    target: float
    band: tuple = (float("nan"), float("nan"))
    by_scale: dict = field(default_factory=dict)


def measure_size(by_scale: dict, tolerance: float = CONSISTENT, min_nuclei: int = MIN_NUCLEI) -> float:
    """The image's nucleus diameter (px): the size that the most candidate scales agree on.

    A nucleus measured at any scale the model can work at has the same size in the image's
    pixels; fragments of a too-large nucleus's texture, or merges of too-small ones, have a
    size that follows the scale instead (fragments are about the model's own size in its
    pixels, whatever the scale). So each candidate finding at least ``min_nuclei`` nuclei is
    backed by the candidates whose diameter is within a factor ``tolerance`` of its own; the
    best-backed group (ties: more nuclei found in it) gives the median of its diameters.
    NaN when no candidate qualifies.
    """
    found = {s: (n, d) for s, (n, d) in by_scale.items() if n >= min_nuclei and d > 0}
    best, best_key = float("nan"), None
    for s, (_, d) in found.items():
        group = [(n2, d2) for n2, d2 in found.values() if abs(np.log(d2 / d)) <= np.log(tolerance)]
        key = (len(group), sum(n2 for n2, _ in group))
        if best_key is None or key > best_key:
            best, best_key = float(np.median([d2 for _, d2 in group])), key
    return best


def choose_scale(diameter: float, band: tuple[float, float], candidates: tuple[float, ...] = CANDIDATES, fallback: float = 1.0) -> float:
    """The predict scale for nuclei of ``diameter`` px: 1 when it lies within ``band`` (the
    model's p10..p90 training diameters), else the candidate nearest 1 (by ratio) that brings
    ``diameter * scale`` into the band; ``fallback`` when none does; 1 for an unknown size."""
    lo, hi = band
    if not diameter > 0 or lo <= diameter <= hi:
        return 1.0
    inside = [s for s in candidates if lo <= diameter * s <= hi]
    return float(min(inside, key=lambda s: abs(np.log(s)))) if inside else float(fallback)


def estimate_scale(predictor, read, shape: tuple[int, int], nuclei: dict, candidates: tuple[float, ...] = CANDIDATES) -> ScaleEstimate:
    """The predict scale of one image (module docstring).

    Parameters
    ----------
    predictor : nucseg.infer.Predictor
        Its :meth:`~nucseg.infer.Predictor.network_maps` predicts the probes (no test-time augmentation).
    read : callable
        ``read(rows, cols)``: the image's normalised pixels (:meth:`Predictor.normalizer`).
    shape : (int, int)
        The image's height and width.
    nuclei : dict
        The model's training diameters, px: ``median``, ``p10``, ``p90`` (``config.json``
        ``nuclei``; missing ones from :data:`DEFAULT_NUCLEI`).
    """
    nuclei = {**DEFAULT_NUCLEI, **(nuclei or {})}
    semantic = "body" not in predictor.heads
    by_scale = {}
    for s in candidates:
        # a semantic model's probe takes a small image whole (it is resized to the network's
        # multiple of 32 anyway): an image around one cell cut down to 32 px steps cuts the cell
        window = _probe(read, shape, int(round(PROBE / s)), multiple=1 if semantic else 32)
        # at the network's size: the probe is segmented there (PROBE^2 pixels, whatever s)
        size = tuple(max(32, int(round(n * s / 32)) * 32) for n in window.shape[:2])
        resized = cv2.resize(window, size[::-1], interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        objects = probe_objects(predictor, predictor.network_maps(resized[None])[0])
        # a semantic model's regions: those at the probe's edge kept (an image of one cell is
        # hardly larger than the cell), the median taken over pixels (specks do not outvote a cell)
        d = nucleus_diameters(objects, drop_edge=not semantic) * (window.shape[0] / size[0])
        by_scale[float(s)] = (int(d.size), (weighted_median(d, d**2) if semantic else float(np.median(d))) if d.size else float("nan"))
    diameter = measure_size(by_scale, min_nuclei=MIN_OBJECTS if semantic else MIN_NUCLEI)
    band = (float(nuclei["p10"]), float(nuclei["p90"]))
    scale = choose_scale(diameter, band, candidates, fallback=min(candidates, key=lambda s: abs(np.log(diameter * s / nuclei["median"]))))
    return ScaleEstimate(scale, diameter, float(nuclei["median"]), band, by_scale)


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value below which half the total weight lies (the lower one at an exact half)."""
    order = np.argsort(values)
    cumulative = np.cumsum(np.asarray(weights, np.float64)[order])
    return float(np.asarray(values)[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def probe_objects(predictor, maps: np.ndarray) -> np.ndarray:
    """``(H, W)`` labels of the objects in one probe's maps ``(K, H, W)``: the nuclei of the
    body map segmented with the default settings, or a semantic model's regions of every class
    but the first (module docstring)."""
    if "body" not in predictor.heads:
        return regions(maps.argmax(axis=0) > 0)
    from nucseg.chunks import segment_probability
    from nucseg.watershed import SegmentSettings

    return segment_probability(maps[predictor.heads.index("body")], SegmentSettings())


def _probe(read, shape: tuple[int, int], side: int, multiple: int = 32) -> np.ndarray:
    """The normalised pixels of :func:`probe_window` (an image under 32 px mirrored up to it)."""
    rows, cols = probe_window(read, shape, side, multiple)
    window = read(np.arange(rows.start, min(rows.stop, shape[0])), np.arange(cols.start, min(cols.stop, shape[1])))
    ph, pw = rows.stop - rows.start, cols.stop - cols.start
    if window.shape[:2] != (ph, pw):
        window = np.pad(window, ((0, ph - window.shape[0]), (0, pw - window.shape[1]), (0, 0)), mode="symmetric")
    return window
