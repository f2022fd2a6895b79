"""Tests of nucseg.plots: the figures are written as PNG from per-image tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nucseg.plots import ap_columns, copy_training_curves, count_scatter, plot_results

THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)


def per_image(n=6, model="unet", dataset="stage1", big=False):
    rng = np.random.default_rng(0)
    ap = np.sort(rng.uniform(0, 1, size=(n, 10)), axis=1)[:, ::-1]
    table = pd.DataFrame(
        dict(
            model=model,
            dataset=dataset,
            image_id=[f"{i:03d}" for i in range(n)],
            modality=["fluorescence", "histology", "brightfield"] * (n // 3),
            height=256,
            width=256,
            n_true=rng.integers(1, 1000 if big else 60, n),
            n_pred=rng.integers(0, 60, n),
        )
    )
    for k, t in enumerate(THRESHOLDS):
        table[f"ap_{t:.2f}"] = ap[:, k]
    table["challenge_score"] = ap.mean(axis=1)
    return table


def assert_png(path, min_size=(300, 300)):
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]


def test_plot_results_writes_three_pngs(tmp_path):
    per_image().to_csv(tmp_path / "a.csv", index=False)
    per_image(dataset="other").to_csv(tmp_path / "b.csv", index=False)
    out = tmp_path / "plots"
    plot_results([tmp_path / "a.csv", tmp_path / "b.csv"], out / "score.png", out / "curve.png", out / "counts.png")
    for name in ["score.png", "curve.png", "counts.png"]:
        assert_png(out / name)
    assert sorted(p.name for p in out.iterdir()) == ["counts.png", "curve.png", "score.png"]  # no temporary files left


def test_ap_columns_in_threshold_order():
    table = per_image()[["ap_0.95", "ap_0.50", "ap_0.75", "challenge_score"]]
    columns, thresholds = ap_columns(table)
    assert columns == ["ap_0.50", "ap_0.75", "ap_0.95"]
    np.testing.assert_allclose(thresholds, [0.5, 0.75, 0.95])
    with pytest.raises(ValueError, match="no ap_<threshold> columns"):
        ap_columns(table[["challenge_score"]])


def test_counts_over_a_hundred_and_zero_predictions(tmp_path):
    table = per_image(big=True)
    table.loc[0, "n_pred"] = 0
    assert_png(count_scatter(table, tmp_path / "counts.png"))


def test_empty_tables_are_refused(tmp_path):
    per_image().iloc[:0].to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(ValueError, match="no per-image rows"):
        plot_results([tmp_path / "a.csv"], tmp_path / "s.png", tmp_path / "c.png", tmp_path / "n.png")
    assert not list(tmp_path.glob("*.png"))


def test_copy_training_curves(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(FileNotFoundError, match=f"{model}: no curves.png"):
        copy_training_curves(model, tmp_path / "out" / "curves.png")
    Image.new("RGB", (10, 10)).save(model / "curves.png")
    out = copy_training_curves(model, tmp_path / "out" / "curves.png")
    assert out.read_bytes() == (model / "curves.png").read_bytes()
