"""Padding to a multiple of 32, overlapping tiles, and stitching them with a smooth blend.

No model is involved here. The image is (virtually) mirror-padded to a multiple of 32, as
whole-image inference pads it, and covered by square windows of ``tile + 2 * margin`` pixels
at a stride of ``tile``, all starting at multiples of 32 of the padded image (so each window sees
the same pixel grid as the whole image would; the last window of a row or column is moved back
to end at the border). Neighbouring windows overlap by ``2 * margin`` pixels; each window's result
is weighted by a window that rises as ``sin^2`` over the overlap on each side facing a neighbour
(1 elsewhere, and at the image border), and the weighted results are divided by the summed
weights: in the overlap of two regular windows the weights sum to one, and a pixel near a
window's edge, where the network lacks context, counts for almost nothing.

:func:`stream_tiled` runs any function over batches of windows, reading each window through a
callback (lazily, from a file) and handing finished rows of the stitched result to a sink as soon
as no later window touches them: memory holds one row of windows, never the whole result.
:func:`process_tiled` does the same for an array in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

MULTIPLE = 32


def blocks(shape: tuple[int, int], side: int) -> Iterator[tuple[slice, slice]]:
    """Row-major ``side`` x ``side`` blocks covering an (H, W) array, smaller at the right and
    bottom edges: the one block grid of the statistics passes, the segment chunks and the
    tiled label TIFF.

    Examples
    --------
    >>> [(r.start, r.stop, c.start, c.stop) for r, c in blocks((3, 5), 2)]
    [(0, 2, 0, 2), (0, 2, 2, 4), (0, 2, 4, 5), (2, 3, 0, 2), (2, 3, 2, 4), (2, 3, 4, 5)]
    """
    for y in range(0, shape[0], side):
        for x in range(0, shape[1], side):
            yield slice(y, min(y + side, shape[0])), slice(x, min(x + side, shape[1]))


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


def mirror_index(n: int, before: int, after: int) -> np.ndarray:
    """Source index of every position of an axis of length ``n`` padded by ``before``/``after``
    as :func:`numpy.pad` ``mode="symmetric"`` pads it (repeatedly, when the pad exceeds ``n``).

    Examples
    --------
    >>> mirror_index(3, 2, 4).tolist()
    [1, 0, 0, 1, 2, 2, 1, 0, 0]
    """
    i = np.arange(-before, n + after) % (2 * n)
    return np.where(i >= n, 2 * n - 1 - i, i)


def window_starts(length: int, tile: int, margin: int) -> tuple[list[int], int]:
    """Starts and side of the windows covering a (padded) axis of ``length``.

    Windows of ``tile + 2 * margin`` at a stride of ``tile``, the last moved back to end at
    ``length``; one window of ``length`` when that is no longer than a window.

    Examples
    --------
    >>> window_starts(1000, 256, 64)
    ([0, 256, 512, 616], 384)
    >>> window_starts(300, 256, 64)
    ([0], 300)
    """
    side = tile + 2 * margin
    if length <= side:
        return [0], length
    starts = list(range(0, length - side, tile)) + [length - side]
    return sorted(set(starts)), side


def ramp_weights(side: int, ramp: int, rise: bool, fall: bool) -> np.ndarray:
    """Blend weights along one axis of a window: ``sin^2`` rising over the first ``ramp`` pixels
    (when ``rise``) and falling over the last ``ramp`` (when ``fall``), 1 between; float32, > 0.

    Mirror-image ramps of two windows overlapping by ``ramp`` pixels sum to exactly 1.
    """
    w = np.ones(side, np.float32)
    ramp = min(ramp, side // 2)
    if ramp:
        r = np.sin(0.5 * np.pi * (np.arange(ramp) + 0.5) / ramp).astype(np.float32) ** 2
        if rise:
            w[:ramp] = r
        if fall:
            w[side - ramp :] = np.minimum(w[side - ramp :], r[::-1])
    return w


@dataclass(frozen=True)
class Window:
    """One window of the padded image: rows ``y:y+h``, columns ``x:x+w``, and its blend weight."""

    y: int
    x: int
    h: int
    w: int
    weight: np.ndarray


def plan_windows(shape: tuple[int, int], tile: int, margin: int, multiple: int = MULTIPLE) -> tuple[tuple[tuple[int, int], tuple[int, int]], list[Window]]:
    """The padding of an image of ``shape`` and its windows in row-major order.

    ``tile`` and ``2 * margin`` must be multiples of ``multiple`` (every window then starts and
    ends on the whole padded image's 32-pixel grid).

    Returns
    -------
    pads : ((top, bottom), (left, right))
        As :func:`pad_to_multiple` pads the whole image.
    windows : list of Window
    """
    if tile < multiple or tile % multiple or (2 * margin) % multiple or margin < 0:
        raise ValueError(f"tile ({tile}) and 2 * margin ({2 * margin}) must be multiples of {multiple}, tile >= {multiple}")
    pads = tuple((extra // 2, extra - extra // 2) for extra in (-n % multiple for n in shape))
    padded = [n + a + b for n, (a, b) in zip(shape, pads)]
    (ys, hy), (xs, wx) = (window_starts(n, tile, margin) for n in padded)
    weights: dict[tuple, np.ndarray] = {}
    windows = []
    for y in ys:
        wy = ramp_weights(hy, 2 * margin, y > 0, y + hy < padded[0])
        for x in xs:
            key = (y > 0, y + hy < padded[0], x > 0, x + wx < padded[1])
            if key not in weights:
                weights[key] = np.outer(wy, ramp_weights(wx, 2 * margin, x > 0, x + wx < padded[1]))
            windows.append(Window(y, x, hy, wx, weights[key]))
    return pads, windows  # type: ignore[return-value]


class _Blender:
    """Weighted sums of window results over the rows still open, released row band by band.

    It sums the part of each window inside ``region`` (rows and columns of the padded image);
    every pixel gets the same products, added in the same order, whatever the region, so a
    region's result equals the same pixels of the whole image's bit for bit."""

    def __init__(
        self, region: tuple[tuple[int, int], tuple[int, int]], n_out: int, sink: Callable[[int, np.ndarray], None], flush_rows: int, base: int
    ) -> None:
        (self.r0, self.r1), (self.c0, self.c1) = region
        self.n_out, self.sink, self.flush_rows = n_out, sink, max(1, flush_rows)
        self.base = base  # padded row of acc[:, 0]
        self.acc = np.zeros((n_out, 0, self.c1 - self.c0), np.float32)
        self.wsum = np.zeros((0, self.c1 - self.c0), np.float32)
        self.pending: list[np.ndarray] = []
        self.written = 0  # rows of the region handed to the sink

    def add(self, win: Window, result: np.ndarray) -> None:
        need = win.y + win.h - self.base
        if need > self.acc.shape[1]:
            extra = need - self.acc.shape[1]
            self.acc = np.concatenate([self.acc, np.zeros((self.n_out, extra, self.acc.shape[2]), np.float32)], axis=1)
            self.wsum = np.concatenate([self.wsum, np.zeros((extra, self.wsum.shape[1]), np.float32)])
        a, b = max(win.x, self.c0), min(win.x + win.w, self.c1)
        rows, cols, part = slice(win.y - self.base, need), slice(a - self.c0, b - self.c0), slice(a - win.x, b - win.x)
        self.acc[:, rows, cols] += result[:, :, part] * win.weight[:, part]
        self.wsum[rows, cols] += win.weight[:, part]

    def release(self, upto: int, last: bool = False) -> None:
        """Rows of the padded image before ``upto`` are final."""
        n = upto - self.base
        if n > 0:
            done = self.acc[:, :n] / self.wsum[:n]
            self.acc, self.wsum, first = self.acc[:, n:], self.wsum[n:], self.base
            self.base = upto
            r0, r1 = max(first, self.r0), min(upto, self.r1)
            if r1 > r0:
                self.pending.append(done[:, r0 - first : r1 - first])
        ready = sum(p.shape[1] for p in self.pending)
        if ready and (last or ready >= self.flush_rows):
            block = np.concatenate(self.pending, axis=1)
            keep = ready if last else ready - ready % self.flush_rows
            self.sink(self.written, block[:, :keep])
            self.written += keep
            self.pending = [block[:, keep:]] if keep < ready else []


def _padded_region(region: tuple[slice, slice] | None, shape: tuple[int, int], pads: tuple[tuple[int, int], tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Rows and columns ``((r0, r1), (c0, c1))`` of the padded image that ``region`` of the image
    covers (the whole image when ``None``); an empty or strided region is refused."""
    region = (slice(0, shape[0]), slice(0, shape[1])) if region is None else region
    bounds = tuple(s.indices(n)[:2] for s, n in zip(region, shape))
    if any(stop <= start for start, stop in bounds) or any(s.step not in (None, 1) for s in region):
        raise ValueError(f"region {region} is empty or strided, or outside the image of shape {shape}")
    return tuple((start + pad[0], stop + pad[0]) for (start, stop), pad in zip(bounds, pads))


def _blend_groups(
    fn: Callable[[np.ndarray], np.ndarray],
    read: Callable[[np.ndarray, np.ndarray], np.ndarray],
    index: tuple[np.ndarray, np.ndarray],
    groups: list[list[Window]],
    reaches: Callable[[Window], bool],
    blender: _Blender,
) -> None:
    """Run ``fn`` over each batch of windows (read at the mirrored ``index`` rows and columns),
    blend the results of the windows that reach the region, and release the rows that no later
    batch touches; the rest at the end."""
    iy, ix = index
    for i, group in enumerate(groups):
        blocks = np.stack([read(iy[w.y : w.y + w.h], ix[w.x : w.x + w.w]) for w in group])
        results = fn(blocks)
        for win, result in zip(group, results):
            if reaches(win):
                blender.add(win, result)
        if i + 1 < len(groups):
            blender.release(groups[i + 1][0].y)
    blender.release(blender.base + blender.acc.shape[1], last=True)


def stream_tiled(
    fn: Callable[[np.ndarray], np.ndarray],
    read: Callable[[np.ndarray, np.ndarray], np.ndarray],
    shape: tuple[int, int],
    n_out: int,
    sink: Callable[[int, np.ndarray], None],
    tile: int = 1024,
    margin: int = 64,
    batch: int = 1,
    flush_rows: int = 1,
    multiple: int = MULTIPLE,
    region: tuple[slice, slice] | None = None,
) -> None:
    """Apply ``fn`` over batches of blended overlapping windows of an image, streaming the result.

    Parameters
    ----------
    fn : callable
        Maps a batch ``(B, h, w, C)`` of windows (h, w multiples of ``multiple``) to ``(B, n_out, h, w)``.
    read : callable
        ``read(rows, cols)`` returns the image's pixels at the grid of the two index arrays
        (``(len(rows), len(cols), C)``; indices increase, and repeat where the padding mirrors).
    shape : (H, W)
        The image's size.
    n_out : int
        Output channels of ``fn``.
    sink : callable
        ``sink(row, block)`` receives the stitched result's rows ``row:row+n`` as ``(n_out, n, W)``
        float32, top to bottom; ``n`` is a multiple of ``flush_rows`` except for the last block.
    tile, margin : int
        Window stride and half the overlap (see the module docstring); one window when the padded
        image is no larger than ``tile + 2 * margin``.
    batch : int
        Windows per call of ``fn``.
    region : (slice, slice), optional
        Only this part of the image (rows, columns; steps of 1): the windows of the whole image
        that reach it run, in the whole image's batches, and the sink receives the region's rows
        (``row`` counted from its top, ``W`` its width), equal bit for bit to the same pixels of
        the whole image's result. Default: the whole image.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    pads, windows = plan_windows(shape, tile, margin, multiple)
    iy, ix = (mirror_index(n, *p) for n, p in zip(shape, pads))
    (r0, r1), (c0, c1) = _padded_region(region, shape, pads)
    if len(windows) == 1:  # the image fits in one window: nothing to blend
        result = np.asarray(fn(read(iy, ix)[None])[0], np.float32)
        sink(0, result[:, r0:r1, c0:c1])
        return

    def reaches(w: Window) -> bool:
        return w.y < r1 and w.y + w.h > r0 and w.x < c1 and w.x + w.w > c0

    groups = [group for group in (windows[i : i + batch] for i in range(0, len(windows), batch)) if any(map(reaches, group))]
    blender = _Blender(((r0, r1), (c0, c1)), n_out, sink, flush_rows, base=min(w.y for w in groups[0] if reaches(w)))
    _blend_groups(fn, read, (iy, ix), groups, reaches, blender)


def process_tiled(
    fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, n_out: int, tile: int = 1024, margin: int = 64, batch: int = 1, multiple: int = MULTIPLE
) -> np.ndarray:
    """:func:`stream_tiled` over an image in memory.

    Parameters
    ----------
    fn : callable
        Maps ``(B, h, w, C)`` to ``(B, n_out, h, w)``.
    image : (H, W, C) ndarray
        Already normalised over the whole image (never per tile).

    Returns
    -------
    (n_out, H, W) ndarray of float32
    """
    h, w = image.shape[:2]
    out = np.empty((n_out, h, w), np.float32)

    def sink(row: int, block: np.ndarray) -> None:
        out[:, row : row + block.shape[1]] = block

    stream_tiled(fn, lambda rows, cols: image[np.ix_(rows, cols)], (h, w), n_out, sink, tile, margin, batch, 1, multiple)
    return out
