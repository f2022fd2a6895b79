"""The semantic task: one class per pixel (EM membranes, bright-field background / cytoplasm / nucleus).

The MIDL 2019 bright-field study (U-Net, Tiramisu, DeepLabv3+; class-balanced patch sampling)
and Bargé's U-Net against SegNet on the ISBI 2012 membranes (``../shared/papers``).

Classes are declared in the config, by name, with the value each has in the label images
(``classes: {membrane: 0, cell: 255}``); their order is the order of the network's output
channels. Stores hold class *indices* (0..K-1); the class maps the segment stage writes hold
the declared *values*, so they read like the dataset's own label images.

Pieces, by stage:

* preprocess: :func:`nucseg.classmaps.to_class_index` (a value outside the declared classes
  stops with the file and the value; the class maps live in that leaf module, which the
  dataset and preprocess stages import);
* train: :func:`one_hot` targets, :func:`ce_dice_loss` (cross-entropy + multi-class soft Dice,
  class weights a setting), :func:`class_balanced_weights` (each class an equal share of the
  draws), networks from :mod:`nucseg.nets`;
* segment: :func:`segment_dataset` (argmax of the class probabilities of the predict stage);
* evaluate: :func:`confusion_matrix`, :func:`scores` (pixel accuracy; per-class Dice, IoU,
  precision, recall; their macro and frequency-weighted means), :func:`evaluate_dataset`; with
  two classes also the ISBI 2012 challenge's region scores V_rand and V_info
  (:mod:`nucseg.vscores`): the second class's 4-connected regions, the first class what
  separates them (membranes between cells; background between objects);
* qc and plots: :func:`qc_pictures` (classes overlaid), :func:`plot_class_scores`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile
import torch
import torch.nn.functional as F
import zarr
from torch import nn

from nucseg.classmaps import SemanticClasses, to_class_index  # noqa: F401 (to_class_index: this module's name too)
from nucseg.files import atomic_dir, atomic_file, write_csv
from nucseg.vscores import boundary_scores

log = logging.getLogger(__name__)

#: Colours of the classes in QC pictures (RGB), in class order.
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180), (70, 240, 240), (245, 130, 48), (240, 50, 230))
STATS = ("dice", "iou", "precision", "recall")
SMOOTH = 1.0


def one_hot(index: np.ndarray, k: int) -> np.ndarray:
    """``(k, H, W) float32`` one map per class from an ``(H, W)`` index image."""
    return (np.asarray(index)[None] == np.arange(k)[:, None, None]).astype(np.float32)


# --- training -----------------------------------------------------------------------------


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None, smooth: float = SMOOTH) -> torch.Tensor:
    """Cross-entropy plus multi-class soft Dice loss of softmax outputs.

    Parameters
    ----------
    logits : (B, K, H, W) tensor
    target : (B, K, H, W) tensor, one-hot in {0, 1}
    weights : (K,) tensor, optional
        Class weights of both terms (cross-entropy: weighted mean over pixels; Dice: weighted
        mean over classes); equal when ``None``.

    Returns
    -------
    scalar tensor
        ``CE + 1 - mean_c (2 |P_c T_c| + s) / (|P_c| + |T_c| + s)``, the Dice term computed per
        class over the whole batch; 0 for a perfect, confident prediction.
    """
    if logits.shape != target.shape or logits.ndim != 4:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must both be (B, K, H, W)")
    logits, target = logits.float(), target.float()
    if weights is not None:
        weights = weights.to(logits.device, torch.float32)
    ce = F.cross_entropy(logits, target.argmax(1), weight=weights)
    p = torch.softmax(logits, dim=1)
    dims = (0, 2, 3)
    dice = (2 * (p * target).sum(dims) + smooth) / (p.sum(dims) + target.sum(dims) + smooth)
    w = torch.ones_like(dice) if weights is None else weights
    return ce + 1 - (dice * w).sum() / w.sum()


class CEDiceLoss(nn.Module):
    """``nn.Module`` wrapper of :func:`ce_dice_loss` with fixed class weights."""

    def __init__(self, weights: list[float] | tuple[float, ...] | None = None) -> None:
        super().__init__()
        self.register_buffer("weights", torch.as_tensor(weights, dtype=torch.float32) if weights is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ce_dice_loss(logits, target, self.weights)


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
    array([0.169, 0.652, 0.179])
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    totals = fractions.sum(axis=0)
    held = totals > 0
    if len(fractions) == 0 or not held.any():
        return np.full(len(fractions), 1.0 / max(len(fractions), 1))
    weights = (fractions[:, held] / totals[held]).mean(axis=1)
    return weights / weights.sum()


class SemanticTask:
    """Semantic segmentation into the declared classes (:class:`nucseg.tasks.Task`)."""

    name = "semantic"
    # a per-image guess of the modality would invert some images of one dataset and not others
    invert_dark = False
    plots = ("class_scores",)

    def __init__(self, classes: SemanticClasses) -> None:
        self.classes = classes

    @classmethod
    def from_classes(cls, classes: Mapping[str, int] | list | None) -> SemanticTask:
        return cls(SemanticClasses.parse(classes))

    def describe(self) -> dict:
        return dict(task=self.name, classes=dict(zip(self.classes.names, self.classes.values)))

    # train
    def targets(self, labels: np.ndarray, heads: tuple[str, ...] = ()) -> np.ndarray:
        return one_hot(labels, len(self.classes))

    def build_model(self, settings: Any) -> tuple[nn.Module, dict, str]:
        from nucseg.nets import PRESET_WIDTHS, NetConfig, build_net

        if settings.model not in PRESET_WIDTHS:
            raise ValueError(f"model {settings.model!r} is not a semantic network; choose one of {sorted(PRESET_WIDTHS)}")
        config = NetConfig(architecture=settings.model, width=settings.width or PRESET_WIDTHS[settings.model], classes=self.classes.names)
        return build_net(config), config.to_dict(), settings.model

    def loss(self, settings: Any) -> nn.Module:
        weights = settings.class_weights
        if weights is not None and (len(weights) != len(self.classes) or min(weights) < 0 or sum(weights) <= 0):
            raise ValueError(f"train class_weights must give one weight >= 0 per class {list(self.classes.names)} (not all 0), got {list(weights)}")
        return CEDiceLoss(weights)

    def overlap(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Per-class intersection and union of the argmax with the target, summed over the batch."""
        pred, truth = logits.argmax(1), target.argmax(1)
        k = logits.shape[1]
        inter = np.array([float(((pred == c) & (truth == c)).sum()) for c in range(k)])
        union = np.array([float(((pred == c) | (truth == c)).sum()) for c in range(k)])
        return inter, union

    def curve_labels(self, settings: Any) -> tuple[str, str]:
        return "cross-entropy + soft Dice", "pixel IoU (mean over classes)"

    def sample_weights(self, dataset: Any, examples: list, settings: Any) -> np.ndarray:
        fractions = dataset.per_example(lambda block: class_fractions(block, len(self.classes)))
        weights = class_balanced_weights(fractions)
        drawn = (weights[:, None] * fractions).sum(axis=0)
        log.info(
            "class-balanced sampling, expected share of pixels per class: %s (in the data: %s)",
            ", ".join(f"{n} {v / max(drawn.sum(), 1e-12):.2f}" for n, v in zip(self.classes.names, drawn)),
            ", ".join(f"{n} {v:.2f}" for n, v in zip(self.classes.names, fractions.mean(axis=0))),
        )
        return weights

    # segment, evaluate, qc, plots
    def segment(
        self,
        pred_zarr: str,
        images_zarr: str,
        index_csv: str,
        outputs: Mapping[str, str],
        settings: Mapping | None = None,
        threads: int = 1,
        merged: Mapping | None = None,
    ) -> pd.DataFrame:
        """Class maps (``outputs["labels"]``) and class areas (``outputs["objects"]``); the
        segment settings (watershed) do not apply. The per-image table (``images``) has each
        class's share; the ``ome_zarr``, ``geojson`` and ``rois`` folders are made empty (not
        written for class maps yet). ``merged``: split images are the instance task's (the config
        refuses split with this task)."""
        if merged:
            raise ValueError("split: images split into regions are segmented by the instance task only")
        areas = segment_dataset(pred_zarr, index_csv, outputs["labels"], outputs["objects"], self.classes)
        if "images" in outputs:
            shares = areas.pivot(index="image_id", columns="class", values="fraction")[list(self.classes.names)].add_prefix("share_")
            write_csv(shares.reset_index(), outputs["images"])
        for name in ("ome_zarr", "geojson", "rois"):
            if name in outputs:
                with atomic_dir(outputs[name], overwrite=True):
                    pass
        return areas

    def evaluate(self, labels_dir: str, truth_zarr: str, index_csv: str, out_csv: str, dataset: str, model: str = "model") -> pd.DataFrame:
        return evaluate_dataset(labels_dir, truth_zarr, index_csv, out_csv, self.classes, dataset, model)

    def qc(self, per_image_csv: str, labels_dir: str, truth_zarr: str, out_pngs: Mapping[str, str]) -> dict[str, str]:
        return qc_pictures(per_image_csv, labels_dir, truth_zarr, out_pngs, self.classes)

    def plot(self, metric_csvs: list[str], out_pngs: Mapping[str, str]) -> None:
        from nucseg.report import read_per_image

        plot_class_scores(read_per_image(metric_csvs), self.classes, out_pngs["class_scores"])


