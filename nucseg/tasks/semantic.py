"""The semantic task: one class per pixel (EM membranes, bright-field background / cytoplasm / nucleus).

The MIDL 2019 bright-field study (U-Net, Tiramisu, DeepLabv3+; class-balanced patch sampling)
and Bargé's U-Net against SegNet on the ISBI 2012 membranes (``../shared/papers``).

Classes are declared in the config, by name, with the value each has in the label images
(``classes: {membrane: 0, cell: 255}``); their order is the order of the network's output
channels. Stores hold class *indices* (0..K-1); the class maps the segment stage writes hold
the declared *values*, so they read like the dataset's own label images.

This module only wires the task's pieces, which live in the stage modules, to the
:class:`nucseg.tasks.Task` methods (each imported inside the method that runs it, as the
instance task does, so that a rule hashes the pieces of its own stage):

* preprocess: :func:`nucseg.classmaps.to_class_index` (a value outside the declared classes
  stops with the file and the value);
* train: :func:`nucseg.classmaps.one_hot` targets, :func:`nucseg.losses.ce_dice_loss`
  (cross-entropy + multi-class soft Dice, class weights a setting),
  :func:`nucseg.sampling.class_balanced_weights` (each class an equal share of the draws),
  networks from :mod:`nucseg.nets`;
* segment: :func:`nucseg.postprocess.segment_class_maps` (argmax of the class probabilities of
  the predict stage);
* evaluate: :func:`nucseg.metrics.confusion_matrix`, :func:`nucseg.metrics.class_scores` (pixel
  accuracy; per-class Dice, IoU, precision, recall; their macro and frequency-weighted means),
  :func:`nucseg.evaluate.evaluate_class_maps`; with two classes also the ISBI 2012 challenge's
  region scores V_rand and V_info (:mod:`nucseg.vscores`): the second class's 4-connected
  regions, the first class what separates them (membranes between cells; background between
  objects);
* qc and plots: :func:`nucseg.qc.class_qc_pictures` (classes overlaid),
  :func:`nucseg.plots.plot_class_scores`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from nucseg.classmaps import SemanticClasses

# torch for the annotations only: the workflow makes the task when it parses the Snakefile
if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch

log = logging.getLogger(__name__)


class SemanticTask:
    """Semantic segmentation into the declared classes (:class:`nucseg.tasks.Task`)."""

    name = "semantic"
    # a per-image guess of the modality would invert some images of one dataset and not others
    invert_dark = False
    plots = ("class_scores",)

    def __init__(self, classes: SemanticClasses) -> None:
        self.classes = classes

    @classmethod
    def from_classes(cls, classes: Mapping[str, int] | list | None) -> SemanticTask:
        return cls(SemanticClasses.parse(classes))

    def describe(self) -> dict:
        return dict(task=self.name, classes=dict(zip(self.classes.names, self.classes.values)))

    # train
    def targets(self, labels: np.ndarray, heads: tuple[str, ...] = ()) -> np.ndarray:
        from nucseg.classmaps import one_hot

        return one_hot(labels, len(self.classes))

    def build_model(self, settings: Any) -> tuple[torch.nn.Module, dict, str]:
        from nucseg.nets import PRESET_WIDTHS, NetConfig, build_net

        if settings.model not in PRESET_WIDTHS:
            raise ValueError(f"model {settings.model!r} is not a semantic network; choose one of {sorted(PRESET_WIDTHS)}")
        config = NetConfig(architecture=settings.model, width=settings.width or PRESET_WIDTHS[settings.model], classes=self.classes.names)
        return build_net(config), config.to_dict(), settings.model

    def loss(self, settings: Any) -> torch.nn.Module:
        from nucseg.losses import CEDiceLoss

        weights = settings.class_weights
        if weights is not None and (len(weights) != len(self.classes) or min(weights) < 0 or sum(weights) <= 0):
            raise ValueError(f"train class_weights must give one weight >= 0 per class {list(self.classes.names)} (not all 0), got {list(weights)}")
        return CEDiceLoss(weights)

    def overlap(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Per-class intersection and union of the argmax with the target, summed over the batch."""
        pred, truth = logits.argmax(1), target.argmax(1)
        k = logits.shape[1]
        inter = np.array([float(((pred == c) & (truth == c)).sum()) for c in range(k)])
        union = np.array([float(((pred == c) | (truth == c)).sum()) for c in range(k)])
        return inter, union

    def curve_labels(self, settings: Any) -> tuple[str, str]:
        return "cross-entropy + soft Dice", "pixel IoU (mean over classes)"

    def sample_weights(self, dataset: Any, examples: list, settings: Any) -> np.ndarray:
        from nucseg.sampling import class_balanced_weights, class_fractions

        fractions = dataset.per_example(lambda block: class_fractions(block, len(self.classes)))
        weights = class_balanced_weights(fractions)
        drawn = (weights[:, None] * fractions).sum(axis=0)
        log.info(
            "class-balanced sampling, expected share of pixels per class: %s (in the data: %s)",
            ", ".join(f"{n} {v / max(drawn.sum(), 1e-12):.2f}" for n, v in zip(self.classes.names, drawn)),
            ", ".join(f"{n} {v:.2f}" for n, v in zip(self.classes.names, fractions.mean(axis=0))),
        )
        return weights

    # segment, evaluate, qc, plots
    def segment(
        self,
        pred_zarr: str,
        images_zarr: str,
        index_csv: str,
        outputs: Mapping[str, str],
        settings: Mapping | None = None,
        threads: int = 1,
        merged: Mapping | None = None,
    ) -> pd.DataFrame:
        """Class maps (``outputs["labels"]``) and class areas (``outputs["objects"]``); the
        segment settings (watershed) do not apply. The per-image table (``images``) has each
        class's share; the ``ome_zarr``, ``geojson`` and ``rois`` folders are made empty (not
        written for class maps yet). ``merged``: split images are the instance task's (the config
        refuses split with this task)."""
        from nucseg.postprocess import segment_class_maps

        if merged:
            raise ValueError("split: images split into regions are segmented by the instance task only")
        return segment_class_maps(pred_zarr, index_csv, outputs, self.classes)

    def evaluate(self, labels_dir: str, truth_zarr: str, index_csv: str, out_csv: str, dataset: str, model: str = "model") -> pd.DataFrame:
        from nucseg.evaluate import evaluate_class_maps

        return evaluate_class_maps(labels_dir, truth_zarr, index_csv, out_csv, self.classes, dataset, model)

    def qc(self, per_image_csv: str, labels_dir: str, truth_zarr: str, out_pngs: Mapping[str, str]) -> dict[str, str]:
        from nucseg.qc import class_qc_pictures

        return class_qc_pictures(per_image_csv, labels_dir, truth_zarr, out_pngs, self.classes)

    def plot(self, metric_csvs: list[str], out_pngs: Mapping[str, str]) -> None:
        from nucseg.plots import plot_class_scores
        from nucseg.report import read_per_image

        plot_class_scores(read_per_image(metric_csvs), self.classes, out_pngs["class_scores"])
