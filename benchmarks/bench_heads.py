"""Body head only (the paper) against body + touching-border head, after the same training budget.

Preprocesses the corrected 2018 Data Science Bowl training set (664 images)
into 128 x 128 crops with a held-out validation split (15 % of the images per
modality, seeded), trains ``resunet-small`` twice with the same settings,
seed and number of optimisation steps, once with heads ``[body]`` and once
with ``[body, border]``, then predicts every validation image at full size,
segments it (the border map cuts watershed seeds where there is one) and
scores it against its ground truth. Prints the budget, the machine and a
side-by-side table.

    python benchmarks/bench_heads.py                     # the CPU budget: about 20 minutes
    python benchmarks/bench_heads.py --epochs 60 --steps-per-epoch 250 --model resunet-paper   # a GPU budget

Intermediate results (unpacked data, training store, model folders and
checkpoints) are kept in ``--work``, so a rerun skips what is done.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from pathlib import Path

import pandas as pd
import torch

from nucseg.datasets import read_sample, unpack_zip
from nucseg.infer import PredictSettings, predict_image
from nucseg.metrics import evaluate_image
from nucseg.model import choose_device
from nucseg.modelfolder import load_model
from nucseg.postprocess import SegmentSettings, segment_probability
from nucseg.preprocess import PreprocessSettings, preprocess_training
from nucseg.training import TrainSettings, train_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018" / "stage1_train_fixed.zip"
VARIANTS = {"paper (body)": ("body",), "body + border": ("body", "border")}


def prepare(archive: Path, work: Path) -> tuple[Path, Path, Path]:
    dataset = work / "stage1_train_fixed"
    if not dataset.exists():
        t0 = time.perf_counter()
        unpack_zip(archive, dataset)
        print(f"unpacked {archive} in {time.perf_counter() - t0:.0f} s", flush=True)
    store, index = work / "train.zarr", work / "train_index.csv"
    if not (store.exists() and index.exists()):
        t0 = time.perf_counter()
        preprocess_training(dataset, store, index, PreprocessSettings(size=128, mode="crop", val_fraction=0.15, seed=0))
        print(f"preprocessed in {time.perf_counter() - t0:.0f} s", flush=True)
    return dataset, store, index


def evaluate(model_dir: Path, dataset: Path, val_ids: list[str], device: torch.device) -> dict:
    model, config = load_model(model_dir, device)
    heads = model.config.heads
    rows = []
    with torch.inference_mode():
        for image_id in val_ids:
            sample = read_sample(dataset, image_id)
            prob = predict_image(model, sample.image, PredictSettings(), config.get("normalize"), device)
            border = prob[heads.index("border")] if "border" in heads else None
            labels = segment_probability(prob[0], SegmentSettings(), border=border)
            rows.append(evaluate_image(sample.labels, labels))
    scores = pd.DataFrame(rows)
    return dict(
        best_epoch=config["best_epoch"],
        val_crop_iou=config["best_val_iou"],
        pixel_iou=float(scores["pixel_iou"].mean()),
        obj_f1=float(scores["obj_f1"].mean()),
        challenge_score=float(scores["challenge_score"].mean()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=SHARED, help="stage1_train_fixed.zip")
    parser.add_argument("--work", type=Path, default=Path("/tmp/nucseg_bench_heads"), help="folder for intermediate results")
    parser.add_argument("--model", default="resunet-small")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps-per-epoch", type=int, default=60, help="optimisation steps of 8 examples per epoch")
    # one thread: on a 2-core machine shared with other jobs, two OpenMP threads were 3-6x slower than one
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    if not args.archive.is_file():
        raise SystemExit(f"{args.archive} not found (pass --archive)")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    dataset, store, index = prepare(args.archive, args.work)
    table = pd.read_csv(index, dtype={"image_id": str})
    val_ids = table.loc[table["split"] == "val", "image_id"].tolist()
    n_crops = table.groupby("split")["n_crops"].sum()
    print(f"{len(table)} images: {int((table['split'] == 'train').sum())} train ({n_crops['train']} crops), {len(val_ids)} validation ({n_crops['val']} crops)")
    device = choose_device("auto")

    results = {}
    for name, heads in VARIANTS.items():
        settings = TrainSettings(model=args.model, heads=heads, epochs=args.epochs, samples_per_epoch=8 * args.steps_per_epoch, batch_size=8, seed=0)
        tag = "_".join(heads)
        t0 = time.perf_counter()
        train_model([store], [index], args.work / f"model_{tag}", settings, checkpoint=args.work / f"ckpt_{tag}.pt", threads=args.threads)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        results[name] = dict(evaluate(args.work / f"model_{tag}", dataset, val_ids, device), train_s=train_s, eval_s=time.perf_counter() - t0)
        print(f"{name}: {results[name]}", flush=True)

    print()
    print(
        f"budget: {args.model}, {args.epochs} epochs x {args.steps_per_epoch} steps x 8 crops of 128x128 = {args.epochs * args.steps_per_epoch} steps "
        f"({args.epochs * args.steps_per_epoch * 8} examples), Adam 1e-3, default augmentation, seed 0; best epoch by validation crop IoU"
    )
    print(f"validation: {len(val_ids)} full-size images, no TTA, default segment settings")
    out = pd.DataFrame(results).T[["pixel_iou", "obj_f1", "challenge_score", "val_crop_iou", "best_epoch", "train_s", "eval_s"]]
    print(out.to_string(float_format=lambda v: f"{v:.3f}" if abs(v) < 10 else f"{v:.0f}"))
    print(
        f"machine: {platform.processor() or platform.machine()}, cpu_count={os.cpu_count()}, torch threads={torch.get_num_threads()}, "
        f"device={device.type}, torch={torch.__version__}, python={platform.python_version()}"
    )


if __name__ == "__main__":
    main()
