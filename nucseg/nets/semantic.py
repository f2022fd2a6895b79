"""Networks of the semantic task: K-class logit maps from an image.

Presets (``train.model`` when ``task: semantic``), each returning ``(B, K, H, W)`` logits
for an input ``(B, 3, H, W)`` whose height and width are multiples of 32 (the shared tiling,
:mod:`nucseg.tiling`, pads to that):

``unet``
    The U-Net of Ronneberger et al. (2015) as Bargé used it on ISBI 2012: four levels of two
    3x3 convolutions + ReLU, 2x2 max-pooling, a bottleneck, and a decoder of 2x2 transposed
    convolutions, concatenated skip connections and two 3x3 convolutions; a 1x1 convolution
    to K classes. Two differences from the 2015 paper: "same" padding (the output has the
    input's size, so the shared tiling applies; the paper cropped, "valid" convolutions) and
    batch norm after each convolution (trains in the few CPU epochs we have; Bargé's Keras
    model, zhixuhao/unet, had neither batch norm nor, in the paper, more than ~30 images).
    Widths ``w, 2w, 4w, 8w, 16w`` (paper: w = 64).
``segnet``
    SegNet (Badrinarayanan et al. 2017): an encoder of convolution blocks (3x3 convolution,
    batch norm, ReLU; 2, 2, 3, 3 per level) each ending in a 2x2 max-pool that *returns its
    indices*; the decoder up-samples with ``MaxUnpool2d`` at those indices (no learned
    up-sampling, no skip of features) followed by convolution blocks mirroring the encoder.
    Four levels instead of the paper's five (VGG-16 encoder), widths ``w .. 8w``.
``deeplabv3plus``
    DeepLabv3+ (Chen et al. 2018): a residual encoder of output stride 16 (stem 1/2, residual
    stages at 1/4, 1/8, 1/16 and a last stage dilated by 2 instead of striding), atrous spatial
    pyramid pooling (1x1, 3x3 at dilations 6, 12, 18 and image-level pooling, ``8w`` channels
    each, concatenated and projected), and the v3+ decoder: ASPP features up-sampled x4,
    concatenated with the 1/4 low-level features projected to ``3w`` channels by a 1x1
    convolution, two 3x3 convolutions, up-sampled x4 to the input size. The paper's backbone is
    ResNet-101/Xception pretrained on ImageNet; ours is small and trained from scratch.
``resunet-small`` / ``resunet-paper``
    The instance task's residual U-Net (:class:`nucseg.nets.resunet.ResUNet`) with a K-class 1x1 head.

Written here rather than taken from segmentation-models-pytorch: that library has no SegNet,
its ``Unet`` is a ResNet-encoder U-Net rather than Ronneberger's, and it pulls torchvision,
timm and huggingface_hub (ten packages) for encoders we do not pretrain.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nucseg.nets.resunet import PRESETS as RESUNET_PRESETS
from nucseg.nets.resunet import ModelConfig, ResidualBlock, ResUNet, check_input

log = logging.getLogger(__name__)

#: Default width of each semantic preset (channels of the first level).
PRESET_WIDTHS = {"unet": 16, "segnet": 16, "deeplabv3plus": 16, "resunet-small": 16, "resunet-paper": 64}
SEMANTIC_PRESETS = tuple(PRESET_WIDTHS)


@dataclass(frozen=True)
class NetConfig:
    """Everything needed to rebuild a semantic network.

    Attributes
    ----------
    architecture : str
        One of :data:`SEMANTIC_PRESETS`.
    width : int
        Channels of the first level.
    classes : tuple of str
        Class names, in the order of the output channels.
    in_channels : int
    """

    architecture: str = "unet"
    width: int = 16
    classes: tuple[str, ...] = field(default=("background", "foreground"))
    in_channels: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.architecture not in SEMANTIC_PRESETS:
            raise ValueError(f"unknown semantic network {self.architecture!r}; choose one of {list(SEMANTIC_PRESETS)}")
        if self.width < 1:
            raise ValueError(f"network width must be >= 1, got {self.width}")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"a semantic network needs two or more distinct class names, got {list(self.classes)}")

    @property
    def heads(self) -> tuple[str, ...]:
        """The output channels' names (the predict stage records them in the probability store)."""
        return self.classes

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d


def conv_bn_relu(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(cin, cout), conv_bn_relu(cout, cout))


class UNet(nn.Module):
    """Ronneberger's U-Net (same padding, batch norm): ``(B, C, H, W)`` -> ``(B, K, H, W)`` logits."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        widths = [w, 2 * w, 4 * w, 8 * w]
        self.down = nn.ModuleList()
        cin = config.in_channels
        for cout in widths:
            self.down.append(double_conv(cin, cout))
            cin = cout
        self.bottom = double_conv(8 * w, 16 * w)
        self.up = nn.ModuleList([nn.ConvTranspose2d(2 * c, c, 2, stride=2) for c in reversed(widths)])
        self.dec = nn.ModuleList([double_conv(2 * c, c) for c in reversed(widths)])
        self.head = nn.Conv2d(w, len(config.classes), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.config.in_channels)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def max_unpool(x: torch.Tensor, indices: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """``nn.MaxUnpool2d``: each value of ``x (B, C, h, w)`` put back where the encoder's max-pool
    found it (``indices`` into each ``size`` plane), zeros elsewhere. Written as a scatter, which
    exports to ONNX (the CPU inference engine); ``MaxUnpool2d``'s size checks do not trace."""
    b, c = x.shape[:2]
    out = x.new_zeros(b, c, size[0] * size[1]).scatter(2, indices.flatten(2), x.flatten(2))
    return out.view(b, c, size[0], size[1])


