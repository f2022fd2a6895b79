import dataclasses
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from skimage.draw import disk
from skimage.filters import threshold_otsu
from torch.utils.data import DataLoader

from nucseg.augment import Augmenter, AugmentSettings
from nucseg.imageio import intensity_range, rescale_intensity
from nucseg.model import ResUNet
from nucseg.modelfolder import load_model
from nucseg.preprocess import make_targets, shrunk_nuclei, touching_borders
from nucseg.training import CropDataset, TrainSettings, make_scheduler, split_items, train_model

SIZE = 64


def synthetic_store(root, n_images=6, seed=0):
    """A training store of bright discs on a dark background, in the preprocess layout."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n_images, SIZE, SIZE, 3), np.uint8)
    labels = np.zeros((n_images, SIZE, SIZE), np.uint32)
    for i in range(n_images):
        for label in range(1, 5):
            rr, cc = disk(tuple(rng.integers(8, SIZE - 8, 2)), 6, shape=(SIZE, SIZE))
            labels[i, rr, cc] = label
        images[i] = (labels[i, ..., None] > 0) * 180 + rng.integers(0, 40, (SIZE, SIZE, 1))
    store = root / "train.zarr"
    group = zarr.open_group(store, mode="w")
    group.create_array("images", data=images, chunks=(1, SIZE, SIZE, 3))
    group.create_array("labels", data=labels, chunks=(1, SIZE, SIZE))
    group.create_array("intensity_range", data=np.array([intensity_range(image) for image in images], np.float32))
    index = pd.DataFrame(
        dict(image_id=[f"img{i}" for i in range(n_images)], split=["train"] * (n_images - 2) + ["val"] * 2, first_crop=range(n_images), n_crops=1)
    )
    index_csv = root / "index.csv"
    index.to_csv(index_csv, index=False)
    return str(store), str(index_csv)


SETTINGS = dict(width=4, epochs=3, batch_size=2, learning_rate=0.01, device="cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    store, index = synthetic_store(root)
    config = train_model([store], [index], root / "model", TrainSettings(**SETTINGS), checkpoint=root / "ckpt.pt", threads=1)
    return root, store, index, config


def test_model_folder_is_self_describing(trained):
    root, store, _, config = trained
    folder = root / "model"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "curves.png", "history.csv", "weights.pt"]
    assert json.loads((folder / "config.json").read_text()) == json.loads(json.dumps(config))
    history = pd.read_csv(folder / "history.csv")
    assert list(history.columns) == ["epoch", "lr", "train_loss", "train_iou", "val_loss", "val_iou", "seconds"]
    assert history["epoch"].tolist() == [1, 2, 3]
    assert config["best_val_iou"] == pytest.approx(history["val_iou"].max())
    assert (config["device"], config["cpu_threads"], config["torch_version"]) == ("cpu", 1, torch.__version__)
    assert config["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert config["datasets"] == [Path(store).parent.name]  # by default, the store's folder name
    model, _ = load_model(folder)
    assert isinstance(model, ResUNet) and not model.training
    assert model.config.width == 4
    # the training nuclei's sizes, the target of predict.scale auto: this store holds no
    # diameter_counts (a hand-made one), so they come from the training crops
    assert set(config["nuclei"]) == {"median", "p10", "p90", "n"} and config["nuclei"]["n"] > 0
    assert config["nuclei"]["p10"] <= config["nuclei"]["median"] <= config["nuclei"]["p90"]


def test_training_learns_the_discs(trained):
    history = pd.read_csv(trained[0] / "model" / "history.csv")
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]


def test_same_seed_same_weights(trained, tmp_path):
    root, store, index, config = trained
    again = train_model([store], [index], tmp_path / "model", TrainSettings(**SETTINGS), threads=1)
    first = torch.load(root / "model" / "weights.pt")
    second = torch.load(tmp_path / "model" / "weights.pt")
    assert all(torch.equal(first[k], second[k]) for k in first)
    drop = lambda h: h.drop(columns="seconds")  # noqa: E731
    pd.testing.assert_frame_equal(drop(pd.read_csv(root / "model" / "history.csv")), drop(pd.read_csv(tmp_path / "model" / "history.csv")))
    assert again["best_epoch"] == config["best_epoch"]


def test_finished_checkpoint_resumes_without_retraining(trained, tmp_path, caplog):
    """A rerun after all epochs are checkpointed writes the same model and runs no epoch."""
    root, store, index, _ = trained
    ckpt = tmp_path / "ckpt.pt"
    shutil.copy2(root / "ckpt.pt", ckpt)  # its own copy: the module's checkpoint stays as it is
    before = ckpt.read_bytes()
    with caplog.at_level(logging.INFO, logger="nucseg.training"):
        train_model([store], [index], tmp_path / "model", TrainSettings(**SETTINGS), checkpoint=ckpt, threads=1)
    assert "resuming from" in caplog.text and "after epoch 3" in caplog.text
    assert not [r for r in caplog.records if r.getMessage().startswith("epoch ")]  # no epoch ran ...
    assert ckpt.read_bytes() == before  # ... and none was checkpointed
    pd.testing.assert_frame_equal(pd.read_csv(root / "model" / "history.csv"), pd.read_csv(tmp_path / "model" / "history.csv"))
    first, second = torch.load(root / "model" / "weights.pt"), torch.load(tmp_path / "model" / "weights.pt")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_early_stop_after_stop_patience_epochs_without_improvement(tmp_path, caplog):
    """With a learning rate too small to learn, the validation IoU stops improving: training ends
    after stop_patience epochs without a better one, long before its epoch budget."""
    store, index = synthetic_store(tmp_path)
    settings = TrainSettings(**dict(SETTINGS, epochs=30, learning_rate=1e-12, lr_patience=1, stop_patience=2, augment=False))
    with caplog.at_level(logging.INFO, logger="nucseg.training"):
        config = train_model([store], [index], tmp_path / "model", settings, threads=1)
    history = pd.read_csv(tmp_path / "model" / "history.csv")
    assert len(history) < 30 and config["epochs_run"] == len(history)
    assert "early stop" in caplog.text
    best_before = history["val_iou"].iloc[:-2].max()
    assert (history["val_iou"].iloc[-2:] <= best_before).all()  # the last two epochs brought nothing better


def test_init_starts_from_a_model_folder_and_refuses_another_network(trained, tmp_path, caplog):
    """train.init: fine-tuning starts from the folder's weights (with a learning rate too small to
    move them, the result is those weights); a folder of another network is refused by name."""
    root, store, index, _ = trained
    settings = TrainSettings(**dict(SETTINGS, epochs=1, learning_rate=1e-12, augment=False, init=str(root / "model")))
    with caplog.at_level(logging.INFO, logger="nucseg.training"):
        config = train_model([store], [index], tmp_path / "tuned", settings, checkpoint=tmp_path / "ckpt.pt", threads=1)
    assert f"weights initialised from {root / 'model'}" in caplog.text
    assert config["train"]["init"] == str(root / "model")
    start, tuned = torch.load(root / "model" / "weights.pt"), torch.load(tmp_path / "tuned" / "weights.pt")
    conv = [k for k in start if k.endswith("weight") and start[k].ndim == 4]
    assert all(torch.allclose(start[k], tuned[k], atol=1e-6) for k in conv)
    # without init the same run keeps its random start, not the folder's weights
    train_model([store], [index], tmp_path / "scratch", TrainSettings(**dict(SETTINGS, epochs=1, learning_rate=1e-12, augment=False)), threads=1)
    scratch = torch.load(tmp_path / "scratch" / "weights.pt")
    assert not all(torch.allclose(start[k], scratch[k], atol=1e-6) for k in conv)
    # other weights at the same path: the checkpoint is not resumed
    shutil.copytree(root / "model", tmp_path / "other")
    state = torch.load(tmp_path / "other" / "weights.pt")
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "other" / "weights.pt")
    from nucseg.training import checkpoint_identity

    a = checkpoint_identity(dataclasses.replace(settings, init=str(root / "model")), [store], [index])
    b = checkpoint_identity(dataclasses.replace(settings, init=str(tmp_path / "other")), [store], [index])
    assert a["init"] != b["init"]
    with pytest.raises(ValueError, match=r"train.init: .*width 4 there, 8 here"):
        train_model([store], [index], tmp_path / "wide", TrainSettings(**dict(SETTINGS, width=8, init=str(root / "model"))), threads=1)
    # a head added after the init model's own: the shared layers and the body head's row are the
    # folder's, the new head's row starts from random weights; dropping a head is refused
    added = TrainSettings(**dict(SETTINGS, epochs=1, learning_rate=1e-12, augment=False, heads=("body", "border"), init=str(root / "model")))
    with caplog.at_level(logging.INFO, logger="nucseg.training"):
        train_model([store], [index], tmp_path / "added", added, threads=1)
    assert "heads ['border'] are new" in caplog.text
    grown = torch.load(tmp_path / "added" / "weights.pt")
    assert all(torch.allclose(start[k], grown[k], atol=1e-6) for k in conv if not k.startswith("head."))
    assert grown["head.weight"].shape[0] == 2 and torch.allclose(grown["head.weight"][:1], start["head.weight"], atol=1e-6)
    with pytest.raises(ValueError, match=r"train.init: .*heads \['body', 'border'\] there, \['body'\] here"):
        train_model([store], [index], tmp_path / "heads", TrainSettings(**dict(SETTINGS, init=str(tmp_path / "added"))), threads=1)
    with pytest.raises(ValueError, match="not a readable nucseg model folder"):
        train_model([store], [index], tmp_path / "none", TrainSettings(**dict(SETTINGS, init=str(tmp_path / "missing"))), threads=1)
    assert not (tmp_path / "wide").exists() and not (tmp_path / "heads").exists()


def test_init_with_unreadable_weights_is_named_and_leaves_no_model(trained, tmp_path):
    """A train.init folder whose weights.pt is truncated: the error names the file, and no model
    folder or checkpoint is left behind."""
    root, store, index, _ = trained
    shutil.copytree(root / "model", tmp_path / "broken")
    weights = tmp_path / "broken" / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    settings = TrainSettings(**dict(SETTINGS, init=str(tmp_path / "broken")))
    with pytest.raises(ValueError, match=r"train.init: .*broken/weights.pt: not loadable into the network"):
        train_model([store], [index], tmp_path / "model", settings, checkpoint=tmp_path / "ckpt.pt", threads=1)
    assert not (tmp_path / "model").exists() and not (tmp_path / "ckpt.pt").exists()


def test_init_with_a_broken_config_json_is_named_before_building(trained, tmp_path):
    """A train.init folder whose config.json has no normalize section and a width as text: the
    file and keys are named (not a TypeError), and no model folder or checkpoint is left."""
    root, store, index, _ = trained
    shutil.copytree(root / "model", tmp_path / "broken")
    config = json.loads((tmp_path / "broken" / "config.json").read_text())
    del config["normalize"]
    config["model"]["width"] = "sixteen"
    (tmp_path / "broken" / "config.json").write_text(json.dumps(config))
    settings = TrainSettings(**dict(SETTINGS, init=str(tmp_path / "broken")))
    problems = "the top level: 'normalize' is a required property; model.width: 'sixteen' is not of type 'integer'"
    message = f"train.init: {tmp_path / 'broken' / 'config.json'}: {problems}"
    with pytest.raises(ValueError, match=re.escape(message)):
        train_model([store], [index], tmp_path / "model", settings, checkpoint=tmp_path / "ckpt.pt", threads=1)
    assert not (tmp_path / "model").exists() and not (tmp_path / "ckpt.pt").exists()


def test_width_and_blocks_override_the_preset():
    """train.width and train.blocks (the depth study of BENCHMARKS.md) change the network built;
    null keeps the preset's."""
    assert TrainSettings().model_config().blocks == 2 and TrainSettings().model_config().width == 16
    config = TrainSettings(width=8, blocks=3).model_config()
    assert (config.width, config.blocks) == (8, 3)
    deep, shallow = ResUNet(TrainSettings(width=4, blocks=3).model_config()), ResUNet(TrainSettings(width=4, blocks=1).model_config())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(deep) > count(shallow)
    with torch.no_grad():
        assert deep.eval()(torch.zeros(1, 3, 32, 32)).shape == shallow.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32, 32)


