"""The instance task's network: the residual U-Net (loading a model folder: :mod:`nucseg.model`).

Architecture (Rautaray et al. 2020, Tables 1-2), with the width as a setting:

* stem: 7x7 stride-2 convolution, batch norm, ReLU (1/2 resolution), then 3x3
  stride-2 max-pool (1/4);
* encoder: four stages of ``blocks`` residual blocks (``w, 2w, 4w, 8w``
  channels); stages 3-5 start with a stride-2 convolution (1/8, 1/16, 1/32);
* decoder: per level a transposed convolution (x2), concatenation with the
  encoder's feature map of the same resolution (skip connection) and a
  residual block, back to the stem's 1/2 resolution;
* output: the paper stops at 1/2 resolution; we add one more transposed
  convolution and residual block to predict at full resolution, then a 1x1
  convolution with one channel (logit) per head.

The input's height and width must be multiples of 32 (see
:func:`nucseg.tiling.pad_to_multiple`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from nucseg.tiling import MULTIPLE

# MULTIPLE (32, from nucseg.tiling, which pads to it): every input side, after five stride-2 steps
HEADS = ("body", "border", "seed")


def check_input(x: torch.Tensor, in_channels: int) -> None:
    """Refuse an input that is not ``(B, in_channels, H, W)`` with H and W multiples of :data:`MULTIPLE`."""
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"expected input (B, {in_channels}, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % MULTIPLE or w % MULTIPLE:
        ph, pw = -(-h // MULTIPLE) * MULTIPLE, -(-w // MULTIPLE) * MULTIPLE
        raise ValueError(f"input of {h}x{w} pixels: height and width must be multiples of {MULTIPLE}; pad it to {ph}x{pw} (nucseg.tiling.pad_to_multiple)")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a :class:`ResUNet`.

    Attributes
    ----------
    width : int
        Channels of the first encoder stage (64 in the paper).
    blocks : int
        Residual blocks per encoder stage (2 in the paper).
    heads : tuple of str
        Output channels, in order: ``"body"`` (nucleus foreground, the paper)
        and optionally ``"border"`` (touching borders between nuclei) and ``"seed"``
        (each nucleus's shrunk core, apart from its neighbours').
    in_channels : int
        Image channels (3: RGB).
    """

    width: int = 16
    blocks: int = 2
    heads: tuple[str, ...] = field(default=("body",))
    in_channels: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(self.heads))
        if self.width < 1 or self.blocks < 1:
            raise ValueError(f"model width and blocks must be >= 1, got width={self.width}, blocks={self.blocks}")
        unknown = [h for h in self.heads if h not in HEADS]
        if not self.heads or unknown or self.heads[0] != "body" or len(set(self.heads)) != len(self.heads):
            raise ValueError(f"model heads must start with 'body' and be drawn from {HEADS}, got {list(self.heads)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["heads"] = list(self.heads)
        return d


#: Named architectures (``train.model`` in the config).
#:
#: ``resunet-paper``
#:     The published model (Rautaray et al. 2020, Tables 1-2): 7x7 stride-2
#:     stem convolution with 64 channels and 3x3 max-pool; four encoder stages
#:     of two residual blocks with 64, 128, 256 and 512 channels, stages 3-5
#:     downsampling with stride-2 convolutions; a decoder of transposed
#:     convolutions, concatenated skip connections and residual blocks back to
#:     the stem's resolution; batch norm throughout. About 14.6 million
#:     parameters; train it on a GPU. **One difference**: the paper's output
#:     is at half the input resolution (128 x 128 for a 256 x 256 input, upscaled
#:     afterwards); ours adds one more up-sampling step (transposed convolution
#:     and residual block) and predicts at the input's full resolution, with
#:     one sigmoid logit per head instead of the paper's two-class output.
#: ``resunet-small``
#:     The same architecture at width 16 (1/16 of the parameters): the default,
#:     trains on a CPU in minutes for the sample run.
#:
#: The width and the heads (``body``, or ``body`` + ``border``) can be changed
#: on top of either (:class:`nucseg.training.TrainSettings`).
PRESETS = {
    "resunet-paper": ModelConfig(width=64, blocks=2),
    "resunet-small": ModelConfig(width=16, blocks=2),
}


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout))


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True), conv_bn(cout, cout, 3))
        self.shortcut = nn.Identity() if cin == cout and stride == 1 else conv_bn(cin, cout, 1, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class UpBlock(nn.Module):
    """Transposed convolution (x2), concatenation with the skip, residual block."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
        self.block = ResidualBlock(cout + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.block(x)


class ResUNet(nn.Module):
    """Residual U-Net returning one logit map per head.

    Input ``(B, C, H, W)`` float, H and W multiples of 32; output
    ``(B, len(heads), H, W)`` logits.
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        w, n = self.config.width, self.config.blocks
        self.stem = nn.Sequential(nn.Conv2d(self.config.in_channels, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        widths = [w, 2 * w, 4 * w, 8 * w]
        stages, cin = [], w
        for i, cout in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(ResidualBlock(cin, cout, stride), *[ResidualBlock(cout, cout) for _ in range(n - 1)]))
            cin = cout
        self.encoder = nn.ModuleList(stages)
        self.up4 = UpBlock(8 * w, 4 * w, 4 * w)  # 1/32 -> 1/16
        self.up3 = UpBlock(4 * w, 2 * w, 2 * w)  # -> 1/8
        self.up2 = UpBlock(2 * w, w, w)  # -> 1/4
        self.up1 = UpBlock(w, w, w)  # -> 1/2, skip from the stem (the paper's output resolution)
        self.up0 = UpBlock(w, 0, w)  # -> full resolution (our addition)
        self.head = nn.Conv2d(w, len(self.config.heads), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.config.in_channels)
        s1 = self.stem(x)
        e2 = self.encoder[0](self.pool(s1))
        e3 = self.encoder[1](e2)
        e4 = self.encoder[2](e3)
        e5 = self.encoder[3](e4)
        d = self.up4(e5, e4)
        d = self.up3(d, e3)
        d = self.up2(d, e2)
        d = self.up1(d, s1)
        d = self.up0(d, None)
        return self.head(d)
