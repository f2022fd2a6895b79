"""Training-data choices for real data: dark-nuclei inversion, balanced sampling, exclude lists."""

import numpy as np
import pandas as pd
import pytest
import torch

from nucseg.imageio import has_dark_nuclei, invert, normalize_image
from nucseg.preprocess import PreprocessSettings, preprocess_training, read_id_list
from nucseg.sampling import MODALITY_POWER, sample_weights
from nucseg.training import CropDataset, TrainSettings, split_examples


def test_invert_maps_the_normalised_range_onto_itself():
    x = np.array([-0.5, 0.0, 0.25, 1.0, 1.5], np.float32)
    np.testing.assert_allclose(invert(x), [1.5, 1.0, 0.75, 0.0, -0.5])
    assert invert(x).dtype == np.float32


def test_dark_nuclei_images_are_inverted_to_look_like_fluorescence(two_square_sample):
    fluo, _ = two_square_sample  # bright squares on a dark background
    bright_field = (255 - fluo).astype(np.uint8)  # dark squares on a light background
    assert not has_dark_nuclei(np.dstack([fluo] * 3)) and has_dark_nuclei(np.dstack([bright_field] * 3))
    a = normalize_image(np.dstack([fluo] * 3), invert_dark=True)
    b = normalize_image(np.dstack([bright_field] * 3), invert_dark=True)
    # after inversion both show bright nuclei on a dark background, the same normalised image
    np.testing.assert_allclose(a, b, atol=1e-6)
    # without it the bright-field image stays dark-on-light (the paper's normalisation)
    assert normalize_image(np.dstack([bright_field] * 3))[10, 10, 0] < 0.5 < a[10, 10, 0]


def test_balanced_weights_give_modalities_sqrt_shares_and_empty_crops_less():
    modalities = ["fluo"] * 16 + ["bf"] * 4
    has = np.ones(20, bool)
    has[0] = False  # one empty fluorescence crop
    w = sample_weights(modalities, has, empty_weight=0.25)
    assert w.sum() == pytest.approx(1.0)
    assert w[:16].sum() == pytest.approx(4 / 6) and w[16:].sum() == pytest.approx(2 / 6)  # sqrt(16) : sqrt(4)
    assert w[0] == pytest.approx(0.25 * w[1])
    assert np.all(w[16:] > w[1])  # a rare modality's crop is drawn more often than a common one's
    # a modality whose crops are all empty keeps its share when empty crops weigh 0 ... nothing to draw
    w0 = sample_weights(["a", "a", "b"], np.array([True, True, False]), empty_weight=0.0)
    assert w0[2] == 0 and w0.sum() == pytest.approx(1.0)


def test_equal_sampling_gives_every_modality_the_same_share():
    modalities = ["fluo"] * 16 + ["bf"] * 4 + ["hist"] * 2
    has = np.ones(22, bool)
    has[0] = False
    w = sample_weights(modalities, has, empty_weight=0.25, power=MODALITY_POWER["equal"])
    assert [w[:16].sum(), w[16:20].sum(), w[20:].sum()] == pytest.approx([1 / 3] * 3)
    assert w[0] == pytest.approx(0.25 * w[1])
    assert MODALITY_POWER["balanced"] == 0.5  # the sqrt shares above


def test_sampling_setting_is_checked():
    with pytest.raises(ValueError, match="sampling"):
        TrainSettings(sampling="stratified")
    with pytest.raises(ValueError, match="empty_weight"):
        TrainSettings(empty_weight=1.5)


@pytest.fixture
def mixed_dataset(tmp_path, make_dataset, two_square_sample):
    image, labels = two_square_sample
    return make_dataset(
        tmp_path / "ds",
        {
            "fluo1": (image, labels),
            "fluo2": (np.roll(image, 3, axis=1), np.roll(labels, 3, axis=1)),
            "bf1": ((255 - image).astype(np.uint8), labels),
            "empty": (np.full((40, 48), 12, np.uint8), np.zeros((40, 48), np.uint32)),
        },
    )


def test_training_crops_of_dark_nuclei_images_are_inverted(tmp_path, mixed_dataset):
    out, index_csv = tmp_path / "train.zarr", tmp_path / "index.csv"
    index = preprocess_training(mixed_dataset, out, index_csv, PreprocessSettings(size=64, val_fraction=0))
    examples = split_examples([str(index_csv)])["train"]
    by_id = dict(zip(index["image_id"], index["first_crop"]))
    flags = [dark for _, _, _, dark in examples]
    data = CropDataset([str(out)], [(s, k) for s, k, _, _ in examples], ("body",), None, seed=0, invert=flags)
    fluo, bf = data[by_id["fluo1"]][0].numpy(), data[by_id["bf1"]][0].numpy()
    np.testing.assert_allclose(fluo, bf, atol=1e-6)  # the same picture after inversion
    assert data.has_nuclei().tolist() == [index.set_index("first_crop").loc[k, "n_nuclei"] > 0 for k in range(len(data))]


