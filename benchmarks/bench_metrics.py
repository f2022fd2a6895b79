"""Time :func:`nucseg.metrics.evaluate_image` on a 2048 x 2048 image with 1,000 nuclei.

The truth is 1,000 random discs (radius 6-20 px, later discs overwrite earlier
ones); the prediction is the truth shifted by (2, 1) px, with the boundary
pixels of every object removed (a one-pixel erosion), 5 % of the objects
deleted and the remaining labels permuted, so that the matching is realistic.

Usage::

    python benchmarks/bench_metrics.py [--repeats 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from scipy import ndimage
from skimage.draw import disk

from nucseg.metrics import evaluate_image

SHAPE = (2048, 2048)
N_NUCLEI = 1000


def make_truth(rng: np.random.Generator) -> np.ndarray:
    """(2048, 2048) int32 label image of ``N_NUCLEI`` random discs."""
    truth = np.zeros(SHAPE, dtype=np.int32)
    centres = rng.uniform(0, SHAPE, size=(N_NUCLEI, 2))
    radii = rng.uniform(6, 20, size=N_NUCLEI)
    for label, (centre, radius) in enumerate(zip(centres, radii), start=1):
        rr, cc = disk(tuple(centre), radius, shape=SHAPE)
        truth[rr, cc] = label
    return truth


def make_prediction(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shifted, eroded copy of ``truth`` with some objects removed and relabelled."""
    pred = np.roll(truth, shift=(2, 1), axis=(0, 1))
    interior = ndimage.maximum_filter(pred, size=3) == ndimage.minimum_filter(pred, size=3)
    pred = np.where(interior, pred, 0)
    labels = np.unique(pred[pred > 0])
    removed = rng.choice(labels, size=len(labels) // 20, replace=False)
    pred[np.isin(pred, removed)] = 0
    lut = np.zeros(truth.max() + 1, dtype=np.int32)
    lut[1:] = rng.permutation(truth.max()) + 1
    return lut[pred]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    truth = make_truth(rng)
    pred = make_prediction(truth, rng)

    row = evaluate_image(truth, pred)  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        evaluate_image(truth, pred)
        times.append(time.perf_counter() - start)

    print(
        f"image {SHAPE[0]}x{SHAPE[1]}, n_true={row['n_true']}, n_pred={row['n_pred']}, obj_f1={row['obj_f1']:.3f}, challenge_score={row['challenge_score']:.3f}"
    )
    print(
        f"evaluate_image median over {args.repeats} repeats: "
        f"{1000 * float(np.median(times)):.1f} ms "
        f"(min {1000 * min(times):.1f} ms, max {1000 * max(times):.1f} ms)"
    )
    print(
        f"machine: processor={platform.processor() or platform.machine()!r}, "
        f"cpu_count={os.cpu_count()}, python={platform.python_version()}, "
        f"numpy={np.__version__}"
    )


if __name__ == "__main__":
    main()
