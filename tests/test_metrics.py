"""Tests of nucseg.metrics on small hand-made label images.

Expected values are worked out by hand in the comments. Pictures show label
images row by row, ``.`` for background.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from nucseg import metrics
from nucseg.metrics import (
    CHALLENGE_THRESHOLDS,
    challenge_scores,
    evaluate_image,
    iou_matrix,
    matching,
    pixel_scores,
)

INT_DTYPES = [np.uint16, np.uint32, np.int32]
AP_KEYS = [f"ap_{t:.2f}" for t in CHALLENGE_THRESHOLDS]
OBJECT_FUNCS = [iou_matrix, matching, challenge_scores, evaluate_image]
ALL_FUNCS = [*OBJECT_FUNCS, pixel_scores]


def picture(rows: list[str], dtype: type = np.int32) -> np.ndarray:
    """Label image from strings: '.' is 0, a digit or letter is its label (a=10, ...)."""
    return np.array([[0 if ch == "." else int(ch, 36) for ch in row] for row in rows], dtype=dtype)


# Two 2x2 squares, and the same shifted right by one pixel.
TWO_SQUARES = [
    "........",
    ".11..22.",
    ".11..22.",
    "........",
]
TWO_SQUARES_SHIFTED = [
    "........",
    "..11..22",
    "..11..22",
    "........",
]


# ---------------------------------------------------------------------------
# Constants and keys
# ---------------------------------------------------------------------------


def test_challenge_thresholds() -> None:
    expected = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    assert CHALLENGE_THRESHOLDS.dtype == np.float64
    np.testing.assert_array_equal(CHALLENGE_THRESHOLDS, expected)
    assert AP_KEYS[0] == "ap_0.50" and AP_KEYS[-1] == "ap_0.95"


def test_evaluate_image_keys_in_order() -> None:
    row = evaluate_image(picture(TWO_SQUARES), picture(TWO_SQUARES_SHIFTED))
    assert list(row) == [
        "n_true",
        "n_pred",
        "pixel_iou",
        "pixel_precision",
        "pixel_recall",
        "pixel_f1",
        "pixel_accuracy",
        "obj_tp",
        "obj_fp",
        "obj_fn",
        "obj_precision",
        "obj_recall",
        "obj_f1",
        "mean_matched_iou",
        *AP_KEYS,
        "challenge_score",
        "aji",
    ]
    assert all(isinstance(row[k], int) for k in ("n_true", "n_pred", "obj_tp", "obj_fp", "obj_fn"))
    assert all(isinstance(v, float) for k, v in row.items() if k.startswith(("pixel", "ap_")))


# ---------------------------------------------------------------------------
# Hand-worked examples
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_shifted_squares(dtype: type) -> None:
    truth, pred = picture(TWO_SQUARES, dtype), picture(TWO_SQUARES_SHIFTED, dtype)
    # Each square keeps 2 of its 4 pixels: IoU = 2 / (4 + 4 - 2) = 2/6 = 1/3;
    # the squares are 4 columns apart, so the cross pairs do not touch.
    np.testing.assert_allclose(iou_matrix(truth, pred), [[1 / 3, 0.0], [0.0, 1 / 3]], rtol=1e-15)
    # 1/3 < 0.5: nothing matches -> TP 0, FP 2, FN 2, score 0 at every threshold.
    m = matching(truth, pred)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 2, 2)
    assert m["precision"] == m["recall"] == m["f1"] == 0.0
    assert math.isnan(m["mean_matched_iou"])
    per, mean = challenge_scores(truth, pred)
    np.testing.assert_array_equal(per, np.zeros(10))
    assert mean == 0.0
    # ... but a threshold below 1/3 matches both: TP 2, mean IoU 1/3.
    m = matching(truth, pred, threshold=0.3)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 0, 0)
    assert m["mean_matched_iou"] == pytest.approx(1 / 3)
    # Pixels: 8 true, 8 predicted, 4 shared, 32 in all.
    # IoU 4/12, precision 4/8, recall 4/8, F1 8/16, accuracy (4 + 32 - 12)/32 = 24/32.
    px = pixel_scores(truth, pred)
    assert px == pytest.approx({"pixel_iou": 1 / 3, "pixel_precision": 0.5, "pixel_recall": 0.5, "pixel_f1": 0.5, "pixel_accuracy": 0.75})
    row = evaluate_image(truth, pred)
    assert (row["n_true"], row["n_pred"]) == (2, 2)
    assert (row["obj_tp"], row["obj_fp"], row["obj_fn"]) == (0, 2, 2)
    assert row["challenge_score"] == 0.0


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_perfect_prediction(dtype: type) -> None:
    truth = picture(TWO_SQUARES, dtype)
    row = evaluate_image(truth, truth.copy())
    for key, value in row.items():
        if key in ("n_true", "n_pred", "obj_tp"):
            assert value == 2, key
        elif key in ("obj_fp", "obj_fn"):
            assert value == 0, key
        else:
            assert value == 1.0, key
    np.testing.assert_array_equal(iou_matrix(truth, truth), np.eye(2))


def test_empty_vs_empty() -> None:
    empty = np.zeros((5, 7), dtype=np.uint16)
    assert iou_matrix(empty, empty).shape == (0, 0)
    per, mean = challenge_scores(empty, empty)
    np.testing.assert_array_equal(per, np.ones(10))
    assert mean == 1.0
    m = matching(empty, empty)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 0)
    assert m["precision"] == m["recall"] == m["f1"] == 1.0
    assert math.isnan(m["mean_matched_iou"])
    assert pixel_scores(empty, empty) == {"pixel_iou": 1.0, "pixel_precision": 1.0, "pixel_recall": 1.0, "pixel_f1": 1.0, "pixel_accuracy": 1.0}
    row = evaluate_image(empty, empty)
    assert row["n_true"] == row["n_pred"] == 0
    assert row["challenge_score"] == 1.0 and all(row[k] == 1.0 for k in AP_KEYS)
    assert row["obj_precision"] == row["obj_recall"] == row["obj_f1"] == 1.0


def test_empty_truth_some_prediction() -> None:
    empty = np.zeros((4, 8), dtype=np.int32)
    pred = picture(TWO_SQUARES)
    assert iou_matrix(empty, pred).shape == (0, 2)
    per, mean = challenge_scores(empty, pred)
    np.testing.assert_array_equal(per, np.zeros(10))  # 0 / (0 + 2 + 0)
    assert mean == 0.0
    m = matching(empty, pred)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 2, 0)
    # precision 0/2; recall 0/0 with something predicted -> 0 by convention.
    assert m["precision"] == m["recall"] == m["f1"] == 0.0
    # Pixels: no true foreground, 8 predicted out of 32 -> recall 0 (convention),
    # precision 0/8, accuracy 24/32.
    assert pixel_scores(empty, pred) == {"pixel_iou": 0.0, "pixel_precision": 0.0, "pixel_recall": 0.0, "pixel_f1": 0.0, "pixel_accuracy": 0.75}


def test_some_truth_empty_prediction() -> None:
    truth = picture(TWO_SQUARES)
    empty = np.zeros_like(truth)
    assert iou_matrix(truth, empty).shape == (2, 0)
    assert challenge_scores(truth, empty)[1] == 0.0  # 0 / (0 + 0 + 2)
    m = matching(truth, empty)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 2)
    # precision 0/0 with something true -> 0 by convention; recall 0/2.
    assert m["precision"] == m["recall"] == m["f1"] == 0.0
    px = pixel_scores(truth, empty)
    assert px["pixel_precision"] == 0.0 and px["pixel_recall"] == 0.0
    assert px["pixel_accuracy"] == 0.75


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_one_nucleus_removed(dtype: type) -> None:
    truth = picture(
        [
            "11.22.33",
            "11.22.33",
            "........",
            "44.55...",
            "44.55...",
        ],
        dtype,
    )
    n = 5
    pred = truth.copy()
    pred[pred == 3] = 0
    # 4 perfect matches, one missed: TP 4, FP 0, FN 1 -> 4/5 at every threshold.
    per, mean = challenge_scores(truth, pred)
    np.testing.assert_array_equal(per, np.full(10, (n - 1) / n))
    assert mean == pytest.approx((n - 1) / n, abs=1e-15)
    m = matching(truth, pred)
    assert (m["tp"], m["fp"], m["fn"]) == (4, 0, 1)
    assert m["precision"] == 1.0 and m["recall"] == 0.8
    assert m["f1"] == pytest.approx(8 / 9)  # 2*4 / (2*4 + 0 + 1)
    assert m["mean_matched_iou"] == 1.0


def test_split_nucleus_at_exactly_half() -> None:
    truth = picture(
        [
            "1111.2",
            "1111.2",
            "......",
            "33....",
        ]
    )
    # Nucleus 1 (2x4 = 8 px) split into two 2x2 halves 4 and 5.
    pred = picture(
        [
            "4455.2",
            "4455.2",
            "......",
            "33....",
        ]
    )
    # IoU(1, 4) = IoU(1, 5) = 4 / 8 = 0.5 exactly; 2 and 3 are perfect.
    # Rows truth (1, 2, 3), columns pred (2, 3, 4, 5).
    expected = np.array([[0, 0, 0.5, 0.5], [1, 0, 0, 0], [0, 1, 0, 0]])
    np.testing.assert_array_equal(iou_matrix(truth, pred), expected)
    # 0.5 is not > 0.5: the halves do not match. TP 2, FP 2, FN 1 -> 2/5.
    m = matching(truth, pred, 0.5)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 2, 1)
    per, mean = challenge_scores(truth, pred)
    np.testing.assert_array_equal(per, np.full(10, 0.4))
    assert mean == pytest.approx(0.4)
    # Below 0.5 exactly one half is matched (one-to-one): TP 3, FP 1, FN 0.
    m = matching(truth, pred, 0.49)
    assert (m["tp"], m["fp"], m["fn"]) == (3, 1, 0)
    assert m["mean_matched_iou"] == pytest.approx((1 + 1 + 0.5) / 3)


def test_merged_nuclei() -> None:
    truth = picture(
        [
            "1112",
            "1112",
            "....",
        ]
    )
    pred = picture(
        [
            "7777",
            "7777",
            "....",
        ]
    )
    # IoU(1, 7) = 6/8 = 0.75, IoU(2, 7) = 2/8 = 0.25.
    np.testing.assert_array_equal(iou_matrix(truth, pred), [[0.75], [0.25]])
    # t = 0.50 .. 0.70: 1-7 matches, 2 missed: TP 1, FP 0, FN 1 -> 1/2.
    # t = 0.75 .. 0.95: 0.75 is not > 0.75, nothing matches -> 0.
    per, mean = challenge_scores(truth, pred)
    np.testing.assert_array_equal(per, [0.5] * 5 + [0.0] * 5)
    assert mean == 0.25
    assert matching(truth, pred, 0.7)["tp"] == 1
    assert matching(truth, pred, 0.75)["tp"] == 0
    # At 0.2 both pairs qualify but prediction 7 can match only once; the
    # better pair 1-7 wins: TP 1, FN 1, mean IoU 0.75.
    m = matching(truth, pred, 0.2)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 1)
    assert m["mean_matched_iou"] == 0.75
    row = evaluate_image(truth, pred)
    assert (row["obj_tp"], row["obj_fp"], row["obj_fn"]) == (1, 0, 1)
    assert row["mean_matched_iou"] == 0.75
    assert row["challenge_score"] == 0.25


def test_strict_threshold_at_exactly_half() -> None:
    truth = picture(["11..", "11.."])
    pred = picture(["2222", "2222"])
    # IoU = 4 / 8 = 0.5 exactly.
    assert iou_matrix(truth, pred)[0, 0] == 0.5
    assert matching(truth, pred, 0.5)["tp"] == 0
    assert matching(truth, pred, 0.4999)["tp"] == 1
    per, _ = challenge_scores(truth, pred, thresholds=[0.45, 0.5])
    np.testing.assert_array_equal(per, [1.0, 0.0])


def test_strict_threshold_at_exact_decimal() -> None:
    # IoU = 11/20, the same float as the threshold 0.55: no match at 0.55.
    truth = np.zeros((1, 20), dtype=np.int32)
    truth[0, :11] = 1
    pred = np.ones((1, 20), dtype=np.int32)
    assert iou_matrix(truth, pred)[0, 0] == CHALLENGE_THRESHOLDS[1] == 0.55
    per, _ = challenge_scores(truth, pred)
    np.testing.assert_array_equal(per, [1.0] + [0.0] * 9)


def test_low_threshold_maximises_number_of_matches() -> None:
    # One row: T1 = x 0..9, T2 = x 10..11; P1 = x 1..10, P2 = x 0.
    truth = np.array([[1] * 10 + [2] * 2], dtype=np.int32)
    pred = np.array([[4] + [3] * 10 + [0]], dtype=np.int32)
    # T1 10 px, T2 2 px, P1 10 px, P2 1 px.
    # IoU(T1,P1) = 9/(10+10-9) = 9/11, IoU(T2,P1) = 1/(2+10-1) = 1/11,
    # IoU(T1,P2) = 1/(10+1-1) = 1/10, IoU(T2,P2) = 0. Columns: P1 (3), P2 (4).
    np.testing.assert_allclose(iou_matrix(truth, pred), [[9 / 11, 1 / 10], [1 / 11, 0]])
    # At 0.05 the one-to-one matching with most pairs is T1-P2, T2-P1 (2 matches),
    # not T1-P1 alone (larger IoU but 1 match).
    m = matching(truth, pred, 0.05)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 0, 0)
    assert m["mean_matched_iou"] == pytest.approx((1 / 10 + 1 / 11) / 2)
    # At 0.5 only T1-P1 qualifies.
    m = matching(truth, pred, 0.5)
    assert (m["tp"], m["mean_matched_iou"]) == (1, pytest.approx(9 / 11))


def test_non_consecutive_labels() -> None:
    truth = picture(TWO_SQUARES) * 20 + 3  # labels 23 and 43 ...
    truth[truth == 3] = 0  # ... on background 0
    pred = picture(TWO_SQUARES_SHIFTED)
    pred = np.where(pred == 1, 1000, np.where(pred == 2, 7, 0)).astype(np.int32)
    # Rows: truth 23 (left), 43 (right); columns sorted: pred 7 (right), 1000 (left).
    np.testing.assert_allclose(iou_matrix(truth, pred), [[0, 1 / 3], [1 / 3, 0]])
    relabelled = evaluate_image(truth, pred)
    original = evaluate_image(picture(TWO_SQUARES), picture(TWO_SQUARES_SHIFTED))
    assert relabelled.keys() == original.keys()
    for key in original:
        assert relabelled[key] == pytest.approx(original[key], nan_ok=True), key


@pytest.mark.parametrize("t_dtype", INT_DTYPES + [np.uint8, np.int64, np.uint64])
@pytest.mark.parametrize("p_dtype", INT_DTYPES)
def test_dtypes_give_identical_rows(t_dtype: type, p_dtype: type) -> None:
    truth, pred = picture(TWO_SQUARES, t_dtype), picture(TWO_SQUARES_SHIFTED, p_dtype)
    reference = evaluate_image(picture(TWO_SQUARES), picture(TWO_SQUARES_SHIFTED))
    row = evaluate_image(truth, pred)
    for key in reference:
        assert row[key] == pytest.approx(reference[key], nan_ok=True), key


def test_evaluate_image_agrees_with_parts() -> None:
    truth = picture(["1112.3", "1112.3", "......", "44.555"])
    pred = picture(["9999.3", "9999..", "......", "44.56."])
    row = evaluate_image(truth, pred)
    assert {k: row[k] for k in pixel_scores(truth, pred)} == pixel_scores(truth, pred)
    m = matching(truth, pred, 0.5)
    for key in ("tp", "fp", "fn", "precision", "recall", "f1"):
        assert row[f"obj_{key}"] == m[key]
    assert row["mean_matched_iou"] == m["mean_matched_iou"]
    per, mean = challenge_scores(truth, pred)
    assert [row[k] for k in AP_KEYS] == per.tolist()
    assert row["challenge_score"] == mean
    # By hand: truth 1 (6 px), 2, 3, 4 (2 px each), 5 (3 px); pred 9 (8 px),
    # 3 (1 px), 4 (2 px), 5, 6 (1 px each). IoU 1-9 = 6/8 (match), 2-9 = 2/8,
    # 3-3 = 1/2 (not > 0.5), 4-4 = 1 (match), 5-5 = 5-6 = 1/3.
    # -> TP 2, FP 3 (pred 3, 5, 6), FN 3 (truth 2, 3, 5).
    assert (row["obj_tp"], row["obj_fp"], row["obj_fn"]) == (2, 3, 3)


def test_pixel_scores_accept_bool_masks() -> None:
    truth, pred = picture(TWO_SQUARES), picture(TWO_SQUARES_SHIFTED)
    assert pixel_scores(truth > 0, pred > 0) == pixel_scores(truth, pred)
    assert pixel_scores(truth > 0, pred) == pixel_scores(truth, pred)


def test_inputs_not_modified_and_read_only_ok() -> None:
    truth = picture(["1112.3", "1112.3", "......", "44.555"], np.uint16)
    pred = picture(["9999.3", "9999..", "......", "44.56."], np.int32)
    t0, p0 = truth.copy(), pred.copy()
    truth.setflags(write=False)
    pred.setflags(write=False)
    iou_matrix(truth, pred)
    pixel_scores(truth, pred)
    matching(truth, pred)
    matching(truth, pred, 0.1)
    challenge_scores(truth, pred)
    evaluate_image(truth, pred)
    np.testing.assert_array_equal(truth, t0)
    np.testing.assert_array_equal(pred, p0)
    assert truth.dtype == np.uint16 and pred.dtype == np.int32


# ---------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("func", ALL_FUNCS)
def test_shape_mismatch_names_both_shapes(func) -> None:
    with pytest.raises(ValueError, match=r"truth \(4, 8\) and pred \(4, 7\)"):
        func(np.zeros((4, 8), np.int32), np.zeros((4, 7), np.int32))


@pytest.mark.parametrize("func", ALL_FUNCS)
def test_float_dtype_raises_type_error(func) -> None:
    with pytest.raises(TypeError, match="pred .*float64"):
        func(np.zeros((4, 8), np.int32), np.zeros((4, 8), np.float64))
    with pytest.raises(TypeError, match="truth .*float32"):
        func(np.zeros((4, 8), np.float32), np.zeros((4, 8), np.int32))


@pytest.mark.parametrize("func", OBJECT_FUNCS)
def test_bool_rejected_for_object_metrics(func) -> None:
    with pytest.raises(TypeError, match="truth has dtype bool"):
        func(np.zeros((4, 8), bool), np.zeros((4, 8), np.int32))


def test_other_bad_inputs() -> None:
    good = np.zeros((4, 8), np.int32)
    with pytest.raises(ValueError, match=r"2-D \(H, W\).*\(2, 4, 8\)"):
        iou_matrix(np.zeros((2, 4, 8), np.int32), np.zeros((2, 4, 8), np.int32))
    with pytest.raises(ValueError, match="empty"):
        evaluate_image(np.zeros((0, 8), np.int32), np.zeros((0, 8), np.int32))
    with pytest.raises(ValueError, match="negative label"):
        evaluate_image(good - 1, good)
    with pytest.raises(TypeError, match="dtype object"):
        iou_matrix(np.array([[None]]), np.array([[None]]))
    with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\]"):
        matching(good, good, 1.5)
    with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\]"):
        matching(good, good, float("nan"))
    with pytest.raises(TypeError, match="threshold must be a real number"):
        matching(good, good, "0.5")
    with pytest.raises(ValueError, match=r"thresholds must lie in \[0, 1\]"):
        challenge_scores(good, good, [0.5, -0.1])
    with pytest.raises(ValueError, match="non-empty"):
        challenge_scores(good, good, [])


# ---------------------------------------------------------------------------
# Against a brute-force reference, through every code path
# ---------------------------------------------------------------------------


def _random_labels(rng: np.random.Generator, shape: tuple[int, int], pool: np.ndarray) -> np.ndarray:
    """Overlapping random rectangles with labels drawn from ``pool``."""
    out = np.zeros(shape, dtype=pool.dtype)
    for label in rng.choice(pool, size=rng.integers(0, 9), replace=False):
        r, c = rng.integers(0, shape[0] - 2), rng.integers(0, shape[1] - 2)
        h, w = rng.integers(2, 9), rng.integers(2, 9)
        out[r : r + h, c : c + w] = label
    return out


def _reference(truth: np.ndarray, pred: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    """IoU matrix by pixel masks, and the number of matches above ``threshold``."""
    tl = [x for x in np.unique(truth) if x]
    pl = [x for x in np.unique(pred) if x]
    iou = np.zeros((len(tl), len(pl)))
    for i, a in enumerate(tl):
        for j, b in enumerate(pl):
            ta, pb = truth == a, pred == b
            iou[i, j] = (ta & pb).sum() / (ta | pb).sum()
    if threshold >= 0.5:
        return iou, int((iou > threshold).sum())
    # Maximum number of one-to-one pairs above the threshold.
    ai, aj = linear_sum_assignment(iou > threshold, maximize=True)
    return iou, int((iou[ai, aj] > threshold).sum())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    ("pool", "dense_limit"),
    [
        (np.arange(1, 12, dtype=np.int32), None),  # raw labels index the table
        (np.arange(1, 400, 7, dtype=np.uint16), None),  # sparse labels
        (np.arange(1, 400, 7, dtype=np.uint16), 500),  # relabel via lookup table
        (np.arange(1, 400, 7, dtype=np.uint16), 4),  # np.unique + sparse pairs
        (np.arange(1, 12, dtype=np.uint64) << np.uint64(40), None),  # huge labels
    ],
)
def test_matches_brute_force(seed: int, pool: np.ndarray, dense_limit: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if dense_limit is not None:
        monkeypatch.setattr(metrics, "_DENSE_LIMIT", dense_limit)
    rng = np.random.default_rng(seed)
    truth = _random_labels(rng, (20, 24), pool)
    pred = _random_labels(rng, (20, 24), pool)
    expected_iou, _ = _reference(truth, pred, 0.5)
    np.testing.assert_allclose(iou_matrix(truth, pred), expected_iou, rtol=1e-15)
    n_t, n_p = expected_iou.shape
    for threshold in (0.1, 0.3, 0.5, 0.7):
        _, tp = _reference(truth, pred, threshold)
        m = matching(truth, pred, threshold)
        assert (m["tp"], m["fp"], m["fn"]) == (tp, n_p - tp, n_t - tp)
    per, _ = challenge_scores(truth, pred, thresholds=[0.1, 0.3, 0.5, 0.7])
    for score, threshold in zip(per, (0.1, 0.3, 0.5, 0.7)):
        _, tp = _reference(truth, pred, threshold)
        assert score == (1.0 if n_t + n_p == 0 else tp / (n_t + n_p - tp))


# ---------------------------------------------------------------------------
# Scale sanity check (not timed)
# ---------------------------------------------------------------------------


def _grid_of_discs(rng: np.random.Generator) -> np.ndarray:
    """(2000, 2000) uint32 image of 32 x 32 = 1024 discs with scattered labels."""
    cell, n = 62, 32
    yy, xx = np.ogrid[:2000, :2000]
    row, col = np.minimum(yy // cell, n - 1), np.minimum(xx // cell, n - 1)
    radius = rng.uniform(8, 28, size=(n, n))
    inside = (yy - row * cell - 31) ** 2 + (xx - col * cell - 31) ** 2 < radius[row, col] ** 2
    labels = rng.choice(10 * n * n, size=(n, n), replace=False).astype(np.uint32) + 1
    return np.where(inside, labels[row, col], np.uint32(0))


def test_scale_thousand_nuclei() -> None:
    rng = np.random.default_rng(0)
    truth = _grid_of_discs(rng)
    n = 32 * 32  # every disc has radius >= 8, none is empty
    row = evaluate_image(truth, truth.copy())
    assert row["n_true"] == row["n_pred"] == n
    assert row["challenge_score"] == 1.0 and row["obj_f1"] == 1.0 and row["pixel_iou"] == 1.0
    pred = truth.copy()
    pred[pred == truth[31, 31]] = 0
    assert challenge_scores(truth, pred)[1] == pytest.approx((n - 1) / n, abs=1e-15)


# ---------------------------------------------------------------------------
# Aggregated Jaccard index
# ---------------------------------------------------------------------------


def _aji_reference(truth: np.ndarray, pred: np.ndarray) -> float:
    """Kumar et al.'s AJI written out object by object (the MoNuSeg challenge's loop)."""
    inter = union = 0
    used = set()
    for t in np.unique(truth[truth > 0]):
        g = truth == t
        best, best_iou = None, 0.0
        for p in np.unique(pred[g & (pred > 0)]):
            s = pred == p
            iou = (g & s).sum() / (g | s).sum()
            if iou > best_iou:
                best, best_iou = p, iou
        if best is None:
            union += g.sum()
            continue
        s = pred == best
        inter += (g & s).sum()
        union += (g | s).sum()
        used.add(best)
    for p in np.unique(pred[pred > 0]):
        if p not in used:
            union += (pred == p).sum()
    return inter / union


def test_aji_hand_made() -> None:
    """One nucleus found whole, one half: (4 + 2) / (4 + 4); a merge of both into one
    prediction serves both true objects: (4 + 4) / (8 + 8)."""
    truth = picture(TWO_SQUARES)
    half = truth.copy()
    half[:, 5] = 0
    assert metrics.aggregated_jaccard(truth, half) == pytest.approx(6 / 8)
    merged = np.where(truth > 0, 7, 0)
    assert metrics.aggregated_jaccard(truth, merged) == pytest.approx(0.5)
    assert evaluate_image(truth, half)["aji"] == pytest.approx(6 / 8)


def test_aji_empty_conventions() -> None:
    truth = picture(TWO_SQUARES)
    empty = np.zeros_like(truth)
    assert metrics.aggregated_jaccard(empty, empty) == 1.0
    assert metrics.aggregated_jaccard(truth, empty) == 0.0
    assert metrics.aggregated_jaccard(empty, truth) == 0.0


def test_aji_extra_prediction_adds_to_the_union() -> None:
    truth = picture(TWO_SQUARES)
    pred = truth.copy()
    pred[0, 0] = 9  # a false positive of one pixel
    assert metrics.aggregated_jaccard(truth, pred) == pytest.approx(8 / 9)


@pytest.mark.parametrize("seed", range(5))
def test_aji_equals_the_object_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 6, (24, 24)).repeat(2, 0).repeat(2, 1)
    pred = np.roll(rng.integers(0, 9, (24, 24)).repeat(2, 0).repeat(2, 1), 1, axis=1)
    assert metrics.aggregated_jaccard(truth, pred) == pytest.approx(_aji_reference(truth, pred))
