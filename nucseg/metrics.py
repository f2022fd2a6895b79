"""Pixel- and object-level scores for nucleus segmentations.

Every function compares a ground-truth image with a prediction of the same
``(H, W)`` shape. Object-level functions take *label images*: an integer array
in which ``0`` is background and every nucleus carries its own positive label.
Labels need not be consecutive (``{3, 17, 40}`` is fine) and the two images'
labels are unrelated.

All object scores come from one truth x prediction contingency (overlap) table
built in a single vectorised pass over the pixels (``np.bincount`` over the
combined label index), never from a Python loop over pairs of objects, so an
image with a thousand nuclei is scored in milliseconds.

Matching convention
-------------------
A predicted object matches a true object when their intersection over union
(IoU) is **strictly greater** than the threshold, one-to-one. An IoU exactly
equal to the threshold is *not* a match: a nucleus split into two equal halves
(IoU 0.5 each) is not found at threshold 0.5. The comparison is exact, without
a tolerance: a threshold such as ``0.55`` and an IoU of ``11/20`` are both the
float nearest to 0.55, so they compare equal and do not match.

Empty-image convention
----------------------
A ratio whose denominator is zero is 1.0 when both images are empty (nothing
to find and nothing found is a perfect result) and 0.0 otherwise. In
particular precision is 0.0 when nothing is predicted but something is true,
and recall is 0.0 when nothing is true but something is predicted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "CHALLENGE_THRESHOLDS",
    "iou_matrix",
    "pixel_scores",
    "matching",
    "challenge_scores",
    "aggregated_jaccard",
    "evaluate_image",
]

#: IoU thresholds of the 2018 Data Science Bowl metric: 0.50, 0.55, ..., 0.95.
CHALLENGE_THRESHOLDS: NDArray[np.float64] = np.round(np.arange(0.5, 1.0, 0.05), 2)

# Largest number of entries of a dense bincount table (label lookup table or
# contingency table) before falling back to sort-based (np.unique) methods;
# 2**22 int64 entries are 32 MiB.
_DENSE_LIMIT = 1 << 22


# ---------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------


def _as_image(x: ArrayLike, name: str, *, allow_bool: bool) -> NDArray[Any]:
    """Return ``x`` as a 2-D integer (or bool) array, raising on bad input."""
    arr = np.asarray(x)
    kind = "an integer label image or a bool mask" if allow_bool else "an integer label image"
    if arr.dtype == np.bool_:
        if not allow_bool:
            raise TypeError(
                f"{name} has dtype bool; object-level metrics need {kind} (0 = background, one positive label per object), e.g. skimage.measure.label(mask)"
            )
    elif not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be {kind}, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) image, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); need H >= 1 and W >= 1")
    if arr.dtype != np.bool_ and np.issubdtype(arr.dtype, np.signedinteger):
        lowest = int(arr.min())
        if lowest < 0:
            raise ValueError(f"{name} has a negative label ({lowest}); labels must be >= 0 with 0 for background")
    return arr


def _as_pair(truth: ArrayLike, pred: ArrayLike, *, allow_bool: bool = False) -> tuple[NDArray[Any], NDArray[Any]]:
    """Validate a truth/prediction pair of images of the same shape."""
    t = _as_image(truth, "truth", allow_bool=allow_bool)
    p = _as_image(pred, "pred", allow_bool=allow_bool)
    if t.shape != p.shape:
        raise ValueError(f"truth and pred must have the same shape, got truth {t.shape} and pred {p.shape}")
    return t, p


def _as_threshold(threshold: Any) -> float:
    """Validate one IoU threshold in [0, 1]."""
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise TypeError(f"threshold must be a real number, got {type(threshold).__name__}")
    value = float(threshold)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"threshold must lie in [0, 1], got {value}")
    return value


def _as_thresholds(thresholds: ArrayLike) -> NDArray[np.float64]:
    """Validate a non-empty 1-D sequence of IoU thresholds in [0, 1]."""
    arr = np.asarray(thresholds)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"thresholds must be real numbers, got dtype {arr.dtype}")
    arr = np.atleast_1d(arr.astype(np.float64))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"thresholds must be a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.all((arr >= 0.0) & (arr <= 1.0)):  # also rejects NaN
        raise ValueError(f"thresholds must lie in [0, 1], got {arr.tolist()}")
    return arr


# ---------------------------------------------------------------------------
# Contingency table
# ---------------------------------------------------------------------------


def _index_labels(
    flat: NDArray[Any],
) -> tuple[NDArray[np.integer[Any]], NDArray[Any], NDArray[np.int64]]:
    """Map the labels of a flat label image onto ``0..n`` in sorted order.

    Parameters
    ----------
    flat : (N,) integer ndarray
        Non-negative labels, 0 = background.

    Returns
    -------
    index : (N,) integer ndarray
        0 for background, ``k`` for the ``k``-th smallest nonzero label. It may
        be ``flat`` itself (never written to) when the labels are already
        ``1..n``.
    labels : (n,) ndarray, dtype of ``flat``
        The sorted nonzero labels.
    areas : (n,) int64 ndarray
        Pixel count of each label.
    """
    top = int(flat.max()) if flat.size else 0
    if top < _DENSE_LIMIT:
        src = flat if flat.dtype.itemsize < 8 or flat.dtype.kind == "i" else flat.astype(np.intp)
        counts = np.bincount(src, minlength=1)
        labels = np.flatnonzero(counts[1:]) + 1
        areas = counts[labels].astype(np.int64)
        labels = labels.astype(flat.dtype)
        if labels.size == top:  # labels are exactly 1..top: no remapping
            return src, labels, areas
        lut = np.zeros(top + 1, dtype=np.intp)
        lut[labels] = np.arange(1, labels.size + 1)
        return lut[src], labels, areas
    uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    if uniq[0] == 0:
        return inverse.reshape(-1), uniq[1:], counts[1:].astype(np.int64)
    return inverse.reshape(-1) + 1, uniq, counts.astype(np.int64)


@dataclass(frozen=True)
class _Overlap:
    """Sparse truth x prediction contingency table of two label images.

    Attributes
    ----------
    labels_true, labels_pred : (n_true,), (n_pred,) ndarray
        Sorted nonzero labels; row/column ``i`` refers to ``labels_*[i]``.
    area_true, area_pred : (n_true,), (n_pred,) int64 ndarray
        Object areas in pixels.
    rows, cols : (n_pairs,) intp ndarray
        Row (truth) and column (prediction) indices of every pair of objects
        sharing at least one pixel, in row-major order.
    inter : (n_pairs,) int64 ndarray
        Intersection of each such pair, in pixels (> 0).
    n_pixels : int
        Number of pixels of the image.
    """

    labels_true: NDArray[Any]
    labels_pred: NDArray[Any]
    area_true: NDArray[np.int64]
    area_pred: NDArray[np.int64]
    rows: NDArray[np.intp]
    cols: NDArray[np.intp]
    inter: NDArray[np.int64]
    n_pixels: int

    @property
    def n_true(self) -> int:
        return int(self.labels_true.size)

    @property
    def n_pred(self) -> int:
        return int(self.labels_pred.size)

    def pair_iou(self) -> NDArray[np.float64]:
        """IoU of every overlapping pair, shape (n_pairs,), float64."""
        union = self.area_true[self.rows] + self.area_pred[self.cols] - self.inter
        return self.inter / union

    def dense_iou(self) -> NDArray[np.float64]:
        """Full IoU matrix, shape (n_true, n_pred), float64."""
        out = np.zeros((self.n_true, self.n_pred), dtype=np.float64)
        out[self.rows, self.cols] = self.pair_iou()
        return out


def _overlap(truth: NDArray[Any], pred: NDArray[Any]) -> _Overlap:
    """Build the contingency table of two validated label images in one pass.

    The table is one ``np.bincount`` over the combined index
    ``t * n_cols + p`` of each pixel's truth and prediction label; its row and
    column sums are the object areas. Raw labels index the table directly when
    it stays small (up to ``_DENSE_LIMIT`` cells), otherwise labels are first
    mapped onto ``1..n``; with too many objects even for that, the distinct
    overlapping pairs are counted with ``np.unique`` instead.
    """
    # Background-in-both pixels enter no object count: keep only the pixels
    # that are foreground in at least one image (nuclei usually cover a small
    # fraction of the image).
    t_flat, p_flat = truth.ravel(), pred.ravel()
    fg = t_flat != 0
    fg |= p_flat != 0
    t, p = t_flat[fg], p_flat[fg]
    top_t = int(t.max()) if t.size else 0
    top_p = int(p.max()) if p.size else 0

    t_labels: NDArray[Any] | None = None
    p_labels: NDArray[Any] | None = None
    if (top_t + 1) * (top_p + 1) <= _DENSE_LIMIT:
        t_idx, p_idx = t, p  # raw labels; absent ones give empty rows/columns
        n_rows, n_cols = top_t + 1, top_p + 1
    else:
        t_idx, t_labels, t_area = _index_labels(t)
        p_idx, p_labels, p_area = _index_labels(p)
        n_rows, n_cols = t_labels.size + 1, p_labels.size + 1
        if n_rows * n_cols > _DENSE_LIMIT:
            return _sparse_overlap(t_idx, p_idx, t_labels, p_labels, t_area, p_area, truth.size)

    key = t_idx.astype(np.intp) * n_cols
    np.add(key, p_idx, out=key, casting="unsafe")  # values < _DENSE_LIMIT
    counts = np.bincount(key, minlength=n_rows * n_cols)
    # Work on the nonzero cells only (a few per object), not the whole table.
    cells = np.flatnonzero(counts)
    inter = counts[cells].astype(np.int64)
    r, c = np.divmod(cells, n_cols)
    # Areas are the row/column sums; objects are rows/columns > 0 with area > 0.
    # (float64 weights are exact for any pixel count below 2**53.)
    t_area_all = np.bincount(r, weights=inter, minlength=n_rows).astype(np.int64)
    p_area_all = np.bincount(c, weights=inter, minlength=n_cols).astype(np.int64)
    t_present = np.flatnonzero(t_area_all[1:]) + 1
    p_present = np.flatnonzero(p_area_all[1:]) + 1
    t_area, p_area = t_area_all[t_present], p_area_all[p_present]
    # Overlapping object pairs, row-major, as positions among present objects.
    both = (r > 0) & (c > 0)
    t_pos = np.zeros(n_rows, dtype=np.intp)
    t_pos[t_present] = np.arange(t_present.size)
    p_pos = np.zeros(n_cols, dtype=np.intp)
    p_pos[p_present] = np.arange(p_present.size)
    if t_labels is None:
        t_labels = t_present.astype(truth.dtype)
    if p_labels is None:
        p_labels = p_present.astype(pred.dtype)
    return _Overlap(t_labels, p_labels, t_area, p_area, t_pos[r[both]], p_pos[c[both]], inter[both], truth.size)


def _sparse_overlap(
    t_idx: NDArray[np.integer[Any]],
    p_idx: NDArray[np.integer[Any]],
    t_labels: NDArray[Any],
    p_labels: NDArray[Any],
    t_area: NDArray[np.int64],
    p_area: NDArray[np.int64],
    n_pixels: int,
) -> _Overlap:
    """Contingency table of images with too many objects for a dense table."""
    n_p = p_labels.size
    both = (t_idx > 0) & (p_idx > 0)
    key = (t_idx[both].astype(np.intp) - 1) * n_p + (p_idx[both].astype(np.intp) - 1)
    pairs, inter = np.unique(key, return_counts=True)
    rows, cols = np.divmod(pairs, n_p)
    return _Overlap(t_labels, p_labels, t_area, p_area, rows.astype(np.intp), cols.astype(np.intp), inter.astype(np.int64), n_pixels)


# ---------------------------------------------------------------------------
# Scores from counts
# ---------------------------------------------------------------------------


def _ratio(num: float, den: float, both_empty: bool) -> float:
    """``num / den``, or the empty-image convention when ``den == 0``."""
    if den == 0:
        return 1.0 if both_empty else 0.0
    return float(num) / float(den)


def _pixel_from_counts(inter: int, fg_true: int, fg_pred: int, n_pixels: int) -> dict[str, float]:
    """Pixel scores from foreground counts (see :func:`pixel_scores`)."""
    both_empty = fg_true == 0 and fg_pred == 0
    union = fg_true + fg_pred - inter
    return {
        "pixel_iou": _ratio(inter, union, both_empty),
        "pixel_precision": _ratio(inter, fg_pred, both_empty),
        "pixel_recall": _ratio(inter, fg_true, both_empty),
        "pixel_f1": _ratio(2 * inter, fg_true + fg_pred, both_empty),
        "pixel_accuracy": float(n_pixels - union + inter) / float(n_pixels),
    }


def _match_pairs(ov: _Overlap, pair_iou: NDArray[np.float64], threshold: float) -> NDArray[np.float64]:
    """IoUs of the one-to-one matches at ``threshold`` (IoU strictly greater).

    For ``threshold >= 0.5`` every pair above it is already one-to-one (see
    :func:`matching`). Below 0.5 a truth object may exceed the threshold with
    several predictions; the matches are then a maximum-cardinality one-to-one
    assignment over the eligible pairs, ties broken by largest total IoU.
    """
    eligible = pair_iou > threshold
    if threshold >= 0.5 or not eligible.any():
        return pair_iou[eligible]
    # Imported here: scipy.optimize takes ~0.5 s to import and only thresholds
    # below 0.5 need it.
    from scipy.optimize import linear_sum_assignment

    rows, cols, vals = ov.rows[eligible], ov.cols[eligible], pair_iou[eligible]
    # Assignment on the sub-matrix of objects that have an eligible partner.
    urows, ri = np.unique(rows, return_inverse=True)
    ucols, ci = np.unique(cols, return_inverse=True)
    iou = np.zeros((urows.size, ucols.size), dtype=np.float64)
    ok = np.zeros(iou.shape, dtype=bool)
    iou[ri, ci] = vals
    ok[ri, ci] = True
    # Each match is worth 1 plus a tie-break < 1 / min(shape), so the number
    # of matches dominates and total IoU decides between equal counts.
    gain = ok + iou / (2.0 * min(iou.shape))
    ai, aj = linear_sum_assignment(gain, maximize=True)
    keep = ok[ai, aj]
    return iou[ai[keep], aj[keep]]


def _match_counts(ov: _Overlap, pair_iou: NDArray[np.float64], threshold: float) -> dict[str, float]:
    """Object counts and scores at one threshold (see :func:`matching`)."""
    matched = _match_pairs(ov, pair_iou, threshold)
    tp = int(matched.size)
    fp = ov.n_pred - tp
    fn = ov.n_true - tp
    both_empty = ov.n_true == 0 and ov.n_pred == 0
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": _ratio(tp, tp + fp, both_empty),
        "recall": _ratio(tp, tp + fn, both_empty),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "mean_matched_iou": float(matched.mean()) if tp else float("nan"),
    }


def _challenge_from_overlap(ov: _Overlap, pair_iou: NDArray[np.float64], thresholds: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per-threshold TP / (TP + FP + FN), shape (n_thresholds,), float64."""
    total = ov.n_true + ov.n_pred
    if total == 0:
        return np.ones(thresholds.shape, dtype=np.float64)
    tp = np.empty(thresholds.shape, dtype=np.int64)
    high = thresholds >= 0.5
    if high.any():
        # Pairs above 0.5 are one-to-one: TP(t) = #{pairs with IoU > t}.
        vals = np.sort(pair_iou[pair_iou > 0.5])
        tp[high] = vals.size - np.searchsorted(vals, thresholds[high], side="right")
    for i in np.flatnonzero(~high):  # loop over thresholds, not objects
        tp[i] = _match_pairs(ov, pair_iou, float(thresholds[i])).size
    # TP + FP + FN = TP + (n_pred - TP) + (n_true - TP)
    return tp / (total - tp)


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def iou_matrix(truth: ArrayLike, pred: ArrayLike) -> NDArray[np.float64]:
    """Intersection over union of every truth object with every predicted one.

    Parameters
    ----------
    truth, pred : (H, W) integer ndarray
        Label images, 0 = background; any integer dtype, labels need not be
        consecutive. Not modified.

    Returns
    -------
    iou : (n_true, n_pred) float64 ndarray
        ``iou[i, j] = |T_i & P_j| / |T_i | P_j|`` where ``T_i`` is the ``i``-th
        smallest nonzero label of ``truth`` and ``P_j`` the ``j``-th smallest of
        ``pred``; 0 for objects that do not touch. Computed as
        ``inter / (area_t + area_p - inter)`` from one contingency table.

    Raises
    ------
    TypeError
        If either image does not have an integer dtype (bool included).
    ValueError
        If an image is not 2-D, is empty, has negative labels, or the shapes
        differ.
    """
    t, p = _as_pair(truth, pred)
    return _overlap(t, p).dense_iou()


