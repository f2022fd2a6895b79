"""The workflow with task: semantic, end to end on crops of the real wbc3class images (read from
../shared at test time): every stage through the task's adapters, the tables, plots and QC."""

from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from .conftest import snakemake


@pytest.mark.slow
def test_semantic_workflow_on_real_crops(shared_data, tmp_path):
    archive = tmp_path / "wbc_small.zip"
    with zipfile.ZipFile(shared_data / "wbc3class" / "wbc3class.zip") as src, zipfile.ZipFile(archive, "w") as dst:
        for image_id in ("001", "002", "003", "004", "005", "006"):
            for folder in ("images", "labels"):
                dst.writestr(f"{folder}/{image_id}.png", src.read(f"Dataset1/{folder}/{image_id}.png"))
    (tmp_path / "test_ids.txt").write_text("005\n006\n")
    (tmp_path / "train_ids.txt").write_text("001\n002\n003\n004\n")
    config = {
        "task": "semantic",
        "classes": {"background": 0, "cytoplasm": 1, "nucleus": 2},
        "datasets": {
            "wbc_train": {"source": str(archive), "layout": "semantic", "role": "train", "exclude": str(tmp_path / "test_ids.txt")},
            "wbc_test": {"source": str(archive), "layout": "semantic", "role": "test", "exclude": str(tmp_path / "train_ids.txt")},
        },
        "models": {"unet": {"train": {"model": "unet"}}},
        "preprocess": {"size": 64, "val_fraction": 0.25},
        "train": {"width": 4, "epochs": 1, "samples_per_epoch": 8, "batch_size": 4, "invert_dark": False, "class_weights": [1, 2, 2]},
    }
    config_file = tmp_path / "semantic.yaml"
    config_file.write_text(yaml.safe_dump(config))
    workdir = tmp_path / "run"
    workdir.mkdir()
    result = snakemake(workdir, "--cores", "2", "--configfile", str(config_file), "--replace-workflow-config")
    assert result.returncode == 0, result.stderr[-4000:]

    results = workdir / "results"
    class_map = tifffile.imread(results / "segmentation/unet/wbc_test/labels/005.tif")
    assert class_map.dtype == np.uint8 and set(np.unique(class_map)) <= {0, 1, 2}
    per_image = pd.read_csv(results / "metrics/unet/wbc_test/per_image.csv", dtype={"image_id": str})
    assert per_image["image_id"].tolist() == ["005", "006"]
    assert {"pixel_accuracy", "dice_nucleus", "iou_cytoplasm", "precision_background", "recall_nucleus", "mean_dice", "fw_dice"} <= set(per_image.columns)
    summary = pd.read_csv(results / "summary.csv")
    assert summary["model"].tolist() == ["unet"] and "mean_dice" in summary
    assert (results / "plots/unet/class_scores.png").stat().st_size > 1000
    assert all((results / f"qc/unet/wbc_test/{pick}.png").exists() for pick in ("best", "median", "worst"))
    areas = pd.read_csv(results / "segmentation/unet/wbc_test/objects.csv", dtype={"image_id": str})
    assert areas.groupby("image_id")["fraction"].sum().round(6).tolist() == [1.0, 1.0]
    model_config = yaml.safe_load((results / "models/unet/config.json").read_text())
    assert model_config["task"] == "semantic" and model_config["train"]["class_weights"] == [1.0, 2.0, 2.0]

    # a label value outside the declared classes stops preprocess, naming the file and the value
    bad = dict(config, classes={"background": 0, "nucleus": 2})
    config_file.write_text(yaml.safe_dump(bad))
    failed = snakemake(tmp_path / "run2", "--cores", "1", "--configfile", str(config_file), "--replace-workflow-config", "--until", "preprocess_train")
    assert failed.returncode != 0
    logs = "".join(p.read_text() for p in (tmp_path / "run2/results/logs/preprocess_train").glob("*.log"))
    assert "labels/001.png: label value 1" in logs and "is not one of the declared classes' values [0, 2]" in logs
