"""Region scores of boundary maps: the ISBI 2012 challenge's V_rand and V_info.

A boundary map (EM membranes between cells, or any two-class map whose second class is the
regions and whose first is what separates them) is scored as the segmentation its regions make:
the connected components of the region class, 4-connected. Pixel scores miss what matters for
such maps, a one-pixel gap in a membrane merging two cells; these scores count it.

Conventions, those of the challenge's own evaluation (Arganda-Carreras et al. 2015, "Crowdsourcing
the creation of image segmentation algorithms for connectomics", Front. Neuroanat. 9:142,
equations 3 and 6):

* **Border thinning**: the predicted boundary pixels (label 0) are given to the neighbouring
  regions, one 3 x 3 dilation (the larger label wins a tie) at a time, until no boundary pixel is
  left where the ground truth has a region; boundaries of any width then score alike.
* **Foreground restriction**: only pixels inside a true region count (the true boundary is left
  out), so the score does not depend on the annotated boundary's width either.
* With ``p_ij`` the share of those pixels in true region ``i`` and predicted region ``j``,
  ``t_i`` and ``s_j`` its margins: ``V_rand = sum p_ij^2 / (alpha sum s_j^2 + (1 - alpha) sum
  t_i^2)`` and ``V_info = I(S; T) / ((1 - alpha) H(S) + alpha H(T))``, at ``alpha = 0.5`` (their
  F-score form); ``alpha = 0`` gives the split scores (``sum p_ij^2 / sum t_i^2`` and ``I / H(S)``;
  1: no true region is split), ``alpha = 1`` the merge scores (``sum p_ij^2 / sum s_j^2`` and
  ``I / H(T)``; 1: no two true regions are merged). All lie in [0, 1], 1 is perfect.

Only the sizes of the regions and of their overlaps enter, so the scores of several images
pooled (the challenge pools a stack's slices) come from their counts put side by side:
:func:`region_counts` per image, :func:`rand_info` over one or many.

Empty cases: an image whose ground truth holds no region pixel has no score (NaN). A prediction
with no region at all is one region covering everything (every true region merged). ``V_info``
of a single true region against a single predicted one is 1 (nothing to inform, nothing wrong).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from nucseg.sizes import regions

__all__ = ["RegionCounts", "thin_boundaries", "region_counts", "rand_info", "boundary_scores"]


@dataclass(frozen=True)
class RegionCounts:
    """Pixel counts of one image's (or several images') regions, the foreground-restricted
    contingency of :func:`region_counts`.

    Attributes
    ----------
    pair : (P,) ndarray of int64
        Pixels of each (true region, predicted region) pair that overlaps.
    truth, pred : (T,) and (S,) ndarray of int64
        Pixels of each true and each predicted region inside the true regions.
    """

    pair: np.ndarray
    truth: np.ndarray
    pred: np.ndarray


def thin_boundaries(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Give the boundary pixels (0) of a label image to neighbouring regions until none is left in ``mask``.

    Parameters
    ----------
    labels : (H, W) ndarray of non-negative int
        Predicted regions, 0 the boundary between them. Not modified.
    mask : (H, W) ndarray of bool
        Where no boundary may remain (the true regions).

    Returns
    -------
    (H, W) ndarray of int64
        The labels grown one 3 x 3 dilation at a time (the larger label where two meet); all
        ones where ``labels`` holds no region.
    """
    out = np.array(labels, dtype=np.int64)
    mask = np.asarray(mask, dtype=bool)
    if out.shape != mask.shape:
        raise ValueError(f"labels {out.shape} and mask {mask.shape} differ in shape")
    if out.size and out.min() < 0:
        raise ValueError("labels must be non-negative (0 is the boundary)")
    if not out.any():
        return np.ones_like(out)
    while True:
        zeros = out == 0
        if not (zeros & mask).any():
            return out
        out[zeros] = ndi.maximum_filter(out, size=3)[zeros]


def _sizes(keys: np.ndarray) -> np.ndarray:
    return np.unique(keys, return_counts=True)[1].astype(np.int64)


def region_counts(truth: np.ndarray, pred: np.ndarray) -> RegionCounts:
    """The foreground-restricted contingency of two region label images, after border thinning.

    Parameters
    ----------
    truth, pred : (H, W) ndarray of non-negative int
        Region labels (:func:`nucseg.sizes.regions`), 0 the boundary; the labels of the two are unrelated.
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
    mask = truth > 0
    t = truth[mask].astype(np.int64)
    p = thin_boundaries(pred, mask)[mask]
    if not t.size:
        empty = np.zeros(0, np.int64)
        return RegionCounts(empty, empty, empty)
    width = int(p.max()) + 1
    return RegionCounts(_sizes(t * width + p), _sizes(t), _sizes(p))


def _entropy(p: np.ndarray) -> float:
    return float(-(p * np.log(p)).sum())


def rand_info(counts: RegionCounts | Sequence[RegionCounts]) -> dict[str, float]:
    """V_rand and V_info (with their split and merge forms) of one image's counts, or of several pooled.

    Returns
    -------
    dict
        ``v_rand, v_rand_split, v_rand_merge, v_info, v_info_split, v_info_merge``; all NaN
        where no true region pixel was counted.

    Examples
    --------
    >>> truth = np.array([[1, 1, 0, 2, 2]])
    >>> rand_info(region_counts(truth, truth))["v_rand"]
    1.0
    >>> merged = rand_info(region_counts(truth, np.ones_like(truth)))
    >>> merged["v_rand_split"], merged["v_rand_merge"]
    (1.0, 0.5)
    """
    parts = [counts] if isinstance(counts, RegionCounts) else list(counts)
    pair, truth, pred = (np.concatenate([getattr(c, k) for c in parts] or [np.zeros(0, np.int64)]) for k in ("pair", "truth", "pred"))
    total = truth.sum()
    if total == 0:
        return {k: float("nan") for k in ("v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split", "v_info_merge")}
    p, t, s = pair / total, truth / total, pred / total
    p2, t2, s2 = (p**2).sum(), (t**2).sum(), (s**2).sum()
    h_p, h_t, h_s = _entropy(p), _entropy(t), _entropy(s)
    mutual = h_t + h_s - h_p

    def info(denominator: float) -> float:
        return float(mutual / denominator) if denominator > 0 else 1.0

    # a split raises the predicted entropy and sum t^2 against the pairs', a merge the true ones
    return dict(
        v_rand=float(p2 / (0.5 * s2 + 0.5 * t2)),
        v_rand_split=float(p2 / t2),
        v_rand_merge=float(p2 / s2),
        v_info=info(0.5 * h_s + 0.5 * h_t),
        v_info_split=info(h_s),
        v_info_merge=info(h_t),
    )


def boundary_scores(truth_regions: np.ndarray, pred_regions: np.ndarray) -> dict[str, float]:
    """:func:`rand_info` of two boolean region masks (True inside a region, False on the boundary).

    Parameters
    ----------
    truth_regions, pred_regions : (H, W) ndarray of bool
        Each is labelled into its 4-connected regions (:func:`nucseg.sizes.regions`) first.
    """
    return rand_info(region_counts(regions(truth_regions), regions(pred_regions)))