def pixel_scores(truth: ArrayLike, pred: ArrayLike) -> dict[str, float]:
    """Foreground-vs-background scores, ignoring object identities.

    Foreground is ``label > 0`` for label images and ``True`` for bool masks.
    With ``TP`` the pixels foreground in both images, ``FP`` foreground only in
    ``pred``, ``FN`` only in ``truth`` and ``TN`` in neither:

    Parameters
    ----------
    truth, pred : (H, W) integer or bool ndarray
        Label images or masks of the same shape (dtypes may differ). Not
        modified.

    Returns
    -------
    dict of str to float
        ``pixel_iou``
            TP / (TP + FP + FN) (Jaccard index of the foregrounds).
        ``pixel_precision``
            TP / (TP + FP).
        ``pixel_recall``
            TP / (TP + FN).
        ``pixel_f1``
            2 TP / (2 TP + FP + FN) (Dice coefficient).
        ``pixel_accuracy``
            (TP + TN) / (H * W).

    Notes
    -----
    Empty-foreground convention: if both images have no foreground, iou,
    precision, recall and f1 are 1.0. Precision is 0.0 when ``pred`` has no
    foreground but ``truth`` has some; recall is 0.0 when ``truth`` has no
    foreground but ``pred`` has some (iou and f1 are then 0.0 as well).

    Raises
    ------
    TypeError
        If an image is neither integer nor bool.
    ValueError
        If an image is not 2-D, is empty, has negative labels, or the shapes
        differ.
    """
    t, p = _as_pair(truth, pred, allow_bool=True)
    t_fg = t if t.dtype == np.bool_ else t > 0
    p_fg = p if p.dtype == np.bool_ else p > 0
    inter = int(np.count_nonzero(t_fg & p_fg))
    return _pixel_from_counts(inter, int(np.count_nonzero(t_fg)), int(np.count_nonzero(p_fg)), t.size)


