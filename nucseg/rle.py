"""Run-length encoding of nucleus masks, and the challenge's solution CSV.

The 2018 Data Science Bowl stores ground truth (and submissions) as one CSV row
per nucleus::

    ImageId,EncodedPixels,Height,Width[,Usage]
    0a7d30b2...,5 3 20 2,256,320,Public

``EncodedPixels`` is a space-separated list of ``start length`` pairs. Pixels
are numbered from **1**, **column-major**: top to bottom, then left to right,
so pixel ``(row, col)`` of an ``(H, W)`` image has the number
``col * H + row + 1``. Runs must be positive, sorted and must not overlap; the
challenge checks the same for submissions.

Conventions of :func:`read_solution`
------------------------------------
* The rows of one image become labels ``1..N`` in file order (rows with an
  empty ``EncodedPixels`` add no label).
* Where two rows of an image claim the same pixel, the row **later in the
  file** keeps it, as with mask files, where the mask read last keeps it
  (:func:`nucseg.datasets.read_sample`); the number of such pixels is logged.
* An image whose only row has an empty ``EncodedPixels`` has no nucleus: its
  label image is all zero (and it is scored: see :mod:`nucseg.metrics` for
  empty images).
* Rows whose ``Usage`` is ``Ignored`` (Kaggle's mark for rows that are not
  scored) are skipped; other ``Usage`` values are not used.
* Whether every ``ImageId`` belongs to the dataset is for the caller to check
  (:func:`nucseg.datasets.load_solution` does).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

from nucseg.files import atomic_file

log = logging.getLogger(__name__)

__all__ = ["rle_encode", "rle_decode", "read_solution", "write_solution", "SOLUTION_COLUMNS"]

#: Columns of a solution CSV, in the order :func:`write_solution` writes them.
SOLUTION_COLUMNS = ("ImageId", "EncodedPixels", "Height", "Width")

_TOKEN = re.compile(r"\d+")


def _as_shape(shape: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (height, width), got {shape!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"shape must be positive, got {(h, w)}")
    return h, w


def rle_encode(mask: ArrayLike) -> str:
    """Run-length encode one mask, column-major, pixels numbered from 1.

    Parameters
    ----------
    mask : (H, W) ndarray of bool or integer
        Nonzero pixels are inside. Not modified.

    Returns
    -------
    str
        ``"start length start length ..."``; the empty string for an empty mask.

    Examples
    --------
    >>> rle_encode(np.array([[0, 0, 0], [1, 1, 1], [1, 0, 0]]))  # numbered down the columns
    '2 2 5 1 8 1'
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be a 2-D (H, W) array, got shape {arr.shape}")
    return _encode_pixels(np.flatnonzero(arr.T))  # column-major numbers of the inside pixels


