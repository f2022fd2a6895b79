"""The semantic networks (nucseg.nets): shapes, SegNet's index unpooling, the probability
wrapper the shared predictor uses, ONNX export (the CPU engine) and loading a model folder."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nucseg.modelfolder import load_model
from nucseg.nets.semantic import SEMANTIC_PRESETS, NetConfig, SegNet, SoftmaxAsLogits, build_net, max_unpool


@pytest.mark.parametrize("architecture", SEMANTIC_PRESETS)
def test_every_preset_maps_an_image_to_k_logit_maps(architecture):
    torch.manual_seed(0)
    net = build_net(NetConfig(architecture, 4, ("a", "b", "c"))).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 3, 64, 96) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"pad it to 64x64"):
        net(torch.randn(1, 3, 50, 64))


def test_max_unpool_puts_values_back_where_the_pool_found_them():
    x = torch.randn(2, 3, 8, 6)
    pooled, indices = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(max_unpool(pooled, indices, x.shape[-2:]), F.max_unpool2d(pooled, indices, 2))


def test_segnet_decoder_uses_the_encoder_indices():
    """SegNet's decoder has no learned up-sampling: its pooling layer returns indices and there
    is no transposed convolution anywhere."""
    net = build_net(NetConfig("segnet", 4, ("a", "b")))
    assert isinstance(net, SegNet) and net.pool.return_indices
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in net.modules())


def test_softmax_as_logits_gives_class_probabilities_through_a_sigmoid():
    torch.manual_seed(1)
    net = build_net(NetConfig("unet", 4, ("a", "b", "c"))).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        p = torch.sigmoid(SoftmaxAsLogits(net)(x))
        expected = torch.softmax(net(x), dim=1)
    assert torch.allclose(p, expected, atol=2e-6)
    assert SoftmaxAsLogits(net).config.heads == ("a", "b", "c")


@pytest.mark.parametrize("architecture", ["segnet", "deeplabv3plus"])
def test_wrapped_nets_export_to_onnx(architecture):
    """Regression guard: nn.MaxUnpool2d does not trace for ONNX (the predictor's CPU engine)."""
    ort = pytest.importorskip("onnxruntime")
    net = SoftmaxAsLogits(build_net(NetConfig(architecture, 4, ("a", "b")))).eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, 64, 64),),
        buffer,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}},
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        expected = net(x).numpy()
    assert np.abs(session.run(None, {"image": x.numpy()})[0] - expected).max() < 1e-3


def test_load_model_rebuilds_a_semantic_folder(tmp_path):
    config = NetConfig("deeplabv3plus", 4, ("background", "nucleus"))
    net = build_net(config).eval()
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    normalize = dict(low=1.0, high=99.8, invert_dark=False)
    (tmp_path / "config.json").write_text(
        json.dumps(dict(task="semantic", classes={"background": 0, "nucleus": 1}, architecture="deeplabv3plus", model=config.to_dict(), normalize=normalize))
    )
    model, loaded = load_model(tmp_path)
    assert loaded["task"] == "semantic" and model.config.heads == ("background", "nucleus")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(torch.sigmoid(model(x)), torch.softmax(net(x), 1), atol=2e-6)


def test_net_config_checks():
    with pytest.raises(ValueError, match="unknown semantic network"):
        NetConfig("tiramisu", 4, ("a", "b"))
    with pytest.raises(ValueError, match="two or more distinct class names"):
        NetConfig("unet", 4, ("a",))