# --- segment --------------------------------------------------------------------------------


def class_map(prob: np.ndarray, classes: SemanticClasses) -> np.ndarray:
    """``(H, W) uint8`` class map (declared values) from ``(K, H, W)`` class probabilities
    (argmax; ties go to the lower class)."""
    if prob.ndim != 3 or prob.shape[0] != len(classes):
        raise ValueError(f"expected ({len(classes)}, H, W) class probabilities for {list(classes.names)}, got {prob.shape}")
    return np.asarray(classes.values, np.uint8)[np.argmax(prob, axis=0)]


def write_class_map(path: str | os.PathLike, values: np.ndarray) -> None:
    """Write an ``(H, W) uint8`` class map as a zlib-compressed TIFF, atomically."""
    with atomic_file(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(values, np.uint8), compression="zlib")


def read_class_map(path: str | os.PathLike, classes: SemanticClasses) -> np.ndarray:
    """Class indices ``(H, W) uint8`` of a class map written by :func:`write_class_map`."""
    try:
        values = tifffile.imread(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable class map ({exc})") from exc
    return to_class_index(values, classes.values, str(path))


def segment_dataset(
    pred_zarr: str | os.PathLike, index_csv: str | os.PathLike, out_dir: str | os.PathLike, areas_csv: str | os.PathLike, classes: SemanticClasses
) -> pd.DataFrame:
    """Segment stage, semantic task: a class map per image and a table of class areas.

    Parameters
    ----------
    pred_zarr : path-like
        Class probabilities ``<id> (K, H, W) float32`` (predict stage); its ``heads`` attribute
        must name ``classes`` (a model trained on other classes is refused).
    index_csv : path-like
        The full-size store's index table (image ids).
    out_dir : path-like
        Folder of class maps ``<id>.tif`` ``(H, W) uint8`` holding the declared values.
    areas_csv : path-like
        One row per image and class: ``image_id, class, value, pixels, fraction``.
    """
    pred = zarr.open_group(pred_zarr, mode="r")
    heads = list(pred.attrs.get("heads", []))
    if heads != list(classes.names):
        raise ValueError(f"{pred_zarr}: the model predicts the classes {heads}, the config declares {list(classes.names)}")
    ids = pd.read_csv(index_csv, dtype={"image_id": str})["image_id"].tolist()
    rows = []
    with atomic_dir(out_dir, overwrite=True) as tmp:
        for image_id in ids:
            values = class_map(pred[image_id][:], classes)
            write_class_map(tmp / f"{image_id}.tif", values)
            counts = [int(np.count_nonzero(values == v)) for v in classes.values]
            rows += [
                dict(image_id=image_id, **{"class": n}, value=v, pixels=int(c), fraction=c / values.size)
                for n, v, c in zip(classes.names, classes.values, counts)
            ]
            log.info("%s: %s", image_id, ", ".join(f"{n} {c / values.size:.3f}" for n, c in zip(classes.names, counts)))
    table = pd.DataFrame(rows, columns=["image_id", "class", "value", "pixels", "fraction"])
    write_csv(table, areas_csv)
    return table


# --- evaluate -------------------------------------------------------------------------------


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """``(k, k) int64`` pixel counts, rows the true class, columns the predicted one.

    Parameters
    ----------
    truth, pred : (H, W) ndarray of integers in 0..k-1
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in size")
    return np.bincount(truth.ravel().astype(np.int64) * k + pred.ravel().astype(np.int64), minlength=k * k)[: k * k].reshape(k, k)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def scores(cm: np.ndarray, names: tuple[str, ...] | list[str]) -> dict[str, float]:
    """Pixel accuracy, per-class Dice, IoU, precision and recall, and their means.

    A score is undefined (NaN) where its denominator is empty: Dice and IoU of a class that is
    neither true nor predicted anywhere, precision of a class never predicted, recall of a
    class never true. ``mean_*`` is the macro mean over the classes where it is defined;
    ``fw_*`` the mean weighted by each class's share of the true pixels (frequency-weighted).

    Parameters
    ----------
    cm : (K, K) ndarray of int
        :func:`confusion_matrix`.
    names : K class names

    Returns
    -------
    dict
        ``pixel_accuracy, mean_dice, mean_iou, mean_precision, mean_recall, fw_dice, fw_iou,
        fw_precision, fw_recall``, then per class ``dice_<name>, iou_<name>,
        precision_<name>, recall_<name>``, then ``true_<name>`` and ``pred_<name>`` (share of
        the image's pixels). On an empty image every score is NaN.

    Examples
    --------
    >>> s = scores(np.array([[3, 1], [0, 4]]), ["a", "b"])
    >>> s["pixel_accuracy"], round(s["dice_a"], 3), round(s["dice_b"], 3)
    (0.875, 0.857, 0.889)
    """
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    tp = np.diag(cm)
    true, pred = cm.sum(axis=1), cm.sum(axis=0)
    per = dict(dice=_ratio(2 * tp, true + pred), iou=_ratio(tp, true + pred - tp), precision=_ratio(tp, pred), recall=_ratio(tp, true))
    freq = true / total if total else np.zeros_like(true)
    out: dict[str, float] = dict(pixel_accuracy=float(tp.sum() / total) if total else float("nan"))
    for stat in STATS:
        values = per[stat]
        out[f"mean_{stat}"] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    for stat in STATS:
        values = per[stat]
        ok = np.isfinite(values) & (freq > 0)
        out[f"fw_{stat}"] = float((values[ok] * freq[ok]).sum() / freq[ok].sum()) if ok.any() else float("nan")
    for c, name in enumerate(names):
        for stat in STATS:
            out[f"{stat}_{name}"] = float(per[stat][c])
    for c, name in enumerate(names):
        out[f"true_{name}"] = float(true[c] / total) if total else float("nan")
        out[f"pred_{name}"] = float(pred[c] / total) if total else float("nan")
    return out


def evaluate_dataset(
    labels_dir: str | os.PathLike,
    truth_zarr: str | os.PathLike,
    index_csv: str | os.PathLike,
    out_csv: str | os.PathLike,
    classes: SemanticClasses,
    dataset: str,
    model: str = "model",
) -> pd.DataFrame:
    """Evaluate stage, semantic task: one CSV row of :func:`scores` per image.

    Parameters
    ----------
    labels_dir : path-like
        Class maps ``<id>.tif`` (:func:`segment_dataset`).
    truth_zarr : path-like
        Full-size store with ``labels/<id>`` class indices (preprocess stage).
    index_csv : path-like
        The store's index table.
    out_csv : path-like
        :data:`nucseg.evaluate.ID_COLUMNS`, then the keys of :func:`scores`; with two classes
        then ``v_rand, v_rand_split, v_rand_merge, v_info, v_info_split, v_info_merge``
        (:func:`nucseg.vscores.rand_info`, NaN on an image without any second-class pixel).
    """
    from nucseg.evaluate import score_images

    def score(truth: np.ndarray, pred_path: Path) -> dict:
        pred = read_class_map(pred_path, classes)
        s = scores(confusion_matrix(truth, pred, len(classes)), classes.names)
        if len(classes) == 2:  # the second class's regions, the first what separates them (module docstring)
            s.update(boundary_scores(truth == 1, pred == 1))
            log.info("%s: V_rand %.4f, V_info %.4f", pred_path.stem, s["v_rand"], s["v_info"])
        log.info("%s: pixel accuracy %.4f, mean Dice %.4f", pred_path.stem, s["pixel_accuracy"], s["mean_dice"])
        return s

    return score_images(labels_dir, truth_zarr, index_csv, out_csv, dataset, model, score, "its labels/ folder holds none of its images")


# --- qc and plots ---------------------------------------------------------------------------


def overlay(image: np.ndarray, index: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``(H, W, 3) uint8`` image with each class painted in its :data:`PALETTE` colour."""
    colours = np.asarray([PALETTE[c % len(PALETTE)] for c in range(int(index.max(initial=0)) + 1)], np.float32)
    out = (1 - alpha) * image.astype(np.float32) + alpha * colours[index]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def qc_picture(image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray, classes: SemanticClasses, title: str, path: str | os.PathLike) -> Path:
    """Image, truth and prediction side by side, classes overlaid in colour, with a legend."""
    from matplotlib.patches import Patch

    from nucseg.plots import _pyplot, _save

    plt = _pyplot()
    panels = [("image", image)] + ([("truth", overlay(image, truth))] if truth is not None else []) + [("prediction", overlay(image, pred))]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.6))
    for ax, (name, picture) in zip(np.atleast_1d(axes), panels):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    handles = [Patch(color=np.asarray(PALETTE[c % len(PALETTE)]) / 255, label=n) for c, n in enumerate(classes.names)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize="small")
    fig.suptitle(title, fontsize="small")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path)