def test_touching_borders_by_hand():
    labels = np.zeros((5, 8), np.uint8)
    labels[1:4, 0:3] = 1
    labels[1:4, 4:7] = 2  # one background column (3) between the two nuclei
    # radius 1 (3x3 window): only the gap column 3 sees both nuclei (rows 0 and 4 reach rows 1 and 3)
    expected = np.zeros((5, 8), bool)
    expected[:, 3] = True
    np.testing.assert_array_equal(touching_borders(labels, radius=1), expected)
    # radius 2 (5x5 window): columns 2 and 4 (the facing edges) see both nuclei too
    expected[:, 2:5] = True
    np.testing.assert_array_equal(touching_borders(labels, radius=2), expected)
    assert not touching_borders(np.pad(np.ones((3, 3), np.uint8), 2)).any()


def test_shrunk_nuclei_by_hand():
    """The seed target: each nucleus's core, the pixels farther from its own edge than half its
    deepest; two touching nuclei keep two cores apart, a one-pixel nucleus none."""
    labels = np.zeros((9, 16), np.uint8)
    labels[1:8, 1:8] = 1
    labels[1:8, 8:15] = 2  # touching nucleus 1 along a whole column
    labels[0, 15] = 3
    seeds = shrunk_nuclei(labels)
    # a 7 x 7 square: its own edge pixels are 0 away, its centre 3; kept: distance > 1.5, the 3 x 3 centre
    expected = np.zeros((9, 16), bool)
    expected[3:6, 3:6] = expected[3:6, 10:13] = True
    np.testing.assert_array_equal(seeds, expected)
    np.testing.assert_array_equal(make_targets(labels, ("body", "seed"))[1], expected.astype(np.float32))
    assert not shrunk_nuclei(np.zeros((4, 4), np.uint16)).any()
    with pytest.raises(ValueError, match="2-D label image"):
        shrunk_nuclei(np.zeros((2, 4, 4), np.uint16))


