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
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import nucseg
from nucseg.bigimage import LazyImage
from nucseg.datasets import download_dataset, list_images, read_sample
from nucseg.infer import PredictSettings, open_predictor, predict_lazy
from nucseg.metrics import evaluate_image
from nucseg.postprocess import SegmentSettings, segment_probability
from nucseg.sizes import nucleus_diameters

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import machine  # noqa: E402

#: The stardist-layout sources of ../shared/data: name -> (zip, folder inside it).
STARDIST_SOURCES = {"kromp_train": "kromp_train", "monuseg_train": "monuseg_train"}
SOURCES = (*STARDIST_SOURCES, "dsb_val")
#: Fluorescence images of the challenge whose nuclei are at least this wide (median, px) form ``fluo_large``.
LARGE = 20.0


def images_of(source: str, workdir: Path, accuracy_workdir: Path, limit: int, trained_in: Path | None = None):
    """Yield ``(group, image_id, sample)`` for every image of a source (with ``trained_in``, a
    training run's working directory: only the validation split of a source that run trained
    on, as group ``<source>_val``)."""
    if source in STARDIST_SOURCES:
        dest = workdir / "datasets" / source
        if not dest.is_dir():
            download_dataset(str(DATA / source / f"{source}.zip"), dest, layout="stardist", subdir=STARDIST_SOURCES[source])
        ids = list_images(dest, "stardist")
        index_csv = trained_in / "results" / "preprocessed" / source / "train_index.csv" if trained_in else None
        if index_csv is not None and index_csv.is_file():
            index = pd.read_csv(index_csv, dtype={"image_id": str})
            val = set(index.loc[index["split"] == "val", "image_id"])
            ids = [i for i in ids if i in val]
            source = f"{source}_val"
        ids = ids[: limit or None]
        for image_id in ids:
            yield source, image_id, read_sample(dest, image_id, "stardist")
        return
    index_csv = accuracy_workdir / "results" / "preprocessed" / "stage1_train_fixed" / "train_index.csv"
    if not index_csv.is_file():
        raise SystemExit(f"{index_csv} not found: run `python benchmarks/bench_accuracy.py` first (or leave dsb_val out of --sources)")
    index = pd.read_csv(index_csv, dtype={"image_id": str})
    val = index[index["split"] == "val"].head(limit or None)
    dataset = accuracy_workdir / "results" / "datasets" / "stage1_train_fixed"
    for row in val.itertuples():
        sample = read_sample(dataset, row.image_id)
        group = row.modality
        if group == "fluorescence":
            d = nucleus_diameters(sample.labels, drop_edge=False)
            group = "fluo_large" if d.size and np.median(d) >= LARGE else "fluo_small"
        yield group, row.image_id, sample


def maps_at(predictor, image: np.ndarray, image_id: str, scale) -> tuple[np.ndarray, float, float]:
    """``(body map, scale used, seconds)`` of a whole image at a predict scale (a number or
    ``auto``); ``floor``: no network, the image itself normalised as prediction normalises it
    (whole-image percentiles, dark nuclei inverted), grey, in [0, 1]: the no-network floor of
    Otsu + distance-transform watershed."""
    if scale == "floor":
        t0 = time.perf_counter()
        h, w = image.shape[:2]
        grey = predictor.normalizer(LazyImage(image, "YXC", image_id))(np.arange(h), np.arange(w)).mean(axis=2)
        return np.clip(grey, 0, 1), float("nan"), time.perf_counter() - t0
    settings = PredictSettings(scale=scale)
    prob = np.empty((len(predictor.heads),) + image.shape[:2], np.float32)

    def sink(r: int, block: np.ndarray) -> None:
        prob[:, r : r + block.shape[1]] = block

    t0 = time.perf_counter()
    used, _ = predict_lazy(predictor, LazyImage(image, "YXC", image_id), settings, sink)
    return prob[predictor.heads.index("body")], used, time.perf_counter() - t0


def score_source(predictor, source: str, scales: list, args) -> pd.DataFrame:
    rows = []
    for group, image_id, sample in images_of(source, args.workdir, args.accuracy_workdir, args.limit, args.trained_in):
        truth_d = nucleus_diameters(sample.labels, drop_edge=False)
        for scale in scales:
            body, used, seconds = maps_at(predictor, sample.image, image_id, scale)
            metrics = evaluate_image(sample.labels, segment_probability(body, SegmentSettings()))
            rows.append(
                dict(
                    source=source,
                    group=group,
                    image_id=image_id,
                    scale=str(scale),
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
    best = fixed.loc[fixed.groupby(["source", "image_id"])["challenge_score"].idxmax()].assign(scale="oracle")
    return pd.concat([scores, best], ignore_index=True)


def summarise(scores: pd.DataFrame) -> pd.DataFrame:
    """Means per (source, group, scale), and per source over its groups' images."""
    agg = dict(
        images=("image_id", "size"),
        challenge=("challenge_score", "mean"),
        ap50=("ap_0.50", "mean"),
        ap75=("ap_0.75", "mean"),
        aji=("aji", "mean"),
        scale_used=("scale_used", "median"),
        s_per_mp=("seconds", "sum"),
    )
    by_group = scores.groupby(["source", "group", "scale"]).agg(**agg)
    by_source = scores.assign(group="all").groupby(["source", "group", "scale"]).agg(**agg)
    table = pd.concat([by_group, by_source]).sort_index()
    megapixels = pd.concat(
        [scores.groupby(["source", "group", "scale"])["megapixels"].sum(), scores.assign(group="all").groupby(["source", "group", "scale"])["megapixels"].sum()]
    )
    table["s_per_mp"] = table["s_per_mp"] / megapixels.reindex(table.index)
    table.loc[table.index.get_level_values("scale") == "oracle", "s_per_mp"] = np.nan
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path(nucseg.PRETRAINED_MODEL), help="model folder (default: the shipped model)")
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    parser.add_argument("--scales", nargs="+", default=["1", "auto", "floor"], help="predict scales: numbers, auto, and floor (no network)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "results" / "sources", help="where the sources are unpacked")
    parser.add_argument("--accuracy-workdir", type=Path, default=ROOT / "results" / "accuracy", help="bench_accuracy.py's workdir (dsb_val)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=0, help="the first N images of each source (0: all)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the per-image scores here")
    parser.add_argument(
        "--trained-in",
        type=Path,
        default=None,
        help="the model's training run (its workdir): a source it trained on is scored on its validation split only (group <name>_val)",
    )
    args = parser.parse_args()
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
    print(f"model: {args.model}")
    print("segment: default settings (paper: Otsu + distance-transform watershed); scale_used: median over the images; s_per_mp: predict, probe included")
    print(summarise(scores).to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"scoring {time.perf_counter() - t0:.0f} s")
    print(machine())


if __name__ == "__main__":
    main()
