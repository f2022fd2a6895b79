"""Where a network runs (:func:`choose_device`), and the networks' names as before the nets
package (:mod:`nucseg.nets` defines them; a model folder is resolved, read back and written by
:mod:`nucseg.modelfolder`)."""

from __future__ import annotations

import logging

import torch

# the networks' names, importable from here as before the nets package (nucseg.model.ResUNet ...)
from nucseg.nets import HEADS, MULTIPLE, PRESETS, ModelConfig, ResidualBlock, ResUNet

__all__ = ["HEADS", "MULTIPLE", "PRESETS", "DEVICES", "ModelConfig", "ResidualBlock", "ResUNet", "choose_device"]

log = logging.getLogger(__name__)

#: Where a model runs (``train.device``, ``predict.device``): ``auto`` is CUDA when PyTorch sees it.
DEVICES = ("auto", "cpu", "cuda")


def choose_device(name: str = "auto") -> torch.device:
    """CUDA when asked for or available (``"auto"``), else CPU; logs the choice."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    device = torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        log.info("using CUDA device %s", torch.cuda.get_device_name(device))
    else:
        log.info("using CPU (%d threads)", torch.get_num_threads())
    return device
