"""The semantic task (nucseg.tasks.semantic): classes, metrics, loss, sampling, and the stages
on small real crops of the ISBI 2012 and wbc3class archives (read from ../shared at test time,
never copied into the repository)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import zarr
from PIL import Image

from nucseg.classmaps import SemanticClasses, class_map, one_hot, to_class_index
from nucseg.datasets import download_dataset, list_images, read_sample
from nucseg.infer import PredictSettings, predict_dataset
from nucseg.losses import ce_dice_loss
from nucseg.metrics import class_scores, confusion_matrix
from nucseg.preprocess import PreprocessSettings, preprocess_fullsize, preprocess_training
from nucseg.sampling import class_balanced_weights, class_fractions
from nucseg.sizes import BINS, nucleus_diameters, regions
from nucseg.tasks import make_task
from nucseg.tasks.instance import InstanceTask
from nucseg.tasks.semantic import SemanticTask
from nucseg.training import TrainSettings, train_model
from nucseg.vscores import boundary_scores

ISBI = {"membrane": 0, "cell": 255}
WBC = {"background": 0, "cytoplasm": 1, "nucleus": 2}


# --- classes and label values --------------------------------------------------------------


def test_classes_keep_their_order_and_refuse_bad_declarations():
    classes = SemanticClasses.parse({"cell": 255, "membrane": 0})
    assert classes.names == ("cell", "membrane") and classes.values == (255, 0)
    assert SemanticClasses.parse([["a", 0], ["b", 7]]).values == (0, 7)
    for bad in ({"a": 0}, {"a": 0, "b": 0}, {"a": 0, "b": 256}, {"a": 0, "b": 1.5}, None):
        with pytest.raises(ValueError):
            SemanticClasses.parse(bad)


def test_to_class_index_maps_values_to_class_order():
    labels = np.array([[255, 0], [0, 255]], np.uint8)
    assert to_class_index(labels, (255, 0)).tolist() == [[0, 1], [1, 0]]
    assert to_class_index(labels, (255, 0)).dtype == np.uint8


def test_to_class_index_names_the_file_and_the_unknown_value():
    labels = np.array([[0, 1], [2, 7]], np.uint8)
    with pytest.raises(ValueError, match=r"labels/042\.png: label value 7 \(1 pixels\) is not one of the declared classes' values \[0, 1, 2\]"):
        to_class_index(labels, (0, 1, 2), "labels/042.png")


def test_one_hot_and_class_map_round_trip():
    index = np.array([[0, 2], [1, 1]])
    target = one_hot(index, 3)
    assert target.shape == (3, 2, 2) and target.dtype == np.float32 and (target.sum(0) == 1).all()
    classes = SemanticClasses.parse(WBC)
    assert class_map(target, classes).tolist() == [[0, 2], [1, 1]]
    with pytest.raises(ValueError, match=r"expected \(3, H, W\)"):
        class_map(target[:2], classes)


# --- metrics ---------------------------------------------------------------------------------


def test_scores_of_a_hand_made_confusion_matrix():
    # truth: 4 pixels of a, 4 of b; a predicted as b once
    cm = confusion_matrix(np.array([0, 0, 0, 0, 1, 1, 1, 1]).reshape(2, 4), np.array([0, 0, 0, 1, 1, 1, 1, 1]).reshape(2, 4), 2)
    assert cm.tolist() == [[3, 1], [0, 4]]
    s = class_scores(cm, ["a", "b"])
    assert s["pixel_accuracy"] == 7 / 8
    assert s["dice_a"] == pytest.approx(6 / 7) and s["dice_b"] == pytest.approx(8 / 9)
    assert s["iou_a"] == pytest.approx(3 / 4) and s["iou_b"] == pytest.approx(4 / 5)
    assert s["precision_a"] == 1.0 and s["recall_a"] == 3 / 4 and s["precision_b"] == 4 / 5 and s["recall_b"] == 1.0
    assert s["mean_dice"] == pytest.approx((6 / 7 + 8 / 9) / 2)
    assert s["fw_iou"] == pytest.approx(0.5 * 3 / 4 + 0.5 * 4 / 5)
    assert s["true_a"] == 0.5 and s["pred_a"] == 3 / 8


def test_scores_leave_undefined_classes_out_of_the_means():
    """A class neither true nor predicted has no Dice (NaN), and the macro mean skips it
    instead of counting it as 0 or 1."""
    s = class_scores(confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 2), int), 3), ["a", "b", "c"])
    assert s["dice_a"] == 1.0 and np.isnan(s["dice_b"]) and np.isnan(s["dice_c"])
    assert s["mean_dice"] == 1.0 and s["fw_dice"] == 1.0
    never_predicted = class_scores(np.array([[2, 2], [0, 0]]), ["a", "b"])
    assert np.isnan(never_predicted["recall_b"]) and never_predicted["precision_b"] == 0.0 and never_predicted["dice_b"] == 0.0


def test_confusion_matrix_refuses_different_sizes():
    with pytest.raises(ValueError, match="differ in size"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 2)


# --- loss and sampling -----------------------------------------------------------------------


def test_ce_dice_loss_is_low_for_a_confident_right_answer_and_weights_count():
    target = torch.from_numpy(one_hot(np.array([[0, 1], [2, 2]]), 3))[None]
    right = ce_dice_loss(target * 20 - 10, target)
    wrong = ce_dice_loss(target.roll(1, dims=1) * 20 - 10, target)
    assert float(right) < 1e-3 and float(wrong) > 2
    # weighting the class that is wrong raises the loss
    partly = target.clone()
    partly[0, :, 0, 0] = torch.tensor([0.0, 1.0, 0.0])  # pixel of class 0 predicted as 1
    logits = partly * 20 - 10
    assert float(ce_dice_loss(logits, target, torch.tensor([5.0, 1.0, 1.0]))) > float(ce_dice_loss(logits, target))
    with pytest.raises(ValueError, match="must both be"):
        ce_dice_loss(logits[:, :2], target)


def test_class_balanced_weights_favour_examples_of_a_rare_class():
    fractions = np.array([[1.0, 0.0], [0.9, 0.1], [1.0, 0.0]])
    w = class_balanced_weights(fractions)
    assert w.sum() == pytest.approx(1.0)
    assert w[1] > 0.5 > w[0]  # the only example with class 1 gets class 1's half of the draws, and more
    assert class_balanced_weights(np.zeros((3, 2))).tolist() == pytest.approx([1 / 3] * 3)
    assert class_fractions(np.array([[[0, 1], [1, 1]]]), 3).tolist() == [[0.25, 0.75, 0.0]]


def test_task_loss_refuses_weights_of_the_wrong_length():
    task = SemanticTask.from_classes(WBC)
    with pytest.raises(ValueError, match="one weight >= 0 per class"):
        task.loss(TrainSettings(model="unet", class_weights=(1.0, 2.0)))
    assert task.loss(TrainSettings(model="unet", class_weights=(1.0, 2.0, 2.0))).weights.tolist() == [1.0, 2.0, 2.0]


def test_make_task_and_model_choice():
    assert isinstance(make_task(), InstanceTask) and make_task("semantic", ISBI).classes.names == ("membrane", "cell")
    with pytest.raises(ValueError, match="unknown task"):
        make_task("panoptic")
    with pytest.raises(ValueError, match="is a semantic network"):
        InstanceTask().build_model(TrainSettings(model="unet"))
    with pytest.raises(ValueError, match="not a semantic network"):
        make_task("semantic", ISBI).build_model(_NotANet())


class _NotANet:
    model = "transformer"
    width = None


# --- the stages on real crops ---------------------------------------------------------------


def _crops_zip(archive: Path, members: dict[str, tuple[str, tuple[int, int, int, int]]], out: Path, tamper=None) -> Path:
    """A small zip in the semantic layout of crops of real images: ``members`` maps a new id to
    (the archive's id, crop box y0, y1, x0, x1); ``tamper(id, labels) -> labels`` may alter labels."""
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w") as dst:
        for new_id, (old_id, (y0, y1, x0, x1)) in members.items():
            for folder in ("images", "labels"):
                array = np.asarray(Image.open(io.BytesIO(src.read(f"{folder}/{old_id}.png"))))[y0:y1, x0:x1]
                if folder == "labels" and tamper is not None:
                    array = tamper(new_id, array)
                buffer = io.BytesIO()
                Image.fromarray(array).save(buffer, format="PNG")
                dst.writestr(f"{folder}/{new_id}.png", buffer.getvalue())
    return out


@pytest.fixture
def isbi_zip(shared_data, tmp_path) -> Path:
    boxes = {f"s{k}": (f"slice_{k:02d}", (100, 196, 100, 196)) for k in (0, 1, 2, 3, 27)}
    return _crops_zip(shared_data / "isbi2012" / "isbi2012_train.zip", boxes, tmp_path / "isbi_crops.zip")


def test_semantic_training_store_records_its_objects_sizes(shared_data, tmp_path):
    """The cells between the membranes of a whole real slice (4-connected regions of every class
    but the first, those at the edge left out) are counted pixel by pixel by their region's
    diameter, and a model trained on the store records them: the target of predict.scale auto
    for a semantic model (nucseg.scale: medians over pixels, so specks do not outvote cells)."""
    archive = _crops_zip(shared_data / "isbi2012" / "isbi2012_train.zip", {"s0": ("slice_00", (0, 512, 0, 512))}, tmp_path / "slice.zip")
    root = download_dataset(str(archive), tmp_path / "isbi", layout="semantic")
    index = preprocess_training(root, tmp_path / "t.zarr", tmp_path / "t.csv", PreprocessSettings(size=256, val_fraction=0), "semantic", classes=ISBI)
    counts = zarr.open_group(tmp_path / "t.zarr", mode="r")["diameter_counts"][:]
    cells = regions(read_sample(root, "s0", "semantic", class_values=(0, 255)).labels > 0)
    d = nucleus_diameters(cells)
    edge = np.unique(np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]]))
    assert d.size > 50 and counts.shape == (len(index), len(BINS) - 1)
    assert counts.sum() == np.isin(cells, edge, invert=True).sum()  # every pixel of the inner cells
    assert np.array_equal(counts[0], np.histogram(d, BINS, weights=np.round(np.pi * d**2 / 4))[0])
    task = make_task("semantic", ISBI)
    settings = TrainSettings(model="unet", width=4, epochs=1, samples_per_epoch=4, batch_size=4, invert_dark=False)
    config = train_model([tmp_path / "t.zarr"], [tmp_path / "t.csv"], tmp_path / "model", settings, task=task, threads=1)
    assert config["nuclei"]["n"] == counts.sum() and config["nuclei"]["median"] > np.median(d)  # by pixels: the large cells weigh more


