"""The training loop: :func:`train_model` runs the epochs (:func:`run_epoch`) with Adam and the
Keras-style plateau schedule and early stop, checkpoints after each, and writes the model folder."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import nucseg
from nucseg.augment import AugmentSettings
from nucseg.imageio import NORMALIZE_HIGH, NORMALIZE_LOW
from nucseg.model import choose_device
from nucseg.modelfolder import write_model_folder
from nucseg.tasks import Task, make_task
from nucseg.training.checkpoint import TrainState, checkpoint_identity, initialise, seed_everything
from nucseg.training.data import CropDataset, dataset_names, make_sampler, split_examples, training_nuclei
from nucseg.training.settings import TrainSettings

log = logging.getLogger(__name__)


def make_scheduler(optimizer: torch.optim.Optimizer, lr_patience: int) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Learning rate x0.1 once ``lr_patience`` epochs in a row brought no higher validation IoU.

    PyTorch cuts after ``patience + 1`` bad epochs and counts an epoch as good
    only above a relative threshold; Keras (the paper) cuts after ``patience``
    and needs any improvement. This follows Keras, and the same rule as the
    early stop and the best-epoch choice (strictly greater IoU).
    """
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.1, patience=lr_patience - 1, threshold=0.0)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """One step of ``optimizer`` on ``loss``: through the gradient ``scaler`` under mixed
    precision (CUDA), plainly otherwise."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def run_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    loss_fn: torch.nn.Module,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None,
    scaler: torch.amp.GradScaler | None,
    desc: str = "",
    task: Task | None = None,
) -> tuple[float, float]:
    """One pass over ``loader``; trains when ``optimizer`` is given. Returns (mean loss, pixel IoU):
    the task's (:meth:`nucseg.tasks.Task.overlap`): the body head's IoU (instance), the mean
    over classes of each class's IoU (semantic), pooled over the pass.

    Mixed precision on CUDA. A progress bar (``desc``) is shown when stderr is a terminal.
    """
    task = task or make_task()
    model.train(optimizer is not None)
    total, n, inter, union = 0.0, 0, 0.0, 0.0
    amp = device.type == "cuda"
    batches = tqdm(loader, desc=desc, leave=False, unit="batch", dynamic_ncols=True, disable=not sys.stderr.isatty())
    with torch.set_grad_enabled(optimizer is not None):
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, enabled=amp):
                logits = model(x)
                loss = loss_fn(logits, y)
            if optimizer is not None:
                optimizer_step(loss, optimizer, scaler)
            total += float(loss.detach()) * len(x)
            n += len(x)
            i, u = task.overlap(logits.detach(), y)
            inter, union = inter + i, union + u
            batches.set_postfix(loss=f"{total / n:.4f}", refresh=False)
    batches.close()
    union = np.atleast_1d(union)
    seen = union > 0
    return total / max(n, 1), (float(np.mean(np.atleast_1d(inter)[seen] / union[seen])) if seen.any() else 1.0)


def write_trained_model(
    out_dir: str | os.PathLike,
    best_state: dict,
    table: pd.DataFrame,
    settings: TrainSettings,
    task: Task,
    architecture: str,
    model_config: dict,
    invert_dark: bool,
    device: torch.device,
    nuclei: dict | None = None,
    notes: dict | None = None,
) -> dict:
    """The model folder of a training (weights.pt of the best epoch, config.json, history.csv,
    curves.png; :func:`nucseg.modelfolder.write_model_folder`); returns the contents of config.json.

    ``nuclei``: the training nuclei's diameters (:func:`~nucseg.training.data.training_nuclei`),
    recorded as ``config.json`` ``nuclei``: the target of ``predict.scale: auto``. ``notes``: more
    keys of config.json (:func:`train` records ``datasets``, the names of the training datasets)."""
    best_row = table.loc[table["val_iou"].idxmax()]
    extra = {"nuclei": nuclei} if nuclei else {}
    config = dict(
        nucseg_version=nucseg.__version__,
        **task.describe(),
        architecture=architecture,
        model=model_config,
        normalize=dict(low=NORMALIZE_LOW, high=NORMALIZE_HIGH, invert_dark=invert_dark),
        train=asdict(settings),
        device=device.type,
        # reproducing the weights on a CPU needs the same torch build, thread count and
        # instruction set (the kernels PyTorch picks for AVX2 and AVX-512 sum differently)
        torch_version=torch.__version__,
        cpu_threads=torch.get_num_threads(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        best_epoch=int(best_row["epoch"]),
        best_val_iou=float(best_row["val_iou"]),
        epochs_run=len(table),
        **extra,
        **(notes or {}),
    )

    def curves(folder: Path) -> None:
        from nucseg.plots import save_curves  # a plot change does not retrain (nucseg.EXCLUDED_BEFORE)

        save_curves(table, folder / "curves.png", *task.curve_labels(settings))

    write_model_folder(out_dir, best_state, config, table, extra=curves)
    log.info("best validation IoU %.4f at epoch %d; model in %s", config["best_val_iou"], config["best_epoch"], out_dir)
    return config


def train_model(
    stores: list[str],
    indexes: list[str],
    out_dir: str | os.PathLike,
    settings: TrainSettings,
    checkpoint: str | os.PathLike | None = None,
    threads: int | None = None,
    task: Task | None = None,
    datasets: list[str] | None = None,
) -> dict:
    """Train stage: train a model and write the model folder ``out_dir``.

    Parameters
    ----------
    stores : list of path
        Training zarr stores (:func:`nucseg.preprocess.preprocess_training`).
    indexes : list of path
        Their index tables, in the same order (they give the train/val split).
    out_dir : path-like
        Model folder to create (written under a temporary name, then renamed).
    settings : TrainSettings
    checkpoint : path-like, optional
        Checkpoint file written after every epoch; if it exists with the same
        settings and data, training resumes from it.
    threads : int, optional
        CPU threads for torch.
    task : Task, optional
        What is learnt (:mod:`nucseg.tasks`): targets, network, loss, sampling weights and
        the validation IoU. Default: the instance task.
    datasets : list of str, optional
        The stores' dataset names, for ``settings.shares`` (default: each store's folder name,
        ``results/preprocessed/<name>/train.zarr``).

    Returns
    -------
    dict
        The contents of ``config.json``.
    """
    if len(stores) != len(indexes):
        raise ValueError(f"{len(stores)} stores but {len(indexes)} index tables")
    device = _start(settings, threads)
    task = task or make_task()
    if task.name != "instance" and settings.augment and settings.augment_sparse > 0:
        raise ValueError(f"train.augment_sparse dims the nuclei of label images; the {task.name} task's class maps hold none: set it to 0")
    generator = torch.Generator().manual_seed(settings.seed)
    train_set, train_loader, val_loader = _loaders(stores, indexes, settings, task, generator, device, datasets)
    state, model_config, architecture = _fresh_state(settings, task, device, generator)
    ckpt_path = Path(checkpoint) if checkpoint else None
    identity = checkpoint_identity(settings, stores, indexes, task) if ckpt_path else None
    if ckpt_path:
        state.resume(ckpt_path, identity)
    save = (lambda: state.save(ckpt_path, identity)) if ckpt_path else (lambda: None)
    _fit(state, train_set, train_loader, val_loader, task.loss(settings).to(device), device, settings, task, save)
    # a semantic class map's crops are no label images: its sizes come from the stores only
    nuclei = training_nuclei(train_set, list(map(str, indexes)), from_crops=task.name == "instance")
    invert_dark = settings.invert_dark and task.invert_dark
    # the datasets this run trained on (a model it started from, train.init, records its own)
    notes = {"datasets": dataset_names(stores, datasets)}
    history = pd.DataFrame(state.history)
    return write_trained_model(out_dir, state.best_state, history, settings, task, architecture, model_config, invert_dark, device, nuclei, notes)


def _start(settings: TrainSettings, threads: int | None) -> torch.device:
    """A run's torch threads, seeds and device (on CUDA with cuDNN's fastest kernels)."""
    if threads:
        torch.set_num_threads(threads)
    seed_everything(settings.seed)
    device = choose_device(settings.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fastest kernels for the fixed crop size (not bit-reproducible)
    return device


def _fresh_state(settings: TrainSettings, task: Task, device: torch.device, generator: torch.Generator) -> tuple[TrainState, dict, str]:
    """The task's network (from ``train.init``'s weights if given) on ``device``, Adam, the
    plateau schedule and, on CUDA, the gradient scaler; with the network's config and name."""
    model, model_config, architecture = task.build_model(settings)
    if settings.init:
        initialise(model, architecture, model_config, settings.init)
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    return TrainState(model, optimizer, make_scheduler(optimizer, settings.lr_patience), scaler, generator), model_config, architecture