def test_shrunk_nuclei_keep_one_core_per_real_nucleus(shared_data):
    """On a real label image: every core lies in one nucleus, and every nucleus wider than a few
    pixels keeps exactly one core (a 4-connected piece)."""
    import tifffile
    from scipy import ndimage as ndi

    truth = tifffile.imread(shared_data / "fixtures/dsb2018_fluo_512_uint16_labels.tif")
    cores, n = ndi.label(shrunk_nuclei(truth))
    owner = ndi.maximum(truth, cores, np.arange(1, n + 1)).astype(int)
    assert (ndi.minimum(truth, cores, np.arange(1, n + 1)) == owner).all()  # no core spans two nuclei
    areas = np.bincount(truth.ravel())
    wide = np.flatnonzero(areas >= 30)[1:]
    per_nucleus = np.bincount(owner, minlength=areas.size)
    assert (per_nucleus[wide] >= 1).all() and (per_nucleus[wide] == 1).mean() > 0.95


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="unknown model 'tiramisu'"):
        TrainSettings(model="tiramisu")  # unet is a semantic preset (nucseg.nets)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        TrainSettings(epochs=0)


def test_unreadable_model_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path)):
        load_model(tmp_path)


def without_seconds(folder):
    return pd.read_csv(folder / "history.csv").drop(columns="seconds")


