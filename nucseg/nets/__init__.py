"""The networks: the instance task's residual U-Net (:mod:`nucseg.nets.resunet`) and the semantic
task's U-Net, SegNet, DeepLabv3+ and K-class residual U-Net (:mod:`nucseg.nets.semantic`).

Every network takes ``(B, C, H, W)`` with H and W multiples of :data:`MULTIPLE` (32: five
stride-2 steps; :func:`nucseg.tiling.pad_to_multiple` pads to it, so the leaf tiling module
defines it). Reading a model folder back into one of them is :mod:`nucseg.model`'s; this
package imports nothing of nucseg but the tiling constant.
"""

from nucseg.nets.resunet import HEADS, MULTIPLE, PRESETS, ModelConfig, ResidualBlock, ResUNet, check_input
from nucseg.nets.semantic import ARCHITECTURES, PRESET_WIDTHS, SEMANTIC_PRESETS, NetConfig, SoftmaxAsLogits, build_net

__all__ = [
    "ARCHITECTURES",
    "HEADS",
    "MULTIPLE",
    "PRESETS",
    "PRESET_WIDTHS",
    "SEMANTIC_PRESETS",
    "ModelConfig",
    "NetConfig",
    "ResUNet",
    "ResidualBlock",
    "SoftmaxAsLogits",
    "build_net",
    "check_input",
]