def test_semantic_layout_reads_class_indices(isbi_zip, tmp_path):
    root = download_dataset(str(isbi_zip), tmp_path / "isbi", layout="semantic")
    assert list_images(root, "semantic") == ["s0", "s1", "s2", "s27", "s3"]
    sample = read_sample(root, "s0", "semantic", class_values=(0, 255))
    assert sample.image.shape == (96, 96, 3) and sample.labels.shape == (96, 96)
    assert set(np.unique(sample.labels)) <= {0, 1} and sample.labels.mean() > 0.5  # mostly cell interior
    raw = read_sample(root, "s0", "semantic").labels
    assert set(np.unique(raw)) <= {0, 255}


def test_semantic_labels_outside_the_classes_stop_preprocess_naming_file_and_value(shared_data, tmp_path):
    """Regression guard: a label value the config does not declare must not become a class."""

    def tamper(image_id, labels):
        if image_id == "bad":
            labels = labels.copy()
            labels[0, :3] = 128
        return labels

    archive = _crops_zip(
        shared_data / "isbi2012" / "isbi2012_train.zip",
        {"good": ("slice_00", (0, 64, 0, 64)), "bad": ("slice_01", (0, 64, 0, 64))},
        tmp_path / "bad.zip",
        tamper,
    )
    root = download_dataset(str(archive), tmp_path / "bad", layout="semantic")
    with pytest.raises(ValueError, match=r"labels/bad\.png: label value 128 \(3 pixels\) is not one of the declared classes' values \[0, 255\]"):
        preprocess_training(root, tmp_path / "t.zarr", tmp_path / "t.csv", PreprocessSettings(size=64), "semantic", classes=ISBI)
    assert not (tmp_path / "t.zarr").exists()


