"""Class maps of the semantic task: the declared classes and label values turned into class
indices, the one-hot training targets, and the class-map TIFFs the segment stage writes and the
evaluate and qc stages read.

A leaf (numpy, tifffile and :mod:`nucseg.files`), so that every stage reads and writes class maps
without importing the task (:mod:`nucseg.tasks.semantic`, which only wires the stages' pieces).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tifffile

from nucseg.files import atomic_file


@dataclass(frozen=True)
class SemanticClasses:
    """Class names and their values in the label images, in output-channel order.

    Examples
    --------
    >>> SemanticClasses.parse({"membrane": 0, "cell": 255}).values
    (0, 255)
    """

    names: tuple[str, ...]
    values: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.names) < 2 or len(self.names) != len(self.values):
            raise ValueError(f"a semantic task needs two or more classes, each with a label value; got names {list(self.names)}, values {list(self.values)}")
        if len(set(self.names)) != len(self.names) or len(set(self.values)) != len(self.values):
            raise ValueError(f"class names and label values must be distinct; got {dict(zip(self.names, self.values))}")
        bad = [v for v in self.values if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 0 <= v <= 255]
        if bad:
            raise ValueError(f"class label values must be integers 0..255 (the class maps are uint8); got {bad}")

    @classmethod
    def parse(cls, classes: Mapping[str, int] | list | tuple | None) -> SemanticClasses:
        """From ``{name: value}`` or ``[[name, value], ...]`` (the order is kept)."""
        if not classes:
            raise ValueError("the semantic task needs its classes: a mapping of class name to label value, e.g. {background: 0, nucleus: 1}")
        pairs = list(classes.items()) if isinstance(classes, Mapping) else [tuple(p) for p in classes]
        return cls(tuple(str(n) for n, _ in pairs), tuple(int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v for _, v in pairs))

    def as_pairs(self) -> list[list]:
        return [[n, v] for n, v in zip(self.names, self.values)]

    def __len__(self) -> int:
        return len(self.names)


def to_class_index(labels: np.ndarray, values: tuple[int, ...] | list[int], source: str = "<array>") -> np.ndarray:
    """Class indices of a label image whose pixels hold the classes' declared values.

    Parameters
    ----------
    labels : (H, W) ndarray of integers
    values : sequence of int
        The label value of each class, in class order.
    source : str
        File named in the error message.

    Returns
    -------
    (H, W) ndarray of uint8
        Index into ``values`` of each pixel.

    Raises
    ------
    ValueError
        A pixel holds a value that is not among ``values``; the message names ``source``,
        the value and how many pixels hold it.

    Examples
    --------
    >>> to_class_index(np.array([[0, 255], [255, 0]]), (0, 255))
    array([[0, 1],
           [1, 0]], dtype=uint8)
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"{source}: a label image must be (H, W) of integers, got {labels.shape} {labels.dtype}")
    found, counts = np.unique(labels, return_counts=True)
    unknown = [(int(v), int(c)) for v, c in zip(found, counts) if int(v) not in values]
    if unknown:
        v, c = unknown[0]
        raise ValueError(
            f"{source}: label value {v} ({c} pixels) is not one of the declared classes' values {list(values)}"
            + (f"; other unknown values: {[u for u, _ in unknown[1:6]]}" if len(unknown) > 1 else "")
        )
    lut = np.zeros(int(found.max()) + 1 if len(found) else 1, np.uint8)
    for k, v in enumerate(values):
        if v < len(lut):
            lut[v] = k
    return lut[labels.astype(np.int64)]


# --- the semantic task's targets and class maps (segment, evaluate, qc read them) ----------


def one_hot(index: np.ndarray, k: int) -> np.ndarray:
    """``(k, H, W) float32`` one map per class from an ``(H, W)`` index image."""
    return (np.asarray(index)[None] == np.arange(k)[:, None, None]).astype(np.float32)


def class_map(prob: np.ndarray, classes: SemanticClasses) -> np.ndarray:
    """``(H, W) uint8`` class map (declared values) from ``(K, H, W)`` class probabilities
    (argmax; ties go to the lower class)."""
    if prob.ndim != 3 or prob.shape[0] != len(classes):
        raise ValueError(f"expected ({len(classes)}, H, W) class probabilities for {list(classes.names)}, got {prob.shape}")
    return np.asarray(classes.values, np.uint8)[np.argmax(prob, axis=0)]


def write_class_map(path: str | os.PathLike, values: np.ndarray) -> None:
    """Write an ``(H, W) uint8`` class map as a zlib-compressed TIFF, atomically."""
    with atomic_file(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(values, np.uint8), compression="zlib")


def read_class_map(path: str | os.PathLike, classes: SemanticClasses) -> np.ndarray:
    """Class indices ``(H, W) uint8`` of a class map written by :func:`write_class_map`."""
    try:
        values = tifffile.imread(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable class map ({exc})") from exc
    return to_class_index(values, classes.values, str(path))