def matching(truth: ArrayLike, pred: ArrayLike, threshold: float = 0.5) -> dict[str, float]:
    """One-to-one object matching at one IoU threshold.

    A predicted object matches a true object when their IoU is **strictly
    greater** than ``threshold``; each object matches at most one other.

    For ``threshold >= 0.5`` such pairs are unique without any assignment
    step: IoU > 0.5 means ``|T & P| > |T | P| / 2 >= |T| / 2``, and the objects
    of a label image are disjoint, so two predictions cannot both cover more
    than half of the same true object (nor two true objects more than half of
    one prediction). For ``threshold < 0.5`` an object can exceed the
    threshold with several partners, and the matches are a maximum-cardinality
    one-to-one assignment among the pairs above the threshold
    (:func:`scipy.optimize.linear_sum_assignment`, ties broken by largest total
    IoU).

    Parameters
    ----------
    truth, pred : (H, W) integer ndarray
        Label images, 0 = background; labels need not be consecutive. Not
        modified.
    threshold : float, default 0.5
        IoU threshold in [0, 1].

    Returns
    -------
    dict
        ``tp`` (int)
            Matched pairs.
        ``fp`` (int)
            Predicted objects without a match.
        ``fn`` (int)
            True objects without a match.
        ``precision`` (float)
            tp / (tp + fp); 0.0 if nothing is predicted but something is true.
        ``recall`` (float)
            tp / (tp + fn); 0.0 if nothing is true but something is predicted.
        ``f1`` (float)
            2 tp / (2 tp + fp + fn).
        ``mean_matched_iou`` (float)
            Mean IoU of the matched pairs; NaN when there is no match.

        If both images are empty: tp = fp = fn = 0 and precision = recall =
        f1 = 1.0 (mean_matched_iou NaN).

    Raises
    ------
    TypeError
        If an image does not have an integer dtype, or ``threshold`` is not a
        real number.
    ValueError
        If an image is not 2-D, is empty, has negative labels, the shapes
        differ, or ``threshold`` is outside [0, 1].
    """
    thr = _as_threshold(threshold)
    t, p = _as_pair(truth, pred)
    ov = _overlap(t, p)
    return _match_counts(ov, ov.pair_iou(), thr)


