"""Aggregate stage: per-image metric tables into summary tables.

Three tables, all computed from the per-image rows of
:func:`nucseg.evaluate.evaluate_dataset` (one row per image):

``summary.csv`` (:func:`summarize`)
    The table to open first: one row per model and dataset, the **mean** of
    every metric over images.
``summary_stats.csv`` (:func:`summary_stats`)
    Every statistic, in a long ("tidy") layout that reads straight into
    pandas or R: one row per ``model, dataset, modality, metric`` with
    ``mean, median, std, count``, overall (``modality = "all"``) and per
    modality.
``comparison.csv`` (:func:`compare_models`)
    Models side by side: one row per ``dataset, metric``, one column per
    model, holding the mean over images.

Where there are several datasets, each table also has ``dataset = "all"``
rows over the images of all of them. Missing values (``mean_matched_iou`` of
an image without a match) are left out of every statistic; ``count`` says how
many images had a value.
"""

from __future__ import annotations

import html
import logging
import os
from pathlib import Path

import pandas as pd

from nucseg.columns import ID_COLUMNS
from nucseg.files import atomic_file, write_csv

log = logging.getLogger(__name__)

__all__ = ["summarize", "summary_stats", "compare_models", "aggregate", "format_summary", "tables_html", "read_per_image", "STATS_COLUMNS", "ALL"]

#: Columns of :func:`summary_stats`.
STATS_COLUMNS = ["model", "dataset", "modality", "metric", "mean", "median", "std", "count"]

#: Value of ``dataset`` (or ``modality``) in rows over all datasets (or modalities).
ALL = "all"


def _check(per_image: pd.DataFrame) -> list[str]:
    """Metric columns of a per-image table (everything after the identity columns)."""
    if per_image.empty:
        raise ValueError("no per-image rows to summarise")
    missing = [c for c in ("model", "dataset", "modality") if c not in per_image.columns]
    if missing:
        raise ValueError(f"per-image table lacks the column(s) {missing}; has {list(per_image.columns)}")
    return [c for c in per_image.columns if c not in ID_COLUMNS]


def _with_all_datasets(per_image: pd.DataFrame) -> pd.DataFrame:
    """The rows, plus a copy labelled ``dataset="all"`` for each model with several datasets."""
    several = per_image.groupby("model")["dataset"].transform("nunique") > 1
    return pd.concat([per_image, per_image[several].assign(dataset=ALL)], ignore_index=True)


def _order(values: pd.Series, first: bool) -> pd.Categorical:
    """Sorted names with ``"all"`` first (``first``) or last."""
    names = sorted(set(values) - {ALL})
    levels = [ALL, *names] if first else [*names, ALL]
    return pd.Categorical(values, categories=[v for v in levels if v in set(values)], ordered=True)


def summarize(per_image: pd.DataFrame) -> pd.DataFrame:
    """Mean of every metric over images, per model and dataset, and per model over all datasets.

    Parameters
    ----------
    per_image : pandas.DataFrame
        Rows of :func:`nucseg.evaluate.evaluate_dataset` tables, concatenated.
        Not modified.

    Returns
    -------
    pandas.DataFrame
        One row per (model, dataset), plus a row ``dataset="all"`` per model
        when there are several datasets: ``model, dataset, n_images`` and the
        mean of each metric column. Counts (``n_true``, ``n_pred``, ``obj_tp``
        ...) are averaged too: they are per-image means. NaN values are left
        out of a mean.

    Raises
    ------
    ValueError
        The table is empty or lacks ``model``, ``dataset`` or ``modality``.
    """
    metrics = _check(per_image)
    rows = []
    for model, by_model in per_image.groupby("model", sort=True):
        groups = list(by_model.groupby("dataset", sort=True))
        if len(groups) > 1:
            groups.append((ALL, by_model))
        for dataset, part in groups:
            rows.append(dict(model=model, dataset=dataset, n_images=len(part), **part[metrics].mean(numeric_only=True).to_dict()))
    return pd.DataFrame(rows)


