"""Summary tables, plots, QC pictures and the HTML report of the workflow on the embedded sample."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
from PIL import Image

from nucseg.evaluate import ID_COLUMNS
from nucseg.report import STATS_COLUMNS

from .conftest import snakemake

PLOTS = ["challenge_score.png", "score_vs_threshold.png", "counts.png", "training_curves.png"]
QC = ["best.png", "median.png", "worst.png"]
CAPTIONS = [
    "The table to open first",  # summary.csv
    "Every statistic of every metric",  # summary_stats.csv
    "Distribution of the per-image challenge score of model",
    "against the IoU threshold a match must exceed",
    "Predicted against true number of nuclei per test image",
    "Training of model",
    "Quality control, model",
]


def snapshot(folder):
    """Size and modification time of every file below ``folder``."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_summary_stats_have_the_documented_layout(sample_run):
    results = sample_run[0] / "results"
    per_image = pd.read_csv(results / "metrics/resunet/sample_test/per_image.csv", dtype={"image_id": str})
    metrics = [c for c in per_image.columns if c not in ID_COLUMNS]
    stats = pd.read_csv(results / "summary_stats.csv")
    assert list(stats.columns) == STATS_COLUMNS
    modalities = ["all", "brightfield", "fluorescence", "histology"]
    assert len(stats) == len(modalities) * len(metrics)
    assert stats["modality"].unique().tolist() == modalities
    assert stats["metric"].tolist() == metrics * len(modalities)
    assert set(stats["model"]) == {"resunet"} and set(stats["dataset"]) == {"sample_test"}
    overall = stats[stats["modality"] == "all"].set_index("metric")
    for metric in ["challenge_score", "pixel_iou", "n_true"]:
        values = per_image[metric]
        assert np.isclose(overall.loc[metric, "mean"], values.mean())
        assert np.isclose(overall.loc[metric, "median"], values.median())
        assert np.isclose(overall.loc[metric, "std"], values.std(ddof=1))
        assert overall.loc[metric, "count"] == 12
    by_modality = stats[(stats["metric"] == "challenge_score") & (stats["modality"] != "all")]
    assert by_modality["count"].sum() == 12
    summary = pd.read_csv(results / "summary.csv")
    assert np.isclose(summary["challenge_score"].iloc[0], overall.loc["challenge_score", "mean"])
    assert not (results / "comparison.csv").exists()  # one model: nothing to compare
    page = (results / "summary.html").read_text()
    assert page.count("<table") == 2 and "resunet" in page


def test_plots_and_qc_pictures_exist(sample_run):
    results = sample_run[0] / "results"
    for name in PLOTS:
        with Image.open(results / "plots/resunet" / name) as image:
            assert image.format == "PNG" and min(image.size) >= 300, name
    qc = results / "qc/resunet/sample_test"
    assert sorted(p.name for p in qc.iterdir()) == sorted(QC)
    for name in QC:
        with Image.open(qc / name) as image:
            assert image.format == "PNG" and image.size[0] >= 640
    # the pictures show the images the per-image table ranks best, median and worst
    per_image = pd.read_csv(results / "metrics/resunet/sample_test/per_image.csv", dtype={"image_id": str})
    ranked = per_image.sort_values(["challenge_score", "image_id"])["image_id"].tolist()
    log = (results / "logs/qc/resunet/sample_test.log").read_text()
    assert re.search(rf"best image {ranked[-1]} ", log)
    assert re.search(rf"median image {ranked[(len(ranked) - 1) // 2]} ", log)
    assert re.search(rf"worst image {ranked[0]} ", log)


def test_report_builds_with_captions_and_leaves_the_run_alone(sample_run, tmp_path):
    workdir = sample_run[0]
    before = snapshot(workdir / "results")
    report = tmp_path / "report.html"
    result = snakemake(workdir, "--report", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    assert report.is_file() and report.stat().st_size > 500_000  # the PNGs are embedded
    text = report.read_text()
    for caption in CAPTIONS:
        assert caption in text, caption
    for category in ["Summary", "Plots", "Training", "QC"]:
        assert category in text
    assert "resunet" in text and "sample_test" in text
    assert snapshot(workdir / "results") == before  # nothing rerun, nothing rewritten


def test_several_models_ask_for_the_comparison_table(tmp_path):
    """With two models, the aggregate job also writes comparison.csv (dry run: nothing is computed)."""
    result = snakemake(tmp_path, "--cores", "1", "--dry-run", "--config", "models={a: {}, b: {segment: {min_size: 20}}}")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert re.search(r"rule aggregate:\n\s+input: [^\n]*\n\s+output: [^\n]*results/comparison\.csv", out)
    for model in ["a", "b"]:
        assert f"results/plots/{model}/challenge_score.png" in out
        assert f"results/qc/{model}/sample_test/worst.png" in out


def jobs_run(output: str) -> list[tuple[str, str]]:
    """(rule, wildcards) of each job block Snakemake printed (``rule x:`` up to a blank line)."""
    jobs = []
    for block in re.split(r"\n\s*\n", output):
        head = re.search(r"^(?:local)?rule (\w+):$", block, flags=re.MULTILINE)
        if head:
            wildcards = re.search(r"^\s+wildcards: (.*)$", block, flags=re.MULTILINE)
            jobs.append((head.group(1), wildcards.group(1) if wildcards else ""))
    return jobs


def test_a_second_model_runs_beside_the_first_and_the_tables_compare_them(sample_run, tmp_path):
    """A copy of the finished sample run with a second model (a short training, its own
    segmentation setting): only the new model's jobs and the tables over all models run, the
    first model's results stay as they were, and comparison.csv holds both side by side."""
    source = sample_run[0]
    workdir = tmp_path / "work"
    shutil.copytree(source, workdir, symlinks=True)  # copy2: modification times kept
    models = "models={resunet: {}, quick: {train: {epochs: 2, samples_per_epoch: 32}, segment: {min_size: 20}}}"
    result = snakemake(workdir, "--cores", "2", "--config", models)
    assert result.returncode == 0, result.stderr[-5000:]
    ran = jobs_run(result.stderr + result.stdout)
    assert {rule for rule, _ in ran} == {"train", "training_curves", "predict", "segment", "evaluate", "plots", "qc", "aggregate", "image_tables", "all"}, ran
    assert all("model=quick" in wildcards for rule, wildcards in ran if rule not in ("aggregate", "image_tables", "all")), ran

    # the first model's results were not recomputed
    for table in ["metrics/resunet/sample_test/per_image.csv", "segmentation/resunet/sample_test/objects.csv"]:
        assert (workdir / "results" / table).stat().st_mtime_ns == (source / "results" / table).stat().st_mtime_ns, table
    summary = pd.read_csv(workdir / "results/summary.csv")
    assert summary["model"].tolist() == ["quick", "resunet"]
    before = pd.read_csv(source / "results/summary.csv")
    pd.testing.assert_frame_equal(summary[summary["model"] == "resunet"].reset_index(drop=True), before)
    comparison = pd.read_csv(workdir / "results/comparison.csv")
    assert list(comparison.columns) == ["dataset", "metric", "quick", "resunet"]
    score = comparison[comparison["metric"] == "challenge_score"].iloc[0]
    assert score["resunet"] == before["challenge_score"].iloc[0]
    assert score["quick"] == summary.loc[summary["model"] == "quick", "challenge_score"].iloc[0]
    # the quick model's own settings reached its jobs
    config = json.loads((workdir / "results/models/quick/config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["epochs_run"] == 2
    assert set(pd.read_csv(workdir / "results/summary_stats.csv")["model"]) == {"quick", "resunet"}
