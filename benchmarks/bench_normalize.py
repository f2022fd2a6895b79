"""Intensity normalisation for sparse images: the model's 1-99.8 percentiles against alternatives.

A few bright nuclei set the top percentile of a sparse image, and the dim nuclei beside them
come out near the background. This benchmark scores a model folder (default: the shipped one)
with the whole-image percentiles ``low``-``high`` of each variant (``--variants``, e.g.
``1-99.8`` the model's own, ``1-99``, ``1-98``; ``1-99.8^0.5``: a gamma of 0.5 on the 8-bit
image first, which lifts dim signal against bright) on:

- ``kromp_train``: another lab's fluorescence (42 images; a source the main model never saw);
- ``dsb_val``: the challenge's validation split (needs a training run's workdir,
  ``--accuracy-workdir``, as ``bench_sources.py`` does), its fluorescence images only;
- ``dsb_dimmed``: the same fluorescence images made sparse on purpose: every nucleus but the
  three brightest (by mean intensity, from the ground truth) has its signal above the
  background (the image's median) cut to ``--dim`` (default 0.25) of what it was; the ground
  truth is unchanged, so the dim nuclei are still to be found.

Each image goes through the predict stage's own path (``scale: auto``, the default) and the
default segment settings, and is scored (challenge score, AP@0.5, AJI); means per source and
variant are printed. The normalisation the network was trained with is 1-99.8: another variant
helps only if the model tolerates the shift (it was trained with intensity augmentation).

    python benchmarks/bench_normalize.py --accuracy-workdir results/run-sources_he
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import nucseg
from nucseg.infer import PredictSettings, open_predictor
from nucseg.metrics import evaluate_image

from benchlib import DATA, ROOT, images_of, machine, maps_at, segment_maps


def dimmed(image: np.ndarray, labels: np.ndarray, factor: float, keep: int = 3) -> np.ndarray:
    """``image`` with every nucleus but the ``keep`` brightest dimmed: its signal above the
    image's median cut to ``factor`` of what it was."""
    grey = image.astype(np.float32).mean(axis=2)
    background = float(np.median(grey))
    ids = np.unique(labels)[1:]
    if ids.size <= keep:
        return image
    means = np.array([grey[labels == i].mean() for i in ids])
    dim = np.isin(labels, ids[np.argsort(means)[:-keep]])
    out = image.astype(np.float32)
    out[dim] = background + (out[dim] - background).clip(min=0) * factor
    return out.round().clip(0, 255).astype(image.dtype)


def set_percentiles(predictor, low: float, high: float) -> None:
    for p in (predictor, *predictor.routes.values()):
        p.low, p.high = low, high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path(nucseg.PRETRAINED_MODEL))
    parser.add_argument("--variants", nargs="+", default=["1-99.8", "1-99.5", "1-99", "1-98", "1-99.8^0.5"], help="low-high percentiles[^gamma]")
    parser.add_argument("--sources", nargs="+", default=["kromp_train", "dsb_val", "dsb_dimmed"])
    parser.add_argument("--workdir", type=Path, default=ROOT / "results" / "sources")
    parser.add_argument("--accuracy-workdir", type=Path, default=ROOT / "results" / "accuracy")
    parser.add_argument("--dim", type=float, default=0.25)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found: this benchmark needs ../shared/data beside the checkout")
    torch.set_num_threads(args.threads)
    predictor = open_predictor(args.model, PredictSettings())
    variants = [(*(float(v) for v in name.split("^")[0].split("-")), float(name.split("^")[1]) if "^" in name else 1.0) for name in args.variants]
    rows, t0 = [], time.perf_counter()
    for source in args.sources:
        real = "dsb_val" if source == "dsb_dimmed" else source
        for group, image_id, sample in images_of(real, args.workdir, args.accuracy_workdir, args.limit):
            if real == "dsb_val" and not group.startswith("fluo"):
                continue
            image = dimmed(sample.image, sample.labels, args.dim) if source == "dsb_dimmed" else sample.image
            for name, (low, high, gamma) in zip(args.variants, variants):
                set_percentiles(predictor, low, high)
                x = image if gamma == 1 else (255 * (image / 255.0) ** gamma).round().astype(np.uint8)
                maps, used, _ = maps_at(predictor, x, image_id, "auto")
                m = evaluate_image(sample.labels, segment_maps(maps))
                rows.append(dict(source=source, image_id=image_id, variant=name, scale_used=used, **{k: m[k] for k in ("challenge_score", "ap_0.50", "aji")}))
            logging.getLogger("bench_normalize").info("%s %s done", source, image_id)
    scores = pd.DataFrame(rows)
    if args.csv:
        scores.to_csv(args.csv, index=False)
    table = scores.groupby(["source", "variant"], sort=False).agg(
        images=("image_id", "size"), challenge=("challenge_score", "mean"), ap50=("ap_0.50", "mean"), aji=("aji", "mean")
    )
    print(f"model: {args.model}\npredict: scale auto; segment: default settings; dsb_dimmed: all but the 3 brightest nuclei at {args.dim} of their signal")
    print(table.round(3).to_string())
    print(f"scoring {time.perf_counter() - t0:.0f} s")
    print(machine())


if __name__ == "__main__":
    main()