def qc_pictures(
    per_image_csv: str | os.PathLike,
    labels_dir: str | os.PathLike,
    truth_zarr: str | os.PathLike,
    out_pngs: Mapping[str, str | os.PathLike],
    classes: SemanticClasses,
) -> dict[str, str]:
    """QC stage, semantic task: the best, median and worst image by mean Dice (:func:`nucseg.qc.pick_images`)."""
    from nucseg.qc import PICKS, pick_images

    unknown = sorted(set(out_pngs) - set(PICKS))
    if unknown:
        raise ValueError(f"unknown quality-control picture(s) {unknown}; choose from {PICKS}")
    per_image = pd.read_csv(per_image_csv, dtype={"image_id": str})
    picks = pick_images(per_image, "mean_dice")
    store = zarr.open_group(truth_zarr, mode="r")
    rows = per_image.set_index("image_id")
    for name, path in out_pngs.items():
        image_id = picks[name]
        row = rows.loc[image_id]
        truth = store["labels"][image_id][:] if image_id in store["labels"] else None
        pred = read_class_map(Path(labels_dir) / f"{image_id}.tif", classes)
        per_class = ", ".join(f"{n} {row[f'dice_{n}']:.3f}" for n in classes.names)
        title = (
            f"{row['model']} / {row['dataset']}: the {name} image by mean Dice\n{image_id}, {int(row['height'])} x {int(row['width'])} px; "
            f"pixel accuracy {row['pixel_accuracy']:.3f}, mean Dice {row['mean_dice']:.3f}\nDice: {per_class}"
        )
        qc_picture(store["images"][image_id][:], truth, pred, classes, title, path)
        log.info("%s: %s image %s (mean Dice %.3f) -> %s", per_image_csv, name, image_id, row["mean_dice"], path)
    return picks


def plot_class_scores(per_image: pd.DataFrame, classes: SemanticClasses, path: str | os.PathLike) -> Path:
    """Per-class Dice and IoU over images (box plots), one group per dataset."""
    from nucseg.plots import _pyplot, _save

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