def test_semantic_label_of_another_size_stops_naming_the_file(shared_data, tmp_path):
    root = tmp_path / "sized"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    with zipfile.ZipFile(shared_data / "wbc3class" / "wbc3class.zip") as src:
        image = np.asarray(Image.open(io.BytesIO(src.read("Dataset1/images/001.png"))))
        labels = np.asarray(Image.open(io.BytesIO(src.read("Dataset1/labels/001.png"))))
    Image.fromarray(image).save(root / "images" / "001.png")
    Image.fromarray(labels[:-2]).save(root / "labels" / "001.png")
    with pytest.raises(ValueError, match=r"labels/001\.png: label image of size \(\d+, \d+\) differs from its image's size"):
        read_sample(root, "001", "semantic", class_values=(0, 1, 2))


def test_semantic_stores_train_predict_segment_evaluate(isbi_zip, tmp_path):
    """The shared stages on five 96 x 96 real EM crops: one tiny U-Net epoch, then the task's
    class maps, class areas and per-image scores (values, not quality, are checked)."""
    root = download_dataset(str(isbi_zip), tmp_path / "isbi", layout="semantic")
    index = preprocess_training(
        root, tmp_path / "train.zarr", tmp_path / "train.csv", PreprocessSettings(size=64, val_fraction=0.25), "semantic", exclude=["s27"], classes=ISBI
    )
    assert {"share_membrane", "share_cell"} <= set(index.columns) and "n_nuclei" not in index
    store = zarr.open_group(tmp_path / "train.zarr", mode="r")
    assert "body" not in store and set(np.unique(store["labels"][:])) <= {0, 1} and store.attrs["classes"] == ISBI
    assert store["diameter_counts"].shape[0] == len(index)  # (these crops' cells all touch their edges)
    full = preprocess_fullsize(root, tmp_path / "full.zarr", tmp_path / "full.csv", "semantic", exclude=["s0", "s1", "s2", "s3"], classes=ISBI)
    assert full["image_id"].tolist() == ["s27"]

    task = make_task("semantic", ISBI)
    settings = TrainSettings(model="unet", width=4, epochs=1, samples_per_epoch=8, batch_size=4, invert_dark=False, augment_colour=0.5)
    config = train_model([tmp_path / "train.zarr"], [tmp_path / "train.csv"], tmp_path / "model", settings, task=task, threads=1)
    assert config["task"] == "semantic" and config["classes"] == ISBI and config["architecture"] == "unet"
    assert config["model"]["classes"] == ["membrane", "cell"] and 0 <= config["best_val_iou"] <= 1

    predict_dataset(
        tmp_path / "model", tmp_path / "full.zarr", tmp_path / "full.csv", tmp_path / "pred.zarr", PredictSettings(device="cpu", engine="eager"), threads=1
    )
    pred = zarr.open_group(tmp_path / "pred.zarr", mode="r")
    assert list(pred.attrs["heads"]) == ["membrane", "cell"]
    prob = pred["s27"][:].astype(np.float32)
    assert prob.shape == (2, 96, 96) and np.allclose(prob.sum(0), 1, atol=2e-3)  # softmax probabilities

    outputs = dict(labels=str(tmp_path / "seg"), objects=str(tmp_path / "areas.csv"), images=str(tmp_path / "images.csv"))
    areas = task.segment(str(tmp_path / "pred.zarr"), str(tmp_path / "full.zarr"), str(tmp_path / "full.csv"), outputs)
    class_map_values = tifffile.imread(tmp_path / "seg" / "s27.tif")
    assert class_map_values.dtype == np.uint8 and set(np.unique(class_map_values)) <= {0, 255}
    assert areas.groupby("image_id")["fraction"].sum().tolist() == pytest.approx([1.0])
    assert pd.read_csv(tmp_path / "images.csv").columns.tolist() == ["image_id", "share_membrane", "share_cell"]

    table = task.evaluate(str(tmp_path / "seg"), str(tmp_path / "full.zarr"), str(tmp_path / "full.csv"), str(tmp_path / "per_image.csv"), "isbi", "unet")
    row = table.iloc[0]
    expected = class_scores(
        confusion_matrix(zarr.open_group(tmp_path / "full.zarr")["labels"]["s27"][:], to_class_index(class_map_values, (0, 255)), 2), ["membrane", "cell"]
    )
    assert row["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"]) and row["image_id"] == "s27"
    assert {"dice_membrane", "iou_cell", "precision_membrane", "recall_cell", "mean_dice", "fw_iou"} <= set(table.columns)
    # two classes: the challenge's region scores of the cells between the membranes
    truth_index = zarr.open_group(tmp_path / "full.zarr")["labels"]["s27"][:]
    regions_expected = boundary_scores(truth_index == 1, to_class_index(class_map_values, (0, 255)) == 1)
    assert row["v_rand"] == pytest.approx(regions_expected["v_rand"]) and row["v_info_merge"] == pytest.approx(regions_expected["v_info_merge"])
    assert 0 <= row["v_rand"] <= 1 and 0 <= row["v_info"] <= 1

    pngs = {pick: str(tmp_path / f"{pick}.png") for pick in ("best", "median", "worst")}
    task.qc(str(tmp_path / "per_image.csv"), str(tmp_path / "seg"), str(tmp_path / "full.zarr"), pngs)
    task.plot([str(tmp_path / "per_image.csv")], {"class_scores": str(tmp_path / "class_scores.png")})
    assert all(Path(p).stat().st_size > 1000 for p in [*pngs.values(), tmp_path / "class_scores.png"])


