"""Train stage: fit a :class:`~nucseg.model.ResUNet` on training stores from :mod:`nucseg.preprocess`.

Adam; the learning rate is cut x0.1 after ``lr_patience`` epochs in a row
without a better validation IoU, training stops after ``stop_patience`` such
epochs; the weights of the best validation epoch are kept (Rautaray et al.
2020, Algorithm 1; the counts are Keras's, which the paper used: with
``lr_patience=5`` the fifth epoch without improvement is the last at the old
rate). Training examples are augmented by :mod:`nucseg.augment`.

Device: CUDA when PyTorch sees a GPU (``device: auto``), else the CPU; the
choice is logged. On CUDA the forward pass runs in mixed precision (float16
autocast with a gradient scaler), batches come from pinned memory and cuDNN
picks its fastest kernels; ``num_workers`` processes load and augment
examples on either device.

Reproducible and resumable: every random draw comes from the seed (weights,
example order, and one generator per (seed, epoch, example) for the
augmentation), so on the CPU the same seed and data give the same weights and
history, given the same number of torch threads (``config.json`` records it: the
threads split the sums of convolutions differently, which changes the weights in
the last bits and, over many steps, the trained model). A checkpoint (weights,
optimiser, scheduler, gradient scaler, epoch, history, best weights, every random
state and the settings) is written after every epoch; a rerun with the same
checkpoint path, settings, training files (:func:`data_fingerprint`) and training
code resumes from it and ends where an uninterrupted run would have (CPU); any
other rerun starts afresh.

Progress: a progress bar per epoch when stderr is a terminal, and one log
line per epoch in any case.

The result is a self-describing model folder:

``weights.pt``
    ``state_dict`` of the best epoch.
``config.json``
    Model configuration (enough to rebuild it), normalisation, training settings, best epoch and scores.
``history.csv``
    ``epoch, lr, train_loss, train_iou, val_loss, val_iou, seconds``.
``curves.png``
    Loss and IoU per epoch, training and validation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import zarr
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import nucseg
from nucseg.augment import Augmenter, AugmentSettings
from nucseg.files import atomic_dir, atomic_file
from nucseg.imageio import NORMALIZE_HIGH, NORMALIZE_LOW, invert, rescale_intensity
from nucseg.model import DEVICES, PRESETS, ModelConfig, choose_device, read_model_config
from nucseg.nets import SEMANTIC_PRESETS
from nucseg.preprocess import make_targets
from nucseg.sampling import MODALITY_POWER, SAMPLING, dataset_shares, sample_weights  # noqa: F401 (MODALITY_POWER, sample_weights: nucseg.train's names too)
from nucseg.sizes import BINS, diameter_histogram, summary_of_histogram
from nucseg.tasks import Task, make_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """Training settings (see ``config/config.yaml`` for what each means and why the default).

    ``model`` names a preset of :data:`nucseg.model.PRESETS`; ``width``, ``blocks`` (residual
    blocks per encoder stage: the depth) and ``heads``, when given, override the preset's.
    """

    model: str = "resunet-small"
    width: int | None = None
    blocks: int | None = None
    heads: tuple[str, ...] = field(default=("body",))
    loss: str = "bce_dice"
    epochs: int = 15
    samples_per_epoch: int = 128
    batch_size: int = 8
    learning_rate: float = 1e-3
    lr_patience: int = 5
    stop_patience: int = 10
    augment: bool = True
    augment_affine: float = 0.5
    augment_distort: float = 0.25
    augment_intensity: float = 0.5
    augment_colour: float = 0.0
    augment_rescale: float = 0.0
    augment_stain: float = 0.0
    augment_grey: float = 0.0
    augment_noise: float = 0.0
    augment_blur: float = 0.0
    augment_sparse: float = 0.0
    invert_dark: bool = True
    sampling: str = "uniform"
    empty_weight: float = 0.25
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    class_weights: tuple[float, ...] | None = None
    init: str | None = None
    shares: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(self.heads))
        if self.class_weights is not None:
            object.__setattr__(self, "class_weights", tuple(float(w) for w in self.class_weights))
        if self.model not in PRESETS and self.model not in SEMANTIC_PRESETS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {sorted(set(PRESETS) | set(SEMANTIC_PRESETS))}")
        if self.samples_per_epoch < 0:
            raise ValueError(f"samples_per_epoch must be >= 0 (0: all examples), got {self.samples_per_epoch}")
        for name in ("epochs", "batch_size", "lr_patience", "stop_patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"train setting {name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.sampling not in SAMPLING:
            raise ValueError(f"train sampling must be one of {list(SAMPLING)}, got {self.sampling!r}")
        if not 0 <= self.empty_weight <= 1:
            raise ValueError(f"train empty_weight must be in [0, 1], got {self.empty_weight}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        object.__setattr__(self, "shares", dict(self.shares or {}))
        if any(not 0 < v <= 1 for v in self.shares.values()) or sum(self.shares.values()) > 1 + 1e-9:
            raise ValueError(f"train shares must be fractions in (0, 1] summing to at most 1, got {self.shares}")
        self.augment_settings()  # checks the probabilities

    def model_config(self) -> ModelConfig:
        preset = PRESETS[self.model]
        return ModelConfig(width=self.width or preset.width, blocks=self.blocks or preset.blocks, heads=self.heads)

    def augment_settings(self) -> AugmentSettings | None:
        """The augmentation settings, or ``None`` when ``augment`` is off."""
        settings = AugmentSettings(
            affine=self.augment_affine,
            distort=self.augment_distort,
            intensity=self.augment_intensity,
            colour=self.augment_colour,
            rescale=self.augment_rescale,
            stain=self.augment_stain,
            grey=self.augment_grey,
            noise=self.augment_noise,
            blur=self.augment_blur,
            sparse=self.augment_sparse,
        )
        return settings if self.augment else None


class CropDataset(Dataset):
    """Examples of one or more training stores, read one chunk at a time from zarr.

    Item ``i`` is ``(image (3, S, S) float32, target (K, S, S) float32)``:
    the normalised image and one {0, 1} map per head. Normalisation uses the
    percentiles of the whole source image (the store's ``intensity_range``), as
    inference does, not those of the crop. With ``augment``
    settings, image and labels are transformed together first (generator
    seeded by ``(seed, epoch, i)``; set :attr:`epoch` before each epoch) and
    the targets computed from the transformed labels. ``targets`` maps a label crop and
    the heads to the target maps (the task's, :meth:`nucseg.tasks.Task.targets`; default
    :func:`nucseg.preprocess.make_targets`).
    """

    def __init__(
        self,
        stores: list[str],
        items: list[tuple[int, int]],
        heads: tuple[str, ...],
        augment: AugmentSettings | None,
        seed: int,
        invert: list[bool] | None = None,
        targets: Callable[[np.ndarray, tuple[str, ...]], np.ndarray] = make_targets,
    ) -> None:
        self.stores, self.items, self.heads, self.targets = stores, items, heads, targets
        self.invert = invert if invert is not None else [False] * len(items)
        self.augmenter = Augmenter(augment) if augment is not None else None
        self.seed, self.epoch = seed, 0
        self._open: dict[int, tuple[zarr.Group, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        store, index = self.items[i]
        if store not in self._open:
            group = zarr.open_group(self.stores[store], mode="r")
            if "intensity_range" not in group:
                raise ValueError(f"{self.stores[store]}: no intensity_range array (written by an older nucseg): rerun the preprocess stage")
            self._open[store] = group, group["intensity_range"][:]
        group, ranges = self._open[store]
        image, labels = group["images"][index], group["labels"][index]
        lo, hi = ranges[index]
        if self.augmenter is None:
            image = self._normalise(image, lo, hi, i)
        else:
            # one generator per (seed, epoch, example): identical whatever the worker layout
            rng = np.random.default_rng((self.seed, self.epoch, i))
            image, labels = self.augmenter.spatial(image, labels, rng)
            image = self.augmenter.sparse(image, labels, rng)
            image = self.augmenter.intensity(self._normalise(self.augmenter.stain(image, rng), lo, hi, i), rng)
        target = self.targets(labels, self.heads)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), torch.from_numpy(target)

    def _normalise(self, image: np.ndarray, lo: float, hi: float, i: int) -> np.ndarray:
        x = rescale_intensity(image, lo, hi)
        return invert(x) if self.invert[i] else x

    def has_nuclei(self) -> np.ndarray:
        """Whether each example's labels hold any nucleus (read store by store, in blocks)."""
        return self.per_example(lambda block: block.reshape(len(block), -1).max(axis=1) > 0)

    def per_example(self, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """``fn`` of each example's labels, read store by store in blocks of 256: ``fn`` maps
        ``(n, S, S)`` labels to ``(n, ...)`` values; returns ``(len(self), ...)``."""
        out = None
        by_store: dict[int, list[int]] = {}
        for k, (store, _) in enumerate(self.items):
            by_store.setdefault(store, []).append(k)
        for store, ks in by_store.items():
            labels = zarr.open_group(self.stores[store], mode="r")["labels"]
            values = np.concatenate([np.asarray(fn(labels[start : start + 256])) for start in range(0, labels.shape[0], 256)])
            if out is None:
                out = np.zeros((len(self.items),) + values.shape[1:], dtype=values.dtype)
            out[ks] = values[[self.items[k][1] for k in ks]]
        return out if out is not None else np.zeros(0)


def split_items(stores: list[str], indexes: list[str]) -> dict[str, list[tuple[int, int]]]:
    """(store, example) pairs of the ``train`` and ``val`` splits of the index tables."""
    return {split: [(s, k) for s, k, _, _ in rows] for split, rows in split_examples(indexes).items()}


def split_examples(indexes: list[str]) -> dict[str, list[tuple[int, int, str, bool]]]:
    """``(store, example, modality, dark_nuclei)`` of the ``train`` and ``val`` splits of the
    index tables (one per store, in order)."""
    items: dict[str, list[tuple[int, int, str, bool]]] = {"train": [], "val": []}
    for s, index_csv in enumerate(indexes):
        table = pd.read_csv(index_csv)
        # index tables without modality / dark_nuclei columns (hand-made ones): one modality, not inverted
        modality = table["modality"].astype(str) if "modality" in table else pd.Series("unknown", index=table.index)
        dark = table["dark_nuclei"].astype(bool) if "dark_nuclei" in table else pd.Series(False, index=table.index)
        for row, m, d in zip(table.itertuples(), modality, dark):
            items[row.split] += [(s, row.first_crop + k, m, bool(d)) for k in range(row.n_crops)]
    if not items["train"]:
        raise ValueError(f"no training examples in {indexes}")
    return items


def make_scheduler(optimizer: torch.optim.Optimizer, lr_patience: int) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Learning rate x0.1 once ``lr_patience`` epochs in a row brought no higher validation IoU.

    PyTorch cuts after ``patience + 1`` bad epochs and counts an epoch as good
    only above a relative threshold; Keras (the paper) cuts after ``patience``
    and needs any improvement. This follows Keras, and the same rule as the
    early stop and the best-epoch choice (strictly greater IoU).
    """
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.1, patience=lr_patience - 1, threshold=0.0)


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
    return nucseg.stage_modules("train", stage="train")


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
        identity["init"] = hashlib.sha256((init_folder(settings.init) / "weights.pt").read_bytes()).hexdigest()[:16]
    return json.loads(json.dumps(identity))


def init_folder(init: str) -> Path:
    """The model folder ``train.init`` names: ``pretrained`` is the shipped model."""
    return nucseg.model_folder(init)


def initialise(model: torch.nn.Module, architecture: str, model_config: dict, init: str) -> None:
    """Start training from the weights of the model folder ``init`` (``train.init``: fine-tuning,
    for example the shipped model on one's own images). Its network must be the one this training
    builds (architecture, width, depth, heads, input channels); the error names what differs."""
    folder = init_folder(init)
    try:
        config = read_model_config(folder)
    except ValueError as exc:
        raise ValueError(f"train.init: {exc}") from exc
    theirs = dict(architecture=config.get("architecture"), **config["model"])
    ours = json.loads(json.dumps(dict(architecture=architecture, **model_config)))
    differ = {k: (theirs.get(k), ours.get(k)) for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)}
    if differ:
        raise ValueError(
            f"train.init: {folder} holds another network than this training builds: "
            + ", ".join(f"{k} {a!r} there, {b!r} here" for k, (a, b) in differ.items())
            + " (set train.model, width and heads to the init model's)"
        )
    try:
        model.load_state_dict(torch.load(folder / "weights.pt", map_location="cpu", weights_only=True))
    except (OSError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ValueError(f"train.init: {folder / 'weights.pt'}: not loadable into the network ({exc})") from exc
    log.info("weights initialised from %s (best epoch %s of its training)", folder, config.get("best_epoch"))


def _set_rng_state(state: dict) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, mt, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, mt.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def write_model_folder(
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
) -> dict:
    """The model folder (weights.pt of the best epoch, config.json, history.csv, curves.png),
    written under a temporary name and renamed; returns the contents of config.json.

    ``nuclei``: the training nuclei's diameters (:func:`training_nuclei`), recorded as
    ``config.json`` ``nuclei``: the target of ``predict.scale: auto``."""
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
    )
    with atomic_dir(out_dir, overwrite=True) as tmp:
        with open(tmp / "weights.pt", "wb") as out:
            torch.save(best_state, out)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        table.to_csv(tmp / "history.csv", index=False)
        from nucseg.plots import save_curves  # a plot change does not retrain (nucseg.EXCLUDED_BEFORE)

        save_curves(table, tmp / "curves.png", *task.curve_labels(settings))
    log.info("best validation IoU %.4f at epoch %d; model in %s", config["best_val_iou"], config["best_epoch"], out_dir)
    return config


def training_nuclei(train_set: CropDataset, indexes: list[str] | None = None, from_crops: bool = True) -> dict:
    """Median, 10th and 90th percentile of the diameters (px) of the training images' nuclei
    (semantic task: objects, :func:`nucseg.preprocess.preprocess_training`), and their number:
    from the stores' ``diameter_counts`` (whole images, the ``train`` split of ``indexes``), or,
    for stores written without them and ``from_crops``, from the training crops (nuclei cut by a
    crop's edge left out: large nuclei are then missed); else ``{}``."""
    total = np.zeros(len(BINS) - 1, np.int64)
    if indexes is not None and all("diameter_counts" in zarr.open_group(store, mode="r") for store in train_set.stores):
        for store, index_csv in zip(train_set.stores, indexes):
            split = pd.read_csv(index_csv)["split"].to_numpy()
            total += zarr.open_group(store, mode="r")["diameter_counts"][:][split == "train"].sum(axis=0)
        return summary_of_histogram(total)
    if not from_crops:
        return {}
    counts = train_set.per_example(diameter_histogram)
    return summary_of_histogram(counts.sum(axis=0)) if len(counts) else {}


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
    if threads:
        torch.set_num_threads(threads)
    seed_everything(settings.seed)
    device = choose_device(settings.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fastest kernels for the fixed crop size (not bit-reproducible)
    task = task or make_task()
    if task.name != "instance" and settings.augment and settings.augment_sparse > 0:
        raise ValueError(f"train.augment_sparse dims the nuclei of label images; the {task.name} task's class maps hold none: set it to 0")
    examples = split_examples(list(map(str, indexes)))
    heads = settings.heads
    invert_dark = settings.invert_dark and task.invert_dark

    def dataset(split: str, augment: AugmentSettings | None) -> CropDataset:
        rows = examples[split]
        invert_flags = [invert_dark and dark for _, _, _, dark in rows]
        return CropDataset(list(map(str, stores)), [(s, k) for s, k, _, _ in rows], heads, augment, settings.seed, invert_flags, task.targets)

    train_set, val_set = dataset("train", settings.augment_settings()), dataset("val", None)
    log.info("%d training and %d validation examples", len(train_set), len(val_set))
    generator = torch.Generator().manual_seed(settings.seed)
    loader_args = dict(batch_size=settings.batch_size, num_workers=settings.num_workers, pin_memory=device.type == "cuda")
    per_epoch = min(settings.samples_per_epoch or len(train_set), len(train_set))
    if settings.sampling != "uniform" or settings.shares:
        weights = task.sample_weights(train_set, examples["train"], settings) if settings.sampling != "uniform" else np.ones(len(train_set))
        if settings.shares:
            names = list(datasets) if datasets is not None else [Path(s).parent.name for s in stores]
            weights = dataset_shares(weights, np.array([s for s, _, _, _ in examples["train"]]), names, settings.shares)
            drawn = pd.Series(weights).groupby([names[s] for s, _, _, _ in examples["train"]]).sum()
            log.info("share of draws per dataset: %s", ", ".join(f"{n} {v:.2f}" for n, v in drawn.items()))
        sampler = torch.utils.data.WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), per_epoch, replacement=True, generator=generator)
    else:
        sampler = torch.utils.data.RandomSampler(train_set, num_samples=per_epoch, generator=generator)
    train_loader = DataLoader(train_set, sampler=sampler, drop_last=per_epoch > settings.batch_size, **loader_args)
    val_loader = DataLoader(val_set, shuffle=False, **loader_args)

    model, model_config, architecture = task.build_model(settings)
    if settings.init:
        initialise(model, architecture, model_config, settings.init)
    model = model.to(device)
    loss_fn = task.loss(settings).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    scheduler = make_scheduler(optimizer, settings.lr_patience)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None

    ckpt_path = Path(checkpoint) if checkpoint else None
    identity = checkpoint_identity(settings, stores, indexes, task) if ckpt_path else None
    state = TrainState(model, optimizer, scheduler, scaler, generator)
    if ckpt_path:
        state.resume(ckpt_path, identity)
    start, history = state.epoch + 1, state.history

    for epoch in range(start, settings.epochs + 1):
        if state.bad_epochs >= settings.stop_patience:
            break
        t0 = time.perf_counter()
        train_set.epoch = epoch
        train_loss, train_iou = run_epoch(model, train_loader, loss_fn, device, optimizer, scaler, f"epoch {epoch}/{settings.epochs} train", task)
        if len(val_set):
            val_loss, val_iou = run_epoch(model, val_loader, loss_fn, device, None, None, f"epoch {epoch}/{settings.epochs} val", task)
        else:
            val_loss, val_iou = float("nan"), train_iou
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step(val_iou)
        state.record(epoch, val_iou)
        history.append(
            dict(epoch=epoch, lr=lr, train_loss=train_loss, train_iou=train_iou, val_loss=val_loss, val_iou=val_iou, seconds=time.perf_counter() - t0)
        )
        log.info(
            "epoch %d/%d  lr %.1e  loss %.4f  IoU %.4f  val loss %.4f  val IoU %.4f  (%.1f s)",
            epoch,
            settings.epochs,
            lr,
            train_loss,
            train_iou,
            val_loss,
            val_iou,
            history[-1]["seconds"],
        )
        if ckpt_path:
            state.save(ckpt_path, identity)
    if state.bad_epochs >= settings.stop_patience:
        log.info("early stop: no better validation IoU for %d epochs", state.bad_epochs)

    # a semantic class map's crops are no label images: its sizes come from the stores only
    nuclei = training_nuclei(train_set, list(map(str, indexes)), from_crops=task.name == "instance")
    return write_model_folder(out_dir, state.best_state, pd.DataFrame(history), settings, task, architecture, model_config, invert_dark, device, nuclei)
