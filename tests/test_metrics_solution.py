"""The metric against an independent computation, on the real sample's truth read from a solution CSV.

The truth of the 12 embedded test images is encoded into the challenge's solution format
(one run-length row per nucleus) and decoded again with :func:`nucseg.rle.read_solution`.
Each edited prediction (one nucleus removed, split, merged) has an exact expected score
worked out here from counts; a reference scorer written the way the challenge's public
kernels did it (a dense IoU table from ``np.histogram2d``) must agree with
:func:`nucseg.metrics.evaluate_image` on realistic predictions.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import threshold_otsu

from nucseg.datasets import list_images, read_sample, unpack_zip
from nucseg.metrics import CHALLENGE_THRESHOLDS, evaluate_image
from nucseg.rle import read_solution, write_solution

from .conftest import REPO

AP = [f"ap_{t:.2f}" for t in CHALLENGE_THRESHOLDS]
EMPTY_ID = "no_nuclei"


@pytest.fixture(scope="module")
def solution(tmp_path_factory):
    """({image_id: truth labels decoded from the CSV}, {image_id: (H, W, 3) image}), plus an image without nuclei."""
    tmp = tmp_path_factory.mktemp("solution")
    root = unpack_zip(REPO / "resources/sample/sample_test.zip", tmp / "sample_test")
    samples = [read_sample(root, image_id) for image_id in list_images(root)]
    labels = {s.image_id: s.labels for s in samples}
    labels[EMPTY_ID] = np.zeros((64, 80), np.uint16)
    truth = read_solution(write_solution(labels, tmp / "solution.csv"))
    assert list(truth) == list(labels) and len(truth) == 13
    return truth, {s.image_id: s.image for s in samples}


def nuclei(truth):
    return {k: v for k, v in truth.items() if k != EMPTY_ID}


def constant(score):
    """Expected ap_ columns and challenge score when every threshold gives ``score``."""
    return dict.fromkeys(AP, score) | {"challenge_score": score}


def assert_scores(row, expected):
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_truth_against_itself_scores_one(solution):
    truth, _ = solution
    for image_id, labels in truth.items():
        row = evaluate_image(labels, labels)
        assert_scores(row, constant(1.0))
        assert_scores(
            row, dict(pixel_iou=1.0, pixel_precision=1.0, pixel_recall=1.0, pixel_f1=1.0, pixel_accuracy=1.0, obj_precision=1.0, obj_recall=1.0, obj_f1=1.0)
        )
        n = int(labels.max())
        assert (row["n_true"], row["n_pred"], row["obj_tp"], row["obj_fp"], row["obj_fn"]) == (n, n, n, 0, 0)
        if n:
            assert row["mean_matched_iou"] == 1.0
        else:
            assert image_id == EMPTY_ID and np.isnan(row["mean_matched_iou"])  # no pair to average


def test_empty_prediction_scores_zero_and_empty_against_empty_scores_one(solution):
    truth, _ = solution
    for image_id, labels in nuclei(truth).items():
        row = evaluate_image(labels, np.zeros_like(labels))
        assert_scores(row, constant(0.0))
        assert_scores(row, dict(pixel_iou=0.0, pixel_precision=0.0, pixel_recall=0.0, pixel_f1=0.0, obj_precision=0.0, obj_recall=0.0, obj_f1=0.0))
        assert (row["obj_tp"], row["obj_fp"], row["obj_fn"]) == (0, 0, int(labels.max()))
        assert row["pixel_accuracy"] == pytest.approx(1 - np.count_nonzero(labels) / labels.size)
        # and the other way round: a prediction where there is nothing to find
        assert evaluate_image(np.zeros_like(labels), labels)["challenge_score"] == 0.0
    empty = truth[EMPTY_ID]
    assert_scores(evaluate_image(empty, np.zeros_like(empty)), constant(1.0))
    one_blob = np.zeros_like(empty)
    one_blob[10:20, 10:20] = 1
    assert_scores(evaluate_image(empty, one_blob), constant(0.0))


def test_one_nucleus_removed(solution):
    """n true nuclei, one missing from the prediction: TP n-1, FN 1 at every threshold -> (n-1)/n."""
    truth, _ = solution
    for labels in nuclei(truth).values():
        n = int(labels.max())
        areas = np.bincount(labels.ravel())
        gone = int(np.argmax(areas[1:])) + 1  # the largest nucleus
        pred = np.where(labels == gone, 0, labels)
        row = evaluate_image(labels, pred)
        assert_scores(row, constant((n - 1) / n))
        assert (row["obj_tp"], row["obj_fp"], row["obj_fn"]) == (n - 1, 0, 1)
        foreground = np.count_nonzero(labels)
        assert_scores(row, dict(pixel_precision=1.0, pixel_recall=(foreground - areas[gone]) / foreground))


def split(labels, label, first_fraction):
    """Give the first ``first_fraction`` of a nucleus's pixels (column-major order) a new label."""
    pred = labels.astype(np.uint32)
    pixels = np.flatnonzero((labels == label).T)  # column-major order
    k = int(len(pixels) * first_fraction)
    rows, cols = np.unravel_index(pixels[:k], labels.shape[::-1])[::-1]
    pred[rows, cols] = labels.max() + 1
    return pred, k, len(pixels)