def test_balanced_training_runs_and_is_seeded(tmp_path, mixed_dataset):
    out, index_csv = tmp_path / "train.zarr", tmp_path / "index.csv"
    preprocess_training(mixed_dataset, out, index_csv, PreprocessSettings(size=32, val_fraction=0))
    from nucseg.training import train_model

    settings = TrainSettings(width=4, epochs=1, batch_size=2, samples_per_epoch=4, device="cpu", sampling="balanced")
    a = train_model([str(out)], [str(index_csv)], tmp_path / "a", settings, threads=1)
    train_model([str(out)], [str(index_csv)], tmp_path / "b", settings, threads=1)
    assert a["normalize"]["invert_dark"] is True
    wa, wb = torch.load(tmp_path / "a" / "weights.pt"), torch.load(tmp_path / "b" / "weights.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_equal_sampling_draws_each_modality_a_third_of_the_time(tmp_path, mixed_dataset, caplog):
    out, index_csv = tmp_path / "train.zarr", tmp_path / "index.csv"
    preprocess_training(mixed_dataset, out, index_csv, PreprocessSettings(size=32, val_fraction=0))
    from nucseg.training import train_model

    settings = TrainSettings(width=4, epochs=1, batch_size=2, samples_per_epoch=4, device="cpu", sampling="equal")
    with caplog.at_level("INFO", logger="nucseg.tasks.instance"):
        train_model([str(out)], [str(index_csv)], tmp_path / "a", settings, threads=1)
    assert "equal sampling, share of draws per modality: brightfield 0.50, fluorescence 0.50" in caplog.text


def test_exclude_list_leaves_images_out_of_training(tmp_path, mixed_dataset):
    ids = tmp_path / "ids.txt"
    ids.write_text("# images the test set holds\nbf1\n\nempty  # no nuclei\n")
    assert read_id_list(ids) == ["bf1", "empty"]
    index = preprocess_training(mixed_dataset, tmp_path / "t.zarr", tmp_path / "i.csv", PreprocessSettings(size=32, val_fraction=0), exclude=read_id_list(ids))
    assert sorted(index["image_id"]) == ["fluo1", "fluo2"]
    with pytest.raises(ValueError, match="missing.txt"):
        read_id_list(tmp_path / "missing.txt")
    assert pd.read_csv(tmp_path / "i.csv")["image_id"].tolist() == index["image_id"].tolist()


def test_dataset_shares_give_each_named_dataset_its_fraction():
    """train.shares: the named datasets get their fractions, spread as the sampling's own
    weights spread them; the others share the rest by their numbers of examples."""
    from nucseg.sampling import dataset_shares

    weights = np.array([1.0, 1.0, 3.0, 1.0, 1.0, 1.0, 2.0])
    stores = np.array([0, 0, 0, 1, 1, 2, 2])
    out = dataset_shares(weights, stores, ["a", "b", "c"], {"c": 0.5})
    assert out.sum() == pytest.approx(1.0)
    assert out[stores == 2].sum() == pytest.approx(0.5)
    np.testing.assert_allclose(out[5:] / out[5:].sum(), [1 / 3, 2 / 3])  # within c: as the weights say
    # a (3 examples) and b (2) share the other half by their numbers of examples
    assert out[stores == 0].sum() == pytest.approx(0.3) and out[stores == 1].sum() == pytest.approx(0.2)
    np.testing.assert_allclose(out[:3] / out[:3].sum(), [0.2, 0.2, 0.6])
    every = dataset_shares(weights, stores, ["a", "b", "c"], {"a": 0.2, "b": 0.2, "c": 0.6})
    assert every[stores == 0].sum() == pytest.approx(0.2) and every[stores == 2].sum() == pytest.approx(0.6)
    with pytest.raises(ValueError, match=r"name \['x'\], which are not training datasets"):
        dataset_shares(weights, stores, ["a", "b", "c"], {"x": 0.1})
    with pytest.raises(ValueError, match="sum to 0.9, not 1"):
        dataset_shares(weights, stores, ["a", "b", "c"], {"a": 0.3, "b": 0.3, "c": 0.3})


def test_training_with_shares_draws_each_store_its_share(tmp_path):
    """A real training run of two stores with shares logs them and trains; a share out of range
    is refused by the settings."""
    from nucseg.training import train_model

    from .test_train import SETTINGS, synthetic_store

    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    stores, indexes = zip(synthetic_store(first, n_images=6), synthetic_store(second, n_images=3, seed=1))
    settings = TrainSettings(**{**SETTINGS, "epochs": 1}, shares={"b": 0.5})
    config = train_model(list(stores), list(indexes), tmp_path / "model", settings, threads=1, datasets=["a", "b"])
    assert config["train"]["shares"] == {"b": 0.5}
    assert config["datasets"] == ["a", "b"]  # the model folder records what it trained on
    with pytest.raises(ValueError, match="train shares must be fractions"):
        TrainSettings(shares={"b": 1.5})
