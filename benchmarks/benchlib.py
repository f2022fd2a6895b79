"""What the benchmark scripts share: where the data is, the machine line every benchmark prints,
whole-image maps by the predict stage's path, and the images and summary of the held-out sources.

The scripts import it as ``benchlib`` (Python puts a script's own folder first on its path:
``python benchmarks/bench_x.py``)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

# torch, pandas and nucseg are imported where they are used: bench_segment.py's child processes,
# whose peak memory it reports, import this module for FIXTURES alone
if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from nucseg.infer import PredictSettings

ROOT = Path(__file__).resolve().parents[1]
#: ../shared/data beside the checkout (real data; absent from a user's fresh clone).
DATA = ROOT.parent / "shared" / "data"
FIXTURES = DATA / "fixtures"
#: The challenge's training set, the accuracy benchmark's (bench_accuracy.py) working dataset.
DATASET = "stage1_train_fixed"
#: The stardist-layout sources of ../shared/data: name -> (zip, folder inside it).
STARDIST_SOURCES = {"kromp_train": "kromp_train", "monuseg_train": "monuseg_train"}
#: Fluorescence images of the challenge whose nuclei are at least this wide (median, px) form ``fluo_large``.
LARGE = 20.0


def machine() -> str:
    """The line every benchmark prints last: CPU, threads, device, torch build, Python."""
    import torch

    from nucseg.model import choose_device

    device = choose_device("auto")
    return (
        f"machine: {platform.machine()}, cpu_count={os.cpu_count()}, torch threads={torch.get_num_threads()}, device={device.type}, "
        f"torch={torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), python={platform.python_version()}"
    )


def predict_maps(predictor, image: np.ndarray, image_id: str, settings: PredictSettings) -> np.ndarray:
    """``(heads, H, W) float32`` maps of a whole in-memory image, by the predict stage's path
    (:func:`nucseg.infer.predict_lazy`)."""
    return whole_image_maps(predictor, image, image_id, settings)[0]


def whole_image_maps(predictor, image: np.ndarray, image_id: str, settings: PredictSettings) -> tuple[np.ndarray, float, list[str]]:
    """:func:`predict_maps`, the predict scale used (``settings.scale``, or the one ``auto``
    chose) and the maps' channels: the heads of the model that predicted the image (a folder's
    model for its modality may have heads of its own)."""
    from nucseg.bigimage import LazyImage, image_statistics
    from nucseg.infer import predict_lazy

    lazy = LazyImage(image, "YXC", image_id)
    stats = image_statistics(lazy)  # once: the route's heads and the prediction's percentiles
    heads = predictor.route(stats.modality)[0].heads
    prob = np.empty((len(heads),) + image.shape[:2], np.float32)

    def sink(r: int, block: np.ndarray) -> None:
        prob[:, r : r + block.shape[1]] = block

    used, _ = predict_lazy(predictor, lazy, settings, sink, stats=stats)
    return prob, used, heads


def images_of(source: str, workdir: Path, accuracy_workdir: Path, limit: int, trained_in: Path | None = None, trained_on: list[str] | None = None):
    """Yield ``(group, image_id, sample)`` for every image of a source (with ``trained_in``, a
    training run's working directory: only the validation split of a source that run trained
    on, as group ``<source>_val``; the sources it preprocessed, or of those only ``trained_on``,
    the datasets a model folder records, ``config.json`` ``datasets``). ``dsb_val``: the challenge set's validation split;
    ``dsb_all``: all its images, both splits (for a model that held a group out of training)."""
    import pandas as pd

    from nucseg.datasets import download_dataset, list_images, read_sample

    if source in STARDIST_SOURCES:
        dest = workdir / "datasets" / source
        if not dest.is_dir():
            download_dataset(str(DATA / source / f"{source}.zip"), dest, layout="stardist", subdir=STARDIST_SOURCES[source])
        ids = list_images(dest, "stardist")
        index_csv = trained_in / "results" / "preprocessed" / source / "train_index.csv" if trained_in else None
        if index_csv is not None and index_csv.is_file() and (trained_on is None or source in trained_on):
            index = pd.read_csv(index_csv, dtype={"image_id": str})
            val = set(index.loc[index["split"] == "val", "image_id"])
            ids = [i for i in ids if i in val]
            source = f"{source}_val"
        ids = ids[: limit or None]
        for image_id in ids:
            yield source, image_id, read_sample(dest, image_id, "stardist")
        return
    index, dataset = challenge_index(accuracy_workdir)
    val = (index if source == "dsb_all" else index[index["split"] == "val"]).head(limit or None)
    for row in val.itertuples():
        sample = read_sample(dataset, row.image_id)
        yield image_group(row.modality, sample.labels), row.image_id, sample


def challenge_index(accuracy_workdir: Path) -> tuple[pd.DataFrame, Path]:
    """The challenge set's preprocess index (image ids, modality guess, split) and its unpacked
    dataset folder, from bench_accuracy.py's pipeline run in ``accuracy_workdir``."""
    import pandas as pd

    index_csv = accuracy_workdir / "results" / "preprocessed" / DATASET / "train_index.csv"
    if not index_csv.is_file():
        raise SystemExit(f"{index_csv} not found: run `python benchmarks/bench_accuracy.py` first (its --workdir)")
    return pd.read_csv(index_csv, dtype={"image_id": str}), accuracy_workdir / "results" / "datasets" / DATASET