def summary_stats(per_image: pd.DataFrame) -> pd.DataFrame:
    """Mean, median, standard deviation and count of every metric, overall and per modality.

    Parameters
    ----------
    per_image : pandas.DataFrame
        Rows of :func:`nucseg.evaluate.evaluate_dataset` tables, concatenated.
        Not modified.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`STATS_COLUMNS`: ``model, dataset, modality, metric,
        mean, median, std, count``. One row per model, dataset (plus
        ``"all"`` when a model was scored on several), modality (``"all"``
        for every image of the group, then each modality) and metric (in the
        per-image table's column order). ``std`` is the sample standard
        deviation (divisor ``count - 1``): empty (NaN) for a single value.
        ``count`` is the number of images with a value; NaN values are left
        out of every statistic.

    Examples
    --------
    >>> stats = summary_stats(per_image)  # doctest: +SKIP
    >>> stats.query("modality == 'all' and metric == 'challenge_score'")  # doctest: +SKIP
    """
    metrics = _check(per_image)
    table = _with_all_datasets(per_image)
    table = pd.concat([table.assign(modality=ALL), table], ignore_index=True)
    long = table.melt(id_vars=["model", "dataset", "modality"], value_vars=metrics, var_name="metric")
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    long["dataset"] = _order(long["dataset"], first=False)
    long["modality"] = _order(long["modality"], first=True)
    long["metric"] = pd.Categorical(long["metric"], categories=metrics, ordered=True)
    stats = long.groupby(["model", "dataset", "modality", "metric"], observed=True, sort=True)["value"].agg(["mean", "median", "std", "count"]).reset_index()
    for column in ("dataset", "modality", "metric"):
        stats[column] = stats[column].astype(str)
    stats["count"] = stats["count"].astype(int)
    return stats[STATS_COLUMNS]


def compare_models(summary: pd.DataFrame) -> pd.DataFrame:
    """Models side by side: one row per dataset and metric, one column per model.

    Parameters
    ----------
    summary : pandas.DataFrame
        The output of :func:`summarize`. Not modified.

    Returns
    -------
    pandas.DataFrame
        ``dataset, metric``, then one column per model (sorted by name) with
        the mean over images; ``n_images`` is the first metric. A model not
        scored on a dataset has an empty cell there.

    Raises
    ------
    ValueError
        A model is called ``dataset`` or ``metric`` (its column would clash).
    """
    models = sorted(summary["model"].unique())
    clash = sorted({"dataset", "metric"} & set(models))
    if clash:
        raise ValueError(f"model name(s) {clash} clash with the comparison table's own columns; rename the model(s)")
    metrics = [c for c in summary.columns if c not in ("model", "dataset")]
    long = summary.melt(id_vars=["model", "dataset"], value_vars=metrics, var_name="metric")
    long["dataset"] = _order(long["dataset"], first=False)
    long["metric"] = pd.Categorical(long["metric"], categories=metrics, ordered=True)
    wide = long.pivot(index=["dataset", "metric"], columns="model", values="value").sort_index()
    wide = wide.reindex(columns=models).reset_index()
    wide.columns.name = None
    wide["dataset"] = wide["dataset"].astype(str)
    wide["metric"] = wide["metric"].astype(str)
    return wide


def read_per_image(metric_csvs: list[str | os.PathLike]) -> pd.DataFrame:
    """Concatenate per-image CSVs (image ids read as text, so ``007`` stays ``007``)."""
    if not metric_csvs:
        raise ValueError("no per-image metric tables given")
    return pd.concat([pd.read_csv(path, dtype={"image_id": str}) for path in metric_csvs], ignore_index=True)


