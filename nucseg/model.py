"""A trained model folder read back: its ``config.json`` checked, its network rebuilt (the
networks themselves: :mod:`nucseg.nets`; training: :mod:`nucseg.train`)."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import torch
from torch import nn

# the networks' names, importable from here as before the nets package (nucseg.model.ResUNet ...)
from nucseg.nets import HEADS, MULTIPLE, PRESETS, SEMANTIC_PRESETS, ModelConfig, NetConfig, ResidualBlock, ResUNet, SoftmaxAsLogits, build_net

__all__ = ["HEADS", "MULTIPLE", "PRESETS", "DEVICES", "ModelConfig", "ResidualBlock", "ResUNet", "choose_device", "load_model", "read_model_config"]

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


#: The most parameters a model folder's network may have (4 GB of float32 weights; the paper's
#: model has 14.6 million): a config.json asking for more is refused before anything is allocated.
MAX_PARAMETERS = 1_000_000_000


def read_model_config(model_dir: str | os.PathLike) -> dict:
    """The ``config.json`` of a model folder, checked against its schema
    (:func:`nucseg.config.model_folder_schema`, with this code's heads and semantic networks).

    Raises
    ------
    ValueError
        The file is missing, not JSON, or breaks the schema: one line naming the file and each
        key (``<folder>/config.json: model.width: 'sixteen' is not of type 'integer'``); a
        missing ``normalize`` section is an error, not a default.
    """
    from nucseg.config import read_model_folder_config

    return read_model_folder_config(model_dir, HEADS, SEMANTIC_PRESETS)


def _build(config: dict) -> nn.Module:
    """The network ``config`` (checked by :func:`read_model_config`) describes."""
    if config.get("task", "instance") == "semantic":
        return build_net(NetConfig(**config["model"]))
    return ResUNet(ModelConfig(**config["model"]))


def _check_size(model_dir: Path, config: dict) -> None:
    """Refuse a network larger than :data:`MAX_PARAMETERS`, or than ``weights.pt`` can hold even
    at 16 bits a value, counted on PyTorch's meta device (nothing allocated)."""
    try:
        with torch.device("meta"):
            net = _build(config)
    except (TypeError, ValueError) as exc:  # what the schema cannot say (heads start with body)
        raise ValueError(f"{model_dir / 'config.json'}: model: {exc}") from exc
    count = sum(t.numel() for t in net.parameters()) + sum(t.numel() for t in net.buffers())
    weights = model_dir / "weights.pt"
    size = weights.stat().st_size if weights.is_file() else None
    if count > MAX_PARAMETERS or (size is not None and 2 * count > size):
        held = f"; {weights} holds {size:,} bytes" if size is not None else ""
        raise ValueError(
            f"{model_dir / 'config.json'}: model: {json.dumps(config['model'])} is a network of {count:,} values ({4 * count / 1e9:.2f} GB at float32){held}: "
            f"refused before allocating it (at most {MAX_PARAMETERS:,}, and no more than the weights file holds)"
        )


def load_model(model_dir: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a trained model from its folder; returns ``(model in eval mode, config dict)``.

    A semantic model (``config.json``: ``task: semantic``, :mod:`nucseg.nets`) comes wrapped in
    :class:`nucseg.nets.SoftmaxAsLogits`, so that the predictor's sigmoid gives its class
    probabilities; ``model.config.heads`` names its output channels either way.

    Raises
    ------
    ValueError
        ``config.json`` breaks its schema (:func:`read_model_config`), asks for
        a network over :data:`MAX_PARAMETERS` or larger than ``weights.pt`` (checked before
        anything is allocated), or ``weights.pt`` is unreadable, holds pickled objects (refused
        unread) or does not fit the network.
    """
    model_dir = Path(model_dir)
    config = read_model_config(model_dir)
    semantic = config.get("task", "instance") == "semantic"
    _check_size(model_dir, config)
    try:
        model = _build(config)
        model.load_state_dict(torch.load(model_dir / "weights.pt", map_location=device, weights_only=True))
        if semantic:
            model = SoftmaxAsLogits(model)
    except pickle.UnpicklingError as exc:  # weights_only: a model folder comes from other people
        raise ValueError(f"{model_dir / 'weights.pt'}: refused: it holds pickled Python objects besides tensors, which could run code when loaded") from exc
    except (OSError, KeyError, json.JSONDecodeError, RuntimeError) as exc:
        raise ValueError(f"{model_dir}: not a readable nucseg model folder ({exc})") from exc
    return model.to(device).eval(), config