def test_one_nucleus_split_in_equal_halves_matches_at_no_threshold(solution):
    """Halves of IoU exactly 0.5 do not match (strictly greater): TP n-1, FP 2, FN 1 -> (n-1)/(n+2)."""
    truth, _ = solution
    for labels in nuclei(truth).values():
        n = int(labels.max())
        areas = np.bincount(labels.ravel())
        even = np.flatnonzero(areas[1:] % 2 == 0) + 1
        victim = int(even[np.argmax(areas[even])])  # the largest nucleus of even area
        pred, k, area = split(labels, victim, 0.5)
        assert 2 * k == area
        row = evaluate_image(labels, pred)
        assert_scores(row, constant((n - 1) / (n + 2)))
        assert (row["n_pred"], row["obj_tp"], row["obj_fp"], row["obj_fn"]) == (n + 1, n - 1, 2, 1)
        assert_scores(row, dict(pixel_iou=1.0, pixel_f1=1.0))  # the foreground is unchanged


def test_one_nucleus_split_three_to_one(solution):
    """The larger part has IoU 3/4 with the nucleus: found at 0.50 ... 0.70 (TP n, FP 1 -> n/(n+1)),
    not at 0.75 (equal, not greater) ... 0.95 (TP n-1, FP 2, FN 1 -> (n-1)/(n+2))."""
    truth, _ = solution
    for labels in nuclei(truth).values():
        n = int(labels.max())
        areas = np.bincount(labels.ravel())
        fours = np.flatnonzero((areas[1:] % 4 == 0) & (areas[1:] >= 8)) + 1
        victim = int(fours[np.argmax(areas[fours])])
        pred, k, area = split(labels, victim, 0.25)
        assert Fraction(area - k, area) == Fraction(3, 4)
        found, missed = n / (n + 1), (n - 1) / (n + 2)
        expected = {f"ap_{t:.2f}": found if t < 0.75 else missed for t in CHALLENGE_THRESHOLDS}
        row = evaluate_image(labels, pred)
        assert_scores(row, expected | {"challenge_score": (5 * found + 5 * missed) / 10})
        assert (row["obj_tp"], row["obj_fp"], row["obj_fn"]) == (n, 1, 0)
        assert row["mean_matched_iou"] == pytest.approx((n - 1 + 0.75) / n)


def touching_pair(labels):
    """Two nuclei that touch (4-connected), the pair with the most similar areas; None if none touch."""
    pairs = set()
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        edge = (a != b) & (a > 0) & (b > 0)
        pairs |= {(min(x, y), max(x, y)) for x, y in zip(a[edge].tolist(), b[edge].tolist())}
    if not pairs:
        return None
    areas = np.bincount(labels.ravel())
    return min(sorted(pairs), key=lambda p: abs(int(areas[p[0]]) - int(areas[p[1]])))


