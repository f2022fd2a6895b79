"""Tests of nucseg.evaluate on a tiny full-size store and hand-written predictions."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from nucseg.evaluate import ID_COLUMNS, evaluate_dataset
from nucseg.imageio import write_labels
from nucseg.metrics import evaluate_image
from nucseg.preprocess import preprocess_fullsize

METRIC_KEYS = list(evaluate_image(np.zeros((2, 2), np.int32), np.zeros((2, 2), np.int32)))


@pytest.fixture
def store(tmp_path, make_dataset, two_square_sample):
    """A full-size store of two images with truth and one without; returns (zarr, index csv, truth labels)."""
    image, labels = two_square_sample
    make_dataset(
        tmp_path / "ds",
        {"img_a": (image, labels), "img_b": (image, labels), "img_c": (image, None)},
    )
    preprocess_fullsize(tmp_path / "ds", tmp_path / "full.zarr", tmp_path / "index.csv")
    return tmp_path / "full.zarr", tmp_path / "index.csv", labels


def test_one_row_per_image_with_ground_truth(store, tmp_path):
    full, index_csv, truth = store
    pred_dir = tmp_path / "labels"
    pred_dir.mkdir()
    # img_a: perfect, with the labels numbered the other way round (numbering does not matter)
    perfect = np.where(truth == 1, 7, np.where(truth == 2, 3, 0)).astype(np.uint32)
    write_labels(pred_dir / "img_a.tif", perfect)
    # img_b: the second square missed
    write_labels(pred_dir / "img_b.tif", np.where(truth == 1, 1, 0))
    out_csv = tmp_path / "metrics" / "sample.csv"
    table = evaluate_dataset(pred_dir, full, index_csv, out_csv, dataset="sample")

    assert list(table.columns) == ID_COLUMNS + METRIC_KEYS
    assert table["image_id"].tolist() == ["img_a", "img_b"]  # img_c has no truth: skipped
    assert table["dataset"].tolist() == ["sample", "sample"]
    assert table["modality"].tolist() == ["fluorescence", "fluorescence"]
    assert table[["height", "width"]].values.tolist() == [[40, 48], [40, 48]]
    a, b = table.iloc[0], table.iloc[1]
    assert a["challenge_score"] == 1.0 and a["obj_f1"] == 1.0 and a["pixel_iou"] == 1.0
    assert (a["n_true"], a["n_pred"]) == (2, 2)
    # one of two found at every threshold: TP 1, FN 1 -> 1 / 2
    assert (b["n_true"], b["n_pred"], b["obj_tp"], b["obj_fn"], b["obj_fp"]) == (2, 1, 1, 1, 0)
    assert b["challenge_score"] == pytest.approx(0.5)
    back = pd.read_csv(out_csv, dtype={"image_id": str})
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    assert sorted(p.name for p in out_csv.parent.iterdir()) == ["sample.csv"]


def test_missing_prediction_names_the_file(store, tmp_path):
    full, index_csv, truth = store
    (tmp_path / "labels").mkdir()
    write_labels(tmp_path / "labels" / "img_a.tif", truth)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "labels" / "img_b.tif"))):
        evaluate_dataset(tmp_path / "labels", full, index_csv, tmp_path / "m.csv", dataset="sample")
    assert not (tmp_path / "m.csv").exists()


def test_no_ground_truth_at_all_names_index_and_dataset(tmp_path, make_dataset):
    make_dataset(tmp_path / "ds", {"img_c": (np.zeros((8, 8), np.uint8), None)})
    preprocess_fullsize(tmp_path / "ds", tmp_path / "full.zarr", tmp_path / "index.csv")
    pattern = re.escape(f"{tmp_path / 'index.csv'}: no image of dataset 'stage2'")
    with pytest.raises(ValueError, match=pattern):
        evaluate_dataset(tmp_path, tmp_path / "full.zarr", tmp_path / "index.csv", tmp_path / "m.csv", dataset="stage2")
    assert not (tmp_path / "m.csv").exists()
