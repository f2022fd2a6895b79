"""Aggregate stage: per-image metric tables into one summary table."""

from __future__ import annotations

import logging
import os

import pandas as pd

from nucseg.evaluate import ID_COLUMNS
from nucseg.files import write_csv

log = logging.getLogger(__name__)


def summarize(per_image: pd.DataFrame) -> pd.DataFrame:
    """Mean of every metric over images, per model and dataset, and per model over all datasets.

    Parameters
    ----------
    per_image : pandas.DataFrame
        Rows of :func:`nucseg.evaluate.evaluate_dataset` tables, concatenated.

    Returns
    -------
    pandas.DataFrame
        One row per (model, dataset), plus a row ``dataset="all"`` per model
        when there are several datasets: ``model, dataset, n_images`` and the
        mean of each metric column. Counts (``n_true``, ``n_pred``, ``obj_tp``
        ...) are averaged too: they are per-image means.
    """
    if per_image.empty:
        raise ValueError("no per-image rows to summarise")
    metrics = [c for c in per_image.columns if c not in ID_COLUMNS]
    rows = []
    for model, by_model in per_image.groupby("model", sort=True):
        groups = list(by_model.groupby("dataset", sort=True))
        if len(groups) > 1:
            groups.append(("all", by_model))
        for dataset, part in groups:
            rows.append(dict(model=model, dataset=dataset, n_images=len(part), **part[metrics].mean(numeric_only=True).to_dict()))
    return pd.DataFrame(rows)


def aggregate(metric_csvs: list[str | os.PathLike], out_csv: str | os.PathLike) -> pd.DataFrame:
    """Aggregate stage: read per-image CSVs, write the summary CSV (see :func:`summarize`)."""
    tables = [pd.read_csv(path, dtype={"image_id": str}) for path in metric_csvs]
    summary = summarize(pd.concat(tables, ignore_index=True))
    write_csv(summary, out_csv)
    log.info("summary of %d datasets written to %s", len(tables), out_csv)
    return summary


def format_summary(summary: pd.DataFrame, columns: tuple[str, ...] = ("n_images", "n_true", "n_pred", "pixel_iou", "pixel_f1", "obj_f1", "challenge_score")) -> str:
    """A short plain-text view of the summary's main columns, for the end of a run."""
    shown = summary.set_index(["model", "dataset"])[[c for c in columns if c in summary.columns]]
    return shown.to_string(float_format=lambda v: f"{v:.3f}")
