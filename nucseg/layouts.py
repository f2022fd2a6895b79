"""Datasets of images beside instance label images: the folders StarDist and Cellpose users have.

Two conventions, each one label image per image (0 = background, 1..N one value per nucleus,
integers of 8, 16 or 32 bits):

``stardist``
    ``images/<name>.<ext>`` beside ``masks/<name>.<ext>`` (same relative path and stem; any
    PNG, JPEG or TIFF image; the label image a TIFF or PNG). Sub-folders are allowed when both
    sides have them; the image id is the path below ``images/`` without suffix, ``/`` as ``__``.
``cellpose``
    ``<name>_img.<ext>`` (or plain ``<name>.<ext>``) beside ``<name>_masks.<ext>`` in one
    folder (or the same sub-folder); the id is ``<name>`` (``__`` for ``/``). Cellpose's own
    by-products in such a folder (``*_flows.tif``, ``*_seg.npy``) are left out.

:func:`index_pairs` finds the pairs once (linear in the number of files) and refuses a folder in
which a partner is missing or two files claim one id; :func:`read_label_image` reads one label
image and refuses one that cannot be instance labels. Every message names the file.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np

from nucseg.imageio import IMAGE_SUFFIXES, decode_image

log = logging.getLogger(__name__)

__all__ = ["PAIRED_LAYOUTS", "index_pairs", "read_label_image", "check_instance_labels", "EXPECTED"]

#: The layouts of this module.
PAIRED_LAYOUTS = ("stardist", "cellpose")
#: What each layout expects, for messages.
EXPECTED = {
    "stardist": "images/<name>.png|tif beside masks/<name>.tif|png",
    "cellpose": "<name>_img.png beside <name>_masks.png|tif",
}
#: Suffixes a label image may have (JPEG is lossy: it cannot hold labels).
LABEL_SUFFIXES = (".tif", ".tiff", ".png")
#: Cellpose writes these beside the images of a training folder; they are neither images nor labels.
CELLPOSE_BYPRODUCTS = ("_flows", "_seg", "_cp_masks", "_cp_output")
#: A value spread over more separate pieces than this is taken for several objects under one value.
MAX_PIECES = 2


def _files(root: Path) -> list[Path]:
    """Image files below ``root`` (recursively, hidden ones left out), sorted."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())


def _id(rel: Path) -> str:
    return "__".join(rel.parts)


def _unique(entries: list[tuple[str, Path]], root: Path, what: str) -> dict[str, Path]:
    """``{id: path}``, refusing two files of one id (``a.png`` and ``a.tif``), in one pass."""
    counts = Counter(i for i, _ in entries)
    for image_id, n in counts.items():
        if n > 1:
            clash = sorted(str(p) for i, p in entries if i == image_id)
            raise ValueError(f"{root}: {n} {what} files share the image id {image_id!r}: {', '.join(clash)}")
    return dict(entries)


def _stardist(root: Path) -> dict[str, tuple[Path, Path]]:
    image_dir, mask_dir = root / "images", root / "masks"
    if not image_dir.is_dir() or not mask_dir.is_dir():
        missing = "images/" if not image_dir.is_dir() else "masks/"
        raise ValueError(f"{root}: no {missing} folder (the stardist layout is {EXPECTED['stardist']})")
    images = _unique([(_id(p.relative_to(image_dir).with_suffix("")), p) for p in _files(image_dir)], image_dir, "image")
    masks = _unique(
        [(_id(p.relative_to(mask_dir).with_suffix("")), p) for p in _files(mask_dir) if p.suffix.lower() in LABEL_SUFFIXES],
        mask_dir,
        "label image",
    )
    return _pair(images, masks, root, "stardist", lambda i: f"masks/{i.replace('__', '/')}.tif", lambda i: f"images/{i.replace('__', '/')}.png")


def _cellpose(root: Path) -> dict[str, tuple[Path, Path]]:
    images, masks = [], []
    for p in _files(root):
        rel = p.relative_to(root).with_suffix("")
        stem = rel.name
        if stem.endswith("_masks"):
            if p.suffix.lower() in LABEL_SUFFIXES:
                masks.append((_id(rel.with_name(stem[: -len("_masks")])), p))
        elif not stem.endswith(CELLPOSE_BYPRODUCTS):
            images.append((_id(rel.with_name(stem[: -len("_img")] if stem.endswith("_img") else stem)), p))
    return _pair(
        _unique(images, root, "image"),
        _unique(masks, root, "label image"),
        root,
        "cellpose",
        lambda i: f"{i.replace('__', '/')}_masks.tif",
        lambda i: f"{i.replace('__', '/')}_img.png",
    )


