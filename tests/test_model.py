import json
import time
from pathlib import Path

import pytest
import torch

from nucseg import PRETRAINED_MODEL
from nucseg.model import PRESETS, ModelConfig, ResUNet
from nucseg.modelfolder import load_model, read_model_config


@pytest.mark.parametrize("heads", [("body",), ("body", "border")])
@pytest.mark.parametrize("size", [(32, 32), (64, 96)])
def test_output_is_full_resolution_one_channel_per_head(heads, size):
    model = ResUNet(ModelConfig(width=4, heads=heads)).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, *size))
    assert out.shape == (2, len(heads), *size)


def test_size_not_multiple_of_32_names_the_padded_size():
    model = ResUNet(ModelConfig(width=4))
    with pytest.raises(ValueError, match=r"100x64 pixels.*pad it to 128x64"):
        model(torch.zeros(1, 3, 100, 64))


def test_wrong_channel_count_is_refused():
    with pytest.raises(ValueError, match=r"expected input \(B, 3, H, W\)"):
        ResUNet(ModelConfig(width=4))(torch.zeros(1, 1, 32, 32))


@pytest.mark.parametrize("heads", [(), ("border",), ("body", "nucleus"), ("body", "body")])
def test_bad_heads_are_refused(heads):
    with pytest.raises(ValueError, match="heads"):
        ModelConfig(heads=heads)


def test_paper_preset_matches_table_1_widths():
    """Rautaray et al. Table 1: stem 64 channels, stages 64/128/256/512, two blocks each."""
    model = ResUNet(PRESETS["resunet-paper"])
    assert model.stem[0].out_channels == 64
    assert [stage[-1].body[-1][0].out_channels for stage in model.encoder] == [64, 128, 256, 512]
    assert all(len(stage) == 2 for stage in model.encoder)
    # stages 3-5 downsample with a stride-2 convolution, stage 2 does not
    assert [stage[0].body[0][0].stride for stage in model.encoder] == [(1, 1), (2, 2), (2, 2), (2, 2)]


def test_config_round_trips_through_dict():
    config = ModelConfig(width=8, heads=["body", "border"])
    assert ModelConfig(**config.to_dict()) == config


def test_paper_preset_decoder_matches_table_2_plus_one_upsampling():
    """Rautaray et al. Table 2: transposed convolutions to 256, 128, 64, 64 channels, each
    concatenated with the encoder's map of the same size and followed by a residual block,
    ending at half the input's resolution; we add one more step to the full resolution."""
    model = ResUNet(PRESETS["resunet-paper"]).eval()
    ups = [model.up4, model.up3, model.up2, model.up1]
    assert [up.up.out_channels for up in ups] == [256, 128, 64, 64]
    # concatenation: the residual block takes the up-sampled map plus the skip
    assert [up.block.body[0][0].in_channels for up in ups] == [256 + 256, 128 + 128, 64 + 64, 64 + 64]
    assert model.up0.up.out_channels == 64 and model.up0.block.body[0][0].in_channels == 64
    shapes = {}

    def record(name):
        def hook(module, inputs, output):
            shapes[name] = tuple(output.shape)

        return hook

    for name in ("stem", "up1", "up0"):
        getattr(model, name).register_forward_hook(record(name))
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 64))
    assert shapes["stem"] == shapes["up1"] == (1, 64, 32, 32), "the paper's output resolution: half the input"
    assert shapes["up0"] == (1, 64, 64, 64) and out.shape == (1, 1, 64, 64)


def test_batch_norm_after_every_convolution_but_the_output():
    model = ResUNet(PRESETS["resunet-small"])
    convs = [m for m in model.modules() if type(m) is torch.nn.Conv2d]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == len(convs) - 1 and convs[-1] is model.head


# A model folder's config.json from someone else: checked against its schema before anything is built.

GOOD = {"model": {"width": 4, "blocks": 1, "heads": ["body"], "in_channels": 3}, "normalize": {"low": 1.0, "high": 99.8, "invert_dark": False}}


def model_folder(root: Path, config, weights: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if weights:
        torch.save(ResUNet(ModelConfig(**GOOD["model"])).state_dict(), root / "weights.pt")
    return root


def changed(**top):
    config = json.loads(json.dumps(GOOD))
    for key, value in top.items():
        if value is DROP:
            config.pop(key)
        elif isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


DROP = object()


@pytest.mark.parametrize(
    "config, message",
    [
        (changed(model={"depth": 3}), "model.depth: unknown key (model takes: width, blocks, heads, in_channels)"),
        (changed(model={"width": "sixteen"}), "model.width: 'sixteen' is not of type 'integer'"),
        (changed(model=[16]), "model: [16] is not of type 'object'"),
        (changed(model=None), "model: None is not of type 'object'"),
        ([GOOD], "the top level: [{"),
        (None, "the top level: None is not of type 'object'"),
        (changed(task="semantic"), "model: 'architecture' is a required property"),
        (changed(normalize=DROP), "the top level: 'normalize' is a required property"),
        (changed(normalize={"high": float("nan")}), "normalize.high: nan is not allowed: every number in the config must be finite"),
        (changed(normalize={"low": 99.8, "high": 1.0}), "normalize: low 99.8 must be below high 1.0"),
        (changed(model={"heads": ["border", "body"]}), "model: model heads must start with 'body'"),
    ],
)
def test_a_broken_config_json_is_named_by_file_and_key(tmp_path, config, message):
    """Regression: an extra key, a wrong type, a list or null instead of an object, task: semantic
    on instance weights gave raw TypeError/AttributeError; a missing normalize was defaulted."""
    folder = model_folder(tmp_path / "m", config)
    with pytest.raises(ValueError) as caught:
        load_model(folder)
    text = str(caught.value)
    assert text.startswith(f"{folder / 'config.json'}: ") and message in text and "\n" not in text


def test_a_network_larger_than_its_weights_is_refused_before_allocating(tmp_path):
    """Regression: width 100000 asked for 360 GB before it failed."""
    folder = model_folder(tmp_path / "m", changed(model={"width": 100000}))
    started = time.perf_counter()
    too_large = r"config\.json: model: .* is a network of [\d,]+ values \(\d+\.\d+ GB at float32\); .*weights\.pt holds [\d,]+ bytes: refused"
    with pytest.raises(ValueError, match=too_large):
        load_model(folder)
    assert time.perf_counter() - started < 5
    folder = model_folder(tmp_path / "wide", changed(model={"width": 40000}), weights=False)
    with pytest.raises(ValueError, match=r"refused before allocating it \(at most 1,000,000,000"):
        load_model(folder)


def test_the_shipped_model_and_a_good_folder_pass():
    assert read_model_config(PRETRAINED_MODEL)["normalize"] == {"low": 1.0, "high": 99.8, "invert_dark": True}
