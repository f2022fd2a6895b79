"""Tests of nucseg.report: the summary tables, worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nucseg.report import STATS_COLUMNS, aggregate, compare_models, format_summary, summarize, summary_stats, tables_html


def per_image() -> pd.DataFrame:
    """Three images of two datasets, with the identity columns of evaluate_dataset."""
    return pd.DataFrame(
        dict(
            model=["unet", "unet", "unet"],
            dataset=["stage1", "stage1", "bbbc"],
            image_id=["a", "b", "c"],
            modality=["fluorescence", "histology", "fluorescence"],
            height=[256, 512, 100],
            width=[256, 640, 100],
            n_true=[2, 4, 3],
            mean_matched_iou=[0.9, np.nan, 0.6],
            challenge_score=[1.0, 0.5, 0.2],
        )
    )


def test_summary_means_by_hand():
    table = per_image()
    before = table.copy()
    summary = summarize(table)
    assert list(summary.columns) == ["model", "dataset", "n_images", "n_true", "mean_matched_iou", "challenge_score"]
    # datasets sorted by name, then 'all'
    assert summary["dataset"].tolist() == ["bbbc", "stage1", "all"]
    assert summary["n_images"].tolist() == [1, 2, 3]
    assert summary["n_true"].tolist() == pytest.approx([3.0, 3.0, 3.0])  # 3; (2 + 4) / 2; 9 / 3
    assert summary["challenge_score"].tolist() == pytest.approx([0.2, 0.75, 1.7 / 3])
    # NaN (no match) is left out of the mean
    assert summary["mean_matched_iou"].tolist() == pytest.approx([0.6, 0.9, 0.75])
    pd.testing.assert_frame_equal(table, before)


def test_single_dataset_has_no_all_row():
    summary = summarize(per_image().query("dataset == 'stage1'"))
    assert summary["dataset"].tolist() == ["stage1"]
    assert summary["challenge_score"].tolist() == pytest.approx([0.75])


def test_empty_table_is_refused():
    with pytest.raises(ValueError, match="no per-image rows"):
        summarize(per_image().iloc[:0])


def test_aggregate_reads_and_writes_csvs(tmp_path):
    table = per_image()
    table[table.dataset == "stage1"].to_csv(tmp_path / "stage1.csv", index=False)
    table[table.dataset == "bbbc"].to_csv(tmp_path / "bbbc.csv", index=False)
    summary = aggregate([tmp_path / "stage1.csv", tmp_path / "bbbc.csv"], tmp_path / "out" / "summary.csv")
    pd.testing.assert_frame_equal(summary, summarize(table))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out" / "summary.csv"), summary)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["summary.csv"]


def test_format_summary_names_datasets_and_rounds():
    text = format_summary(summarize(per_image()))
    lines = text.splitlines()
    for name in ["bbbc", "stage1", "all"]:
        assert any(name in line.split() for line in lines)
    assert "0.750" in text and "0.567" in text
    assert "challenge_score" in lines[0] and "mean_matched_iou" not in text  # only the main columns


def stats_row(stats, **where):
    part = stats
    for key, value in where.items():
        part = part[part[key] == value]
    assert len(part) == 1, where
    return part.iloc[0]


def test_summary_stats_by_hand():
    table = per_image()
    before = table.copy()
    stats = summary_stats(table)
    assert list(stats.columns) == STATS_COLUMNS == ["model", "dataset", "modality", "metric", "mean", "median", "std", "count"]
    # groups: bbbc (all, fluorescence), stage1 (all, fluorescence, histology), all (all, fluorescence, histology);
    # 8 groups x 3 metrics, datasets sorted then 'all', modality 'all' first, metrics in column order
    assert len(stats) == 24
    assert stats["dataset"].tolist()[::3] == ["bbbc"] * 2 + ["stage1"] * 3 + ["all"] * 3
    assert stats["modality"].tolist()[::3] == ["all", "fluorescence", "all", "fluorescence", "histology", "all", "fluorescence", "histology"]
    assert stats["metric"].tolist()[:3] == ["n_true", "mean_matched_iou", "challenge_score"]

    row = stats_row(stats, dataset="stage1", modality="all", metric="challenge_score")  # 1.0, 0.5
    assert (row["mean"], row["median"], row["count"]) == (0.75, 0.75, 2)
    assert row["std"] == pytest.approx(np.sqrt((0.25**2 + 0.25**2) / 1))  # sample std, n - 1
    row = stats_row(stats, dataset="all", modality="all", metric="challenge_score")  # 1.0, 0.5, 0.2
    assert (row["mean"], row["median"], row["count"]) == (pytest.approx(1.7 / 3), 0.5, 3)
    assert row["std"] == pytest.approx(np.std([1.0, 0.5, 0.2], ddof=1))
    row = stats_row(stats, dataset="all", modality="fluorescence", metric="n_true")  # images a (2) and c (3)
    assert (row["mean"], row["median"], row["count"]) == (2.5, 2.5, 2)
    row = stats_row(stats, dataset="stage1", modality="histology", metric="challenge_score")  # one image
    assert (row["mean"], row["median"], row["count"]) == (0.5, 0.5, 1) and np.isnan(row["std"])
    # NaN (no match) is left out, and the count says so
    row = stats_row(stats, dataset="stage1", modality="all", metric="mean_matched_iou")
    assert (row["mean"], row["count"]) == (0.9, 1)
    row = stats_row(stats, dataset="stage1", modality="histology", metric="mean_matched_iou")
    assert row["count"] == 0 and np.isnan(row["mean"])
    pd.testing.assert_frame_equal(table, before)


def test_summary_stats_means_agree_with_the_summary():
    table = pd.concat([per_image(), per_image().assign(model="other", challenge_score=[0.0, 0.1, 0.2])], ignore_index=True)
    stats = summary_stats(table).query("modality == 'all'")
    summary = summarize(table)
    for row in summary.itertuples():
        for metric in ("n_true", "challenge_score"):
            assert stats_row(stats, model=row.model, dataset=row.dataset, metric=metric)["mean"] == pytest.approx(getattr(row, metric))
        assert stats_row(stats, model=row.model, dataset=row.dataset, metric="n_true")["count"] == row.n_images


def test_single_dataset_has_no_all_dataset_rows():
    stats = summary_stats(per_image().query("dataset == 'stage1'"))
    assert set(stats["dataset"]) == {"stage1"}
    assert set(stats["modality"]) == {"all", "fluorescence", "histology"}


def test_compare_models_side_by_side_by_hand():
    table = pd.concat([per_image(), per_image().assign(model="paper", challenge_score=[0.0, 0.1, 0.2])], ignore_index=True)
    table = table.drop(index=[5])  # paper was not run on bbbc (image c)
    before = table.copy()
    summary = summarize(table)
    comparison = compare_models(summary)
    assert list(comparison.columns) == ["dataset", "metric", "paper", "unet"]  # models sorted by name
    assert comparison["dataset"].tolist() == ["bbbc"] * 4 + ["stage1"] * 4 + ["all"] * 4
    assert comparison["metric"].tolist()[:4] == ["n_images", "n_true", "mean_matched_iou", "challenge_score"]
    by = comparison.set_index(["dataset", "metric"])
    assert by.loc[("stage1", "challenge_score")].tolist() == pytest.approx([0.05, 0.75])
    assert by.loc[("all", "unet")].tolist() == pytest.approx([3, 3.0, 0.75, 1.7 / 3])
    # paper was scored on one dataset only: no 'all' row of its own, and nothing on bbbc
    assert by.loc["all", "paper"].isna().all() and by.loc["bbbc", "paper"].isna().all()
    pd.testing.assert_frame_equal(table, before)


def test_compare_refuses_a_model_named_like_a_column():
    with pytest.raises(ValueError, match="metric"):
        compare_models(summarize(per_image().assign(model="metric")))


def test_aggregate_writes_every_table(tmp_path):
    table = pd.concat([per_image(), per_image().assign(model="paper")], ignore_index=True)
    for (model, dataset), part in table.groupby(["model", "dataset"]):
        part.to_csv(tmp_path / f"{model}_{dataset}.csv", index=False)
    inputs = sorted(tmp_path.glob("*.csv"))
    out = tmp_path / "out"
    summary = aggregate(inputs, out / "summary.csv", stats_csv=out / "summary_stats.csv", comparison_csv=out / "comparison.csv", html_path=out / "summary.html")
    pd.testing.assert_frame_equal(summary, summarize(table))
    stats = pd.read_csv(out / "summary_stats.csv")
    assert list(stats.columns) == STATS_COLUMNS
    pd.testing.assert_frame_equal(stats, summary_stats(table), check_dtype=False)
    comparison = pd.read_csv(out / "comparison.csv")
    assert list(comparison.columns) == ["dataset", "metric", "paper", "unet"]
    page = (out / "summary.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<table") == 3
    assert "Models side by side" in page and "challenge_score" in page and "0.567" in page
    assert sorted(p.name for p in out.iterdir()) == ["comparison.csv", "summary.csv", "summary.html", "summary_stats.csv"]


def test_html_without_comparison_for_one_model():
    summary = summarize(per_image())
    page = tables_html(summary, summary_stats(per_image()))
    assert page.count("<table") == 2 and "side by side" not in page


def test_image_tables_are_collected_with_model_and_dataset(tmp_path):
    from nucseg.report import collect_image_tables

    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    pd.DataFrame(dict(image_id=["007", "x"], count=[3, 0], model=["models/m1", "models/m1"])).to_csv(a, index=False)
    pd.DataFrame(dict(image_id=["y"], count=[5])).to_csv(b, index=False)
    out = collect_image_tables([a, b], [("m1", "d1"), ("m2", "d1")], tmp_path / "images.csv")
    back = pd.read_csv(tmp_path / "images.csv", dtype={"image_id": str})
    assert back.columns.tolist()[:3] == ["model", "dataset", "image_id"] and len(back) == len(out) == 3
    assert back["image_id"].tolist() == ["007", "x", "y"] and back["model"].tolist() == ["m1", "m1", "m2"]
    assert back["model_folder"].tolist()[:2] == ["models/m1"] * 2  # images.csv's own model column (issue 22), renamed
    with pytest.raises(ValueError, match="keys"):
        collect_image_tables([a], [], tmp_path / "bad.csv")
    assert not (tmp_path / "bad.csv").exists()
