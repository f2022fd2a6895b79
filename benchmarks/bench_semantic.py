"""Semantic segmentation on the two papers' data: floors without a network, then networks.

ISBI 2012 (Bargé: U-Net against SegNet): train on slices 00-24, score slices 25-29 (a
held-out block of consecutive slices). wbc3class (the MIDL bright-field stand-in: U-Net,
DeepLabv3+ and the residual U-Net): train on Dataset1 without every fifth image, score those
60 held-out images, and score the Dataset1 model on all of Dataset2 (domain shift).

Floors, on the same test images: ISBI majority class (everything "cell") and Otsu's
threshold on the grey values (dark = membrane); wbc3class k-means on RGB into three clusters
per image, the clusters named by brightness (brightest background, darkest nucleus). "wbc2s" is Dataset2
resized to Dataset1's cell size (x0.4), which separates the scale from the colour shift.

Networks go through the pipeline's own stages: :func:`nucseg.preprocess.preprocess_training`
and ``preprocess_fullsize``, :func:`nucseg.training.train_model` with the semantic task,
:func:`nucseg.infer.predict_dataset`, then the semantic task's segment and evaluate. Scores
are means over images of the per-image rows (pixel accuracy; Dice per class and their macro
mean), as the aggregate stage computes them.

Run it, on a busy machine, as::

    nice -n 10 env OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_semantic.py [--only NAME ...]

Each run's CPU budget (epochs x examples per epoch, crop size, width) is printed beside it.
The datasets are read from ``../shared/data`` (not copied into the repository).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from PIL import Image
from scipy.cluster.vq import kmeans2
from skimage.filters import threshold_otsu

from nucseg.datasets import download_dataset
from nucseg.infer import PredictSettings, predict_dataset
from nucseg.metrics import class_scores, confusion_matrix
from nucseg.preprocess import PreprocessSettings, preprocess_fullsize, preprocess_training, read_id_list
from nucseg.sizes import regions
from nucseg.tasks.semantic import SemanticTask
from nucseg.training import TrainSettings, train_model
from nucseg.vscores import boundary_scores, rand_info, region_counts

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
ISBI_CLASSES = {"membrane": 0, "cell": 255}
WBC_CLASSES = {"background": 0, "cytoplasm": 1, "nucleus": 2}

#: name -> (dataset, train settings, preprocess size). Budgets sized for one busy CPU core.
RUNS = {
    "isbi-unet": ("isbi", dict(model="unet", width=8), 128),
    "wbc-unet": ("wbc", dict(model="unet", width=8), 128),
    "isbi-segnet": ("isbi", dict(model="segnet", width=8), 128),
    "wbc-deeplabv3plus": ("wbc", dict(model="deeplabv3plus", width=8), 128),
    "wbc-unet-colour": ("wbc", dict(model="unet", width=8, augment_colour=0.8), 128),
    "wbc-resunet": ("wbc", dict(model="resunet-small", width=8), 128),
    # three times the budget, for the papers' goals
    "isbi-unet-long": ("isbi", dict(model="unet", width=8, epochs=48, lr_patience=8, stop_patience=16), 128),
    "wbc-unet-long": ("wbc", dict(model="unet", width=8, epochs=48, lr_patience=8, stop_patience=16), 128),
    # twice the width (about three times the compute per example)
    "isbi-unet-w16": ("isbi", dict(model="unet", width=16), 128),
    # the largest budgets run here (one core, about 35 and 45 minutes): a late learning-rate drop
    "wbc-unet-xl": ("wbc", dict(model="unet", width=8, epochs=300, lr_patience=20, stop_patience=40), 128),
    "isbi-unet-xl": ("isbi", dict(model="unet", width=8, epochs=200, lr_patience=20, stop_patience=40), 128),
    # wider, on 256-pixel crops (more context per membrane), about an hour on one core
    "isbi-unet-w16-256": ("isbi", dict(model="unet", width=16, epochs=120, samples_per_epoch=32, lr_patience=15, stop_patience=30), 256),
}
#: Dataset2 images are 300 x 300 around one cell, Dataset1's 120 x 120: its cells are about 2.5
#: times larger in pixels. "wbc2s" is Dataset2 resized to 120 x 120 (labels by nearest neighbour),
#: to separate the scale from the colour difference.
WBC2_SIDE = 120
COMMON = dict(epochs=16, samples_per_epoch=64, batch_size=8, learning_rate=2e-3, invert_dark=False, sampling="balanced", lr_patience=4, stop_patience=8, seed=0)


def mean_scores(rows: list[dict], keys: list[str]) -> dict:
    table = pd.DataFrame(rows)
    return {k: float(table[k].mean()) for k in keys}


def image_rows(store: str, index_csv: str, classes: dict, predict) -> list[dict]:
    """Per-image :func:`scores` of ``predict(image) -> class index map`` on a full-size store."""
    names = tuple(classes)
    root = zarr.open_group(store, mode="r")
    rows = []
    for image_id in pd.read_csv(index_csv, dtype={"image_id": str})["image_id"]:
        image, truth = root["images"][image_id][:], root["labels"][image_id][:]
        pred = predict(image)
        row = class_scores(confusion_matrix(truth, pred, len(names)), names)
        rows.append({**row, **(boundary_scores(truth == 1, pred == 1) if len(names) == 2 else {})})
    return rows


#: Thresholds of the cell probability the challenge's scores are maximised over.
THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)


def isbi_challenge_scores(pred_zarr: Path, store: str, index_csv: str) -> dict:
    """The ISBI 2012 challenge's own measures on the held-out slices, each maximised over
    thresholds 0.05..0.95 of the "cell" probability (the challenge's foreground) and pooled over
    the slices, as the organisers defined them (brainiac2.mit.edu/isbi_challenge/evaluation;
    Arganda-Carreras et al. 2015):

    - ``isbi_pixel_error``: 1 - the maximal F-score of the pixel classification (the U-Net paper
      reports 0.0611 on the challenge's test stack);
    - ``isbi_v_rand`` / ``isbi_v_info``: the maximal foreground-restricted Rand and information
      scores after border thinning (:mod:`nucseg.vscores`; each slice's regions its own, their
      counts pooled; a plain U-Net scored V_rand 0.964 on the challenge's test stack), with the
      thresholds that gave them.
    """
    maps, root = zarr.open_group(pred_zarr, mode="r"), zarr.open_group(store, mode="r")
    ids = pd.read_csv(index_csv, dtype={"image_id": str})["image_id"]
    cell = list(ISBI_CLASSES).index("cell")
    probs = [np.asarray(maps[i][cell], np.float32) for i in ids]
    truths = [root["labels"][i][:] == cell for i in ids]
    prob, truth = np.concatenate([p.ravel() for p in probs]), np.concatenate([t.ravel() for t in truths])
    best = max(2 * (truth & (prob > t)).sum() / (truth.sum() + (prob > t).sum()) for t in THRESHOLDS)
    true_regions = [regions(t) for t in truths]
    by_threshold = {t: rand_info([region_counts(r, regions(p > t)) for r, p in zip(true_regions, probs)]) for t in THRESHOLDS}
    at_rand = max(by_threshold, key=lambda t: by_threshold[t]["v_rand"])
    at_info = max(by_threshold, key=lambda t: by_threshold[t]["v_info"])
    return dict(
        isbi_pixel_error=float(1 - best),
        isbi_v_rand=by_threshold[at_rand]["v_rand"],
        isbi_v_rand_at=float(at_rand),
        isbi_v_info=by_threshold[at_info]["v_info"],
        isbi_v_info_at=float(at_info),
    )


def kmeans_classes(image: np.ndarray) -> np.ndarray:
    """Three k-means clusters of the RGB pixels, named by brightness: background, cytoplasm, nucleus."""
    pixels = image.reshape(-1, 3).astype(np.float64)
    centres, assigned = kmeans2(pixels, 3, minit="++", seed=0)
    order = np.argsort(-centres.sum(axis=1))  # brightest first
    rank = np.empty(3, np.int64)
    rank[order] = np.arange(3)
    return rank[assigned].reshape(image.shape[:2]).astype(np.uint8)


def otsu_membrane(image: np.ndarray) -> np.ndarray:
    grey = image.mean(axis=2)
    return (grey > threshold_otsu(grey)).astype(np.uint8)  # 0 membrane (dark), 1 cell


def prepare(work: Path) -> dict:
    """Unpacked datasets and their stores; returns paths by name."""
    config = REPO / "config"
    data = {}
    specs = {
        "isbi": (SHARED / "isbi2012" / "isbi2012_train.zip", None, ISBI_CLASSES, "isbi2012_heldout.txt", "isbi2012_train_slices.txt"),
        "wbc": (SHARED / "wbc3class" / "wbc3class.zip", "Dataset1", WBC_CLASSES, "wbc3class_heldout.txt", "wbc3class_train_ids.txt"),
        "wbc2": (SHARED / "wbc3class" / "wbc3class.zip", "Dataset2", WBC_CLASSES, None, None),
    }
    for name, (archive, subdir, classes, heldout, train_ids) in specs.items():
        folder = work / name
        out = dict(classes=classes, full=str(folder / "full.zarr"), full_index=str(folder / "full_index.csv"))
        if not (folder / "full_index.csv").exists():
            download_dataset(str(archive), folder / "data", layout="semantic", subdir=subdir)
            preprocess_fullsize(folder / "data", out["full"], out["full_index"], "semantic", read_id_list(config / train_ids) if train_ids else (), classes)
        if heldout:
            for size in sorted({size for dataset, _, size in RUNS.values() if dataset == name}):
                store, index = folder / f"train{size}.zarr", folder / f"train{size}_index.csv"
                if not index.exists():
                    preprocess_training(
                        folder / "data", store, index, PreprocessSettings(size=size, val_fraction=0.1), "semantic", read_id_list(config / heldout), classes
                    )
                out[f"train{size}"], out[f"train{size}_index"] = str(store), str(index)
        data[name] = out
    folder = work / "wbc2s"
    out = dict(classes=WBC_CLASSES, full=str(folder / "full.zarr"), full_index=str(folder / "full_index.csv"))
    if not (folder / "full_index.csv").exists():
        for sub in ("images", "labels"):
            (folder / "data" / sub).mkdir(parents=True, exist_ok=True)
            for path in sorted((work / "wbc2" / "data" / sub).glob("*.png")):
                picture = Image.open(path)
                picture.resize((WBC2_SIDE, WBC2_SIDE), Image.BILINEAR if sub == "images" else Image.NEAREST).save(folder / "data" / sub / path.name)
        preprocess_fullsize(folder / "data", out["full"], out["full_index"], "semantic", (), WBC_CLASSES)
    data["wbc2s"] = out
    return data


def network(name: str, data: dict, work: Path, reuse: bool = False, tta: bool = False) -> list[dict]:
    dataset, overrides, size = RUNS[name]
    d = data[dataset]
    task = SemanticTask.from_classes(d["classes"])
    settings = TrainSettings(**{**COMMON, **overrides})
    model_dir = work / "models" / name
    if reuse and (model_dir / "config.json").exists():
        config = json.loads((model_dir / "config.json").read_text())
        seconds = pd.read_csv(model_dir / "history.csv")["seconds"].sum()
    else:
        shutil.rmtree(model_dir, ignore_errors=True)
        t0 = time.perf_counter()
        config = train_model([d[f"train{size}"]], [d[f"train{size}_index"]], model_dir, settings, threads=1, task=task)
        seconds = time.perf_counter() - t0
    budget = f"{settings.model} w{settings.width}, {config['epochs_run']} ep x {settings.samples_per_epoch} crops {size}px, {seconds / 60:.1f} min"
    results = []
    # "wbc2@0.4": Dataset2 as it is, predicted with predict.scale 0.4 (its cells to Dataset1's size)
    # "@auto": predict.scale auto, each image's factor from its probes (nucseg.scale)
    tests = [(dataset, dataset, 1.0), (f"{dataset}@auto", dataset, "auto")]
    if dataset == "wbc":
        tests += [("wbc2", "wbc2", 1.0), ("wbc2s", "wbc2s", 1.0), ("wbc2@0.4", "wbc2", WBC2_SIDE / 300), ("wbc2@auto", "wbc2", "auto")]
    for test, source, scale in tests:
        t = data[source]
        pred = work / "pred" / f"{name}_{test}{'_tta' if tta else ''}.zarr"
        predict_dataset(model_dir, t["full"], t["full_index"], pred, PredictSettings(device="cpu", scale=scale, tta=tta), threads=1)
        tag = f"{test}_tta" if tta else test
        labels, areas, per_image = work / "seg" / name / tag, work / "seg" / f"{name}_{tag}_areas.csv", work / "seg" / f"{name}_{tag}_per_image.csv"
        task.segment(str(pred), t["full"], t["full_index"], dict(labels=str(labels), objects=str(areas)))
        table = task.evaluate(str(labels), t["full"], t["full_index"], str(per_image), test, name)
        extra = isbi_challenge_scores(pred, t["full"], t["full_index"]) if source == "isbi" else {}
        used = [float(a.attrs.get("scale", np.nan)) for _, a in zarr.open_group(pred, mode="r").arrays()]
        extra["scale_used"] = f"{np.median(used):.2f} ({min(used):.2f}-{max(used):.2f})" if scale == "auto" else f"{scale:.2f}"
        results.append(
            dict(
                run=name + (" +TTA" if tta else ""),
                test=test,
                budget=budget,
                best_val_iou=config["best_val_iou"],
                **{k: float(table[k].mean()) for k in table.columns if k.startswith(("pixel_accuracy", "mean_dice", "dice_")) or k in ("v_rand", "v_info")},
                **extra,
            )
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/nucseg_bench_semantic", help="scratch folder (datasets unpacked, stores, models)")
    parser.add_argument("--only", nargs="*", default=None, help=f"runs to do (default all, and the floors): {list(RUNS)}, floors")
    parser.add_argument("--reuse", action="store_true", help="score a run's model folder left by an earlier run instead of training it again")
    parser.add_argument("--tta", action="store_true", help="predict with 8-fold test-time augmentation (flips and rotations)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
    logging.getLogger("nucseg.training").setLevel(logging.INFO)
    if not SHARED.is_dir():
        print(f"{SHARED} not found: the benchmark needs ../shared/data")
        return 1
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = prepare(work)
    only = set(args.only) if args.only is not None else set(RUNS) | {"floors"}
    results = []
    if "floors" in only:
        isbi = data["isbi"]
        for method, fn in (("majority class", lambda im: np.ones(im.shape[:2], np.uint8)), ("Otsu", otsu_membrane)):
            rows = image_rows(isbi["full"], isbi["full_index"], ISBI_CLASSES, fn)
            results.append(
                dict(
                    run=f"floor: {method}",
                    test="isbi",
                    budget="no training",
                    **mean_scores(rows, ["pixel_accuracy", "mean_dice", "dice_membrane", "dice_cell", "v_rand", "v_info"]),
                )
            )
        for test in ("wbc", "wbc2", "wbc2s"):
            rows = image_rows(data[test]["full"], data[test]["full_index"], WBC_CLASSES, kmeans_classes)
            results.append(
                dict(
                    run="floor: k-means RGB",
                    test=test,
                    budget="no training",
                    **mean_scores(rows, ["pixel_accuracy", "mean_dice", "dice_background", "dice_cytoplasm", "dice_nucleus"]),
                )
            )
        print(pd.DataFrame(results).to_string(index=False), flush=True)
    for name in RUNS:
        if name in only:
            rows = network(name, data, work, args.reuse, args.tta)
            results += rows
            print(pd.DataFrame(rows).to_string(index=False), flush=True)
    table = pd.DataFrame(results)
    out = work / f"results_{int(time.time())}.csv"
    table.to_csv(out, index=False)
    pd.set_option("display.width", 250)
    print(f"\nall results ({out}):")
    print(table.round(4).to_string(index=False))
    print(json.dumps({"torch_threads": 1, "machine": "2-core x86_64 VM, one core busy with another training run, nice 10"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
