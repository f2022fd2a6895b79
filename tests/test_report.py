"""Tests of nucseg.report: the summary means, worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nucseg.report import aggregate, format_summary, summarize


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
