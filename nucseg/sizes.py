"""Nucleus sizes of label images: equivalent diameters, and a training set's summary of them.

A leaf module (numpy and scipy only): the train stage records its training nuclei's sizes in the model
folder (``config.json`` ``nuclei``) with it, and ``predict.scale: auto`` (:mod:`nucseg.scale`)
measures an image's nuclei with it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["BINS", "FOUR", "regions", "nucleus_diameters", "diameter_histogram", "summary_of_histogram", "diameter_summary"]


#: The 4-connected neighbourhood regions are labelled with.
FOUR = ndi.generate_binary_structure(2, 1)


def regions(mask: np.ndarray) -> np.ndarray:
    """``(H, W) int32`` labels of the 4-connected components of a boolean ``(H, W)`` mask (0 off it):
    the objects of a semantic class map (every class but the first, the background or boundary)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    return ndi.label(mask.astype(bool), structure=FOUR)[0].astype(np.int32)


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
