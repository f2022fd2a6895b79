"""Accuracy on held-out challenge images, per modality: the table of BENCHMARKS.md "Accuracy".

Scores a model folder on the validation images of the corrected 2018 Data Science Bowl training
set (``../shared/data/dsb2018/stage1_train_fixed.zip``): the images the preprocess stage holds
out (15 % per modality, seed 0, the same split for every configuration), at full size. Each
image is predicted once per test-time-augmentation setting, segmented by each instance method
(the published one: Otsu + distance-transform watershed on the body map; the border-seeded
one, for models with a border head; the seed-map one, for models with a seed head) and scored with :func:`nucseg.metrics.evaluate_image`.
Prints one row per configuration: the challenge score (mean over IoU 0.50..0.95 of
TP / (TP + FP + FN), per image, then over images), AP at 0.50 and 0.75, pixel IoU, the challenge
score per modality, and the inference time per megapixel.

    # re-score the shipped model (download + preprocess only, a few minutes)
    python benchmarks/bench_accuracy.py
    # reproduce the shipped model's row from ../shared/data, training included (about 2 hours
    # on one CPU core): the pipeline's own run of config/pretrained.yaml, then the scoring
    python benchmarks/bench_accuracy.py --train
    # the fine-tuning of the shipped model for dark nuclei (two models, side by side)
    python benchmarks/bench_accuracy.py --train --config config/finetune_dark.yaml --workdir results/accuracy-finetune --tta off --jobs 2
    # any other model folder, scored on the same split
    python benchmarks/bench_accuracy.py --model results/models/resunet
    # post-processing grid (threshold, marker spacing, border weight) on the same maps: the
    # validation split is the only data anything is tuned on
    python benchmarks/bench_accuracy.py --tta off --grid

The pipeline runs in ``--workdir`` (default ``results/accuracy``), so a rerun skips what is done.
Nothing here is tuned on anything but this validation split.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

import nucseg
from nucseg.bigimage import LazyImage
from nucseg.datasets import read_sample
from nucseg.imageio import invert, rescale_intensity
from nucseg.infer import PredictSettings, open_predictor, predict_lazy
from nucseg.metrics import evaluate_image, pixel_scores
from nucseg.postprocess import SegmentSettings, segment_probability

from benchlib import DATASET, ROOT, machine, whole_image_maps

CONFIG = ROOT / "config" / "pretrained.yaml"


def run_pipeline(workdir: Path, config: Path, targets: list[str], threads: int, jobs: int = 1) -> None:
    """The workflow with ``config`` (default config/pretrained.yaml), up to ``targets``, in
    ``workdir``: ``jobs`` jobs at a time of ``threads`` threads each."""
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        str(threads * jobs),
        "--set-threads",
        f"train={threads}",
        "--resources",
        f"gpu={jobs}",  # the train jobs ask for one each (the profile allows one): here they share CPUs
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        "--replace-workflow-config",
        *targets,
    ]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})


def segment(prob: np.ndarray, heads: list[str], method: str, settings: SegmentSettings) -> np.ndarray:
    """``paper``: Otsu + distance-transform watershed on the body map; ``border``: seeds cut
    by the touching-border map; ``seed`` (and ``auto`` where the maps have a seed head): markers
    from the seed map."""
    maps = dict(zip(heads, prob))
    return segment_probability(maps["body"], replace(settings, method=method), border=maps.get("border"), seed=maps.get("seed"))


#: The post-processing grid of ``--grid``: (method, threshold, marker_spacing, border_weight).
GRID = [("paper", t, s, 1.0) for t in ("otsu", 0.5) for s in (0.3, 0.5, 0.8)] + [
    ("border", t, s, w) for t in ("otsu", 0.5) for s in (0.3, 0.5, 0.8) for w in (0.5, 1.0, 2.0)
]


def predictions(model_dir: Path, dataset: Path, index: pd.DataFrame, tta_options: list[bool], cache: Path | None):
    """Yield ``(row, sample, tta, maps, seconds per megapixel, heads)`` for every validation
    image, predicted by the workflow's own path (:func:`nucseg.infer.open_predictor`, default
    settings: the ONNX Runtime engine on a CPU); maps are kept in ``cache`` (float16 .npy, as
    the predict stage stores them) and read back on a rerun."""
    predictor = None
    for row in index.itertuples():
        sample = read_sample(dataset, row.image_id)
        megapixels = sample.image.shape[0] * sample.image.shape[1] / 1e6
        for tta in tta_options:
            path = cache / f"{row.image_id}_tta{int(tta)}.npy" if cache else None
            if path is not None and path.is_file():
                prob, seconds = np.load(path).astype(np.float32), float("nan")
                heads = json.loads(path.with_suffix(".heads.json").read_text())
            else:
                predictor = predictor or open_predictor(model_dir, PredictSettings())
                predictor.tta = tta
                t0 = time.perf_counter()
                prob, _, heads = whole_image_maps(predictor, sample.image, row.image_id, PredictSettings(tta=tta))
                seconds = time.perf_counter() - t0
                prob = prob.astype(np.float16).astype(np.float32)  # what the predict stage stores
                if path is not None:
                    np.save(path, prob.astype(np.float16))
                    path.with_suffix(".heads.json").write_text(json.dumps(heads))
            yield row, sample, tta, prob, seconds / megapixels, heads


def score(
    model_dir: Path,
    dataset: Path,
    index: pd.DataFrame,
    tta_options: list[bool],
    settings: SegmentSettings,
    cache: Path | None = None,
    grid: bool = False,
) -> pd.DataFrame:
    """One row per (image, tta, method[, grid point]): the per-image metrics plus modality and seconds/MP."""
    rows = []
    for row, sample, tta, prob, s_per_mp, heads in predictions(model_dir, dataset, index, tta_options, cache):
        if grid:
            points = [p for p in GRID if p[0] == "paper" or "border" in heads]
        else:
            methods = ["paper"] + [h for h in ("border", "seed") if h in heads]
            points = [(m, settings.threshold, settings.marker_spacing, settings.border_weight) for m in methods]
        for method, threshold, spacing, weight in points:
            point = replace(settings, method=method, threshold=threshold, marker_spacing=spacing, border_weight=weight)
            metrics = evaluate_image(sample.labels, segment(prob, heads, method, point))
            rows.append(
                dict(
                    image_id=row.image_id,
                    modality=row.modality,
                    tta=tta,
                    method=method,
                    threshold=str(threshold),
                    marker_spacing=spacing,
                    border_weight=weight if method == "border" else np.nan,
                    s_per_mp=s_per_mp,
                    **metrics,
                )
            )
    return pd.DataFrame(rows)


def summarise(scores: pd.DataFrame) -> pd.DataFrame:
    """Means over images per configuration, the challenge score per modality beside them."""
    keys = [k for k in ("model", "method", "tta", "threshold", "marker_spacing", "border_weight") if k in scores and scores[k].nunique(dropna=False) > 1] or [
        "method",
        "tta",
    ]
    if "border_weight" in keys:
        scores = scores.assign(border_weight=scores["border_weight"].fillna(0.0))
    table = scores.groupby(keys).agg(
        images=("image_id", "size"),
        challenge=("challenge_score", "mean"),
        ap50=("ap_0.50", "mean"),
        ap75=("ap_0.75", "mean"),
        pixel_iou=("pixel_iou", "mean"),
        pixel_f1=("pixel_f1", "mean"),
        s_per_mp=("s_per_mp", "mean"),
    )
    per_modality = scores.pivot_table(index=keys, columns="modality", values="challenge_score", aggfunc="mean")
    per_modality.columns = [f"challenge_{m}" for m in per_modality.columns]
    table = table.join(per_modality)
    modality_cols = list(per_modality.columns)
    table["weakest/best"] = table[modality_cols].min(axis=1) / table[modality_cols].max(axis=1)
    return table


def score_resized(model_dir: Path, workdir: Path, tta: bool = False) -> pd.DataFrame:
    """The published protocol: the validation split's examples of a ``preprocess.mode: resize``
    training store (whole images resized to 128 x 128, labels by nearest neighbour), body map
    at 0.5 against the resized labels' foreground: pixel IoU and F1 per image (``tta``: the
    mean map of the 8 flips and rotations, as El Mokhtari did)."""
    import zarr

    store = workdir / "results" / "preprocessed" / DATASET / "train.zarr"
    root = zarr.open_group(store, mode="r")
    if root.attrs.get("mode") != "resize":
        raise SystemExit(f"{store}: preprocess mode {root.attrs.get('mode')!r}; --protocol resize needs a config with preprocess.mode: resize")
    index = pd.read_csv(store.with_name("train_index.csv"), dtype={"image_id": str})
    predictor = open_predictor(model_dir, PredictSettings(device="cpu"))
    predictor.tta = tta
    body = predictor.heads.index("body")
    rows = []
    for row in index[index["split"] == "val"].itertuples():
        k = int(row.first_crop)
        lo, hi = root["intensity_range"][k]
        x = rescale_intensity(root["images"][k], lo, hi)
        if predictor.invert_dark and row.dark_nuclei:
            x = invert(x)
        prob = predictor(x[None])[0, body]
        truth, pred = root["labels"][k] > 0, prob > 0.5
        scores = pixel_scores(truth, pred)
        counts = dict(tp=np.sum(truth & pred), fp=np.sum(~truth & pred), fn=np.sum(truth & ~pred), tn=np.sum(~truth & ~pred))
        background_iou = counts["tn"] / max(counts["tn"] + counts["fp"] + counts["fn"], 1)
        rows.append(
            dict(
                image_id=row.image_id,
                modality=row.modality,
                pixel_iou=scores["pixel_iou"],
                pixel_f1=scores["pixel_f1"],
                mean_iou_2class=(scores["pixel_iou"] + background_iou) / 2,
                **counts,
            )
        )
    return pd.DataFrame(rows)


def summarise_resized(scores: pd.DataFrame) -> pd.DataFrame:
    """Per modality and over all: the per-image means, the pooled foreground IoU (all pixels
    of the split counted together) and the number of images."""

    def row(part: pd.DataFrame) -> dict:
        tp, fp, fn = (int(part[c].sum()) for c in ("tp", "fp", "fn"))
        return dict(
            pixel_iou=part["pixel_iou"].mean(),
            pixel_f1=part["pixel_f1"].mean(),
            mean_iou_2class=part["mean_iou_2class"].mean(),
            pooled_iou=tp / max(tp + fp + fn, 1),
            pooled_f1=2 * tp / max(2 * tp + fp + fn, 1),
            images=len(part),
        )

    table = {m: row(part) for m, part in scores.groupby("modality")}
    table["all"] = row(scores)
    return pd.DataFrame(table).T


def seconds_per_megapixel(model_dir: Path, side: int = 1024, repeat: int = 2) -> float:
    """Inference cost of a model: the predict stage's path (default settings: ONNX Runtime on a
    CPU, one window) on a random ``side`` x ``side`` image, best of ``repeat``, per megapixel."""
    image = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    predictor = open_predictor(model_dir, PredictSettings())
    best = float("inf")
    for _ in range(repeat + 1):  # the first run warms the engine up
        t0 = time.perf_counter()
        predict_lazy(predictor, LazyImage(image, "YXC", "random"), PredictSettings(scale=1.0), lambda r, block: None)
        best = min(best, time.perf_counter() - t0)
    return best / (side * side / 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder to score (default: the shipped model, or the models trained with --train)")
    parser.add_argument("--train", action="store_true", help="train the config's models first (config/pretrained.yaml: the shipped model's run)")
    parser.add_argument("--config", type=Path, default=CONFIG, help="config of --train (config/published.yaml: the published method)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "results" / "accuracy", help="the pipeline's working directory")
    parser.add_argument("--tta", choices=["off", "on", "both"], default="both", help="test-time augmentation (8 flips/rotations)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (of each training job, and scoring)")
    parser.add_argument("--jobs", type=int, default=1, help="training jobs at a time (a config of several models)")
    parser.add_argument("--limit", type=int, default=0, help="score only the first N validation images (0: all)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the per-image scores here")
    parser.add_argument("--grid", action="store_true", help="score the post-processing grid (GRID) instead of the default settings")
    parser.add_argument("--cache", type=Path, default=None, help="keep the probability maps here (float16 .npy), reused by a rerun of the same model")
    parser.add_argument(
        "--protocol",
        choices=["fullsize", "resize"],
        default="fullsize",
        help="fullsize: instance scores on the full-size images; resize: the published 128 x 128 protocol (pixel IoU, F1)",
    )
    parser.add_argument("--skip-pipeline", action="store_true", help="use --workdir as it is (the pipeline already ran there)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not (ROOT.parent / "shared" / "data" / "dsb2018" / "stage1_train_fixed.zip").is_file():
        raise SystemExit("../shared/data/dsb2018/stage1_train_fixed.zip not found: this benchmark needs the challenge data beside the checkout")
    args.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.train:
        names = list(yaml.safe_load(args.config.read_text())["models"])
        model_dirs = [args.model] if args.model else [args.workdir / "results" / "models" / name for name in names]
        targets = [f"results/models/{name}" for name in names]
    else:
        model_dirs = [args.model or Path(nucseg.PRETRAINED_MODEL)]
        targets = [f"results/preprocessed/{DATASET}/train_index.csv"]
    if not args.skip_pipeline:
        run_pipeline(args.workdir, args.config.resolve(), targets, args.threads, args.jobs)
    train_s = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    tta_options = {"off": [False], "on": [True], "both": [False, True]}[args.tta]
    if args.protocol == "resize":
        tables = {}
        for model_dir in model_dirs:
            cost = seconds_per_megapixel(model_dir)
            for tta in tta_options:
                scores = score_resized(model_dir, args.workdir, tta)
                if args.csv:
                    scores.assign(model=model_dir.name, tta=tta).to_csv(args.csv, index=False, mode="a", header=not args.csv.exists())
                table = summarise_resized(scores)
                table["s_per_mp"] = cost
                tables[(model_dir.name, tta)] = table
        table = pd.concat(tables, names=["model", "tta", "modality"])
        print(f"\nmodels: {', '.join(str(m) for m in model_dirs)}")
        print(
            "protocol: validation images resized to 128 x 128, body map > 0.5; foreground IoU and F1 per image (mean), "
            "the mean of foreground and background IoU per image (Keras' MeanIoU), and pooled over all pixels; "
            "s_per_mp: inference on a 1024 x 1024 image (ONNX Runtime)"
        )
        print(table.to_string(float_format=lambda v: f"{v:.4f}"))
        print(f"pipeline {train_s:.0f} s; Rautaray et al. report pixel IoU 0.9486, F1 0.9736")
        print(machine())
        return
    index = pd.read_csv(args.workdir / "results" / "preprocessed" / DATASET / "train_index.csv", dtype={"image_id": str})
    val = index[index["split"] == "val"]
    if args.limit:
        val = val.head(args.limit)
    t0 = time.perf_counter()
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    parts = []
    for model_dir in model_dirs:
        cache = args.cache / model_dir.name if args.cache and len(model_dirs) > 1 else args.cache
        if cache:
            cache.mkdir(parents=True, exist_ok=True)
        scores = score(model_dir, args.workdir / "results" / "datasets" / DATASET, val, tta_options, SegmentSettings(), cache, args.grid)
        parts.append(scores.assign(model=model_dir.name) if len(model_dirs) > 1 else scores)
    scores = pd.concat(parts, ignore_index=True)
    if args.csv:
        scores.to_csv(args.csv, index=False)
    table = summarise(scores)
    counts = val["modality"].value_counts()
    print(f"\nmodels: {', '.join(str(m) for m in model_dirs)}")
    print(f"validation: {len(val)} full-size images of {DATASET} ({', '.join(f'{m} {n}' for m, n in counts.items())}), split of config/pretrained.yaml")
    print(f"segment settings: {SegmentSettings()}")
    if args.grid:
        table = table.sort_values("challenge", ascending=False)
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"pipeline {train_s:.0f} s, scoring {time.perf_counter() - t0:.0f} s")
    print(machine())


if __name__ == "__main__":
    main()
