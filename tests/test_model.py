import pytest
import torch

from nucseg.model import PRESETS, ModelConfig, ResUNet


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
