import numpy as np
import pytest
import torch

from nucseg.infer import PredictSettings, predict_image
from nucseg.model import ModelConfig, ResUNet


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ResUNet(ModelConfig(width=4, heads=("body", "border"))).eval()


@pytest.mark.parametrize("shape", [(20, 30), (64, 64), (100, 200)])
def test_probabilities_have_the_image_size(model, shape):
    image = np.random.default_rng(0).integers(0, 255, shape + (3,), dtype=np.uint8)
    prob = predict_image(model, image, PredictSettings(tile=64, margin=16))
    assert prob.shape == (2,) + shape and prob.dtype == np.float32
    assert 0 <= prob.min() and prob.max() <= 1


def test_tiled_equals_whole_when_margin_covers_the_receptive_field(model):
    """Regression guard for seams: tiles with enough context reproduce one-piece inference closely."""
    image = np.random.default_rng(1).integers(0, 255, (192, 192, 3), dtype=np.uint8)
    whole = predict_image(model, image, PredictSettings(tile=1024, margin=0))
    tiled = predict_image(model, image, PredictSettings(tile=64, margin=64))
    assert np.abs(whole - tiled).max() < 0.05


def test_tta_of_a_symmetric_image_is_symmetric(model):
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 16:48] = 200
    prob = predict_image(model, image, PredictSettings(tta=True))
    np.testing.assert_allclose(prob, prob[:, ::-1, :], atol=1e-5)
    np.testing.assert_allclose(prob, np.swapaxes(prob, 1, 2), atol=1e-5)


def test_image_must_be_rgb(model):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) image, got shape \(8, 8\)"):
        predict_image(model, np.zeros((8, 8), np.uint8), PredictSettings())