def _encode_pixels(pixels: NDArray[np.intp]) -> str:
    """RLE string of sorted 0-based column-major pixel numbers."""
    if pixels.size == 0:
        return ""
    breaks = np.flatnonzero(np.diff(pixels) != 1) + 1
    starts = pixels[np.r_[0, breaks]]
    pairs = np.empty(2 * starts.size, dtype=np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = np.diff(np.r_[0, breaks, pixels.size])
    return " ".join(map(str, pairs.tolist()))


def _parse_runs(rle: str, n_pixels: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """0-based run starts and lengths of an RLE string, validated against ``n_pixels``."""
    text = "" if rle is None else str(rle).strip()
    tokens = text.split()
    bad = next((t for t in tokens if not _TOKEN.fullmatch(t)), None)
    if bad is not None:
        raise ValueError(f"run-length pairs must be non-negative integers, got {bad!r}")
    if len(tokens) % 2:
        raise ValueError(f"run-length encoding needs start/length pairs, got an odd number of values ({len(tokens)})")
    numbers = [int(t) for t in tokens]
    # a number past the image is named here, before numpy (int64) would overflow on it
    for k in range(0, len(numbers), 2):
        start, length = numbers[k], numbers[k + 1]
        if start > n_pixels:
            raise ValueError(f"run {start} {length} starts at pixel {start}, beyond the image's {n_pixels} pixels")
        if length > n_pixels:
            raise ValueError(f"run {start} {length} is {length} pixels long, longer than the image's {n_pixels} pixels")
    if n_pixels > np.iinfo(np.int64).max:
        raise ValueError(f"an image of {n_pixels} pixels is larger than any image can be")
    values = np.array(numbers, dtype=np.int64).reshape(-1, 2)
    starts, lengths = values[:, 0], values[:, 1]
    if starts.size:
        if starts.min() < 1:
            raise ValueError("run starts are numbered from 1, got a start of 0")
        if lengths.min() < 1:
            k = int(np.argmin(lengths))
            raise ValueError(f"run at pixel {int(starts[k])} has length {int(lengths[k])}; lengths must be >= 1")
        ends = starts + lengths - 1  # last pixel, 1-based
        if ends.max() > n_pixels:
            k = int(np.argmax(ends))
            raise ValueError(f"run {int(starts[k])} {int(lengths[k])} ends at pixel {int(ends[k])}, beyond the image's {n_pixels} pixels")
        if starts.size > 1 and np.any(starts[1:] <= ends[:-1]):
            k = int(np.flatnonzero(starts[1:] <= ends[:-1])[0]) + 1
            raise ValueError(f"runs must be sorted and must not overlap: run at pixel {int(starts[k])} follows one ending at pixel {int(ends[k - 1])}")
    return starts - 1, lengths


def rle_decode(rle: str, shape: tuple[int, int]) -> NDArray[np.bool_]:
    """Decode one run-length encoded mask.

    Parameters
    ----------
    rle : str
        ``"start length ..."`` pairs, column-major, pixels numbered from 1;
        an empty string (or ``None``) is an empty mask.
    shape : (int, int)
        ``(H, W)`` of the image.

    Returns
    -------
    (H, W) ndarray of bool

    Raises
    ------
    ValueError
        A value that is not a non-negative integer, an odd number of values,
        a start of 0, a length of 0, a run that starts or ends beyond the image's ``H * W``
        pixels or is longer than it (numbers of any size), or runs that are unsorted or overlap.

    Examples
    --------
    >>> rle_decode("2 2 5 1 8 1", (3, 3)).astype(int)
    array([[0, 0, 0],
           [1, 1, 1],
           [1, 0, 0]])
    """
    h, w = _as_shape(shape)
    starts, lengths = _parse_runs(rle, h * w)
    flat = np.zeros(h * w, dtype=bool)  # column-major pixel order
    flat[_run_pixels(starts, lengths)] = True
    return flat.reshape((w, h)).T


def _run_pixels(starts: NDArray[np.int64], lengths: NDArray[np.int64]) -> NDArray[np.int64]:
    """Every pixel of the runs (0-based starts): start, start + 1, ..., start + length - 1."""
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + offsets


def _parse_row(
    record: dict[str, str], line: int, shown: str, sizes: dict[str, tuple[int, int]]
) -> tuple[str, tuple[NDArray[np.int64], NDArray[np.int64]]] | None:
    """The ImageId and runs of one row of a solution CSV (line ``line`` of the file ``shown``), or
    ``None`` for an ``Ignored`` row; its size must match the image's earlier rows (``sizes``, to
    which the image's first row adds it)."""
    image_id = (record["ImageId"] or "").strip()
    where = f"{shown}: row {line} (ImageId {image_id!r})"
    if not image_id:
        raise ValueError(f"{shown}: row {line} has no ImageId")
    if (record.get("Usage") or "").strip() == "Ignored":
        return None
    try:
        shape = _as_shape((record["Height"], record["Width"]))
    except ValueError:
        raise ValueError(f"{where}: Height and Width must be positive integers, got {record['Height']!r} and {record['Width']!r}") from None
    if sizes.setdefault(image_id, shape) != shape:
        raise ValueError(f"{where}: size {shape} differs from the size {sizes[image_id]} of the image's earlier rows")
    try:
        parsed = _parse_runs(record["EncodedPixels"], shape[0] * shape[1])
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return image_id, parsed


def read_solution(path: str | os.PathLike, name: str | None = None) -> dict[str, NDArray[np.uint32]]:
    """Decode a solution CSV into one label image per ``ImageId``.

    Parameters
    ----------
    path : path-like
        CSV with the columns ``ImageId, EncodedPixels, Height, Width`` (any
        order; more columns, such as ``Usage``, are allowed).
    name : str, optional
        The file as messages name it (default: ``path``): the user's own file, when ``path``
        is a copy of it.

    Returns
    -------
    dict of str to (H, W) ndarray of uint32
        0 background, nuclei ``1..N`` numbered in file order. Ids keep their
        text (leading zeros and all). See the module docstring for
        overlapping rows, empty rows and ``Usage``.

    Raises
    ------
    ValueError
        A missing column, a height or width that is not a positive integer
        or differs between rows of one image, malformed pairs or a run beyond
        the image. The message names the file, the row (line number of the
        file, header = line 1) and the ImageId.
    """
    path = Path(path)
    shown = name or str(path)
    sizes: dict[str, tuple[int, int]] = {}
    runs: dict[str, list[tuple[NDArray[np.int64], NDArray[np.int64]]]] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in SOLUTION_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{shown}: not a solution CSV: missing column(s) {', '.join(missing)} (has {reader.fieldnames})")
        for record in reader:
            row = _parse_row(record, reader.line_num, shown, sizes)
            if row is None:
                continue
            image_id, parsed = row
            entries = runs.setdefault(image_id, [])
            if parsed[0].size:
                entries.append(parsed)
    labels = {}
    for image_id, entries in runs.items():
        labels[image_id] = _paint(entries, sizes[image_id], shown, image_id)
    log.info("%s: %d images, %d nuclei", shown, len(labels), sum(len(e) for e in runs.values()))
    return labels


def _paint(entries: list[tuple[NDArray[np.int64], NDArray[np.int64]]], shape: tuple[int, int], path: str, image_id: str) -> NDArray[np.uint32]:
    """Label image of one image's runs: its ``k``-th non-empty row (in file order) paints label ``k``."""
    h, w = shape
    flat = np.zeros(h * w, dtype=np.uint32)  # column-major pixel order
    claimed = 0
    for label, (starts, lengths) in enumerate(entries, start=1):
        pixels = _run_pixels(starts, lengths)
        claimed += int(np.count_nonzero(flat[pixels]))
        flat[pixels] = label  # a later row keeps a pixel claimed twice
    if claimed:
        log.warning("%s: ImageId %r: %d pixels claimed by more than one row; the later row keeps each", path, image_id, claimed)
    return flat.reshape((w, h)).T.copy()


def write_solution(labels_by_id: Mapping[str, ArrayLike], path: str | os.PathLike) -> Path:
    """Write label images as a solution CSV (``ImageId, EncodedPixels, Height, Width``).

    One row per nucleus, in ascending label order, so that
    :func:`read_solution` gives back the labels renumbered ``1..N`` in that
    order. An image without nuclei gets one row with an empty
    ``EncodedPixels`` (so it is kept, as an image with nothing to find). The
    file is written under a temporary name and renamed.

    Parameters
    ----------
    labels_by_id : mapping of str to (H, W) integer ndarray
        Label images, 0 = background; labels need not be consecutive.
    path : path-like
        The CSV to write (its folder is created).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    rows = []
    for image_id, labels in labels_by_id.items():
        arr = np.asarray(labels)
        if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise ValueError(f"ImageId {image_id!r}: labels must be a 2-D integer array, got {arr.dtype} of shape {arr.shape}")
        h, w = arr.shape
        flat = arr.ravel(order="F")
        order = np.argsort(flat, kind="stable")
        values, first = np.unique(flat[order], return_index=True)
        bounds = list(first) + [flat.size]
        written = False
        for k, value in enumerate(values):
            if value == 0:
                continue
            pixels = order[bounds[k] : bounds[k + 1]]  # column-major numbers, ascending (stable sort)
            rle = _encode_pixels(pixels)
            rows.append((image_id, rle, h, w))
            written = True
        if not written:
            rows.append((image_id, "", h, w))
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(SOLUTION_COLUMNS)
        writer.writerows(rows)
    return path
