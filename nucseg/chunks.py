"""Large probability maps segmented chunk by chunk, with the same nuclei as in one piece.

:func:`segment_map` cuts a ``(K, H, W)`` map into chunks of ``segment.chunk`` pixels (the
block grid of :func:`nucseg.tiling.blocks`); each chunk is segmented
(:func:`nucseg.watershed.segment_window`) inside a window ``overlap`` pixels wider on every
side; an object belongs to the chunk that holds its centroid, keeps its whole extent from that
chunk's window, and is numbered after the objects of the chunks before it. The statistics come
from the whole map (:func:`nucseg.watershed.map_statistics`), so an image that fits in one
chunk and the same image cut into many give the same nuclei. :func:`segment_probability` runs
a map held in memory as one chunk.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from nucseg.tiling import blocks
from nucseg.watershed import SegmentSettings, _grow, _read, _statistics, method_head, segment_window

log = logging.getLogger(__name__)


@dataclass
class ChunkResult:
    """The objects a chunk owns, numbered 1..n in the window (globally: ``offset + k``).

    Attributes
    ----------
    window : (slice, slice)
        Where ``labels`` lies in the image.
    labels : (h, w) ndarray of uint32
        The owned objects, whole, 0 elsewhere.
    count : int
    cut : int
        Owned objects touching an inner edge of the window (wider than the overlap).
    offset : int
        Objects of the chunks before this one (set by :func:`segment_map`).
    """

    window: tuple[slice, slice]
    labels: np.ndarray
    count: int
    cut: int
    offset: int = 0

    def paste(self, out) -> None:
        """Write the owned objects, numbered ``offset + k``, into the image-sized ``out``."""
        if not self.count:
            return
        region = np.asarray(out[self.window])
        inside = self.labels > 0
        region[inside] = self.labels[inside] + self.offset
        out[self.window] = region


def map_heads(maps, default: list[str]) -> list[str]:
    """The channel names of one image's maps: their ``heads`` attribute (:func:`nucseg.infer.predict_to_zarr`
    writes the heads of the model that predicted the image, which may be a folder's model for one
    modality with heads of its own), else ``default`` (the store's, for maps written before)."""
    return list(getattr(maps, "attrs", {}).get("heads", default))


def chunk_cores(shape: tuple[int, int], settings: SegmentSettings) -> list[tuple[slice, slice]]:
    """The chunks of a map of ``shape``, row-major: the order their objects are numbered in."""
    return list(blocks(shape, settings.chunk))


def _segment_chunk(
    maps, body: int, aux: int | None, core: tuple[slice, slice], stats: tuple[float, int], settings: SegmentSettings, cached: tuple | None = None
) -> ChunkResult:
    shape = tuple(maps.shape[1:])
    window = _grow(core, settings.overlap, shape)
    foreground = cached[1:] if cached is not None and cached[0] == window else None
    labels = segment_window(_read(maps, body, window), None if aux is None else _read(maps, aux, window), *stats, settings, foreground)
    n = int(labels.max(initial=0))
    if n == 0:
        return ChunkResult(window, np.zeros(labels.shape, np.uint32), 0, 0)
    pixels = np.flatnonzero(labels)
    ids = labels.ravel()[pixels]
    yy, xx = np.divmod(pixels, labels.shape[1])
    area = np.bincount(ids, minlength=n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.floor(np.bincount(ids, weights=yy, minlength=n + 1) / area) + window[0].start
        cx = np.floor(np.bincount(ids, weights=xx, minlength=n + 1) / area) + window[1].start
    owned = (area > 0) & (cy >= core[0].start) & (cy < core[0].stop) & (cx >= core[1].start) & (cx < core[1].stop)
    owned[0] = False
    number = np.cumsum(owned).astype(np.uint32) * owned
    out = number[labels]
    # owned objects reaching an edge of the window that is not an edge of the image were cut
    edges = []
    if window[0].start > 0:
        edges.append(out[0])
    if window[0].stop < shape[0]:
        edges.append(out[-1])
    if window[1].start > 0:
        edges.append(out[:, 0])
    if window[1].stop < shape[1]:
        edges.append(out[:, -1])
    cut = np.unique(np.concatenate(edges)) if edges else np.zeros(0, np.uint32)
    return ChunkResult(window, out, int(number.max()), int(np.count_nonzero(cut)))


def _channels(maps, heads: list[str] | tuple[str, ...], settings: SegmentSettings) -> tuple[int, int | None]:
    """The map's ``body`` channel, and the channel of the method's head (``border``, ``seed``)
    where the method uses one (else None), after checking the map's shape against ``heads``."""
    heads = list(heads)
    if len(maps.shape) != 3 or maps.shape[0] != len(heads):
        raise ValueError(f"expected a (K, H, W) map with K = {len(heads)} channels {heads}, got shape {tuple(maps.shape)}")
    if "body" not in heads:
        raise ValueError(f"the map has no 'body' channel (channels: {heads})")
    body = heads.index("body")
    head = method_head(settings, heads)
    return body, None if head is None else heads.index(head)


def _whole_map_statistics(maps, body: int, settings: SegmentSettings, statistics: tuple[float, int] | None) -> tuple[tuple[float, int], tuple | None]:
    """The whole map's threshold and marker spacing (``statistics`` when the caller has them), and
    what computing them cached for the chunks (None when given)."""
    if statistics is None:
        threshold, spacing, cached = _statistics(maps, body, settings)
        return (threshold, spacing), cached
    return statistics, None


def segment_map(
    maps,
    heads: list[str] | tuple[str, ...],
    settings: SegmentSettings,
    threads: int = 1,
    statistics: tuple[float, int] | None = None,
    cores: list[tuple[slice, slice]] | None = None,
) -> Iterator[ChunkResult]:
    """Segment a (K, H, W) probability map chunk by chunk; yield each chunk's owned objects.

    Parameters
    ----------
    maps : (K, H, W) array-like of float in [0, 1]
        numpy, or a zarr array (any float dtype, any chunking), read window by window.
    heads : sequence of str
        Channel names; ``"body"`` is required, ``"border"`` is used by method ``border`` and
        ``"seed"`` by method ``seed``.
    settings : SegmentSettings
    threads : int
        Chunks segmented at once; results are yielded in row-major chunk order.
    statistics : (float, int), optional
        The whole map's threshold and marker spacing (:func:`nucseg.watershed.map_statistics`)
        when the caller has them already (a region of a split image: :mod:`nucseg.merge`).
    cores : list of (slice, slice), optional
        Only these chunks of :func:`chunk_cores` (default: all); the offsets then count theirs only.

    Yields
    ------
    ChunkResult
        With ``offset`` set: the first chunk's objects are 1..n, the next chunk's follow.
        Memory stays bounded by ``2 * threads`` windows.
    """
    body, aux = _channels(maps, heads, settings)
    stats, cached = _whole_map_statistics(maps, body, settings, statistics)
    cores = chunk_cores(tuple(maps.shape[1:]), settings) if cores is None else cores
    offset = cut = 0
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending: deque = deque()
        queue = iter(cores)
        for core in queue:
            pending.append(pool.submit(_segment_chunk, maps, body, aux, core, stats, settings, cached))
            if len(pending) >= 2 * max(1, threads):
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(queue, None)
            if nxt is not None:
                pending.append(pool.submit(_segment_chunk, maps, body, aux, nxt, stats, settings, cached))
            result.offset = offset
            offset += result.count
            cut += result.cut
            yield result
    warn_cut(cut, settings)


def warn_cut(cut: int, settings: SegmentSettings) -> None:
    """Log the nuclei cut by the edge of their chunk's window, if any."""
    if cut:
        log.warning("%d nuclei reach the edge of their chunk's window: they are wider than segment.overlap (%d px), raise it", cut, settings.overlap)


# ---------------------------------------------------------------- the stage


#: The temporary label store of a large image (:func:`label_canvas`): its prefix, and its names.


def segment_probability(prob: np.ndarray, settings: SegmentSettings, border: np.ndarray | None = None, seed: np.ndarray | None = None) -> np.ndarray:
    """Instances from a nucleus probability map held in memory (the whole image at once).

    Parameters
    ----------
    prob : (H, W) ndarray of float in [0, 1]
        Nucleus (body) probability.
    settings : SegmentSettings
    border : (H, W) ndarray of float, optional
        Touching-border probability; used with method ``border``.
    seed : (H, W) ndarray of float, optional
        Shrunk-nucleus (seed) probability; used with method ``seed``.

    Returns
    -------
    (H, W) ndarray of uint32
        0 is background, nuclei numbered 1..N. All zeros when nothing passes the threshold.
    """
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2:
        raise ValueError(f"expected a 2-D probability map, got shape {prob.shape}")
    heads, maps = ["body"], [prob]
    for name, extra in (("border", border), ("seed", seed)):
        if extra is not None:
            if extra.shape != prob.shape:
                raise ValueError(f"{name} map {extra.shape} and probability map {prob.shape} differ in shape")
            heads.append(name)
            maps.append(np.asarray(extra, dtype=np.float32))
    maps = np.stack(maps)
    one = dataclasses.replace(settings, chunk=max(64, *prob.shape))  # the whole image in one window
    labels = np.zeros(prob.shape, np.uint32)
    for result in segment_map(maps, heads, one):
        result.paste(labels)
    return labels
