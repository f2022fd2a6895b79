"""Plots of the per-image scores of one model (matplotlib, Agg backend, PNG).

:func:`plot_results` (rule ``plots``) draws three figures from the per-image
tables of :func:`nucseg.evaluate.evaluate_dataset`:

* the distribution of the per-image challenge score (histogram, one outline
  per dataset, mean and median marked);
* the mean score TP / (TP + FP + FN) against the IoU threshold 0.50 ... 0.95
  (from the ``ap_*`` columns), per dataset and, with several modalities, per
  modality;
* predicted against true nucleus counts per image, with the diagonal
  (a perfect count lies on it), coloured by modality.

:func:`copy_training_curves` (rule ``training_curves``) puts the training
curves of a model folder beside them.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nucseg.classmaps import SemanticClasses
from nucseg.files import atomic_file
from nucseg.report import read_per_image

log = logging.getLogger(__name__)

__all__ = ["plot_results", "score_histogram", "threshold_curve", "count_scatter", "ap_columns", "copy_training_curves"]

MODALITY_COLOURS = {"fluorescence": "tab:green", "brightfield": "tab:blue", "histology": "tab:purple"}
DATASET_MARKERS = "os^Dv<>p"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike) -> Path:
    """Save a figure as PNG under a temporary name, then rename it to ``path``."""
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        _pyplot().close(fig)
    return Path(path)


def _models(per_image: pd.DataFrame) -> str:
    return ", ".join(sorted(per_image["model"].astype(str).unique()))


def ap_columns(per_image: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """The ``ap_<threshold>`` columns of a per-image table and their thresholds, in increasing order."""
    columns = sorted((c for c in per_image.columns if c.startswith("ap_")), key=lambda c: float(c[3:]))
    if not columns:
        raise ValueError(f"per-image table has no ap_<threshold> columns; has {list(per_image.columns)}")
    return columns, np.array([float(c[3:]) for c in columns])


def _colour(modality: str, k: int) -> str:
    return MODALITY_COLOURS.get(modality, f"C{3 + k}")


def score_histogram(per_image: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Histogram of the per-image challenge score (bins of 0.05 on [0, 1]), one outline per dataset.

    The mean over all images is a solid vertical line, the median a dashed one.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    bins = np.linspace(0.0, 1.0, 21)
    datasets = sorted(per_image["dataset"].astype(str).unique())
    for k, dataset in enumerate(datasets):
        scores = per_image.loc[per_image["dataset"].astype(str) == dataset, "challenge_score"].dropna()
        ax.hist(
            scores,
            bins=bins,
            histtype="stepfilled" if len(datasets) == 1 else "step",
            lw=1.5,
            alpha=0.8 if len(datasets) == 1 else 1.0,
            color=f"C{k}",
            label=f"{dataset} ({len(scores)} images)",
        )
    scores = per_image["challenge_score"].dropna()
    ax.axvline(scores.mean(), color="black", lw=1.2, label=f"mean {scores.mean():.3f}")
    ax.axvline(scores.median(), color="black", lw=1.2, ls="--", label=f"median {scores.median():.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("challenge score of the image (mean over IoU 0.50 ... 0.95)")
    ax.set_ylabel("images")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"Per-image challenge score: {_models(per_image)}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def threshold_curve(per_image: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Mean TP / (TP + FP + FN) over images against the IoU threshold.

    One solid line per dataset; with several modalities, one dashed line per
    modality (over all datasets). The area under a line, averaged over the
    thresholds, is the mean challenge score.
    """
    plt = _pyplot()
    columns, thresholds = ap_columns(per_image)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for k, (dataset, part) in enumerate(per_image.groupby(per_image["dataset"].astype(str), sort=True)):
        ax.plot(thresholds, part[columns].mean().to_numpy(), "o-", color=f"C{k}" if k else "black", lw=2, ms=4, label=f"{dataset}: all {len(part)} images")
    modalities = sorted(per_image["modality"].astype(str).unique())
    if len(modalities) > 1:
        for k, modality in enumerate(modalities):
            part = per_image[per_image["modality"].astype(str) == modality]
            ax.plot(thresholds, part[columns].mean().to_numpy(), "s--", color=_colour(modality, k), lw=1, ms=3, label=f"{modality} ({len(part)})")
    ax.set_xlim(thresholds.min() - 0.02, thresholds.max() + 0.02)
    ax.set_ylim(0, 1)
    ax.set_xticks(thresholds)
    ax.set_xticklabels([f"{t:.2f}" for t in thresholds], rotation=45)
    ax.set_xlabel("IoU threshold (a match needs IoU > threshold)")
    ax.set_ylabel("mean TP / (TP + FP + FN)")
    ax.grid(alpha=0.3)
    ax.set_title(f"Score against IoU threshold: {_models(per_image)}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def count_scatter(per_image: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Predicted against true nucleus count per image, coloured by modality, one marker per dataset.

    The diagonal is a perfect count. Axes are linear up to 100 nuclei and
    symmetric-logarithmic beyond (so an image with 0 predictions still shows).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    top = float(max(per_image["n_true"].max(), per_image["n_pred"].max(), 1))
    datasets = sorted(per_image["dataset"].astype(str).unique())
    for k, modality in enumerate(sorted(per_image["modality"].astype(str).unique())):
        for j, dataset in enumerate(datasets):
            part = per_image[(per_image["modality"].astype(str) == modality) & (per_image["dataset"].astype(str) == dataset)]
            if part.empty:
                continue
            label = modality if len(datasets) == 1 else f"{modality}, {dataset}"
            ax.scatter(
                part["n_true"],
                part["n_pred"],
                s=28,
                marker=DATASET_MARKERS[j % len(DATASET_MARKERS)],
                color=_colour(modality, k),
                alpha=0.8,
                label=f"{label} ({len(part)})",
            )
    ax.plot([0, top * 1.1], [0, top * 1.1], color="grey", lw=1, ls="--", label="predicted = true")
    if top > 100:
        ax.set_xscale("symlog", linthresh=10)
        ax.set_yscale("symlog", linthresh=10)
    ax.set_xlim(0, top * 1.1)
    ax.set_ylim(0, top * 1.1)
    ax.set_aspect("equal")
    ax.set_xlabel("true nuclei per image")
    ax.set_ylabel("predicted nuclei per image")
    ax.grid(alpha=0.3)
    ax.set_title(f"Nucleus counts: {_models(per_image)}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def plot_results(metric_csvs: list[str | os.PathLike], score_png: str | os.PathLike, curve_png: str | os.PathLike, counts_png: str | os.PathLike) -> None:
    """Plots stage: the three figures of the module docstring from per-image CSVs (usually of one model).

    Parameters
    ----------
    metric_csvs : list of path-like
        Per-image tables (:func:`nucseg.evaluate.evaluate_dataset`).
    score_png, curve_png, counts_png : path-like
        The histogram, the threshold curve and the count scatter plot (PNG).
    """
    per_image = read_per_image(metric_csvs)
    if per_image.empty:
        raise ValueError(f"no per-image rows in {[str(p) for p in metric_csvs]}")
    score_histogram(per_image, score_png)
    threshold_curve(per_image, curve_png)
    count_scatter(per_image, counts_png)
    log.info("plots of %d images written to %s", len(per_image), Path(score_png).parent)


def copy_training_curves(model_dir: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Training-curves stage: copy ``curves.png`` of a model folder (:mod:`nucseg.training`) to ``out_png``.

    Raises
    ------
    FileNotFoundError
        The model folder has no ``curves.png``.
    """
    source = Path(model_dir) / "curves.png"
    if not source.is_file():
        raise FileNotFoundError(f"{model_dir}: no curves.png in the model folder")
    with atomic_file(out_png) as tmp:
        shutil.copyfile(source, tmp)
    return Path(out_png)


LOSS_NAMES = {"bce_dice": "BCE + soft Dice", "jaccard": "soft Jaccard", "dice": "soft Dice"}


def save_curves(history: pd.DataFrame, path: Path, loss: str = "bce_dice", iou_label: str = "pixel IoU (nucleus)") -> None:
    """Pixel IoU and loss against epoch, training and validation (the paper's Fig. 7).

    The best validation epoch is marked with a dashed line, learning-rate cuts with dotted ones.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = history["epoch"]
    best = epochs[history["val_iou"].idxmax()] if history["val_iou"].notna().any() else None
    cuts = epochs[history["lr"] < history["lr"].shift()]
    for ax, metric, ylabel in zip(axes, ("iou", "loss"), (iou_label, f"loss ({LOSS_NAMES.get(loss, loss)})")):
        ax.plot(epochs, history[f"train_{metric}"], "o-", ms=3, label="training")
        if history[f"val_{metric}"].notna().any():
            ax.plot(epochs, history[f"val_{metric}"], "o-", ms=3, label="validation")
        if best is not None:
            ax.axvline(best, color="grey", ls="--", lw=1, label=f"best (epoch {best})")
        for k, epoch in enumerate(cuts):
            ax.axvline(epoch, color="grey", ls=":", lw=1, label="learning rate x0.1" if k == 0 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[0].set_title("accuracy metric")
    axes[1].set_title("loss function")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- the semantic task ---------------------------------------------------------------------


def plot_class_scores(per_image: pd.DataFrame, classes: SemanticClasses, path: str | os.PathLike) -> Path:
    """Per-class Dice and IoU over images (box plots), one group per dataset."""
    if per_image.empty:
        raise ValueError("no per-image rows to plot")
    plt = _pyplot()
    datasets = sorted(per_image["dataset"].astype(str).unique())
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(classes) * len(datasets)), 4))
    for ax, stat in zip(axes, ("dice", "iou")):
        data, labels = [], []
        for d in datasets:
            rows = per_image[per_image["dataset"].astype(str) == d]
            for n in classes.names:
                data.append(rows[f"{stat}_{n}"].dropna().to_numpy())
                labels.append(f"{n}\n{d}" if len(datasets) > 1 else n)
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, fontsize="small")
        ax.set_ylabel(f"{stat} per image")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    models = ", ".join(sorted(per_image["model"].astype(str).unique()))
    fig.suptitle(f"{models}: per-class scores ({len(per_image)} images)", fontsize="small")
    fig.tight_layout()
    return _save(fig, path)