def challenge_scores(
    truth: ArrayLike,
    pred: ArrayLike,
    thresholds: ArrayLike = CHALLENGE_THRESHOLDS,
) -> tuple[NDArray[np.float64], float]:
    """2018 Data Science Bowl score: TP / (TP + FP + FN) averaged over thresholds.

    At each threshold objects are matched as in :func:`matching` (IoU strictly
    greater than the threshold, one-to-one). The IoU matrix is computed once
    for all thresholds.

    Parameters
    ----------
    truth, pred : (H, W) integer ndarray
        Label images, 0 = background; labels need not be consecutive. Not
        modified.
    thresholds : (T,) array_like of float, default CHALLENGE_THRESHOLDS
        IoU thresholds in [0, 1]; the default is 0.50, 0.55, ..., 0.95.

    Returns
    -------
    per_threshold : (T,) float64 ndarray
        TP / (TP + FP + FN) at each threshold (the challenge's "average
        precision" at that IoU).
    mean : float
        Mean of ``per_threshold``: the image's challenge score.

    Notes
    -----
    An image with no true and no predicted object scores 1.0 at every
    threshold; one with objects in only one of the two scores 0.0.

    Raises
    ------
    TypeError
        If an image does not have an integer dtype, or thresholds are not real.
    ValueError
        If an image is not 2-D, is empty, has negative labels, the shapes
        differ, or a threshold is outside [0, 1].
    """
    thr = _as_thresholds(thresholds)
    t, p = _as_pair(truth, pred)
    ov = _overlap(t, p)
    per = _challenge_from_overlap(ov, ov.pair_iou(), thr)
    return per, float(per.mean())


