"""The nucleus size of an image, and the predict scale that brings it to the model's.

A model sees nuclei at the sizes of its training images (the shipped one: a median of about
20 px across); nuclei three times larger come out as speckles of their texture, much smaller
ones merge. ``predict.scale: auto`` (what Cellpose's size model is for) measures each image
before it is predicted:

1. a probe: the window of :data:`PROBE` px (at most; the whole image when smaller) of the
   image's most varied intensities (of the candidates on a 3 x 3 grid), normalised with the
   whole image's statistics as prediction normalises it;
2. the probe predicted at each of :data:`CANDIDATES` and segmented with the default segment
   settings: the median equivalent diameter of the nuclei found (those touching the probe's
   edge left out), in the image's pixels;
3. the scale whose nuclei, brought to the model's pixels (diameter x scale), come nearest (by
   ratio) to the model's training diameter; a model at its own size finds nuclei of the right
   size, while one at a wrong size finds fragments or merges, whose size in its pixels is far
   from its training size. No nucleus at any scale: 1.

The probe costs the network about ``PROBE^2 * sum(s^2)`` pixels (0.6 megapixels), once per image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["CANDIDATES", "PROBE", "ScaleEstimate", "nucleus_diameters", "diameter_summary", "probe_window", "choose_scale", "estimate_scale"]

#: The scales tried, geometric steps of about sqrt(2): nuclei up to 4x and down to 0.7x the model's size.
CANDIDATES = (0.25, 0.35, 0.5, 0.7, 1.0, 1.4)
#: Side of the probe window, pixels (a multiple of 32).
PROBE = 384
#: Fewest nuclei a scale must find in the probe to take part.
MIN_NUCLEI = 3
#: The training diameter of a model whose folder does not record one: the shipped model's
#: (median over the nuclei of its training images, stage1_train_fixed).
DEFAULT_DIAMETER = 19.75


def nucleus_diameters(labels: np.ndarray, drop_edge: bool = True) -> np.ndarray:
    """Equivalent diameters ``sqrt(4 area / pi)`` of the objects of a label image, pixels.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        0 = background.
    drop_edge : bool
        Leave out objects touching the image's edge (cut, so smaller than they are).

    Returns
    -------
    (N,) ndarray of float64
        One per object present (in label order); empty for an image without objects.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected a 2-D label image, got shape {labels.shape}")
    areas = np.bincount(labels.ravel().astype(np.int64))
    keep = areas > 0
    keep[0] = False
    if drop_edge:
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]).astype(np.int64))
        keep[edge] = False
    return np.sqrt(4 * areas[keep] / np.pi)


#: Bins of :func:`diameter_histogram`: 0.5 px wide, up to 256 px.
BINS = np.arange(0, 256.5, 0.5)


def diameter_histogram(labels: np.ndarray) -> np.ndarray:
    """``(n, len(BINS) - 1)`` int32 counts of the nuclei diameters of ``n`` label crops
    ``(n, S, S)`` (objects touching a crop's edge left out): a training set's nucleus sizes,
    summed crop by crop without holding every diameter."""
    return (
        np.stack([np.histogram(nucleus_diameters(crop), BINS)[0].astype(np.int32) for crop in labels])
        if len(labels)
        else np.zeros((0, len(BINS) - 1), np.int32)
    )


def summary_of_histogram(counts: np.ndarray) -> dict:
    """:func:`diameter_summary` of nuclei counted in :data:`BINS` (bin centres; empty dict for none)."""
    counts = np.asarray(counts, np.int64)
    if counts.sum() == 0:
        return {}
    centres = (BINS[:-1] + BINS[1:]) / 2
    cumulative = np.cumsum(counts) / counts.sum()
    p10, median, p90 = (float(centres[np.searchsorted(cumulative, q)]) for q in (0.1, 0.5, 0.9))
    return {"median": median, "p10": p10, "p90": p90, "n": int(counts.sum())}


def diameter_summary(diameters: np.ndarray) -> dict:
    """``{"median": ..., "p10": ..., "p90": ..., "n": ...}`` of nucleus diameters (px), as a
    model folder records its training nuclei; empty dict for none."""
    d = np.asarray(diameters, float)
    if not d.size:
        return {}
    p10, median, p90 = np.percentile(d, [10, 50, 90])
    return {"median": round(float(median), 2), "p10": round(float(p10), 2), "p90": round(float(p90), 2), "n": int(d.size)}


def probe_window(read, shape: tuple[int, int], side: int = PROBE) -> tuple[slice, slice]:
    """The probe of an image: the ``side`` x ``side`` window (the image's extent where smaller,
    rounded down to a multiple of 32) of highest intensity spread among 3 x 3 candidates.

    ``read(rows, cols)`` gives normalised pixels ``(len(rows), len(cols), 3)`` float32.
    """
    h, w = shape
    ph, pw = (max(32, min(side, n) // 32 * 32) for n in (h, w))
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
        The model's training diameter.
    by_scale : dict
        ``{scale: (nuclei found, median diameter in image pixels)}`` for every candidate.
    """

    scale: float
    diameter: float
    target: float
    by_scale: dict = field(default_factory=dict)


def choose_scale(by_scale: dict, target: float, min_nuclei: int = MIN_NUCLEI) -> tuple[float, float]:
    """``(scale, diameter)``: the candidate whose median diameter in the model's pixels
    (``diameter * scale``) is nearest to ``target`` by ratio, among those finding at least
    ``min_nuclei`` nuclei; ties go to the scale nearest 1; ``(1.0, nan)`` if none qualifies."""
    best, best_key = (1.0, float("nan")), None
    for s, (n, diameter) in by_scale.items():
        if n < min_nuclei or not diameter > 0:
            continue
        key = (abs(np.log(diameter * s / target)), abs(np.log(s)))
        if best_key is None or key < best_key:
            best, best_key = (float(s), float(diameter)), key
    return best


def estimate_scale(predictor, read, shape: tuple[int, int], target: float, candidates: tuple[float, ...] = CANDIDATES) -> ScaleEstimate:
    """The predict scale of one image (module docstring).

    Parameters
    ----------
    predictor : nucseg.infer.Predictor
        Its ``scale`` is set to each candidate in turn and restored.
    read : callable
        ``read(rows, cols)``: the image's normalised pixels (:meth:`Predictor.normalizer`).
    shape : (int, int)
        The image's height and width.
    target : float
        The model's training diameter, pixels.
    """
    from nucseg.postprocess import SegmentSettings, segment_probability

    rows, cols = probe_window(read, shape)
    window = read(np.arange(rows.start, min(rows.stop, shape[0])), np.arange(cols.start, min(cols.stop, shape[1])))
    ph, pw = rows.stop - rows.start, cols.stop - cols.start
    if window.shape[:2] != (ph, pw):  # an image smaller than 32 px: mirror it up to the probe
        window = np.pad(window, ((0, ph - window.shape[0]), (0, pw - window.shape[1]), (0, 0)), mode="symmetric")
    body = predictor.heads.index("body")
    saved = predictor.scale
    by_scale = {}
    try:
        for s in candidates:
            predictor.scale = float(s)
            prob = predictor(window[None])[0, body]
            d = nucleus_diameters(segment_probability(prob, SegmentSettings()))
            by_scale[float(s)] = (int(d.size), float(np.median(d)) if d.size else float("nan"))
    finally:
        predictor.scale = saved
    scale, diameter = choose_scale(by_scale, target)
    return ScaleEstimate(scale, diameter, float(target), by_scale)