def assert_same_weights(a, b):
    first, second = torch.load(a / "weights.pt"), torch.load(b / "weights.pt")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


CHILD = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from nucseg.training import TrainSettings, train_model
store, index, out, ckpt, settings = json.loads(sys.argv[1])
train_model([store], [index], out, TrainSettings(**settings), checkpoint=ckpt, threads=1)
"""


@pytest.mark.slow
def test_killed_run_resumes_and_ends_where_an_uninterrupted_run_does(tmp_path):
    """Regression guard for resuming: after ``kill -9`` a rerun continues from the last checkpoint
    (weights, optimiser, scheduler, sampler and RNG states, history, best weights) and writes the
    model an uninterrupted run writes, bit for bit (CPU)."""
    store, index = synthetic_store(tmp_path, n_images=12)
    settings = dict(SETTINGS, epochs=6, lr_patience=2)
    ckpt, resumed = tmp_path / "ckpt.pt", tmp_path / "resumed"
    command = [sys.executable, "-c", CHILD, json.dumps([store, index, str(resumed), str(ckpt), settings])]

    with open(tmp_path / "first.log", "w") as log:
        child = subprocess.Popen(command, stderr=log)
        deadline = time.monotonic() + 300
        while child.poll() is None and time.monotonic() < deadline:
            if ckpt.is_file() and torch.load(ckpt, weights_only=False)["epoch"] >= 2:
                os.kill(child.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    killed_after = torch.load(ckpt, weights_only=False)["epoch"]
    assert 2 <= killed_after < 6 and not resumed.exists()

    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {ckpt} after epoch {killed_after}" in again.stderr
    assert f"epoch {killed_after}/6" not in again.stderr and f"epoch {killed_after + 1}/6" in again.stderr

    train_model([store], [index], tmp_path / "straight", TrainSettings(**settings), threads=1)
    assert_same_weights(resumed, tmp_path / "straight")
    pd.testing.assert_frame_equal(without_seconds(resumed), without_seconds(tmp_path / "straight"))


def test_unreadable_or_foreign_checkpoint_starts_afresh(trained, tmp_path, caplog):
    root, store, index, _ = trained
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING, logger="nucseg.training"):
        train_model([store], [index], tmp_path / "a", TrainSettings(**dict(SETTINGS, epochs=1)), checkpoint=broken, threads=1)
        # (a copy of) the module's checkpoint holds 3 epochs of other settings: not resumed
        shutil.copy2(root / "ckpt.pt", tmp_path / "ckpt.pt")
        train_model([store], [index], tmp_path / "b", TrainSettings(**dict(SETTINGS, epochs=1, seed=5)), checkpoint=tmp_path / "ckpt.pt", threads=1)
    assert "not a readable checkpoint" in caplog.text and "other settings, data or code; starting afresh" in caplog.text
    assert len(pd.read_csv(tmp_path / "b" / "history.csv")) == 1


def test_checkpoint_of_a_rebuilt_store_is_not_resumed(tmp_path, caplog):
    """A preprocess rerun rebuilds the store at the same path: training must start afresh on the
    new data, not resume the old run's finished checkpoint and return its weights."""
    settings = TrainSettings(**dict(SETTINGS, epochs=2))
    store, index = synthetic_store(tmp_path, seed=0)
    ckpt = tmp_path / "ckpt.pt"
    train_model([store], [index], tmp_path / "old", settings, checkpoint=ckpt, threads=1)
    store, index = synthetic_store(tmp_path, seed=1)  # same paths, other images
    with caplog.at_level(logging.INFO, logger="nucseg.training"):
        train_model([store], [index], tmp_path / "new", settings, checkpoint=ckpt, threads=1)
    assert "other settings, data or code; starting afresh" in caplog.text and "resuming" not in caplog.text
    train_model([store], [index], tmp_path / "fresh", settings, threads=1)
    assert_same_weights(tmp_path / "new", tmp_path / "fresh")
    with pytest.raises(AssertionError):
        assert_same_weights(tmp_path / "new", tmp_path / "old")