def _aji_from_overlap(ov: _Overlap, pair_iou: NDArray[np.float64]) -> float:
    """Aggregated Jaccard index from the contingency table (see :func:`aggregated_jaccard`)."""
    if ov.n_true == 0 and ov.n_pred == 0:
        return 1.0
    # each true object's best prediction: the overlapping pair of highest IoU in its row
    # (ties: the lowest prediction label), found by one lexicographic sort of the pairs
    order = np.lexsort((ov.cols, -pair_iou, ov.rows))
    rows = ov.rows[order]
    first = order[np.r_[True, rows[1:] != rows[:-1]]] if rows.size else order
    inter = int(ov.inter[first].sum())
    union = int((ov.area_true[ov.rows[first]] + ov.area_pred[ov.cols[first]] - ov.inter[first]).sum())
    unmatched_true = np.ones(ov.n_true, bool)
    unmatched_true[ov.rows[first]] = False
    used = np.zeros(ov.n_pred, bool)
    used[ov.cols[first]] = True
    union += int(ov.area_true[unmatched_true].sum()) + int(ov.area_pred[~used].sum())
    return inter / union if union else 0.0


def aggregated_jaccard(truth: ArrayLike, pred: ArrayLike) -> float:
    """Aggregated Jaccard index (AJI; Kumar et al., IEEE TMI 2017, the MoNuSeg metric).

    Each true object ``G`` is paired with the predicted object ``S`` of highest IoU with it
    (a prediction may serve several true objects, as in the original definition); AJI is
    ``sum |G ∩ S| / (sum |G ∪ S| + sum of the areas of predictions paired with none)``,
    a true object that overlaps no prediction adding its area to the denominator only.

    Parameters
    ----------
    truth, pred : (H, W) integer ndarray
        Label images, 0 = background. Not modified.

    Returns
    -------
    float
        In [0, 1]; 1.0 when both images are empty, 0.0 when only one is.

    Examples
    --------
    >>> t = np.array([[1, 1, 0, 2, 2]])
    >>> p = np.array([[1, 1, 0, 2, 0]])
    >>> aggregated_jaccard(t, p)  # (2 + 1) / (2 + 2)
    0.75
    """
    t, p = _as_pair(truth, pred)
    ov = _overlap(t, p)
    return _aji_from_overlap(ov, ov.pair_iou())


