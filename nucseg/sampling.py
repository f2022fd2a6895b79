"""How training examples are drawn: the weights of the samplings, per modality and per dataset.

Pure numpy over the examples' modalities, nucleus flags and stores, shared by the tasks
(:meth:`nucseg.tasks.instance.InstanceTask.sample_weights`) and the training loop
(:func:`nucseg.training.train_model`: ``train.shares``).
"""

from __future__ import annotations

import numpy as np

#: How training examples are drawn (``train.sampling``): ``uniform``, every example alike (the
#: paper); ``balanced``, each modality's share of the draws proportional to the square root of
#: its number of examples (rare modalities, bright-field and histology, are seen far more often
#: than their share, without repeating their few images as often as the many fluorescence
#: ones), and examples without a nucleus drawn ``empty_weight`` times as often as the others
#: (the MIDL paper's class-balanced patch sampling); ``equal``, the same but every modality the
#: same share of the draws (for fine-tuning on the rare modalities).
SAMPLING = ("uniform", "balanced", "equal")
#: Exponent of a modality's number of examples in its share of the draws, per sampling.
MODALITY_POWER = {"balanced": 0.5, "equal": 0.0}


def sample_weights(modalities: list[str], has_nuclei: np.ndarray, empty_weight: float, power: float = 0.5) -> np.ndarray:
    """Draw weights of the ``balanced`` and ``equal`` samplings (:data:`SAMPLING`), summing to 1.

    Each modality gets a share of the draws proportional to its number of examples to the
    ``power`` (0.5, ``balanced``: the square root; 0, ``equal``: the same share each), spread
    over its examples; within it an example without a nucleus weighs ``empty_weight`` times one
    with nuclei.

    Examples
    --------
    >>> w = sample_weights(["f"] * 4 + ["b"], np.ones(5, bool), 1.0)
    >>> round(float(w[:4].sum()), 3), round(float(w[4]), 3)     # shares 2 : 1 (sqrt 4 : sqrt 1)
    (0.667, 0.333)
    >>> w = sample_weights(["f"] * 4 + ["b"], np.ones(5, bool), 1.0, power=0.0)
    >>> round(float(w[:4].sum()), 3), round(float(w[4]), 3)     # the same share each
    (0.5, 0.5)
    """
    modalities_arr = np.asarray(modalities)
    per_example = np.where(has_nuclei, 1.0, empty_weight)
    weights = np.zeros(len(modalities_arr))
    for modality in np.unique(modalities_arr):
        mask = modalities_arr == modality
        if per_example[mask].sum() > 0:
            weights[mask] = float(mask.sum()) ** power * per_example[mask] / per_example[mask].sum()
    if weights.sum() <= 0:
        return np.full(len(modalities_arr), 1.0 / max(len(modalities_arr), 1))
    return weights / weights.sum()


def dataset_shares(weights: np.ndarray, stores: np.ndarray, names: list[str], shares: dict) -> np.ndarray:
    """Draw weights with each named dataset's share of the draws (``train.shares``).

    ``weights`` are the examples' draw weights within the sampling (any positive scale),
    ``stores`` each example's store (an index into ``names``, the datasets' names). A dataset
    named in ``shares`` gets that fraction of the draws, spread over its examples as ``weights``
    spread them; the others share the rest in proportion to their numbers of examples.

    Examples
    --------
    >>> w = dataset_shares(np.ones(5), np.array([0, 0, 0, 0, 1]), ["many", "few"], {"few": 0.5})
    >>> w.round(3).tolist()  # the one example of "few" drawn as often as the four of "many"
    [0.125, 0.125, 0.125, 0.125, 0.5]

    Raises
    ------
    ValueError
        A share names no training dataset, or every dataset is named and the shares do not sum to 1.
    """
    unknown = sorted(set(shares) - set(names))
    if unknown:
        raise ValueError(f"train shares name {unknown}, which are not training datasets of this model ({names})")
    weights, stores = np.asarray(weights, float), np.asarray(stores)
    given = sum(shares.values())
    rest = [k for k, name in enumerate(names) if name not in shares]
    if not rest and abs(given - 1) > 1e-6:
        raise ValueError(f"train shares name every training dataset but sum to {given:g}, not 1")
    n_rest = sum(int((stores == k).sum()) for k in rest)
    out = np.zeros(len(weights))
    for k, name in enumerate(names):
        mine = stores == k
        if not mine.any() or weights[mine].sum() <= 0:
            continue
        share = shares[name] if name in shares else (1 - given) * mine.sum() / max(n_rest, 1)
        out[mine] = share * weights[mine] / weights[mine].sum()
    return out / out.sum()


# --- the semantic task: class-balanced draws ----------------------------------------------


def class_fractions(labels: np.ndarray, k: int) -> np.ndarray:
    """``(N, k)`` share of each class's pixels in each of ``N`` index images ``(N, H, W)``."""
    flat = np.asarray(labels).reshape(len(labels), -1).astype(np.int64)
    counts = np.stack([np.bincount(row, minlength=k)[:k] for row in flat]) if len(flat) else np.zeros((0, k))
    return counts / max(flat.shape[1], 1)


def class_balanced_weights(fractions: np.ndarray) -> np.ndarray:
    """Draw weights giving every class an equal share of the draws (the MIDL paper's
    class-balanced patch sampling), summing to 1.

    Each class's share is spread over the examples in proportion to how much of the class they
    hold, so an example is drawn often when it holds much of a rare class. Classes that no
    example holds are left out; without any class pixel the draws are uniform.

    Parameters
    ----------
    fractions : (N, K) ndarray of float
        Share of each class's pixels per example (:func:`class_fractions`).

    Examples
    --------
    >>> w = class_balanced_weights(np.array([[1.0, 0.0], [0.9, 0.1], [1.0, 0.0]]))
    >>> np.round(w, 3)       # the only example holding class 1 gets half the draws, and more
    array([0.172, 0.655, 0.172])
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    totals = fractions.sum(axis=0)
    held = totals > 0
    if len(fractions) == 0 or not held.any():
        return np.full(len(fractions), 1.0 / max(len(fractions), 1))
    weights = (fractions[:, held] / totals[held]).mean(axis=1)
    return weights / weights.sum()