def test_learning_rate_cut_after_lr_patience_epochs_without_improvement():
    """Regression: PyTorch's patience=5 cuts after the sixth bad epoch, and ignores gains below
    0.01 %; the paper (Keras) cuts after the fifth, and any gain counts."""
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = make_scheduler(optimizer, lr_patience=3)
    lrs = []
    for val_iou in [0.5, 0.6, 0.6, 0.6, 0.6, 0.600001, 0.6, 0.6, 0.59]:
        scheduler.step(val_iou)
        lrs.append(optimizer.param_groups[0]["lr"])
    # bad epochs: 3rd, 4th, 5th -> cut after the 5th; 0.600001 is better; then 3 bad -> second cut
    assert lrs == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01])


def test_augmented_targets_come_from_the_augmented_labels(tmp_path):
    """Borders are computed after the spatial transforms, from the labels the network sees."""
    store, index = synthetic_store(tmp_path)
    items = split_items([store], [index])["train"]
    settings = AugmentSettings(affine=1.0, distort=1.0, intensity=1.0)
    data = CropDataset([store], items, ("body", "border"), settings, seed=7)
    data.epoch = 3
    group = zarr.open_group(store, mode="r")
    augmenter = Augmenter(settings)
    for i in range(len(items)):
        x, y = data[i]
        rng = np.random.default_rng((7, 3, i))
        image, labels = augmenter.spatial(group["images"][i], group["labels"][i], rng)
        np.testing.assert_array_equal(y.numpy(), make_targets(labels, ("body", "border")))
        # normalised with the percentiles of the source image, before the spatial transforms
        np.testing.assert_array_equal(x.numpy(), augmenter.intensity(rescale_intensity(image, *intensity_range(group["images"][i])), rng).transpose(2, 0, 1))
        # the bright discs are where the body target is
        grey = x.numpy().mean(axis=0)
        bright = grey > threshold_otsu(grey)
        assert (bright & (y[0].numpy() > 0)).sum() / (bright | (y[0].numpy() > 0)).sum() > 0.8


