"""Evaluate stage: score every segmented image of a dataset against its ground truth.

The scores themselves are pure functions in :mod:`nucseg.metrics`; this module
reads the label images and the truth, and writes one CSV row per image.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
import zarr

from nucseg.files import write_csv
from nucseg.imageio import read_labels
from nucseg.metrics import evaluate_image

log = logging.getLogger(__name__)

ID_COLUMNS = ["model", "dataset", "image_id", "modality", "height", "width"]


def evaluate_dataset(labels_dir: str | os.PathLike, truth_zarr: str | os.PathLike, index_csv: str | os.PathLike, out_csv: str | os.PathLike, dataset: str, model: str = "model") -> pd.DataFrame:
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
    index = pd.read_csv(index_csv, dtype={"image_id": str})
    truth = zarr.open_group(truth_zarr, mode="r")["labels"]
    rows = []
    for row in index.itertuples():
        if row.image_id not in truth:
            log.warning("%s: no ground truth; not evaluated", row.image_id)
            continue
        pred_path = Path(labels_dir) / f"{row.image_id}.tif"
        scores = evaluate_image(truth[row.image_id][:], read_labels(pred_path))
        rows.append(dict(model=model, dataset=dataset, image_id=row.image_id, modality=row.modality, height=row.height, width=row.width, **scores))
        log.info("%s: challenge score %.3f (%d true, %d predicted)", row.image_id, scores["challenge_score"], scores["n_true"], scores["n_pred"])
    if not rows:
        raise ValueError(
            f"{index_csv}: no image of dataset {dataset!r} has ground truth to evaluate against: give the"
            f" dataset its solution CSV (solution:), or set evaluate: false on it to predict and segment it only"
        )
    table = pd.DataFrame(rows)
    write_csv(table, out_csv)
    return table