def test_segment_refuses_a_model_of_other_classes(tmp_path):
    root = zarr.open_group(tmp_path / "pred.zarr", mode="w")
    root.attrs["heads"] = ["body"]
    pd.DataFrame({"image_id": ["a"]}).to_csv(tmp_path / "index.csv", index=False)
    with pytest.raises(ValueError, match=r"predicts the classes \['body'\], the config declares \['membrane', 'cell'\]"):
        make_task("semantic", ISBI).segment(
            str(tmp_path / "pred.zarr"), "", str(tmp_path / "index.csv"), dict(labels=str(tmp_path / "l"), objects=str(tmp_path / "o.csv"))
        )


@pytest.mark.parametrize("name", ["isbi2012.yaml", "wbc3class.yaml"])
def test_the_ready_semantic_configs_are_valid(name):
    import yaml

    from nucseg.config import config_problems

    repo = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((repo / "config" / name).read_text())
    assert config_problems(config, yaml.safe_load((repo / "config/config.schema.yaml").read_text())) == []
    assert make_task(config["task"], config["classes"]).classes.values in ((0, 255), (0, 1, 2))
    for dataset in config["datasets"].values():
        assert (repo / dataset["exclude"]).is_file() if "exclude" in dataset else True


def test_sparse_scenes_are_refused_for_class_maps(tmp_path):
    """augment_sparse dims nuclei of label images: a semantic class map has none to dim."""
    settings = TrainSettings(model="unet", width=4, invert_dark=False, augment_sparse=0.5)
    with pytest.raises(ValueError, match="augment_sparse"):
        train_model([], [], tmp_path / "model", settings, task=make_task("semantic", ISBI), threads=1)