def test_two_nuclei_merged(solution):
    """The merged object has IoU a/(a+b) with the larger nucleus (area a) and b/(a+b) < 1/2 with the
    smaller: where a/(a+b) > t, TP n-1, FN 1 -> (n-1)/n; elsewhere TP n-2, FP 1, FN 2 -> (n-2)/(n+1)."""
    truth, _ = solution
    merged_touching = 0
    for labels in nuclei(truth).values():
        n = int(labels.max())
        if n < 2:
            continue
        pair = touching_pair(labels) or (1, 2)
        merged_touching += touching_pair(labels) is not None
        areas = np.bincount(labels.ravel())
        a, b = sorted((int(areas[pair[0]]), int(areas[pair[1]])), reverse=True)
        pred = np.where(labels == pair[1], pair[0], labels)
        iou = a / (a + b)
        expected = {f"ap_{t:.2f}": (n - 1) / n if iou > t else (n - 2) / (n + 1) for t in CHALLENGE_THRESHOLDS}
        row = evaluate_image(labels, pred)
        assert_scores(row, expected | {"challenge_score": float(np.mean(list(expected.values())))})
        assert row["n_pred"] == n - 1
        assert_scores(row, dict(pixel_iou=1.0))
    assert merged_touching >= 6  # most sample images have touching nuclei


def consecutive(labels):
    """Labels renumbered 0 (background), 1..n in sorted order."""
    values, inverse = np.unique(np.concatenate([[0], labels.ravel()]), return_inverse=True)
    return inverse[1:].reshape(labels.shape)


def reference_scores(truth, pred):
    """The challenge metric as the public kernels computed it: a dense IoU table from a 2-D histogram.

    Independent of nucseg.metrics: no contingency bincount, no sparse pairs; labels are renumbered
    1..n first so that each bin is one object.
    """
    t, p = consecutive(truth), consecutive(pred)
    n_t, n_p = int(t.max()) + 1, int(p.max()) + 1  # objects + background
    inter = np.histogram2d(t.ravel(), p.ravel(), bins=(np.arange(n_t + 1) - 0.5, np.arange(n_p + 1) - 0.5))[0]
    area_t = np.histogram(t, bins=np.arange(n_t + 1) - 0.5)[0][:, None]
    area_p = np.histogram(p, bins=np.arange(n_p + 1) - 0.5)[0][None, :]
    iou = (inter / (area_t + area_p - inter))[1:, 1:]  # drop background
    scores = []
    for thr in CHALLENGE_THRESHOLDS:
        matches = iou > thr
        tp = np.sum(matches.sum(axis=1) == 1)
        fp = np.sum(matches.sum(axis=0) == 0)
        fn = np.sum(matches.sum(axis=1) == 0)
        scores.append(1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn))
    fg_t, fg_p = truth > 0, pred > 0
    pixel_iou = np.sum(fg_t & fg_p) / np.sum(fg_t | fg_p)
    return scores, pixel_iou


def otsu_segmentation(image):
    """A plain, imperfect segmentation: Otsu threshold of the grey image, connected components."""
    grey = image.mean(axis=2)
    fg = grey > threshold_otsu(grey)
    if fg.mean() > 0.5:  # dark nuclei on a light background
        fg = ~fg
    return ndimage.label(fg)[0]


def shifted_eroded(labels):
    """Each nucleus eroded by one pixel, the image shifted by (1, 2) pixels, labels reversed."""
    inner = ndimage.minimum_filter(labels, size=3) == ndimage.maximum_filter(labels, size=3)
    pred = np.roll(np.where(inner, labels, 0), shift=(1, 2), axis=(0, 1)).astype(np.int64)
    return np.where(pred > 0, labels.max() + 1 - pred, 0)


@pytest.mark.parametrize("make_prediction", [otsu_segmentation, shifted_eroded])
def test_agrees_with_an_independent_reference(solution, make_prediction):
    truth, images = solution
    challenge = []
    for image_id, labels in nuclei(truth).items():
        pred = make_prediction(images[image_id] if make_prediction is otsu_segmentation else labels)
        row = evaluate_image(labels, pred)
        scores, pixel_iou = reference_scores(labels, pred)
        assert [row[k] for k in AP] == pytest.approx(scores, abs=1e-12), image_id
        assert row["challenge_score"] == pytest.approx(np.mean(scores), abs=1e-12)
        assert row["pixel_iou"] == pytest.approx(pixel_iou, abs=1e-12)
        challenge.append(row["challenge_score"])
    assert 0.0 < np.mean(challenge) < 1.0  # realistic: neither perfect nor empty
