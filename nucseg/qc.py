"""Quality-control pictures: test images with the predicted and the true nucleus outlines.

For each model and dataset, rule ``qc`` draws three images picked by their
challenge score (:func:`pick_images`): the best, the median and the worst.
Each picture is the image at full resolution (small images enlarged by an
integer factor), true outlines drawn just outside each true nucleus,
predicted outlines on the edge pixels of each predicted nucleus (so a perfect
match shows as a green line hugging a magenta one), with a header naming the
image, its modality, size, score and counts. Where there is ground truth,
errors have their own colours: a true nucleus that no prediction matches
(IoU > 0.5) is outlined in orange (a miss), a predicted nucleus that matches
no true one in red (a false detection).

Images larger than :data:`OVERVIEW_SIDE` on a side become a downsampled
overview (every ``f``-th pixel, outlines drawn on the downsampled labels) with
the full-resolution crops of a few chunks (:data:`CROP_SIDE` pixels, those
holding the most nuclei) below it, their places framed in white on the
overview; such an image is read window by window, never whole.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from nucseg.classmaps import SemanticClasses, read_class_map
from nucseg.imageio import read_labels
from nucseg.plots import _pyplot, _save

log = logging.getLogger(__name__)

__all__ = [
    "PICKS",
    "TRUTH_COLOUR",
    "PRED_COLOUR",
    "MISS_COLOUR",
    "FALSE_COLOUR",
    "pick_images",
    "unmatched",
    "outline_overlay",
    "large_overview",
    "qc_picture",
    "qc_pictures",
]

#: Names of the pictures of :func:`pick_images`, in the order they are picked.
PICKS = ("best", "median", "worst")
TRUTH_COLOUR = (0, 230, 0)
PRED_COLOUR = (255, 0, 255)
MISS_COLOUR = (255, 160, 0)
FALSE_COLOUR = (255, 30, 30)
#: Images longer than this on a side are drawn as an overview plus full-resolution crops.
OVERVIEW_SIDE = 2048
CROP_SIDE = 512
N_CROPS = 3


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
    ranked = per_image.assign(_score=per_image[score].fillna(-np.inf), image_id=per_image["image_id"].astype(str)).sort_values(
        ["_score", "image_id"], kind="stable"
    )
    ids = ranked["image_id"].tolist()
    return {"best": ids[-1], "median": ids[(len(ids) - 1) // 2], "worst": ids[0]}


def unmatched(truth: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Labels of the true nuclei no prediction matches and of the predictions matching no true one.

    A match is a pair with IoU above ``threshold`` (0.5: at most one partner each).

    Returns
    -------
    missed : 1-D ndarray
        True labels without a match.
    false : 1-D ndarray
        Predicted labels without a match.
    """
    t, p = np.asarray(truth).ravel(), np.asarray(pred).ravel()
    both = (t > 0) & (p > 0)
    pairs, inter = np.unique(np.stack([t[both], p[both]]), axis=1, return_counts=True)
    ids_t, area_t = np.unique(t[t > 0], return_counts=True)
    ids_p, area_p = np.unique(p[p > 0], return_counts=True)
    union = area_t[np.searchsorted(ids_t, pairs[0])] + area_p[np.searchsorted(ids_p, pairs[1])] - inter
    good = inter / np.maximum(union, 1) > threshold
    return np.setdiff1d(ids_t, pairs[0][good]), np.setdiff1d(ids_p, pairs[1][good])


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
        A new array; the inputs are not modified. True outlines are green, those of missed
        nuclei (:func:`unmatched`) orange; predicted outlines magenta, those of false
        detections red; predicted outlines are drawn last, over true ones where they meet.
    """
    rgb = np.asarray(image)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    if rgb.ndim != 3 or rgb.shape[2] < 3 or rgb.dtype != np.uint8:
        raise ValueError(f"image must be (H, W) or (H, W, 3) uint8, got {rgb.dtype} of shape {rgb.shape}")
    out = rgb[..., :3].copy()
    for labels in (truth, pred):
        if labels is not None and labels.shape != out.shape[:2]:
            raise ValueError(f"labels of shape {labels.shape} do not fit the image of shape {out.shape[:2]}")
    missed = false = np.zeros(0)
    if truth is not None:
        missed, false = unmatched(truth, pred)
    for labels, mode, colour, error_colour, errors in ((truth, "outer", TRUTH_COLOUR, MISS_COLOUR, missed), (pred, "inner", PRED_COLOUR, FALSE_COLOUR, false)):
        if labels is None:
            continue
        edge = find_boundaries(labels, mode=mode)
        out[edge] = colour
        if errors.size:
            # outer boundaries lie on background pixels: take the label of the neighbouring nucleus
            owner = labels if mode == "inner" else ndi.grey_dilation(labels, size=3)
            out[edge & np.isin(owner, errors)] = error_colour
    return out


def _crop_windows(pred_small: np.ndarray, factor: int, shape: tuple[int, int]) -> list[tuple[slice, slice]]:
    """Up to :data:`N_CROPS` full-resolution windows of :data:`CROP_SIDE` pixels, on the grid,
    those with the most predicted-nucleus pixels in the overview first."""
    side = max(1, CROP_SIDE // factor)
    h, w = pred_small.shape
    scores = []
    for y in range(0, h, side):
        for x in range(0, w, side):
            scores.append((-int(np.count_nonzero(pred_small[y : y + side, x : x + side])), y * factor, x * factor))
    scores.sort()
    return [(slice(y, min(y + CROP_SIDE, shape[0])), slice(x, min(x + CROP_SIDE, shape[1]))) for _, y, x in scores[:N_CROPS]]


def large_overview(image, truth, pred) -> np.ndarray:
    """A downsampled overview with outlines above full-resolution crops of a few chunks.

    Parameters
    ----------
    image : (H, W[, 3]) array-like of uint8 (numpy or zarr, read by strides and windows)
    truth : (H, W) integer array-like or None
    pred : (H, W) integer array-like

    Returns
    -------
    (h, w, 3) ndarray of uint8
        The overview (every ``f``-th pixel, ``f`` the smallest integer bringing the longer side
        to :data:`OVERVIEW_SIDE` or less), the crops' places framed in white, and below it the
        crops side by side (:func:`outline_overlay` at full resolution), 8 white pixels apart.
    """
    shape = tuple(pred.shape)
    factor = -(-max(shape) // OVERVIEW_SIDE)
    step = (slice(None, None, factor), slice(None, None, factor))
    pred_small = np.asarray(pred[step])
    overview = outline_overlay(_rgb(image[step]), None if truth is None else np.asarray(truth[step]), pred_small)
    windows = _crop_windows(pred_small, factor, shape)
    crops = []
    for ys, xs in windows:
        crops.append(outline_overlay(_rgb(image[ys, xs]), None if truth is None else np.asarray(truth[ys, xs]), np.asarray(pred[ys, xs])))
        y0, y1, x0, x1 = ys.start // factor, (ys.stop - 1) // factor, xs.start // factor, (xs.stop - 1) // factor
        overview[[y0, y1], x0 : x1 + 1] = 255
        overview[y0 : y1 + 1, [x0, x1]] = 255
    gap = 8
    row_h = max(c.shape[0] for c in crops)
    row_w = sum(c.shape[1] for c in crops) + gap * (len(crops) - 1)
    canvas = np.full((overview.shape[0] + gap + row_h, max(overview.shape[1], row_w), 3), 255, np.uint8)
    canvas[: overview.shape[0], : overview.shape[1]] = overview
    x = 0
    for crop in crops:
        canvas[overview.shape[0] + gap : overview.shape[0] + gap + crop.shape[0], x : x + crop.shape[1]] = crop
        x += crop.shape[1] + gap
    return canvas


def _rgb(pixels) -> np.ndarray:
    a = np.asarray(pixels)
    return a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2)


def qc_picture(image, truth, pred, title: str, path: str | os.PathLike) -> Path:
    """Write :func:`outline_overlay` as a PNG at full resolution, with ``title`` and a colour key above it.

    Images smaller than 512 pixels on their longer side are enlarged by an integer factor (pixel
    for pixel); the picture is at least 640 pixels wide. Images longer than
    :data:`OVERVIEW_SIDE` on a side are drawn as :func:`large_overview`. ``title`` may have
    several lines.
    """
    plt = _pyplot()
    if max(pred.shape) > OVERVIEW_SIDE:
        overlay = large_overview(image, truth, pred)
        step = -(-max(pred.shape) // OVERVIEW_SIDE)
        title += f"\noverview (every {step}th pixel) above full-resolution crops of {N_CROPS} chunks of {CROP_SIDE} px (framed in white)"
    else:
        overlay = outline_overlay(np.asarray(image), None if truth is None else np.asarray(truth), np.asarray(pred))
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
    entries = [("true outline", TRUTH_COLOUR), ("predicted outline", PRED_COLOUR)]
    if truth is not None:
        entries += [("missed", MISS_COLOUR), ("false detection", FALSE_COLOUR)]
    x = 6
    for text, colour in entries:
        fig.text(x / width, key, text, color=np.array(colour) / 255, va="top", fontsize=9, weight="bold")
        x += 20 + 7 * len(text)
    return _save(fig, path)


def _open_labels(path: Path):
    """A label TIFF: in memory when small, else a lazy zarr view of its tiles."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        shape = tif.pages[0].shape
    if max(shape) <= OVERVIEW_SIDE:
        return read_labels(path)
    return zarr.open(tifffile.imread(path, aszarr=True), mode="r")


