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
