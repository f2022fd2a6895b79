"""Preprocess stage: an unpacked dataset into a chunked zarr store and an index table.

Two kinds of store:

* **training** (:func:`preprocess_training`): every image becomes crops or a
  resized copy of ``size x size`` pixels. ``mode="crop"`` covers the image
  with a grid of full-resolution crops (overlapping where the side is not a
  multiple of ``size``; images smaller than ``size`` are reflect-padded), so the
  network sees nuclei at the scale it will meet at inference; ``mode="resize"``
  resizes the whole image, as the published method did (128 x 128).
  Arrays: ``images (N, S, S, 3) uint8``, ``labels (N, S, S) uint32``, one chunk
  per crop, and ``intensity_range (N, 2) float32``: the values at the normalisation
  percentiles of the whole source image, so that training normalises a crop as
  inference normalises the whole image. The index table has one row per source image, with its split
  (``train``/``val``, seeded, stratified by modality) and its crops.
* **full-size** (:func:`preprocess_fullsize`): test images at full resolution,
  ``images/<id> (H, W, 3) uint8`` and, where ground truth exists,
  ``labels/<id> (H, W) uint32``.

Images are read one at a time: memory does not grow with the dataset.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from scipy import ndimage as ndi
from skimage.transform import resize

from nucseg.bigimage import ZARR_SUFFIXES, LazyImage, image_statistics, open_image
from nucseg.calibration import resolve
from nucseg.datasets import Sample, ground_truth, image_path, list_images, load_solution, read_sample
from nucseg.files import atomic_dir, write_csv
from nucseg.imageio import guess_modality, intensity_range, read_image_pixels
from nucseg.sizes import BINS, nucleus_diameters, regions

log = logging.getLogger(__name__)

FULLSIZE_CHUNK = 1024
BORDER_RADIUS = 2
#: The shrunk-nucleus (``seed``) target keeps the pixels of each nucleus that lie farther from its
#: own edge than this fraction of its largest such distance (de Andrade's shrunk nuclei).
SEED_FRACTION = 0.5
MODES = ("crop", "resize")


@dataclass(frozen=True)
class PreprocessSettings:
    """Settings of the training store.

    Attributes
    ----------
    size : int
        Side of the training crops in pixels; a multiple of 32.
    mode : {"crop", "resize"}
        Full-resolution crops, or the whole image resized.
    val_fraction : float
        Share of the images (per modality, at least one where a modality has
        two or more) held out for validation.
    seed : int
        Seed of the train/validation split.
    """

    size: int = 128
    mode: str = "crop"
    val_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size < 32 or self.size % 32:
            raise ValueError(f"preprocess size must be a positive multiple of 32, got {self.size}")
        if self.mode not in MODES:
            raise ValueError(f"preprocess mode must be one of {MODES}, got {self.mode!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


def touching_borders(labels: np.ndarray, radius: int = BORDER_RADIUS) -> np.ndarray:
    """Pixels within ``radius`` of two different nuclei (the winners' separator target).

    Parameters
    ----------
    labels : (H, W) ndarray of integers

    Returns
    -------
    (H, W) ndarray of bool
        Empty when no two nuclei come within ``2 * radius`` pixels of each other.
    """
    size = 2 * radius + 1
    lab = labels.astype(np.int64)
    big = int(lab.max(initial=0)) + 1  # stands for background in the minimum filter
    highest = ndi.maximum_filter(lab, size=size)
    lowest = ndi.minimum_filter(np.where(lab > 0, lab, big), size=size)
    return (highest > 0) & (lowest != big) & (highest != lowest)


def shrunk_nuclei(labels: np.ndarray, fraction: float = SEED_FRACTION) -> np.ndarray:
    """Each nucleus's core, apart from every other's (the ``seed`` head's target, de Andrade).

    A pixel is kept where its distance to the nearest pixel outside its own nucleus is more
    than ``fraction`` of the largest such distance in that nucleus: a disc keeps a disc of
    ``1 - fraction`` of its radius, and two touching nuclei keep two separate cores. A nucleus
    of one or two pixels across keeps none.

    Parameters
    ----------
    labels : (H, W) ndarray of integers

    Returns
    -------
    (H, W) ndarray of bool
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"expected a 2-D label image, got shape {lab.shape}")
    inner = lab > 0
    # a pixel on the edge of its nucleus: a 4-neighbour has another value (background included)
    differ_y, differ_x = lab[1:] != lab[:-1], lab[:, 1:] != lab[:, :-1]
    inner[1:] &= ~differ_y
    inner[:-1] &= ~differ_y
    inner[:, 1:] &= ~differ_x
    inner[:, :-1] &= ~differ_x
    distance = ndi.distance_transform_edt(inner)
    ids, index = np.unique(lab, return_inverse=True)
    deepest = ndi.maximum(distance, index.reshape(lab.shape), np.arange(ids.size))
    return inner & (distance > fraction * np.asarray(deepest)[index.reshape(lab.shape)])


def make_targets(labels: np.ndarray, heads: tuple[str, ...]) -> np.ndarray:
    """Training targets ``(K, H, W) float32`` in {0, 1}, one per head, from a label image."""
    maps = {"body": lambda: labels > 0, "border": lambda: touching_borders(labels), "seed": lambda: shrunk_nuclei(labels)}
    return np.stack([maps[h]() for h in heads]).astype(np.float32)


def crop_starts(length: int, size: int) -> list[int]:
    """Start offsets of crops of ``size`` evenly covering ``length`` (overlapping where needed).

    Examples
    --------
    >>> crop_starts(256, 128)
    [0, 128]
    >>> crop_starts(300, 128)
    [0, 86, 172]
    >>> crop_starts(100, 128)
    [0]
    """
    if length <= size:
        return [0]
    n = math.ceil(length / size)
    return [round(i * (length - size) / (n - 1)) for i in range(n)]


def pad_to_size(array: np.ndarray, size: int) -> np.ndarray:
    """Symmetric-pad the first two axes of ``array`` up to at least ``size``."""
    pad_h, pad_w = max(0, size - array.shape[0]), max(0, size - array.shape[1])
    if not (pad_h or pad_w):
        return array
    widths = [(pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, mode="symmetric")


def make_crops(image: np.ndarray, labels: np.ndarray, settings: PreprocessSettings) -> tuple[np.ndarray, np.ndarray]:
    """Cut or resize one image and its labels into training examples.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
    labels : (H, W) ndarray of integers
    settings : PreprocessSettings

    Returns
    -------
    images : (N, S, S, 3) ndarray of uint8
    labels : (N, S, S) ndarray of uint32
    """
    s = settings.size
    if settings.mode == "resize":
        img = resize(image, (s, s), order=1, preserve_range=True, anti_aliasing=True)
        lab = resize(labels, (s, s), order=0, preserve_range=True, anti_aliasing=False)
        return np.round(img).astype(np.uint8)[None], lab.astype(np.uint32)[None]
    image, labels = pad_to_size(image, s), pad_to_size(labels, s)
    boxes = [(y, x) for y in crop_starts(image.shape[0], s) for x in crop_starts(image.shape[1], s)]
    imgs = np.stack([image[y : y + s, x : x + s] for y, x in boxes])
    labs = np.stack([labels[y : y + s, x : x + s] for y, x in boxes]).astype(np.uint32)
    return imgs, labs


def split_by_modality(modalities: pd.Series, val_fraction: float, seed: int) -> np.ndarray:
    """Seeded train/validation split, stratified by modality.

    Returns an array of ``"train"``/``"val"`` in the order of ``modalities``.
    A modality with a single image stays in training; every modality keeps at
    least one training image.
    """
    rng = np.random.default_rng(seed)
    split = np.full(len(modalities), "train", dtype=object)
    if val_fraction == 0:
        return split
    for modality in sorted(modalities.unique()):
        idx = np.flatnonzero(modalities.to_numpy() == modality)
        if len(idx) < 2:
            continue
        n_val = min(max(1, round(val_fraction * len(idx))), len(idx) - 1)
        split[rng.choice(idx, size=n_val, replace=False)] = "val"
    return split


def _index_row(sample, modality: str, class_names: tuple[str, ...] | None = None) -> dict:
    """The index columns every store shares; with ``class_names`` (the semantic task) the
    share of each class's pixels (``share_<name>``) instead of the nucleus counts."""
    if class_names is not None:
        row = {k: v for k, v in _index_row(sample, modality).items() if k not in ("n_nuclei", "n_overlap_px")}
        counts = np.bincount(sample.labels.ravel(), minlength=len(class_names)) if sample.labels is not None else np.zeros(len(class_names))
        return dict(
            row, **{f"share_{n}": (float(c) / max(sample.labels.size, 1) if sample.labels is not None else np.nan) for n, c in zip(class_names, counts)}
        )
    h, w = sample.image.shape[:2]
    return dict(
        image_id=sample.image_id,
        height=h,
        width=w,
        bit_depth=sample.info.get("bit_depth"),
        channels=sample.info.get("channels"),
        modality=modality,
        dark_nuclei=modality != "fluorescence",
        n_nuclei=int(sample.labels.max(initial=0)) if sample.labels is not None else 0,
        n_overlap_px=sample.n_overlap,
    )


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Image ids of a text file, one per line (blank lines and ``#`` comments ignored)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the list of image ids to exclude ({exc.strerror or exc})") from exc
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def _select_ids(dataset_dir: str | os.PathLike, layout: str, exclude: list[str] | tuple[str, ...]) -> list[str]:
    ids = list_images(dataset_dir, layout)
    if exclude:
        left_out = set(exclude)
        ids = [i for i in ids if i not in left_out]
        log.info("%s: %d images left out (exclude list)", dataset_dir, len(left_out))
    if not ids:
        raise ValueError(f"{dataset_dir}: no images found")
    return ids


def _classes(classes: Mapping[str, int] | list | None) -> tuple[tuple[str, ...] | None, tuple[int, ...] | None]:
    """Names and label values of the semantic task's classes, or ``(None, None)``."""
    if not classes:
        return None, None
    from nucseg.classmaps import SemanticClasses

    parsed = SemanticClasses.parse(classes)
    return parsed.names, parsed.values


def _training_samples(dataset_dir: str | os.PathLike, ids: list[str], layout: str, solution: dict | None, values: tuple[int, ...] | None) -> Iterator[Sample]:
    """The images of ``ids`` with their ground truth, read one at a time; an image without
    ground truth stops the stage."""
    for image_id in ids:
        sample = read_sample(dataset_dir, image_id, layout, solution, values)
        if sample.labels is None:
            raise ValueError(f"{Path(dataset_dir) / image_id}: no ground truth (no masks folder, labels file or solution CSV entry); a training image needs it")
        yield sample


def _diameter_counts(labels: np.ndarray, settings: PreprocessSettings, semantic: bool) -> np.ndarray:
    """One image's row of ``diameter_counts`` ``(bins,) int32``: its objects counted by
    equivalent diameter (:data:`nucseg.sizes.BINS`), ``semantic``: by their pixels."""
    # the objects' sizes as the network sees them (resize mode: resized): the nuclei, or
    # a class map's regions of every class but the first (cells between membranes)
    h, w = labels.shape
    s = settings.size
    factor = float(np.sqrt(s * s / (h * w))) if settings.mode == "resize" else 1.0
    if semantic:  # a class map's regions, counted by their pixels (nucseg.scale's semantic sizes)
        d = nucleus_diameters(regions(labels > 0))
        counts = np.histogram(d * factor, BINS, weights=np.round(np.pi * d**2 / 4 * factor**2))[0]
    else:
        counts = np.histogram(nucleus_diameters(labels) * factor, BINS)[0]
    return counts.astype(np.int32)


def _write_examples(root: zarr.Group, samples: Iterable[Sample], settings: PreprocessSettings, names: tuple[str, ...] | None) -> list[dict]:
    """The training store's arrays: every sample's examples appended to ``images`` and ``labels``,
    then ``intensity_range`` and ``diameter_counts``; returns the index rows, without ``split``."""
    s = settings.size
    images = root.create_array("images", shape=(0, s, s, 3), dtype="uint8", chunks=(1, s, s, 3))
    labels = root.create_array("labels", shape=(0, s, s), dtype="uint32", chunks=(1, s, s))
    rows, ranges, sizes = [], [], []
    n = 0
    for sample in samples:
        imgs, labs = make_crops(sample.image, sample.labels, settings)
        for array in (images, labels):
            array.resize((n + len(imgs),) + array.shape[1:])
        images[n:] = imgs
        labels[n:] = labs
        ranges += [intensity_range(sample.image)] * len(imgs)
        sizes.append(_diameter_counts(sample.labels, settings, semantic=bool(names)))
        rows.append(dict(_index_row(sample, guess_modality(sample.image), names), first_crop=n, n_crops=len(imgs)))
        n += len(imgs)
    root.create_array("intensity_range", data=np.asarray(ranges, dtype=np.float32).reshape(n, 2), chunks=(max(n, 1), 2))
    counts = np.asarray(sizes, np.int32).reshape(len(sizes), len(BINS) - 1)
    root.create_array("diameter_counts", data=counts, chunks=(max(len(sizes), 1), len(BINS) - 1))
    return rows


def _training_index(rows: list[dict], settings: PreprocessSettings) -> pd.DataFrame:
    """The training store's index table: ``rows`` with each image's ``split`` inserted before ``first_crop``."""
    index = pd.DataFrame(rows)
    index.insert(index.columns.get_loc("first_crop"), "split", split_by_modality(index["modality"], settings.val_fraction, settings.seed))
    return index


def _training_attrs(settings: PreprocessSettings, n_images: int, names: tuple[str, ...] | None, values: tuple[int, ...] | None) -> dict:
    """The attributes of the training store's root group."""
    return dict(
        kind="training",
        size=settings.size,
        mode=settings.mode,
        n_images=n_images,
        border_radius=BORDER_RADIUS,
        **({"classes": dict(zip(names, values))} if names else {}),
    )


def preprocess_training(
    dataset_dir: str | os.PathLike,
    out_zarr: str | os.PathLike,
    index_csv: str | os.PathLike,
    settings: PreprocessSettings,
    layout: str = "dsb",
    exclude: list[str] | tuple[str, ...] = (),
    classes: Mapping[str, int] | list | None = None,
) -> pd.DataFrame:
    """Preprocess stage, training store: crops (or resized images) and labels into zarr.

    Parameters
    ----------
    dataset_dir : path-like
        Unpacked dataset (see :mod:`nucseg.datasets`); every image needs ground truth.
    out_zarr : path-like
        Store to create; built under a temporary name and renamed when complete.
        Arrays ``images (N, S, S, 3) uint8`` and ``labels (N, S, S) uint32``, one
        chunk per example (training computes its targets from the labels after augmenting
        them, :func:`make_targets`); ``intensity_range (N, 2) float32``, the values at the
        percentiles of :func:`nucseg.imageio.normalize_image` over the whole
        source image of each example; ``diameter_counts (images, bins) int32``, each image's
        nuclei counted by equivalent diameter (:data:`nucseg.sizes.BINS`; the whole image's,
        objects at its edge left out; in resize mode as resized), in the index table's order:
        the model folder's record of its training objects, the target of ``predict.scale:
        auto``. Semantic task: the pixels of the 4-connected regions of every class but the
        first, each counted at its region's equivalent diameter.
    index_csv : path-like
        Index table: ``image_id, height, width, bit_depth, channels, modality,
        dark_nuclei, n_nuclei, n_overlap_px, split, first_crop, n_crops``.
    settings : PreprocessSettings
    layout : str
        Dataset layout (:data:`nucseg.datasets.LAYOUTS`).
    exclude : list of str
        Image ids left out (for example the images of a test set drawn from the same data).
    classes : mapping of class name to label value, optional
        The semantic task (layout ``semantic``): ``labels`` then holds class indices 0..K-1 in
        the order of ``classes`` (a label value outside them stops the stage, naming the file
        and the value), no ``body``/``border`` arrays are written, and the index table has the
        share of each class's pixels (``share_<name>``) instead of ``n_nuclei, n_overlap_px``.

    Returns
    -------
    pandas.DataFrame
        The index table.
    """
    ids = _select_ids(dataset_dir, layout, exclude)
    names, values = _classes(classes)
    solution = load_solution(dataset_dir, ids)
    with atomic_dir(out_zarr, overwrite=True) as tmp:
        root = zarr.open_group(tmp, mode="w")
        samples = _training_samples(dataset_dir, ids, layout, solution, values)
        index = _training_index(_write_examples(root, samples, settings, names), settings)
        root.attrs.update(_training_attrs(settings, len(ids), names, values))
    write_csv(index, index_csv)
    s, n_examples = settings.size, index["n_crops"].sum()
    log.info("%s: %d images -> %d examples of %dx%d (%s)", dataset_dir, len(ids), n_examples, s, s, settings.mode)
    return index


def _lazy_image(dataset_dir, image_id: str, layout: str, solution: dict | None) -> LazyImage | None:
    """The image opened for band-by-band reading (:func:`nucseg.bigimage.open_image`) when it
    is a TIFF or zarr store with no ground truth, else None (read whole: PNG and JPEG are
    decoded whole anyway, and ground truth is built in memory)."""
    if ground_truth(dataset_dir, image_id, layout, solution) is not None:
        return None
    path = image_path(dataset_dir, image_id, layout)
    if not path.name.lower().endswith((".tif", ".tiff") + ZARR_SUFFIXES):
        return None
    return open_image(path)


def _source(dataset_dir: str | os.PathLike, image_id: str, layout: str) -> str:
    """The image file of ``image_id`` in the dataset as a string; "" when it has none."""
    try:
        return str(image_path(dataset_dir, image_id, layout))
    except ValueError:
        return ""


def _copy_lazily(image: LazyImage, image_id: str, group: zarr.Group, raw_group: zarr.Group) -> Sample:
    """Write ``image`` as ``group[image_id]`` (H, W, 3) uint8 and, unless those are its own
    pixels, its own as ``raw_group[image_id]``, one band of chunk rows at a time (memory: one
    band); returns the :class:`Sample` its index row is made from."""
    h, w = image.shape
    chunk = (min(h, FULLSIZE_CHUNK), min(w, FULLSIZE_CHUNK))
    array = group.create_array(image_id, shape=(h, w, 3), dtype="uint8", chunks=chunk + (3,))
    pixels = image.pixels()
    own = None if _is_rgb8(pixels) else raw_group.create_array(image_id, shape=pixels.shape, dtype=pixels.dtype, chunks=chunk + pixels.shape[2:])
    for y in range(0, h, chunk[0]):
        rows = slice(y, min(y + chunk[0], h))
        array[rows] = image.read(rows, slice(0, w))
        if own is not None:
            own[rows] = pixels[rows, 0:w]
    return Sample(image_id, image.rgb(), None, 0, image.describe())


def _is_rgb8(pixels) -> bool:
    """Whether an image's own pixels are 8-bit RGB: then ``images/<id>`` holds them as they are."""
    return pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3


def _store_own_pixels(raw_group: zarr.Group, image_id: str, path: Path, chunk: tuple[int, int]) -> None:
    """``raw_group[image_id]``: the file's own pixels ``(H, W, C)``, unless they are 8-bit RGB."""
    pixels = read_image_pixels(path)
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8)
    if not _is_rgb8(pixels):
        raw_group.create_array(image_id, data=pixels, chunks=chunk + pixels.shape[2:])


def preprocess_fullsize(
    dataset_dir: str | os.PathLike,
    out_zarr: str | os.PathLike,
    index_csv: str | os.PathLike,
    layout: str = "dsb",
    exclude: list[str] | tuple[str, ...] = (),
    classes: Mapping[str, int] | list | None = None,
    pixel_size: float | None = None,
) -> pd.DataFrame:
    """Preprocess stage, full-size store: test images at full resolution, with labels where known.

    Arrays ``images/<id> (H, W, 3) uint8``, the input's own pixels ``raw/<id> (H, W, C)`` (its
    bit depth, C 1 or 3) where they are not 8-bit RGB and, where there is
    ground truth, ``labels/<id> (H, W) uint32``, in chunks of up to 1024 x 1024. The index
    table has the columns of the training index up to ``n_overlap_px``, then
    ``has_labels`` and ``source`` (the image's file in the dataset, "" when it has none of
    its own; the segment stage's ``images.csv`` carries it), then ``pixel_size_y_um``,
    ``pixel_size_x_um`` and ``pixel_size_from``: ``pixel_size`` (µm, the dataset's
    ``pixel_size`` key) when given, else what the file records, else unknown
    (:func:`nucseg.calibration.resolve`). ``exclude`` and ``classes`` as in :func:`preprocess_training` (the
    semantic task's ``labels/<id>`` are ``uint8`` class indices).
    """
    ids = _select_ids(dataset_dir, layout, exclude)
    names, values = _classes(classes)
    solution = load_solution(dataset_dir, ids)
    rows = []
    with atomic_dir(out_zarr, overwrite=True) as tmp:
        root = zarr.open_group(tmp, mode="w")
        img_group, lab_group, raw_group = root.create_group("images"), root.create_group("labels"), root.create_group("raw")
        for image_id in ids:
            source = _source(dataset_dir, image_id, layout)
            calibration = resolve(source or None, pixel_size).columns()
            lazy = _lazy_image(dataset_dir, image_id, layout, solution)
            if lazy is not None:  # a TIFF or zarr without ground truth: copied band by band
                modality = image_statistics(lazy).modality
                row = _index_row(_copy_lazily(lazy, image_id, img_group, raw_group), modality, names)
                rows.append(dict(row, has_labels=False, source=source, **calibration))
                continue
            sample = read_sample(dataset_dir, image_id, layout, solution, values)
            h, w = sample.image.shape[:2]
            chunk = (min(h, FULLSIZE_CHUNK), min(w, FULLSIZE_CHUNK))
            img_group.create_array(image_id, data=sample.image, chunks=chunk + (3,))
            # 8-bit RGB and RGBA (alpha dropped) inputs: images/<id> holds their own pixels, no second decode
            if not (sample.info.get("bit_depth") == 8 and sample.info.get("channels") in (3, 4)):
                _store_own_pixels(raw_group, image_id, image_path(dataset_dir, image_id, layout), chunk)
            if sample.labels is not None:
                lab_group.create_array(image_id, data=sample.labels, chunks=chunk)
            row = _index_row(sample, guess_modality(sample.image), names)
            rows.append(dict(row, has_labels=sample.labels is not None, source=source, **calibration))
        root.attrs.update(dict(kind="fullsize", n_images=len(ids)))
    index = pd.DataFrame(rows)
    write_csv(index, index_csv)
    log.info("%s: %d full-size images", dataset_dir, len(ids))
    return index