def qc_pictures(
    per_image_csv: str | os.PathLike, labels_dir: str | os.PathLike, truth_zarr: str | os.PathLike, out_pngs: Mapping[str, str | os.PathLike]
) -> dict[str, str]:
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
        truth = store["labels"][image_id] if image_id in store["labels"] else None
        pred = _open_labels(Path(labels_dir) / f"{image_id}.tif")
        title = (
            f"{row['model']} / {row['dataset']}: the {name} image by challenge score\n{image_id}\n"
            f"{row['modality']}, {int(row['height'])} x {int(row['width'])} px; challenge score {row['challenge_score']:.3f}; "
            f"{int(row['n_true'])} true, {int(row['n_pred'])} predicted nuclei"
        )
        qc_picture(store["images"][image_id], truth, pred, title, path)
        log.info("%s: %s image %s (challenge score %.3f) -> %s", per_image_csv, name, image_id, row["challenge_score"], path)
    return picks


# --- the semantic task: classes overlaid -------------------------------------------------

#: Colours of the classes in QC pictures (RGB), in class order.
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180), (70, 240, 240), (245, 130, 48), (240, 50, 230))


def class_overlay(image: np.ndarray, index: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``(H, W, 3) uint8`` image with each class painted in its :data:`PALETTE` colour."""
    colours = np.asarray([PALETTE[c % len(PALETTE)] for c in range(int(index.max(initial=0)) + 1)], np.float32)
    out = (1 - alpha) * image.astype(np.float32) + alpha * colours[index]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def class_qc_picture(image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray, classes: SemanticClasses, title: str, path: str | os.PathLike) -> Path:
    """Image, truth and prediction side by side, classes overlaid in colour, with a legend."""
    from matplotlib.patches import Patch

    plt = _pyplot()
    panels = [("image", image)] + ([("truth", class_overlay(image, truth))] if truth is not None else []) + [("prediction", class_overlay(image, pred))]
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


def class_qc_pictures(
    per_image_csv: str | os.PathLike,
    labels_dir: str | os.PathLike,
    truth_zarr: str | os.PathLike,
    out_pngs: Mapping[str, str | os.PathLike],
    classes: SemanticClasses,
) -> dict[str, str]:
    """QC stage, semantic task: the best, median and worst image by mean Dice (:func:`nucseg.qc.pick_images`)."""
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
        class_qc_picture(store["images"][image_id][:], truth, pred, classes, title, path)
        log.info("%s: %s image %s (mean Dice %.3f) -> %s", per_image_csv, name, image_id, row["mean_dice"], path)
    return picks
