"""Quality-control pictures: test images with the predicted and the true nucleus outlines.

For each model and dataset, rule ``qc`` draws three images picked by their
challenge score (:func:`pick_images`): the best, the median and the worst.
Each picture is the image at full resolution (small images enlarged by an
integer factor), true outlines in green drawn just outside each true
nucleus, predicted outlines in magenta on the edge pixels of each predicted
nucleus (so a perfect match shows as a green line hugging a magenta one),
with a header naming the image, its modality, size, score and counts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from skimage.segmentation import find_boundaries

from nucseg.imageio import read_labels
from nucseg.plots import _pyplot, _save

log = logging.getLogger(__name__)

__all__ = ["PICKS", "TRUTH_COLOUR", "PRED_COLOUR", "pick_images", "outline_overlay", "qc_picture", "qc_pictures"]

#: Names of the pictures of :func:`pick_images`, in the order they are picked.
PICKS = ("best", "median", "worst")
TRUTH_COLOUR = (0, 230, 0)
PRED_COLOUR = (255, 0, 255)


def pick_images(per_image: pd.DataFrame, score: str = "challenge_score") -> dict[str, str]:
    """Image ids of the best, median and worst image by ``score``.

    Images are ranked by score, ties by image id; ``best`` is the highest,
    ``worst`` the lowest, ``median`` the middle one (the lower middle for an
    even number). With fewer than three images an image takes several names.

    Returns
    -------
    dict
        ``{"best": id, "median": id, "worst": id}``.

    Raises
    ------
    ValueError
        The table has no row.
    """
    if per_image.empty:
        raise ValueError("no per-image rows to pick quality-control images from")
    ranked = per_image.assign(_score=per_image[score].fillna(-np.inf), image_id=per_image["image_id"].astype(str)).sort_values(["_score", "image_id"], kind="stable")
    ids = ranked["image_id"].tolist()
    return {"best": ids[-1], "median": ids[(len(ids) - 1) // 2], "worst": ids[0]}


def outline_overlay(image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray) -> np.ndarray:
    """The image with true outlines (outside each nucleus) and predicted outlines (its edge pixels).

    Parameters
    ----------
    image : (H, W, 3) or (H, W) ndarray of uint8
    truth : (H, W) integer ndarray or None
        True labels, 0 = background; ``None`` draws only the prediction.
    pred : (H, W) integer ndarray
        Predicted labels, 0 = background.

    Returns
    -------
    (H, W, 3) ndarray of uint8
        A new array; the inputs are not modified. Predicted outlines are drawn
        last, over true ones where they meet.
    """
    rgb = np.asarray(image)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    if rgb.ndim != 3 or rgb.shape[2] < 3 or rgb.dtype != np.uint8:
        raise ValueError(f"image must be (H, W) or (H, W, 3) uint8, got {rgb.dtype} of shape {rgb.shape}")
    out = rgb[..., :3].copy()
    for labels, mode, colour in ((truth, "outer", TRUTH_COLOUR), (pred, "inner", PRED_COLOUR)):
        if labels is None:
            continue
        if labels.shape != out.shape[:2]:
            raise ValueError(f"labels of shape {labels.shape} do not fit the image of shape {out.shape[:2]}")
        out[find_boundaries(labels, mode=mode)] = colour
    return out


def qc_picture(image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray, title: str, path: str | os.PathLike) -> Path:
    """Write :func:`outline_overlay` as a PNG at full resolution, with ``title`` and a colour key above it.

    Images smaller than 512 pixels on their longer side are enlarged by an integer factor (pixel
    for pixel); the picture is at least 640 pixels wide. ``title`` may have several lines.
    """
    plt = _pyplot()
    overlay = outline_overlay(image, truth, pred)
    h, w = overlay.shape[:2]
    scale = max(1, 512 // max(h, w))  # enlarge small images, pixel for pixel
    if scale > 1:
        overlay = overlay.repeat(scale, axis=0).repeat(scale, axis=1)
    h, w = overlay.shape[:2]
    width = max(w, 640)
    line = 16  # pixels per line of 9-point text (12.5 px x line spacing 1.25)
    n_lines = title.count("\n") + 2  # the title, then the colour key
    header = 8 + n_lines * line
    fig = plt.figure(figsize=(width / 100, (h + header) / 100), dpi=100)
    ax = fig.add_axes((0, 0, w / width, h / (h + header)))
    ax.imshow(overlay, interpolation="nearest")
    ax.set_axis_off()

    def top(pixels: float) -> float:
        return 1 - pixels / (h + header)

    fig.text(6 / width, top(4), title, va="top", fontsize=9, linespacing=1.25)
    key = top(4 + (n_lines - 1) * line)
    fig.text(6 / width, key, "true outline", color=np.array(TRUTH_COLOUR) / 255, va="top", fontsize=9, weight="bold")
    fig.text(100 / width, key, "predicted outline", color=np.array(PRED_COLOUR) / 255, va="top", fontsize=9, weight="bold")
    return _save(fig, path)


def qc_pictures(per_image_csv: str | os.PathLike, labels_dir: str | os.PathLike, truth_zarr: str | os.PathLike, out_pngs: Mapping[str, str | os.PathLike]) -> dict[str, str]:
    """QC stage: pictures of the best, median and worst image of one model on one dataset.

    Parameters
    ----------
    per_image_csv : path-like
        Per-image metrics (:func:`nucseg.evaluate.evaluate_dataset`) of the model and dataset.
    labels_dir : path-like
        Predicted label images ``<id>.tif`` (segment stage).
    truth_zarr : path-like
        Full-size store with ``images/<id>`` and ``labels/<id>`` (preprocess stage).
    out_pngs : mapping
        ``{"best": path, "median": path, "worst": path}`` (any subset of :data:`PICKS`).

    Returns
    -------
    dict
        The image id drawn under each name.
    """
    unknown = sorted(set(out_pngs) - set(PICKS))
    if unknown:
        raise ValueError(f"unknown quality-control picture(s) {unknown}; choose from {PICKS}")
    per_image = pd.read_csv(per_image_csv, dtype={"image_id": str})
    picks = pick_images(per_image)
    store = zarr.open_group(truth_zarr, mode="r")
    rows = per_image.set_index("image_id")
    for name, path in out_pngs.items():
        image_id = picks[name]
        row = rows.loc[image_id]
        truth = store["labels"][image_id][:] if image_id in store["labels"] else None
        pred = read_labels(Path(labels_dir) / f"{image_id}.tif")
        title = (f"{row['model']} / {row['dataset']}: the {name} image by challenge score\n{image_id}\n"
                 f"{row['modality']}, {int(row['height'])} x {int(row['width'])} px; challenge score {row['challenge_score']:.3f}; "
                 f"{int(row['n_true'])} true, {int(row['n_pred'])} predicted nuclei")
        qc_picture(store["images"][image_id][:], truth, pred, title, path)
        log.info("%s: %s image %s (challenge score %.3f) -> %s", per_image_csv, name, image_id, row["challenge_score"], path)
    return picks
