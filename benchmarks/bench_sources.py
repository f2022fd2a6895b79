"""A model on whole sources it never saw, per source and image group: BENCHMARKS.md "Held-out sources".

Scores a model folder (default: the shipped one) on each source of ``../shared/data``:

- ``kromp_train``: fluorescence from another lab (Kromp et al. 2020; tissue sections, cytospins,
  touch imprints, 10x-63x), 42 images, the stardist layout;
- ``monuseg_train``: H&E tissue at 40x (MoNuSeg 2018, 7 organs), 30 images of 1000 x 1000;
- ``dsb_val``: the validation split of the challenge's corrected training set (the images
  config/pretrained.yaml holds out: in-distribution for the shipped model), in groups:
  ``fluo_small`` / ``fluo_large`` (fluorescence whose nuclei's median diameter in the ground
  truth is under / at least 20 px), ``histology``, ``brightfield`` (the index's modality guess).

Each image is predicted at every ``--scales`` value (a number: that predict scale; ``auto``:
the per-image estimate of :mod:`nucseg.scale`) by the predict stage's own path, segmented with
the default segment settings (method ``paper``), and scored: the challenge score (mean over IoU
0.50..0.95 of TP / (TP + FP + FN)), AP at 0.50 and 0.75, and the aggregated Jaccard index
(AJI, MoNuSeg's score). ``oracle`` is each image's best fixed scale, known only with its
ground truth: the ceiling of any scale choice. ``floor`` is the no-network floor: the same
segment step on the normalised image itself (Otsu + distance-transform watershed, no model).
Prints one table per source and group.

    python benchmarks/bench_sources.py                                 # shipped model: scales 1, auto, and the floor
    python benchmarks/bench_sources.py --scales 1 auto 0.35 0.5 0.7 1.4 --csv per_image.csv
    python benchmarks/bench_sources.py --model results/models/resunet --sources kromp_train

The dsb_val source needs bench_accuracy.py's pipeline run (its ``--workdir``, default
results/accuracy: download and preprocess of stage1_train_fixed, a few minutes): run
``python benchmarks/bench_accuracy.py`` once first, or leave dsb_val out.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import nucseg
from nucseg.infer import PredictSettings, open_predictor
from nucseg.metrics import evaluate_image
from nucseg.postprocess import METHODS
from nucseg.sizes import nucleus_diameters

from benchlib import DATA, ROOT, STARDIST_SOURCES, haematoxylin, images_of, machine, maps_at, segment_maps, summarise

SOURCES = (*STARDIST_SOURCES, "dsb_val", "dsb_all")


def score_source(predictor, source: str, scales: list, args) -> pd.DataFrame:
    rows = []
    for group, image_id, sample in images_of(source, args.workdir, args.accuracy_workdir, args.limit, args.trained_in, args.trained_on):
        if args.groups and group not in args.groups:
            continue
        truth_d = nucleus_diameters(sample.labels, drop_edge=False)
        image = haematoxylin(sample.image) if args.input == "haematoxylin" else sample.image
        for scale in scales:
            maps, used, seconds = maps_at(predictor, image, image_id, scale)
            for method in args.methods if scale != "floor" else ["paper"]:
                metrics = evaluate_image(sample.labels, segment_maps(maps, method))
                rows.append(
                    dict(
                        source=source,
                        group=group,
                        image_id=image_id,
                        scale=str(scale),
                        method=method,
                        scale_used=used,
                        true_diameter=float(np.median(truth_d)) if truth_d.size else np.nan,
                        megapixels=sample.image.shape[0] * sample.image.shape[1] / 1e6,
                        seconds=seconds,
                        **{k: metrics[k] for k in ("n_true", "n_pred", "challenge_score", "ap_0.50", "ap_0.75", "aji")},
                    )
                )
        logging.getLogger("bench_sources").info("%s %s done", source, image_id)
    return pd.DataFrame(rows)


def with_oracle(scores: pd.DataFrame) -> pd.DataFrame:
    """Add each image's best fixed scale (by challenge score) as scale ``oracle``."""
    fixed = scores[~scores["scale"].isin(["auto", "floor"])]
    if fixed["scale"].nunique() < 2:
        return scores
    best = fixed.loc[fixed.groupby(["source", "image_id", "method"])["challenge_score"].idxmax()].assign(scale="oracle")
    return pd.concat([scores, best], ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path(nucseg.PRETRAINED_MODEL), help="model folder (default: the shipped model)")
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=["kromp_train", "monuseg_train", "dsb_val"])
    parser.add_argument("--scales", nargs="+", default=["1", "auto", "floor"], help="predict scales: numbers, auto, and floor (no network)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "results" / "sources", help="where the sources are unpacked")
    parser.add_argument("--accuracy-workdir", type=Path, default=ROOT / "results" / "accuracy", help="bench_accuracy.py's workdir (dsb_val)")
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=["paper"], help="segment methods (border, seed: paper where the model lacks that head)"
    )
    parser.add_argument("--groups", nargs="+", default=None, help="only these image groups (e.g. histology with dsb_all: a group a model held out)")
    parser.add_argument(
        "--input",
        choices=["image", "haematoxylin"],
        default="image",
        help="what is predicted (and what the floor thresholds): the image itself, or its haematoxylin channel (colour deconvolution; for stained images)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=0, help="the first N images of each source (0: all)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the per-image scores here")
    parser.add_argument(
        "--trained-in",
        type=Path,
        default=None,
        help="the model's training run (its workdir): a source it trained on is scored on its validation split only (group <name>_val); "
        "the sources the model folder records (config.json datasets), else every source that run preprocessed",
    )
    args = parser.parse_args()
    args.trained_on = json.loads((args.model / "config.json").read_text()).get("datasets")  # older model folders do not record them
    logging.basicConfig(level=logging.WARNING)
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found: this benchmark needs ../shared/data beside the checkout")
    torch.set_num_threads(args.threads)
    scales = [s if s in ("auto", "floor") else float(s) for s in args.scales]
    predictor = open_predictor(args.model, PredictSettings())
    t0 = time.perf_counter()
    scores = pd.concat([score_source(predictor, source, scales, args) for source in args.sources], ignore_index=True)
    scores = with_oracle(scores)
    if args.csv:
        scores.to_csv(args.csv, index=False)
    print(f"model: {args.model}" + (" (input: the haematoxylin channel)" if args.input == "haematoxylin" else ""))
    print(f"segment: default settings, method {' / '.join(args.methods)}; scale_used: median over the images; s_per_mp: predict, probe included")
    print(summarise(scores).to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"scoring {time.perf_counter() - t0:.0f} s")
    print(machine())


if __name__ == "__main__":
    main()