def haematoxylin(image: np.ndarray) -> np.ndarray:
    """A stained colour image's haematoxylin channel as a grey ``(H, W, 3) uint8`` image: the
    haematoxylin optical density of colour deconvolution (:func:`skimage.color.rgb2hed`, Ruifrok
    and Johnston's H&E-DAB vectors), its 1-99.8 percentiles stretched to 0..255. Nuclei come out
    bright on a dark background, as in fluorescence (an experiment of BENCHMARKS.md, "A
    haematoxylin channel for stained images held out")."""
    from skimage.color import rgb2hed

    h = rgb2hed(image[..., :3])[..., 0]
    # in float64: nucseg.imageio's float32 stretch moves a few pixels by one grey level
    lo, hi = np.percentile(h, [1.0, 99.8])
    grey = (np.clip((h - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def image_group(modality: str, labels: np.ndarray) -> str:
    """The challenge set's image groups: ``fluo_small`` / ``fluo_large`` (fluorescence whose
    nuclei's median diameter in the ground truth is under / at least :data:`LARGE` px), else
    the modality guess (``histology``, ``brightfield``)."""
    from nucseg.sizes import nucleus_diameters

    if modality != "fluorescence":
        return modality
    d = nucleus_diameters(labels, drop_edge=False)
    return "fluo_large" if d.size and np.median(d) >= LARGE else "fluo_small"


def maps_at(predictor, image: np.ndarray, image_id: str, scale) -> tuple[dict[str, np.ndarray], float, float]:
    """``({head: map}, scale used, seconds)`` of a whole image at a predict scale (a number or
    ``auto``); ``floor``: no network, ``body`` is the image itself normalised as prediction
    normalises it (whole-image percentiles, dark nuclei inverted), grey, in [0, 1]: the
    no-network floor of Otsu + distance-transform watershed."""
    from nucseg.bigimage import LazyImage
    from nucseg.infer import PredictSettings

    t0 = time.perf_counter()
    if scale == "floor":
        h, w = image.shape[:2]
        grey = predictor.normalizer(LazyImage(image, "YXC", image_id))(np.arange(h), np.arange(w)).mean(axis=2)
        return {"body": np.clip(grey, 0, 1)}, float("nan"), time.perf_counter() - t0
    prob, used, heads = whole_image_maps(predictor, image, image_id, PredictSettings(scale=scale))
    return dict(zip(heads, prob)), used, time.perf_counter() - t0


def segment_maps(maps: dict[str, np.ndarray], method: str = "paper") -> np.ndarray:
    """Labels of :func:`maps_at`'s maps by the segment stage's default settings and ``method``
    (``border``, ``seed``: the paper's method where the maps lack that head)."""
    from nucseg.postprocess import SegmentSettings, segment_probability

    return segment_probability(maps["body"], SegmentSettings(method=method), border=maps.get("border"), seed=maps.get("seed"))


def summarise(scores: pd.DataFrame) -> pd.DataFrame:
    """Means per (source, group, scale[, method where several]), and per source over its groups' images."""
    import pandas as pd

    agg = dict(
        images=("image_id", "size"),
        challenge=("challenge_score", "mean"),
        ap50=("ap_0.50", "mean"),
        ap75=("ap_0.75", "mean"),
        aji=("aji", "mean"),
        scale_used=("scale_used", "median"),
        s_per_mp=("seconds", "sum"),
    )
    keys = ["source", "group", "scale"] + (["method"] if "method" in scores and scores["method"].nunique() > 1 else [])
    by_group = scores.groupby(keys).agg(**agg)
    by_source = scores.assign(group="all").groupby(keys).agg(**agg)
    table = pd.concat([by_group, by_source]).sort_index()
    megapixels = pd.concat([scores.groupby(keys)["megapixels"].sum(), scores.assign(group="all").groupby(keys)["megapixels"].sum()])
    table["s_per_mp"] = table["s_per_mp"] / megapixels.reindex(table.index)
    table.loc[table.index.get_level_values("scale") == "oracle", "s_per_mp"] = np.nan
    return table
