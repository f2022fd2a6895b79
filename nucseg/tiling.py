"""Padding to a multiple of 32 and splitting a large image into overlapping tiles.

No model is involved here: :func:`process_tiled` applies any function that maps
an ``(h, w, C)`` block to an ``(K, h, w)`` block, tile by tile, and stitches the
results so that each output pixel comes from exactly one tile's centre.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

MULTIPLE = 32


def pad_to_multiple(array: np.ndarray, multiple: int = MULTIPLE) -> tuple[np.ndarray, tuple[tuple[int, int], tuple[int, int]]]:
    """Symmetric-pad the first two axes of ``array`` up to multiples of ``multiple``.

    The padding is split evenly between both sides (the extra pixel, if any,
    goes after) and mirrors the image (``numpy.pad`` mode ``"symmetric"``).

    Parameters
    ----------
    array : (H, W, ...) ndarray
    multiple : int

    Returns
    -------
    padded : (H', W', ...) ndarray
        H' and W' are the smallest multiples of ``multiple`` >= H and W.
    pads : ((top, bottom), (left, right))
        What :func:`crop_padding` needs to cut it back.

    Examples
    --------
    >>> padded, pads = pad_to_multiple(np.zeros((100, 64)))
    >>> padded.shape, pads
    ((128, 64), ((14, 14), (0, 0)))
    """
    if array.ndim < 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"cannot pad an array of shape {array.shape}: need (H, W, ...) with H, W >= 1")
    pads = []
    for n in array.shape[:2]:
        extra = -n % multiple
        pads.append((extra // 2, extra - extra // 2))
    if not any(a or b for a, b in pads):
        return array, ((0, 0), (0, 0))
    # "symmetric" mirrors at most the whole side each time: repeat for tiny images
    padded = array
    remaining = [list(p) for p in pads]
    while any(a or b for a, b in remaining):
        step = [(min(a, padded.shape[i]), min(b, padded.shape[i])) for i, (a, b) in enumerate(remaining)]
        padded = np.pad(padded, step + [(0, 0)] * (array.ndim - 2), mode="symmetric")
        remaining = [[a - s[0], b - s[1]] for (a, b), s in zip(remaining, step)]
    return padded, (pads[0], pads[1])


def crop_padding(array: np.ndarray, pads: tuple[tuple[int, int], tuple[int, int]], axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Undo :func:`pad_to_multiple` along ``axes`` (default: the first two)."""
    index = [slice(None)] * array.ndim
    for axis, (before, after) in zip(axes, pads):
        index[axis] = slice(before, array.shape[axis] - after)
    return array[tuple(index)]


def tile_starts(length: int, tile: int) -> list[tuple[int, int]]:
    """Non-overlapping core intervals ``(start, stop)`` of at most ``tile`` covering ``[0, length)``."""
    return [(s, min(s + tile, length)) for s in range(0, length, tile)]


def iter_tiles(shape: tuple[int, int], tile: int, margin: int) -> Iterator[tuple[tuple[slice, slice], tuple[slice, slice], tuple[slice, slice]]]:
    """Tiles of an image of ``shape``: each a read box, a core box, and the core inside the read box.

    The read box is the core grown by ``margin`` on each side (clipped at the
    image border). Cores tile the image exactly, without overlap.
    """
    h, w = shape
    for y0, y1 in tile_starts(h, tile):
        for x0, x1 in tile_starts(w, tile):
            ry0, ry1, rx0, rx1 = max(0, y0 - margin), min(h, y1 + margin), max(0, x0 - margin), min(w, x1 + margin)
            read = (slice(ry0, ry1), slice(rx0, rx1))
            core = (slice(y0, y1), slice(x0, x1))
            inner = (slice(y0 - ry0, y1 - ry0), slice(x0 - rx0, x1 - rx0))
            yield read, core, inner


def process_tiled(fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, n_out: int, tile: int = 1024, margin: int = 64, multiple: int = MULTIPLE) -> np.ndarray:
    """Apply ``fn`` tile by tile over ``image`` and stitch the results.

    Parameters
    ----------
    fn : callable
        Maps a padded block ``(h, w, C)`` (h, w multiples of ``multiple``) to ``(n_out, h, w)``.
    image : (H, W, C) ndarray
        Already normalised over the whole image (never per tile).
    n_out : int
        Output channels of ``fn``.
    tile : int
        Core tile side; images no larger than ``tile + 2 * margin`` go in one piece.
    margin : int
        Context added around each core so that tiles meet without seams.

    Returns
    -------
    (n_out, H, W) ndarray of float32
    """
    h, w = image.shape[:2]
    out = np.empty((n_out, h, w), np.float32)
    if h <= tile + 2 * margin and w <= tile + 2 * margin:
        tiles = [((slice(0, h), slice(0, w)), (slice(0, h), slice(0, w)), (slice(0, h), slice(0, w)))]
    else:
        tiles = list(iter_tiles((h, w), tile, margin))
    for read, core, inner in tiles:
        block, pads = pad_to_multiple(image[read], multiple)
        result = crop_padding(fn(block), pads, axes=(1, 2))
        out[(slice(None),) + core] = result[(slice(None),) + inner]
    return out