class SegNet(nn.Module):
    """SegNet: the decoder up-samples with the encoder's max-pooling indices."""

    CONVS = (2, 2, 3, 3)

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        widths = [w, 2 * w, 4 * w, 8 * w]
        self.enc = nn.ModuleList()
        cin = config.in_channels
        for cout, n in zip(widths, self.CONVS):
            self.enc.append(nn.Sequential(*[conv_bn_relu(cin if i == 0 else cout, cout) for i in range(n)]))
            cin = cout
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        # decoder level i mirrors encoder level i: its convolutions end at the channels of the level above
        self.dec = nn.ModuleList()
        for i in reversed(range(len(widths))):
            cout = widths[i - 1] if i > 0 else w
            n = self.CONVS[i]
            self.dec.append(nn.Sequential(*[conv_bn_relu(widths[i], widths[i] if k < n - 1 else cout) for k in range(n)]))
        self.head = nn.Conv2d(w, len(config.classes), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.config.in_channels)
        indices = []
        for block in self.enc:
            x = block(x)
            size = x.shape[-2:]
            x, idx = self.pool(x)
            indices.append((idx, size))
        for block, (idx, size) in zip(self.dec, reversed(indices)):
            x = block(max_unpool(x, idx, size))
        return self.head(x)


class DilatedResidualBlock(nn.Module):
    """Two 3x3 convolutions at ``dilation`` with batch norm and a (projected) identity shortcut."""

    def __init__(self, cin: int, cout: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Identity() if cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and an image-pooling branch."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...] = (6, 12, 18)) -> None:
        super().__init__()
        self.branches = nn.ModuleList([nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))])
        self.branches.extend(conv_bn_relu(cin, cout, r) for r in rates)
        self.pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(nn.Conv2d(cout * (len(rates) + 2), cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pooling(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+: residual encoder (output stride 16), ASPP, low-level-feature decoder."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.stem = nn.Sequential(conv_bn_relu(config.in_channels, w), nn.Conv2d(w, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))  # 1/2
        self.layer1 = nn.Sequential(ResidualBlock(w, 2 * w, 2), ResidualBlock(2 * w, 2 * w))  # 1/4: low-level features
        self.layer2 = nn.Sequential(ResidualBlock(2 * w, 4 * w, 2), ResidualBlock(4 * w, 4 * w))  # 1/8
        self.layer3 = nn.Sequential(ResidualBlock(4 * w, 8 * w, 2), ResidualBlock(8 * w, 8 * w))  # 1/16
        self.layer4 = nn.Sequential(DilatedResidualBlock(8 * w, 8 * w, 2), DilatedResidualBlock(8 * w, 8 * w, 2))  # 1/16, dilated
        self.aspp = ASPP(8 * w, 8 * w)
        self.low = nn.Sequential(nn.Conv2d(2 * w, 3 * w, 1, bias=False), nn.BatchNorm2d(3 * w), nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(conv_bn_relu(8 * w + 3 * w, 8 * w), conv_bn_relu(8 * w, 8 * w))
        self.head = nn.Conv2d(8 * w, len(config.classes), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.config.in_channels)
        size = x.shape[-2:]
        low = self.layer1(self.stem(x))
        high = self.aspp(self.layer4(self.layer3(self.layer2(low))))
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        out = self.head(self.decoder(torch.cat([high, self.low(low)], dim=1)))
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


class ResUNetK(ResUNet):
    """The instance task's residual U-Net with a K-class head (same encoder and decoder)."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__(ModelConfig(width=config.width, blocks=RESUNET_PRESETS[config.architecture].blocks, in_channels=config.in_channels))
        self.config = config
        self.head = nn.Conv2d(config.width, len(config.classes), 1)


ARCHITECTURES = {"unet": UNet, "segnet": SegNet, "deeplabv3plus": DeepLabV3Plus, "resunet-small": ResUNetK, "resunet-paper": ResUNetK}


def build_net(config: NetConfig) -> nn.Module:
    """A fresh network of ``config`` (weights initialised by PyTorch's defaults from the global seed)."""
    model = ARCHITECTURES[config.architecture](config)
    log.info(
        "%s (width %d, %d classes): %.2f million parameters",
        config.architecture,
        config.width,
        len(config.classes),
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model


class SoftmaxAsLogits(nn.Module):
    """A trained semantic network for the shared predictor (:mod:`nucseg.infer`).

    The predictor applies a sigmoid to each output channel, as the instance heads need; this
    wrapper returns ``logit(softmax(z))``, so the sigmoid gives back the class probabilities
    (within 1e-6), which sum to one over the channels. Test-time augmentation then averages
    probabilities, as it should. ``config.heads`` names the classes.
    """

    EPS = 1e-6

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.config = net.config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logit(torch.softmax(self.net(x).float(), dim=1), eps=self.EPS)
