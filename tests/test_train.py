import json

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from skimage.draw import disk

from nucseg.model import ResUNet
from nucseg.preprocess import make_targets, touching_borders
from nucseg.train import TrainSettings, augment, load_model, train_model

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
    index = pd.DataFrame(dict(image_id=[f"img{i}" for i in range(n_images)], split=["train"] * (n_images - 2) + ["val"] * 2, first_crop=range(n_images), n_crops=1))
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
    root, _, _, config = trained
    folder = root / "model"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "curves.png", "history.csv", "weights.pt"]
    assert json.loads((folder / "config.json").read_text()) == json.loads(json.dumps(config))
    history = pd.read_csv(folder / "history.csv")
    assert list(history.columns) == ["epoch", "lr", "train_loss", "train_iou", "val_loss", "val_iou", "seconds"]
    assert history["epoch"].tolist() == [1, 2, 3]
    assert config["best_val_iou"] == pytest.approx(history["val_iou"].max())
    model, _ = load_model(folder)
    assert isinstance(model, ResUNet) and not model.training
    assert model.config.width == 4


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


def test_finished_checkpoint_resumes_without_retraining(trained, tmp_path):
    """A rerun after all epochs are checkpointed writes the same model without new epochs."""
    root, store, index, _ = trained
    train_model([store], [index], tmp_path / "model", TrainSettings(**SETTINGS), checkpoint=root / "ckpt.pt", threads=1)
    pd.testing.assert_frame_equal(pd.read_csv(root / "model" / "history.csv"), pd.read_csv(tmp_path / "model" / "history.csv"))


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


def test_targets_and_augmentation_stay_aligned():
    rng = np.random.default_rng(0)
    labels = np.zeros((16, 16), np.uint32)
    labels[2:6, 3:9] = 1
    image = np.repeat((labels > 0)[..., None], 3, axis=2).astype(np.float32)
    target = make_targets(labels, ("body", "border"))
    assert target.shape == (2, 16, 16) and target.dtype == np.float32
    for _ in range(20):
        img, tgt = augment(image, target, rng)
        np.testing.assert_array_equal(img[..., 0], tgt[0])


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="unknown model 'unet'"):
        TrainSettings(model="unet")
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        TrainSettings(epochs=0)


def test_unreadable_model_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path)):
        load_model(tmp_path)
