"""The model folder, in one place for everyone: which folder a setting names, its files, reading
it back (its ``config.json`` checked, its network rebuilt), writing it, and the graphs cached in it.

A model folder holds:

``weights.pt``
    ``state_dict`` of the network (tensors only: it is read with ``weights_only=True``).
``config.json``
    Enough to rebuild the network (``architecture``, ``model``), its normalisation, the settings
    it was trained with, and its scores (:func:`nucseg.config.model_folder_schema`).
``history.csv``, ``curves.png``
    The training's history and its curves (written with the folder by :mod:`nucseg.training`).
``MODEL_CARD.md``, ``<modality>/``
    The shipped model's card, and a model folder per modality the folder's model hands on
    (the predict stage's routes, :func:`nucseg.infer.open_predictor`).
``weights-<hash>.onnx``, ``weights-<hash>-int8.onnx``
    Caches of the ONNX and int8 graphs (:func:`cached_graph`, :func:`cache_graph`).

The workflow (``folder:``, ``train.init``), the command line (``--model``), the napari widget and
the model-zoo export resolve, read and write model folders through this module only. Torch is
imported where a network is built or saved, not on import: the workflow resolves folders while
it parses the Snakefile.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from nucseg.files import atomic_dir, atomic_file

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch

log = logging.getLogger(__name__)

#: The pretrained model folder shipped inside the package (weights.pt, config.json and
#: MODEL_CARD.md: what it was trained on, how, and how well it scores per modality).
#: ``nucseg segment`` uses it when no ``--model`` is given; a workflow model entry
#: ``{folder: pretrained}`` uses it instead of training one.
PRETRAINED_MODEL = str(Path(__file__).resolve().parent / "pretrained")

WEIGHTS = "weights.pt"
CONFIG = "config.json"
HISTORY = "history.csv"

#: The most parameters a model folder's network may have (4 GB of float32 weights; the paper's
#: model has 14.6 million): a config.json asking for more is refused before anything is allocated.
MAX_PARAMETERS = 1_000_000_000


def model_folder(name: str | os.PathLike | None) -> Path:
    """The model folder a setting names, resolved in one place for the workflow (``folder:``,
    ``train.init``), the command line (``--model``) and the napari widget: ``pretrained`` (or
    nothing given) is :data:`PRETRAINED_MODEL`, anything else the path it is."""
    return Path(PRETRAINED_MODEL if name is None or str(name) == "pretrained" else name)


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
    from nucseg.nets import HEADS, SEMANTIC_PRESETS

    return read_model_folder_config(model_dir, HEADS, SEMANTIC_PRESETS)


def _build(config: dict) -> torch.nn.Module:
    """The network ``config`` (checked by :func:`read_model_config`) describes."""
    from nucseg.nets import ModelConfig, NetConfig, ResUNet, build_net

    if config.get("task", "instance") == "semantic":
        return build_net(NetConfig(**config["model"]))
    return ResUNet(ModelConfig(**config["model"]))


def _check_size(model_dir: Path, config: dict) -> None:
    """Refuse a network larger than :data:`MAX_PARAMETERS`, or than ``weights.pt`` can hold even
    at 16 bits a value, counted on PyTorch's meta device (nothing allocated)."""
    import torch

    try:
        with torch.device("meta"):
            net = _build(config)
    except (TypeError, ValueError) as exc:  # what the schema cannot say (heads start with body)
        raise ValueError(f"{model_dir / CONFIG}: model: {exc}") from exc
    count = sum(t.numel() for t in net.parameters()) + sum(t.numel() for t in net.buffers())
    weights = model_dir / WEIGHTS
    size = weights.stat().st_size if weights.is_file() else None
    if count > MAX_PARAMETERS or (size is not None and 2 * count > size):
        held = f"; {weights} holds {size:,} bytes" if size is not None else ""
        raise ValueError(
            f"{model_dir / CONFIG}: model: {json.dumps(config['model'])} is a network of {count:,} values ({4 * count / 1e9:.2f} GB at float32){held}: "
            f"refused before allocating it (at most {MAX_PARAMETERS:,}, and no more than the weights file holds)"
        )


def load_model(model_dir: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
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
    from nucseg.nets import SoftmaxAsLogits

    model_dir = Path(model_dir)
    config = read_model_config(model_dir)
    semantic = config.get("task", "instance") == "semantic"
    _check_size(model_dir, config)
    try:
        model = _build(config)
        model.load_state_dict(load_weights(model_dir, device))
        if semantic:
            model = SoftmaxAsLogits(model)
    except pickle.UnpicklingError as exc:  # weights_only: a model folder comes from other people
        raise ValueError(f"{model_dir / WEIGHTS}: refused: it holds pickled Python objects besides tensors, which could run code when loaded") from exc
    except (OSError, KeyError, json.JSONDecodeError, RuntimeError) as exc:
        raise ValueError(f"{model_dir}: not a readable nucseg model folder ({exc})") from exc
    return model.to(device).eval(), config


def load_weights(model_dir: str | os.PathLike, device: torch.device | str = "cpu") -> dict:
    """The ``state_dict`` in ``weights.pt``, read with ``weights_only=True`` (tensors and plain
    data; a pickled object raises :class:`pickle.UnpicklingError` unread)."""
    import torch

    return torch.load(Path(model_dir) / WEIGHTS, map_location=device, weights_only=True)


def weights_digest(model_dir: str | os.PathLike) -> str:
    """Short hash of ``weights.pt``: other weights at the same path are another model."""
    return hashlib.sha256((Path(model_dir) / WEIGHTS).read_bytes()).hexdigest()[:16]


def write_model_folder(
    out_dir: str | os.PathLike,
    weights: dict,
    config: dict,
    history: pd.DataFrame | None = None,
    extra: Callable[[Path], None] | None = None,
) -> None:
    """Write the model folder ``out_dir`` under a temporary name and rename it into place (an
    existing folder is replaced only once the new one is whole): ``weights.pt`` (the
    ``state_dict`` ``weights``), ``config.json`` (``config``), ``history.csv`` (``history``) and
    whatever ``extra`` writes into the temporary folder it is given (the training's
    ``curves.png``). A full disk raises an OSError that names the file (through a file object:
    ``torch.save`` given a path reports only an inline_container.cc position)."""
    import torch

    with atomic_dir(out_dir, overwrite=True) as tmp:
        with open(tmp / WEIGHTS, "wb") as out:
            torch.save(weights, out)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if history is not None:
            history.to_csv(tmp / HISTORY, index=False)
        if extra is not None:
            extra(tmp)


def cached_graph(model_dir: str | os.PathLike | None, key: str, suffix: str = "") -> tuple[bytes | None, Path | None]:
    """A graph cached in the model folder as ``weights-<key><suffix>.onnx``: its bytes (None
    when not cached yet) and its path (None without a folder)."""
    path = Path(model_dir) / f"weights-{key}{suffix}.onnx" if model_dir else None
    return (path.read_bytes() if path is not None and path.is_file() else None), path


def cache_graph(path: Path | None, data: bytes, what: str, redo: str) -> None:
    """Write a graph to its cache file (:func:`cached_graph`), atomically under a unique temporary
    name (two processes may build it at once). An unwritable folder is logged, not raised: it
    only costs building the graph (``what``, by ``redo``) again next time."""
    if path is None:
        return
    try:
        with atomic_file(path, unique=True) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        log.info("cannot cache the %s in %s (%s); %s again next time", what, path.parent, exc, redo)