def _row_from_overlap(ov: _Overlap) -> dict[str, float]:
    """All scores of one image, as one flat row, from its contingency table (see :func:`evaluate_image`)."""
    pair_iou = ov.pair_iou()
    row: dict[str, float] = {"n_true": ov.n_true, "n_pred": ov.n_pred}
    row.update(_pixel_from_counts(int(ov.inter.sum()), int(ov.area_true.sum()), int(ov.area_pred.sum()), ov.n_pixels))
    obj = _match_counts(ov, pair_iou, 0.5)
    for key in ("tp", "fp", "fn", "precision", "recall", "f1"):
        row[f"obj_{key}"] = obj[key]
    row["mean_matched_iou"] = obj["mean_matched_iou"]
    per = _challenge_from_overlap(ov, pair_iou, CHALLENGE_THRESHOLDS)
    for thr, score in zip(CHALLENGE_THRESHOLDS, per):
        row[f"ap_{thr:.2f}"] = float(score)
    row["challenge_score"] = float(per.mean())
    row["aji"] = _aji_from_overlap(ov, pair_iou)
    return row


def evaluate_image(truth: ArrayLike, pred: ArrayLike) -> dict[str, float]:
    """All scores of one image as one flat row (e.g. for a pandas DataFrame).

    Everything is derived from a single contingency table of the two images.

    Parameters
    ----------
    truth, pred : (H, W) integer ndarray
        Label images, 0 = background; labels need not be consecutive. Not
        modified.

    Returns
    -------
    dict
        ``n_true`` (int)
            Number of true objects (distinct nonzero labels of ``truth``).
        ``n_pred`` (int)
            Number of predicted objects.
        ``pixel_iou``, ``pixel_precision``, ``pixel_recall``, ``pixel_f1``,
        ``pixel_accuracy`` (float)
            Foreground scores of ``label > 0``, as in :func:`pixel_scores`:
            foreground IoU, precision, recall, F1 (Dice) and the fraction of
            pixels whose foreground/background class agrees.
        ``obj_tp``, ``obj_fp``, ``obj_fn`` (int)
            Matched pairs, unmatched predictions, unmatched true objects at
            IoU > 0.5, as in :func:`matching`.
        ``obj_precision``, ``obj_recall``, ``obj_f1`` (float)
            Object precision, recall and F1 at IoU > 0.5.
        ``mean_matched_iou`` (float)
            Mean IoU of the pairs matched at IoU > 0.5; NaN without a match.
        ``ap_0.50``, ``ap_0.55``, ..., ``ap_0.95`` (float)
            TP / (TP + FP + FN) at each of :data:`CHALLENGE_THRESHOLDS`
            (key ``f"ap_{t:.2f}"``).
        ``challenge_score`` (float)
            Mean of the ``ap_*`` values (2018 Data Science Bowl score).
        ``aji`` (float)
            Aggregated Jaccard index, as in :func:`aggregated_jaccard` (MoNuSeg's score).

        The empty-image conventions of :func:`pixel_scores`,
        :func:`matching` and :func:`challenge_scores` apply.

    Raises
    ------
    TypeError
        If an image does not have an integer dtype.
    ValueError
        If an image is not 2-D, is empty, has negative labels, or the shapes
        differ.
    """
    t, p = _as_pair(truth, pred)
    return _row_from_overlap(_overlap(t, p))


