"""V_rand and V_info of boundary maps (nucseg.vscores): hand-made maps with their answers written
out, a brute-force pair count, scikit-image's conditional entropies, pooling, and the empty cases."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import variation_of_information

from nucseg.sizes import regions
from nucseg.vscores import RegionCounts, boundary_scores, rand_info, region_counts, thin_boundaries


def brute_rand(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """V_rand, split and merge from every ordered pair of foreground pixels (with replacement)."""
    mask = truth > 0
    t, p = truth[mask], thin_boundaries(pred, mask)[mask]
    same_t = t[:, None] == t[None, :]
    same_p = p[:, None] == p[None, :]
    both, nt, np_ = (same_t & same_p).sum(), same_t.sum(), same_p.sum()
    return 2 * both / (nt + np_), both / nt, both / np_


def test_identical_regions_score_one():
    truth = regions(np.array([[1, 1, 0, 1, 1], [1, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool))
    s = rand_info(region_counts(truth, truth))
    assert s == pytest.approx(dict(v_rand=1, v_rand_split=1, v_rand_merge=1, v_info=1, v_info_split=1, v_info_merge=1))


def test_a_merge_lowers_the_merge_scores_only():
    """Two true regions of 4 px predicted as one (the membrane between them missed)."""
    truth = np.array([[1, 1, 0, 2, 2], [1, 1, 0, 2, 2]])
    s = rand_info(region_counts(truth, np.ones_like(truth)))
    # p = (1/2, 1/2), t = (1/2, 1/2), s = (1): sum p^2 = 1/2
    assert s["v_rand_split"] == 1.0 and s["v_rand_merge"] == 0.5 and s["v_rand"] == pytest.approx(2 / 3)
    # I = H(T) + H(S) - H(P) = ln 2 + 0 - ln 2 = 0
    assert s["v_info_merge"] == 0.0 and s["v_info_split"] == 1.0 and s["v_info"] == 0.0


def test_a_split_lowers_the_split_scores_only():
    truth = np.ones((2, 4), int)
    pred = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    s = rand_info(region_counts(truth, pred))
    assert s["v_rand_split"] == 0.5 and s["v_rand_merge"] == 1.0
    assert s["v_info_split"] == 0.0 and s["v_info_merge"] == 1.0


def test_thinning_makes_boundary_width_free():
    """A thick predicted membrane scores as a thin one; the true membrane's pixels never count."""
    truth = np.zeros((6, 9), int)
    truth[:, :4], truth[:, 5:] = 1, 2  # one-pixel membrane at column 4
    thick = np.zeros_like(truth)
    thick[:, :3], thick[:, 6:] = 7, 9  # three-pixel membrane, other label numbers
    assert rand_info(region_counts(truth, thick))["v_rand"] == 1.0
    grown = thin_boundaries(thick, truth > 0)
    assert (grown[truth > 0] > 0).all() and set(np.unique(grown)) == {0, 7, 9}  # column 4 may stay 0


def test_thin_boundaries_leaves_its_input_and_fills_an_empty_prediction():
    pred = np.array([[0, 3, 0], [0, 0, 0]])
    before = pred.copy()
    out = thin_boundaries(pred, np.ones_like(pred, bool))
    assert (pred == before).all() and (out == 3).all()
    assert (thin_boundaries(np.zeros((2, 2), int), np.ones((2, 2), bool)) == 1).all()


def test_regions_are_four_connected():
    diagonal = np.array([[1, 0], [0, 1]], bool)
    assert regions(diagonal).max() == 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rand_matches_a_brute_force_pair_count(seed):
    rng = np.random.default_rng(seed)
    truth = regions(rng.random((12, 14)) > 0.3)
    pred = regions(rng.random((12, 14)) > 0.35)
    s = rand_info(region_counts(truth, pred))
    assert (s["v_rand"], s["v_rand_split"], s["v_rand_merge"]) == pytest.approx(brute_rand(truth, pred))


@pytest.mark.parametrize("seed", [3, 4])
def test_info_matches_scikit_image_conditional_entropies(seed):
    """I(S;T) = H(T) - H(T|S) = H(S) - H(S|T), so the merge score is 1 - H(T|S)/H(T) and the
    split score 1 - H(S|T)/H(S), on the foreground-restricted, thinned labels."""
    rng = np.random.default_rng(seed)
    truth = regions(rng.random((20, 20)) > 0.3)
    pred = regions(rng.random((20, 20)) > 0.4)
    # scikit-image returns the pair in bits, H(first | second) second: pinned here
    assert list(variation_of_information(np.array([1, 1, 2, 2]), np.ones(4, int))) == [0.0, 1.0]
    mask = truth > 0
    t, p = truth[mask], thin_boundaries(pred, mask)[mask]
    h_s_given_t, h_t_given_s = variation_of_information(t, p)
    h_t, h_s = (-sum(c / x.size * np.log2(c / x.size) for c in np.unique(x, return_counts=True)[1]) for x in (t, p))
    s = rand_info(region_counts(truth, pred))
    assert s["v_info_merge"] == pytest.approx(1 - h_t_given_s / h_t)
    assert s["v_info_split"] == pytest.approx(1 - h_s_given_t / h_s)


def test_pooling_counts_equals_the_images_side_by_side():
    """Pooled counts score as one image holding both, each image's labels its own."""
    rng = np.random.default_rng(5)
    full = np.ones((10, 10), bool)
    a_t, b_t = regions(rng.random((10, 10)) > 0.3), regions(rng.random((10, 10)) > 0.3)
    # predictions without boundary pixels, so that thinning cannot cross from one half to the other
    a_p, b_p = (thin_boundaries(regions(rng.random((10, 10)) > 0.3), full) for _ in range(2))
    pooled = rand_info([region_counts(a_t, a_p), region_counts(b_t, b_p)])
    gap = np.zeros((10, 1), np.int64)  # true boundary: outside the counted pixels
    truth = np.hstack([a_t, gap, np.where(b_t > 0, b_t + a_t.max(), 0)])
    pred = np.hstack([a_p, gap, b_p + a_p.max()])
    assert pooled == pytest.approx(rand_info(region_counts(truth, pred)))
    assert pooled != pytest.approx(rand_info(region_counts(a_t, a_p)))


def test_boundary_scores_of_masks_and_the_empty_cases():
    truth = np.array([[1, 1, 0, 1, 1]], bool)
    assert boundary_scores(truth, truth)["v_rand"] == 1.0
    assert all(np.isnan(v) for v in boundary_scores(np.zeros((3, 3), bool), np.ones((3, 3), bool)).values())
    assert all(np.isnan(v) for v in rand_info([]).values())
    single = boundary_scores(np.ones((3, 3), bool), np.ones((3, 3), bool))
    assert single["v_info"] == 1.0 and single["v_rand"] == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        region_counts(np.ones((2, 2), int), np.ones((2, 3), int))
    with pytest.raises(ValueError, match="non-negative"):
        thin_boundaries(np.array([[-1, 1]]), np.ones((1, 2), bool))
    assert isinstance(region_counts(np.ones((2, 2), int), np.ones((2, 2), int)), RegionCounts)