def aggregate(
    metric_csvs: list[str | os.PathLike],
    out_csv: str | os.PathLike,
    stats_csv: str | os.PathLike | None = None,
    comparison_csv: str | os.PathLike | None = None,
    html_path: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Aggregate stage: read per-image CSVs, write the summary tables.

    Parameters
    ----------
    metric_csvs : list of path-like
        Per-image tables of :func:`nucseg.evaluate.evaluate_dataset`.
    out_csv : path-like
        Means per model and dataset (:func:`summarize`).
    stats_csv : path-like, optional
        Mean, median, std and count, overall and per modality (:func:`summary_stats`).
    comparison_csv : path-like, optional
        Models side by side (:func:`compare_models`); written with a single
        model too when asked for (the workflow asks only with several).
    html_path : path-like, optional
        The same tables as one HTML page (:func:`tables_html`).

    Returns
    -------
    pandas.DataFrame
        The summary (means).
    """
    per_image = read_per_image(metric_csvs)
    summary = summarize(per_image)
    write_csv(summary, out_csv)
    stats = summary_stats(per_image) if stats_csv or html_path else None
    comparison = compare_models(summary) if comparison_csv or (html_path and summary["model"].nunique() > 1) else None
    if stats_csv:
        write_csv(stats, stats_csv)
    if comparison_csv:
        write_csv(comparison, comparison_csv)
    if html_path:
        _write_text(tables_html(summary, stats, comparison), html_path)
    log.info("summary of %d per-image tables (%d images) written to %s", len(metric_csvs), len(per_image), out_csv)
    return summary


def _write_text(text: str, path: str | os.PathLike) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def tables_html(summary: pd.DataFrame, stats: pd.DataFrame | None = None, comparison: pd.DataFrame | None = None) -> str:
    """One self-contained HTML page with the summary tables (for a browser or the Snakemake report).

    The means (:func:`summarize`), the models side by side when given
    (:func:`compare_models`), and mean / median / std / count of the main
    metrics per modality (from :func:`summary_stats`), numbers to 3 decimals.
    """

    def table(frame: pd.DataFrame, n_text: int) -> str:
        return frame.to_html(index=False, border=0, classes=f"t text{n_text}", na_rep="", float_format=lambda v: f"{v:.3f}")

    main = ["n_images", "n_true", "n_pred", "pixel_iou", "pixel_f1", "obj_precision", "obj_recall", "obj_f1", "mean_matched_iou", "challenge_score", "aji"]
    parts = ["<h2>Mean over images, per model and dataset</h2>", table(summary[["model", "dataset", *[c for c in main if c in summary.columns]]], 2)]
    if comparison is not None:
        parts += ["<h2>Models side by side (mean over images)</h2>", table(comparison, 2)]
    if stats is not None:
        shown = stats[stats["metric"].isin(["n_true", "n_pred", "pixel_iou", "obj_f1", "challenge_score"])]
        parts += ["<h2>Statistics over images, overall and per modality</h2>", table(shown, 4)]
    style = (
        "body{font-family:sans-serif;font-size:14px;margin:1em}"
        "table.t{border-collapse:collapse;margin-bottom:1.5em}"
        "table.t td,table.t th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
        "table.t th,table.text2 td:nth-child(-n+2),table.text4 td:nth-child(-n+4){text-align:left}"
    )
    title = html.escape("nucseg: summary tables")
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style></head>"
        f"<body>{''.join(parts)}<p>All statistics: summary_stats.csv; per image: "
        f"metrics/&lt;model&gt;/&lt;dataset&gt;/per_image.csv.</p></body></html>\n"
    )


def format_summary(
    summary: pd.DataFrame, columns: tuple[str, ...] = ("n_images", "n_true", "n_pred", "pixel_iou", "pixel_f1", "obj_f1", "challenge_score", "aji")
) -> str:
    """A short plain-text view of the summary's main columns, for the end of a run."""
    shown = summary.set_index(["model", "dataset"])[[c for c in columns if c in summary.columns]]
    return shown.to_string(float_format=lambda v: f"{v:.3f}")


def collect_image_tables(image_csvs: list[str | os.PathLike], keys: list[tuple[str, str]], out_csv: str | os.PathLike) -> pd.DataFrame:
    """All per-image tables of the segment stage (``images.csv``: count, density, areas,
    coverage) in one, with ``model`` and ``dataset`` columns first: one row per model and image
    (a table's own ``model`` column, the model folder, becomes ``model_folder``).

    Parameters
    ----------
    image_csvs : list of path-like
        ``results/segmentation/<model>/<dataset>/images.csv`` files.
    keys : list of (model, dataset)
        The model and dataset of each file, in the same order.
    out_csv : path-like
        The table to write (atomically).
    """
    if len(image_csvs) != len(keys):
        raise ValueError(f"{len(image_csvs)} image tables but {len(keys)} (model, dataset) keys")
    tables = []
    for path, (model, dataset) in zip(image_csvs, keys):
        table = pd.read_csv(path, dtype={"image_id": str}).rename(columns={"model": "model_folder"})
        table.insert(0, "dataset", dataset)
        table.insert(0, "model", model)
        tables.append(table)
    out = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["model", "dataset", "image_id"])
    write_csv(out, out_csv)
    log.info("%d per-image rows of %d tables written to %s", len(out), len(tables), out_csv)
    return out