def test_examples_do_not_depend_on_worker_processes(tmp_path):
    store, index = synthetic_store(tmp_path)
    items = split_items([store], [index])["train"]
    data = CropDataset([store], items, ("body", "border"), AugmentSettings(), seed=1)
    data.epoch = 2
    batches = {n: list(DataLoader(data, batch_size=2, num_workers=n)) for n in (0, 2)}
    for (x0, y0), (x2, y2) in zip(batches[0], batches[2], strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bar_on_a_terminal_log_line_per_epoch_always(trained, tmp_path, monkeypatch, caplog, terminal):
    _, store, index, _ = trained
    stderr = FakeTerminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    with caplog.at_level(logging.INFO, logger="nucseg.training"):
        train_model([store], [index], tmp_path / "model", TrainSettings(**dict(SETTINGS, epochs=2)), threads=1)
    assert [r.getMessage().split()[:2] for r in caplog.records if r.getMessage().startswith("epoch ")] == [["epoch", "1/2"], ["epoch", "2/2"]]
    assert ("epoch 2/2 train" in stderr.getvalue()) is terminal


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_mixed_precision_workers_and_resume(tmp_path):
    store, index = synthetic_store(tmp_path, n_images=12)
    settings = TrainSettings(**dict(SETTINGS, device="auto", epochs=2, num_workers=2))
    config = train_model([store], [index], tmp_path / "model", settings, checkpoint=tmp_path / "ckpt.pt")
    assert config["device"] == "cuda"
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert ckpt["scaler"] is not None and ckpt["scaler"]["scale"] > 0, "mixed precision: a gradient scaler was used"
    history = pd.read_csv(tmp_path / "model" / "history.csv")
    assert np.isfinite(history[["train_loss", "val_loss", "train_iou", "val_iou"]].to_numpy()).all()
    model, _ = load_model(tmp_path / "model", "cuda")
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64, device="cuda")).shape == (1, 1, 64, 64)
    # a finished checkpoint resumes on the GPU too
    train_model([store], [index], tmp_path / "again", settings, checkpoint=tmp_path / "ckpt.pt")
    pd.testing.assert_frame_equal(without_seconds(tmp_path / "model"), without_seconds(tmp_path / "again"))


def test_a_store_without_intensity_ranges_is_named(tmp_path):
    store, index = synthetic_store(tmp_path)
    zarr.open_group(store, mode="r+").__delitem__("intensity_range")
    data = CropDataset([store], split_items([store], [index])["train"], ("body",), None, seed=0)
    with pytest.raises(ValueError, match=f"{store}: no intensity_range array.*rerun the preprocess stage"):
        data[0]


def test_checkpoint_to_model_writes_the_folder_training_would_have(trained, tmp_path):
    """scripts/checkpoint_to_model.py: a stopped run's checkpoint becomes a loadable model folder
    with the best epoch's weights, the history and a note of where it stopped."""
    root, *_ = trained
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "checkpoint_to_model.py")
    result = subprocess.run([sys.executable, script, str(root / "ckpt.pt"), str(tmp_path / "model")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["stopped"].startswith("after epoch 3 of the run's 3")
    assert config["best_epoch"] == json.loads((root / "model" / "config.json").read_text())["best_epoch"]
    first, second = torch.load(root / "model" / "weights.pt"), torch.load(tmp_path / "model" / "weights.pt")
    assert all(torch.equal(first[k], second[k]) for k in first)
    model, loaded = load_model(tmp_path / "model")
    assert loaded["model"] == config["model"] and not model.training


def test_training_nuclei_from_the_whole_images(tmp_path):
    """With the store's diameter_counts (the preprocess stage's, whole images), the recorded sizes
    are those of the train split's images, nuclei larger than a crop included."""
    from nucseg.sizes import BINS, summary_of_histogram
    from nucseg.training import split_examples, training_nuclei

    store, index = synthetic_store(tmp_path)
    counts = np.zeros((6, len(BINS) - 1), np.int32)
    counts[:4, np.searchsorted(BINS, 100.0)] = 5  # train images: nuclei of 100 px, wider than the 64-px crops
    counts[4:, np.searchsorted(BINS, 10.0)] = 50  # validation images: not counted
    zarr.open_group(store, mode="r+").create_array("diameter_counts", data=counts)
    rows = split_examples([index])["train"]
    train_set = CropDataset([store], [(s, k) for s, k, _, _ in rows], ("body",), None, 0)
    nuclei = training_nuclei(train_set, [index])
    assert nuclei == summary_of_histogram(counts[:4].sum(axis=0)) and nuclei["n"] == 20 and nuclei["median"] > 99
    assert training_nuclei(train_set)["median"] < 20  # from the crops: the discs of 6 px radius
