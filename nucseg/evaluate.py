"""Evaluate stage: score every segmented image of a dataset against its ground truth.

The scores themselves are pure functions in :mod:`nucseg.metrics`; this module
reads the label images and the truth, and writes one CSV row per image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from nucseg.classmaps import SemanticClasses, read_class_map
from nucseg.columns import ID_COLUMNS as ID_COLUMNS  # the leading columns of the table written here
from nucseg.files import write_csv
from nucseg.imageio import read_labels
from nucseg.metrics import class_scores, confusion_matrix, evaluate_image
from nucseg.vscores import boundary_scores

log = logging.getLogger(__name__)


def evaluate_dataset(
    labels_dir: str | os.PathLike, truth_zarr: str | os.PathLike, index_csv: str | os.PathLike, out_csv: str | os.PathLike, dataset: str, model: str = "model"
) -> pd.DataFrame:
    """Evaluate stage: per-image metrics CSV for one dataset.

    Parameters
    ----------
    labels_dir : path-like
        Predicted label images ``<id>.tif`` (segment stage).
    truth_zarr : path-like
        Full-size store with ``labels/<id>`` (preprocess stage).
    index_csv : path-like
        The store's index table (image ids, modality, size).
    out_csv : path-like
        One row per image: :data:`ID_COLUMNS`, then the keys of
        :func:`nucseg.metrics.evaluate_image` (``n_true, n_pred, pixel_iou, ...,
        challenge_score``). Images without ground truth are skipped (logged).
    dataset : str
        Name written in the ``dataset`` column.
    model : str
        Name written in the ``model`` column (the model or method that made the labels).
    """

    def score(truth, pred_path: Path) -> dict:
        scores = evaluate_image(truth, read_labels(pred_path))
        log.info("%s: challenge score %.3f (%d true, %d predicted)", pred_path.stem, scores["challenge_score"], scores["n_true"], scores["n_pred"])
        return scores

    return score_images(
        labels_dir,
        truth_zarr,
        index_csv,
        out_csv,
        dataset,
        model,
        score,
        "give the dataset its solution CSV (solution:), or set evaluate: false on it to predict and segment it only",
    )


def score_images(
    labels_dir: str | os.PathLike,
    truth_zarr: str | os.PathLike,
    index_csv: str | os.PathLike,
    out_csv: str | os.PathLike,
    dataset: str,
    model: str,
    score: Callable,
    remedy: str,
) -> pd.DataFrame:
    """The per-image table of any task: ``score(truth (H, W) ndarray, path of <id>.tif) -> dict``
    for every image of the index with ground truth, after the :data:`ID_COLUMNS`; written to
    ``out_csv``. Without any image with ground truth it stops, saying ``remedy``."""
    index = pd.read_csv(index_csv, dtype={"image_id": str})
    truth = zarr.open_group(truth_zarr, mode="r")["labels"]
    rows = []
    for row in index.itertuples():
        if row.image_id not in truth:
            log.warning("%s: no ground truth; not evaluated", row.image_id)
            continue
        scores = score(truth[row.image_id][:], Path(labels_dir) / f"{row.image_id}.tif")
        rows.append(dict(model=model, dataset=dataset, image_id=row.image_id, modality=row.modality, height=row.height, width=row.width, **scores))
    if not rows:
        raise ValueError(f"{index_csv}: no image of dataset {dataset!r} has ground truth to evaluate against: {remedy}")
    table = pd.DataFrame(rows)
    write_csv(table, out_csv)
    return table


def evaluate_class_maps(
    labels_dir: str | os.PathLike,
    truth_zarr: str | os.PathLike,
    index_csv: str | os.PathLike,
    out_csv: str | os.PathLike,
    classes: SemanticClasses,
    dataset: str,
    model: str = "model",
) -> pd.DataFrame:
    """Evaluate stage, semantic task: one CSV row of :func:`~nucseg.metrics.class_scores` per image.

    Parameters
    ----------
    labels_dir : path-like
        Class maps ``<id>.tif`` (:func:`nucseg.postprocess.segment_class_maps`).
    truth_zarr : path-like
        Full-size store with ``labels/<id>`` class indices (preprocess stage).
    index_csv : path-like
        The store's index table.
    out_csv : path-like
        :data:`nucseg.evaluate.ID_COLUMNS`, then the keys of :func:`~nucseg.metrics.class_scores`; with two classes
        then ``v_rand, v_rand_split, v_rand_merge, v_info, v_info_split, v_info_merge``
        (:func:`nucseg.vscores.rand_info`, NaN on an image without any second-class pixel).
    """

    def score(truth: np.ndarray, pred_path: Path) -> dict:
        pred = read_class_map(pred_path, classes)
        s = class_scores(confusion_matrix(truth, pred, len(classes)), classes.names)
        if len(classes) == 2:  # the second class's regions, the first what separates them (nucseg.tasks.semantic)
            s.update(boundary_scores(truth == 1, pred == 1))
            log.info("%s: V_rand %.4f, V_info %.4f", pred_path.stem, s["v_rand"], s["v_info"])
        log.info("%s: pixel accuracy %.4f, mean Dice %.4f", pred_path.stem, s["pixel_accuracy"], s["mean_dice"])
        return s

    return score_images(labels_dir, truth_zarr, index_csv, out_csv, dataset, model, score, "its labels/ folder holds none of its images")