def _pair(images: dict, masks: dict, root: Path, layout: str, mask_name, image_name) -> dict[str, tuple[Path, Path]]:
    for image_id, path in images.items():
        if image_id not in masks:
            raise ValueError(f"{path}: no label image beside it (expected {root / mask_name(image_id)}; the {layout} layout is {EXPECTED[layout]})")
    for image_id, path in masks.items():
        if image_id not in images:
            raise ValueError(f"{path}: a label image without its image (expected {root / image_name(image_id)}; the {layout} layout is {EXPECTED[layout]})")
    return {image_id: (images[image_id], masks[image_id]) for image_id in sorted(images)}


def index_pairs(root: str | os.PathLike, layout: str) -> dict[str, tuple[Path, Path]]:
    """Every image of a paired-layout folder with its label image: ``{id: (image, labels)}``,
    sorted by id; an empty dict for a folder without images.

    Raises
    ------
    ValueError
        An image without its label image or a label image without its image (the message names
        the file and the partner it expected), or two files of one id (``a.png`` beside ``a.tif``).
    """
    root = Path(root)
    if layout == "stardist":
        return _stardist(root)
    if layout == "cellpose":
        return _cellpose(root)
    raise ValueError(f"unknown paired layout {layout!r}; choose one of {PAIRED_LAYOUTS}")


def check_instance_labels(labels: np.ndarray, source: str) -> np.ndarray:
    """``labels`` as a ``uint32`` instance label image, or a ``ValueError`` naming ``source``.

    Refused: more than one value per pixel (a colour image), a float or boolean image, negative
    values, and a value spread over more than :data:`MAX_PIECES` separate pieces, or a single
    value over several (a binary or semantic mask, whose touching objects share one value,
    rather than one value per nucleus). A value in two pieces is kept (hand annotations have
    a few such) and counted in the log. An all-zero image is valid: an image without nuclei.

    Parameters
    ----------
    labels : (H, W) ndarray of an integer type
    source : str
        The file, for messages.
    """
    if labels.ndim == 3 and labels.shape[2] in (3, 4) and (labels[..., :3] == labels[..., :1]).all():
        labels = labels[..., 0]  # a grey label image saved as RGB(A)
    if labels.ndim != 2:
        raise ValueError(f"{source}: a label image must hold one value per pixel (greyscale), got shape {labels.shape}")
    if labels.dtype.kind not in "ui":
        raise ValueError(f"{source}: a label image must hold integers (0 = background, 1..N one per nucleus), got {labels.dtype}")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise ValueError(f"{source}: a label image must not hold negative values (found {int(labels.min())})")
    if labels.size and int(labels.max()) >= 2**32:
        raise ValueError(f"{source}: label value {int(labels.max())} does not fit 32 bits")
    labels = labels.astype(np.uint32, copy=False)
    _check_pieces(labels, source)
    return labels


def _check_pieces(labels: np.ndarray, source: str) -> None:
    from skimage.measure import label as connected

    if not labels.any():
        return
    pieces = connected(labels, connectivity=2, background=0)  # regions of one value, 8-connected
    fg = pieces > 0
    pairs = np.unique((labels[fg].astype(np.int64) << 32) | pieces[fg].astype(np.int64))  # one per (value, piece)
    values, per_value = np.unique(pairs >> 32, return_counts=True)
    worst = int(per_value.argmax())
    if per_value[worst] > MAX_PIECES or (len(values) == 1 and per_value[worst] > 1):
        raise ValueError(
            f"{source}: label value {int(values[worst])} covers {int(per_value[worst])} separate objects "
            f"({len(values)} value(s) for {int(pieces.max())} objects): instance labels give each nucleus its own value "
            "(a binary or semantic mask? number its objects first, e.g. skimage.measure.label)"
        )
    split = int(np.count_nonzero(per_value > 1))
    if split:
        log.info("%s: %d of %d label values are in two pieces (kept as one nucleus each)", source, split, len(values))


def read_label_image(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """Read one label image of a paired layout and check it against its image's ``shape``.

    Returns
    -------
    (H, W) ndarray of uint32
        0 = background; the file's own values otherwise (not renumbered).

    Raises
    ------
    ValueError
        Unreadable, another size than its image, or not instance labels
        (:func:`check_instance_labels`); the message names the file.
    """
    path = Path(path)
    labels = decode_image(path.read_bytes(), str(path))
    if labels.shape[:2] != tuple(shape):
        raise ValueError(f"{path}: label image of size {labels.shape[:2]} differs from its image's size {tuple(shape)}")
    return check_instance_labels(labels, str(path))