# --- the semantic task: pixel scores of a class confusion matrix ---------------------------

#: The per-class scores of :func:`class_scores`.
CLASS_STATS = ("dice", "iou", "precision", "recall")


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """``(k, k) int64`` pixel counts, rows the true class, columns the predicted one.

    Parameters
    ----------
    truth, pred : (H, W) ndarray of integers in 0..k-1
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in size")
    return np.bincount(truth.ravel().astype(np.int64) * k + pred.ravel().astype(np.int64), minlength=k * k)[: k * k].reshape(k, k)


def _class_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def class_scores(cm: np.ndarray, names: tuple[str, ...] | list[str]) -> dict[str, float]:
    """Pixel accuracy, per-class Dice, IoU, precision and recall, and their means.

    A score is undefined (NaN) where its denominator is empty: Dice and IoU of a class that is
    neither true nor predicted anywhere, precision of a class never predicted, recall of a
    class never true. ``mean_*`` is the macro mean over the classes where it is defined;
    ``fw_*`` the mean weighted by each class's share of the true pixels (frequency-weighted).

    Parameters
    ----------
    cm : (K, K) ndarray of int
        :func:`confusion_matrix`.
    names : K class names

    Returns
    -------
    dict
        ``pixel_accuracy, mean_dice, mean_iou, mean_precision, mean_recall, fw_dice, fw_iou,
        fw_precision, fw_recall``, then per class ``dice_<name>, iou_<name>,
        precision_<name>, recall_<name>``, then ``true_<name>`` and ``pred_<name>`` (share of
        the image's pixels). On an empty image every score is NaN.

    Examples
    --------
    >>> s = class_scores(np.array([[3, 1], [0, 4]]), ["a", "b"])
    >>> s["pixel_accuracy"], round(s["dice_a"], 3), round(s["dice_b"], 3)
    (0.875, 0.857, 0.889)
    """
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    tp = np.diag(cm)
    true, pred = cm.sum(axis=1), cm.sum(axis=0)
    per = dict(dice=_class_ratio(2 * tp, true + pred), iou=_class_ratio(tp, true + pred - tp), precision=_class_ratio(tp, pred), recall=_class_ratio(tp, true))
    freq = true / total if total else np.zeros_like(true)
    out: dict[str, float] = dict(pixel_accuracy=float(tp.sum() / total) if total else float("nan"))
    for stat in CLASS_STATS:
        values = per[stat]
        out[f"mean_{stat}"] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    for stat in CLASS_STATS:
        values = per[stat]
        ok = np.isfinite(values) & (freq > 0)
        out[f"fw_{stat}"] = float((values[ok] * freq[ok]).sum() / freq[ok].sum()) if ok.any() else float("nan")
    for c, name in enumerate(names):
        for stat in CLASS_STATS:
            out[f"{stat}_{name}"] = float(per[stat][c])
    for c, name in enumerate(names):
        out[f"true_{name}"] = float(true[c] / total) if total else float("nan")
        out[f"pred_{name}"] = float(pred[c] / total) if total else float("nan")
    return out
