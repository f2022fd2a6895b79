"""What a training run carries and resumes from: seeds and every random state, the identity a
checkpoint must match to be resumed (settings, task, data, code, initial weights),
:class:`TrainState` (saved after every epoch, resumed after an interruption), and the weights of
the model folder a run starts from (``train.init``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

import nucseg
from nucseg.files import atomic_file
from nucseg.modelfolder import load_weights, model_folder, read_model_config, weights_digest
from nucseg.tasks import Task, make_task
from nucseg.training.settings import TrainSettings

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    """Every global random state, in the types ``torch.load(weights_only=True)`` accepts
    (tensors, lists, numbers, text), so that a checkpoint is read without unpickling objects."""
    version, keys, gauss = random.getstate()
    kind, mt, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(keys), gauss],
        "numpy": [kind, torch.from_numpy(mt.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def training_code() -> list[str]:
    """The modules whose code shapes the training run: a checkpoint written by other code is not
    resumed. Derived as the train rule's rerun triggers are (:func:`nucseg.stage_modules`: what
    this module's imports reach, function-level ones included), so the two agree."""
    return nucseg.stage_modules("training", stage="train")


def data_fingerprint(store: str | os.PathLike, index: str | os.PathLike) -> str:
    """Short hash that changes whenever a training store or its index table is rewritten.

    It covers every file of the store by relative path, size and modification time, and the
    index table's bytes: a preprocess run that rebuilds the store at the same path (other data,
    other settings, other code) gives another fingerprint, so a checkpoint of training on the
    old store is not resumed on the new one.
    """
    digest = hashlib.sha256(Path(index).read_bytes())
    root = Path(store)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def checkpoint_identity(settings: TrainSettings, stores: list[str], indexes: list[str], task: Task | None = None) -> dict:
    """What a checkpoint must match to be resumed: the settings, the task (its classes), the very
    files of the training data (:func:`data_fingerprint`) and the training code (JSON-normalised:
    tuples become lists)."""
    task = task or make_task()
    identity = dict(
        settings=asdict(settings),
        task=task.describe(),
        stores=[str(s) for s in stores],
        data=[data_fingerprint(s, i) for s, i in zip(stores, indexes)],
        code=nucseg.code_hash(*training_code()),
    )
    if settings.init:  # other weights at the same path: another training
        identity["init"] = weights_digest(model_folder(settings.init))
    return json.loads(json.dumps(identity))


def initialise(model: torch.nn.Module, architecture: str, model_config: dict, init: str) -> None:
    """Start training from the weights of the model folder ``init`` (``train.init``: fine-tuning,
    for example the shipped model on one's own images). Its network must be the one this training
    builds (architecture, width, depth, heads, input channels); the error names what differs."""
    folder = model_folder(init)  # pretrained: the shipped model
    try:
        config = read_model_config(folder)
    except ValueError as exc:
        raise ValueError(f"train.init: {exc}") from exc
    theirs = dict(architecture=config.get("architecture"), **config["model"])
    ours = json.loads(json.dumps(dict(architecture=architecture, **model_config)))
    differ = {k: (theirs.get(k), ours.get(k)) for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)}
    added = _added_heads(theirs, ours, differ)
    if differ and added is None:
        raise ValueError(
            f"train.init: {folder} holds another network than this training builds: "
            + ", ".join(f"{k} {a!r} there, {b!r} here" for k, (a, b) in differ.items())
            + " (set train.model, width and heads to the init model's, or add heads after its own)"
        )
    try:
        model.load_state_dict(_with_heads(load_weights(folder), model, len(theirs.get("heads", ()))) if added else load_weights(folder))
    except (OSError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ValueError(f"train.init: {folder / 'weights.pt'}: not loadable into the network ({exc})") from exc
    log.info("weights initialised from %s (best epoch %s of its training)", folder, config.get("best_epoch"))
    if added:
        log.info("heads %s are new: their output layer starts from random weights", added)


def _added_heads(theirs: dict, ours: dict, differ: dict) -> list[str] | None:
    """The heads this training adds after the init model's own (a residual U-Net that differs in
    nothing else), or None when the networks differ otherwise."""
    if set(differ) != {"heads"} or theirs.get("architecture") != "ResUNet":
        return None
    old, new = list(theirs["heads"]), list(ours["heads"])
    return new[len(old) :] if len(new) > len(old) and new[: len(old)] == old else None


def _with_heads(state: dict, model: torch.nn.Module, kept: int) -> dict:
    """``state`` with the output layer of ``model`` (its fresh weights) holding the init model's
    first ``kept`` heads."""
    for key in ("head.weight", "head.bias"):
        fresh = model.state_dict()[key].clone()
        fresh[:kept] = state[key]
        state[key] = fresh
    return state


def _set_rng_state(state: dict) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, mt, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, mt.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainState:
    """What a training run carries from epoch to epoch, and its checkpoint.

    The model, optimiser, scheduler, gradient scaler and sampling generator (updated in place),
    the history, the best validation IoU and its weights, and the count of epochs without a
    better one. :meth:`save` writes all of it with every random state after an epoch;
    :meth:`resume` restores it from a checkpoint written with the same identity
    (:func:`checkpoint_identity`), so that the run ends where an uninterrupted one would.
    """

    def __init__(self, model, optimizer, scheduler, scaler, generator: torch.Generator) -> None:
        self.model, self.optimizer, self.scheduler, self.scaler, self.generator = model, optimizer, scheduler, scaler, generator
        self.epoch, self.history, self.best, self.best_state, self.bad_epochs = 0, [], -1.0, None, 0

    def record(self, epoch: int, val_iou: float) -> None:
        """After an epoch: keep the weights when the validation IoU is strictly the best so far."""
        self.epoch = epoch
        if val_iou > self.best:
            self.best, self.bad_epochs = val_iou, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        else:
            self.bad_epochs += 1

    def save(self, path: Path, identity: dict) -> None:
        """The checkpoint, atomically, through a file object: a full disk then raises an OSError
        that names the file (torch.save given a path reports only an inline_container.cc position)."""
        with atomic_file(path) as tmp, open(tmp, "wb") as out:
            torch.save(
                dict(
                    identity=identity,
                    epoch=self.epoch,
                    model=self.model.state_dict(),
                    optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(),
                    scaler=self.scaler.state_dict() if self.scaler else None,
                    generator=self.generator.get_state(),
                    rng=_rng_state(),
                    history=self.history,
                    best=self.best,
                    best_state=self.best_state,
                    bad_epochs=self.bad_epochs,
                ),
                out,
            )

    def resume(self, path: Path, identity: dict) -> bool:
        """Restore from ``path`` if it is a readable checkpoint of the same identity; otherwise
        log why and keep the fresh state. Returns whether it resumed."""
        if not path.is_file():
            return False
        try:
            # on the CPU: the RNG states must stay CPU tensors; load_state_dict moves the rest to the
            # device. weights_only: tensors and plain data only, a pickled object is refused
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 (any unreadable file: train afresh, do not fail)
            log.warning("%s is not a readable checkpoint (%s); starting afresh", path, exc)
            return False
        if ckpt.get("identity") != identity:
            log.warning("%s was written with other settings, data or code; starting afresh", path)
            return False
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.generator.set_state(ckpt["generator"])
        _set_rng_state(ckpt["rng"])
        self.epoch, self.history, self.best, self.best_state, self.bad_epochs = (
            ckpt["epoch"],
            ckpt["history"],
            ckpt["best"],
            ckpt["best_state"],
            ckpt["bad_epochs"],
        )
        log.info("resuming from %s after epoch %d", path, self.epoch)
        return True
