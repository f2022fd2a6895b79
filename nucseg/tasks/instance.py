"""The instance task (nuclei as separate objects): thin adapters over the stage modules.

Nothing here changes what the instance path computes; it only puts its pieces behind the
:class:`nucseg.tasks.Task` interface: targets from :func:`nucseg.preprocess.make_targets`,
:class:`nucseg.model.ResUNet`, :class:`nucseg.losses.Loss`, balanced sampling by modality
(:func:`nucseg.sampling.sample_weights`), :func:`nucseg.postprocess.segment_dataset`,
:func:`nucseg.evaluate.evaluate_dataset`, :func:`nucseg.qc.qc_pictures` and
:func:`nucseg.plots.plot_results`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

# torch for the annotations only: the workflow makes this task when it parses the Snakefile (to
# read its plot names), and importing torch there would add seconds to every Snakemake run
if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)


class InstanceTask:
    """Nucleus instance segmentation (the pipeline's original task)."""

    name = "instance"
    invert_dark = True
    plots = ("challenge_score", "score_vs_threshold", "counts")

    def describe(self) -> dict:
        return dict(task=self.name)

    def targets(self, labels: np.ndarray, heads: tuple[str, ...]) -> np.ndarray:
        """``(len(heads), H, W) float32`` body / border maps of a label image."""
        from nucseg.preprocess import make_targets

        return make_targets(labels, heads)

    def build_model(self, settings: Any) -> tuple[torch.nn.Module, dict, str]:
        from nucseg.model import PRESETS, ResUNet

        if settings.model not in PRESETS:
            raise ValueError(f"model {settings.model!r} is a semantic network; the instance task takes one of {sorted(PRESETS)}")
        config = settings.model_config()
        return ResUNet(config), config.to_dict(), "ResUNet"

    def loss(self, settings: Any) -> torch.nn.Module:
        from nucseg.losses import Loss

        return Loss(settings.loss)

    def overlap(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Intersection and union of the body head (logit > 0) with its target, summed over the batch."""
        pred, truth = logits[:, 0] > 0, target[:, 0] > 0.5
        return np.array([float((pred & truth).sum())]), np.array([float((pred | truth).sum())])

    def curve_labels(self, settings: Any) -> tuple[str, str]:
        return settings.loss, "pixel IoU (nucleus)"

    def sample_weights(self, dataset: Any, examples: list, settings: Any) -> np.ndarray:
        from nucseg.sampling import MODALITY_POWER, sample_weights

        modalities = [m for _, _, m, _ in examples]
        weights = sample_weights(modalities, dataset.has_nuclei(), settings.empty_weight, MODALITY_POWER[settings.sampling])
        shares = pd.Series(weights).groupby(modalities).sum()
        log.info("%s sampling, share of draws per modality: %s", settings.sampling, ", ".join(f"{m} {v:.2f}" for m, v in shares.items()))
        return weights

    def segment(
        self, pred_zarr: str, images_zarr: str, index_csv: str, outputs: Mapping[str, str], settings: Mapping, threads: int = 1, merged: Any = None
    ) -> Any:
        from nucseg.postprocess import SegmentSettings, segment_dataset

        folders = (("images_csv", "images"), ("ome_zarr_dir", "ome_zarr"), ("geojson_dir", "geojson"), ("rois_dir", "rois"))
        optional = {arg: outputs[name] for arg, name in folders if name in outputs}
        return segment_dataset(
            pred_zarr=pred_zarr,
            images_zarr=images_zarr,
            index_csv=index_csv,
            out_dir=outputs["labels"],
            objects_csv=outputs["objects"],
            settings=SegmentSettings(**settings),
            **optional,
            **({"threads": threads} if optional else {}),
            merged=merged,
        )

    def evaluate(self, labels_dir: str, truth_zarr: str, index_csv: str, out_csv: str, dataset: str, model: str) -> Any:
        from nucseg.evaluate import evaluate_dataset

        return evaluate_dataset(labels_dir=labels_dir, truth_zarr=truth_zarr, index_csv=index_csv, out_csv=out_csv, dataset=dataset, model=model)

    def qc(self, per_image_csv: str, labels_dir: str, truth_zarr: str, out_pngs: Mapping[str, str]) -> Any:
        from nucseg.qc import qc_pictures

        return qc_pictures(per_image_csv=per_image_csv, labels_dir=labels_dir, truth_zarr=truth_zarr, out_pngs=out_pngs)

    def plot(self, metric_csvs: list[str], out_pngs: Mapping[str, str]) -> None:
        from nucseg.plots import plot_results

        plot_results(metric_csvs, score_png=out_pngs["challenge_score"], curve_png=out_pngs["score_vs_threshold"], counts_png=out_pngs["counts"])