def _loaders(stores: list, indexes: list, settings: TrainSettings, task: Task, generator: torch.Generator, device: torch.device, datasets: list[str] | None):
    """The training set and the loaders of the training draws and of the validation examples."""
    examples = split_examples(list(map(str, indexes)))
    invert_dark = settings.invert_dark and task.invert_dark

    def dataset(split: str, augment: AugmentSettings | None) -> CropDataset:
        rows = examples[split]
        invert_flags = [invert_dark and dark for _, _, _, dark in rows]
        return CropDataset(list(map(str, stores)), [(s, k) for s, k, _, _ in rows], settings.heads, augment, settings.seed, invert_flags, task.targets)

    train_set, val_set = dataset("train", settings.augment_settings()), dataset("val", None)
    log.info("%d training and %d validation examples", len(train_set), len(val_set))
    loader_args = dict(batch_size=settings.batch_size, num_workers=settings.num_workers, pin_memory=device.type == "cuda")
    per_epoch = min(settings.samples_per_epoch or len(train_set), len(train_set))
    sampler = make_sampler(train_set, examples["train"], settings, task, generator, stores, datasets)
    train_loader = DataLoader(train_set, sampler=sampler, drop_last=per_epoch > settings.batch_size, **loader_args)
    return train_set, train_loader, DataLoader(val_set, shuffle=False, **loader_args)


