"""The training data: crops of the training stores read from zarr, their train/val split, the
sampler of each epoch's draws (by modality, by dataset share), and the training nuclei's sizes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import zarr
from torch.utils.data import Dataset

from nucseg.augment import Augmenter, AugmentSettings
from nucseg.imageio import invert, rescale_intensity
from nucseg.preprocess import make_targets
from nucseg.sampling import dataset_shares
from nucseg.sizes import BINS, diameter_histogram, summary_of_histogram

if TYPE_CHECKING:  # pragma: no cover
    from nucseg.tasks import Task
    from nucseg.training.settings import TrainSettings

log = logging.getLogger(__name__)


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


def make_sampler(
    train_set: CropDataset, examples: list, settings: TrainSettings, task: Task, generator: torch.Generator, stores: list, datasets: list[str] | None
) -> torch.utils.data.Sampler:
    """The draws of one epoch: ``samples_per_epoch`` examples, uniformly, or weighted by the
    task's sampling (``train.sampling``) and the datasets' shares (``train.shares``; the stores'
    dataset names are ``datasets``, by default each store's folder name,
    ``results/preprocessed/<name>/train.zarr``); the shares drawn are logged."""
    per_epoch = min(settings.samples_per_epoch or len(train_set), len(train_set))
    if settings.sampling == "uniform" and not settings.shares:
        return torch.utils.data.RandomSampler(train_set, num_samples=per_epoch, generator=generator)
    weights = task.sample_weights(train_set, examples, settings) if settings.sampling != "uniform" else np.ones(len(train_set))
    if settings.shares:
        names = dataset_names(stores, datasets)
        weights = dataset_shares(weights, np.array([s for s, _, _, _ in examples]), names, settings.shares)
        drawn = pd.Series(weights).groupby([names[s] for s, _, _, _ in examples]).sum()
        log.info("share of draws per dataset: %s", ", ".join(f"{n} {v:.2f}" for n, v in drawn.items()))
    return torch.utils.data.WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), per_epoch, replacement=True, generator=generator)


def dataset_names(stores: list, datasets: list[str] | None = None) -> list[str]:
    """The training stores' dataset names: ``datasets`` where given (the workflow's), else each
    store's folder name (``results/preprocessed/<name>/train.zarr``)."""
    return list(datasets) if datasets is not None else [Path(s).parent.name for s in stores]


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
