"""Tasks: what differs between instance and semantic segmentation, behind one interface.

A task is the small set of things that differ between kinds of segmentation; every stage
calls it and stays shared (download, the zarr stores, the training loop, tiled prediction,
the summary tables, the workflow):

==========  ===============================================  ==========================================
stage       instance (:mod:`nucseg.tasks.instance`)           semantic (:mod:`nucseg.tasks.semantic`)
==========  ===============================================  ==========================================
preprocess  label image of nuclei 1..N                        class index per pixel (values declared)
train       targets: body (+ border) maps; ResUNet; BCE +     targets: one map per class; U-Net, SegNet,
            soft Dice; balanced by modality                   DeepLabv3+, ResUNet; CE + soft Dice;
                                                              class-balanced sampling
segment     Otsu + watershed -> label TIFFs, object table     argmax -> class-map TIFFs, class areas
evaluate    pixel and object scores, challenge score          pixel accuracy, per-class Dice/IoU/...
qc, plots   outlines; score histograms                        classes overlaid; per-class Dice
==========  ===============================================  ==========================================

A third task is one new module here with a class that has the methods of :class:`Task`, and
one entry in :func:`make_task`; the workflow's ``task:`` key picks it. Every rule of the stages
that differ runs one adapter (``workflow_scripts/<rule>.py``) that calls the task's method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

TASK_NAMES = ("instance", "semantic")


class Task(Protocol):
    """What a task supplies to the stages (the training loop, the segment, evaluate, qc and
    plots rules). See :class:`nucseg.tasks.instance.InstanceTask` for the reference one."""

    name: str
    #: Whether images with dark nuclei may be inverted after normalising (``train.invert_dark``).
    invert_dark: bool
    #: Names of the plots of rule ``plots`` (``<name>.png``).
    plots: tuple[str, ...]

    def describe(self) -> dict: ...  # recorded in the model's config.json and checkpoint identity

    def targets(self, labels: np.ndarray, heads: tuple[str, ...]) -> np.ndarray: ...

    def build_model(self, settings: Any) -> tuple[torch.nn.Module, dict, str]: ...

    def loss(self, settings: Any) -> torch.nn.Module: ...

    def overlap(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[np.ndarray, np.ndarray]: ...

    def curve_labels(self, settings: Any) -> tuple[str, str]: ...  # (loss name, IoU axis label) of curves.png

    def sample_weights(self, dataset: Any, examples: list, settings: Any) -> np.ndarray: ...

    def segment(
        self, pred_zarr: str, images_zarr: str, index_csv: str, outputs: Mapping[str, str], settings: Mapping, threads: int = 1, merged: Any = None
    ) -> Any: ...

    # outputs: the segment rule's, by name: labels (folder), objects (CSV), and any of images
    # (CSV), ome_zarr and geojson (folders); merged: the files of the images split into regions,
    # as the merge wrote them (nucseg.merge.merged_images; split is an instance task setting)

    def evaluate(self, labels_dir: str, truth_zarr: str, index_csv: str, out_csv: str, dataset: str, model: str) -> Any: ...

    def qc(self, per_image_csv: str, labels_dir: str, truth_zarr: str, out_pngs: Mapping[str, str]) -> Any: ...

    def plot(self, metric_csvs: list[str], out_pngs: Mapping[str, str]) -> None: ...


def make_task(name: str = "instance", classes: Mapping[str, int] | list | None = None) -> Task:
    """The task of the workflow's ``task:`` key.

    Parameters
    ----------
    name : {"instance", "semantic"}
    classes : mapping of class name to label value, or list of ``[name, value]`` pairs
        The semantic task's classes, in output-channel order (ignored by the instance task).
    """
    if name == "instance":
        from nucseg.tasks.instance import InstanceTask

        return InstanceTask()
    if name == "semantic":
        from nucseg.tasks.semantic import SemanticTask

        return SemanticTask.from_classes(classes)
    raise ValueError(f"unknown task {name!r}; choose one of {list(TASK_NAMES)}")