def _fit(state: TrainState, train_set: CropDataset, train_loader, val_loader, loss_fn, device, settings: TrainSettings, task: Task, save) -> None:
    """The epochs from the one after ``state``'s to ``settings.epochs``, until the early stop;
    ``save`` (the checkpoint) after each."""
    for epoch in range(state.epoch + 1, settings.epochs + 1):
        if state.bad_epochs >= settings.stop_patience:
            break
        t0 = time.perf_counter()
        train_set.epoch = epoch
        what = f"epoch {epoch}/{settings.epochs}"
        train_loss, train_iou = run_epoch(state.model, train_loader, loss_fn, device, state.optimizer, state.scaler, f"{what} train", task)
        if len(val_loader.dataset):
            val_loss, val_iou = run_epoch(state.model, val_loader, loss_fn, device, None, None, f"{what} val", task)
        else:
            val_loss, val_iou = float("nan"), train_iou
        lr = state.optimizer.param_groups[0]["lr"]
        state.scheduler.step(val_iou)
        state.record(epoch, val_iou)
        row = dict(epoch=epoch, lr=lr, train_loss=train_loss, train_iou=train_iou, val_loss=val_loss, val_iou=val_iou, seconds=time.perf_counter() - t0)
        state.history.append(row)
        log.info(
            "epoch %d/%d  lr %.1e  loss %.4f  IoU %.4f  val loss %.4f  val IoU %.4f  (%.1f s)",
            *(epoch, settings.epochs, lr, train_loss, train_iou, val_loss, val_iou, row["seconds"]),
        )
        save()
    if state.bad_epochs >= settings.stop_patience:
        log.info("early stop: no better validation IoU for %d epochs", state.bad_epochs)
