"""Images of any size, read lazily, and their whole-image statistics in bounded memory.

:func:`open_image` opens an image file, a zarr array or an OME-Zarr image without decoding it
whole where the format allows:

* TIFF (classic and BigTIFF): an uncompressed, contiguous image is memory-mapped; a tiled or
  compressed one is read tile by tile through tifffile's zarr interface;
* zarr arrays and OME-Zarr images (the first, full-resolution level of ``multiscales``):
  read chunk by chunk;
* PNG and JPEG: decoded whole (their codecs cannot decode a window), 3 bytes a pixel.

:class:`LazyImage` serves any window of the image as the ``(h, w, 3) uint8`` pixels that
:func:`nucseg.imageio.to_rgb_uint8` gives for the whole image: 16-bit, wider and float images are
scaled from the *whole* image's minimum and maximum (found in one pass over its blocks), so a
window reads as the same window of the whole converted image.

:func:`image_statistics` gathers, in another pass over blocks, the histogram of those uint8
values (exact percentiles: :func:`nucseg.imageio.intensity_range` of the converted image, up to
float rounding) and a strided subsample of at most :data:`SUBSAMPLE_PIXELS` pixels on which
:func:`nucseg.imageio.has_dark_nuclei` guesses the modality (the whole image when it is no larger).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import zarr

from nucseg.imageio import IMAGE_SUFFIXES, guess_modality, pixel_description, read_image_pixels, to_rgb_uint8
from nucseg.tiling import blocks

log = logging.getLogger(__name__)

#: Side of the square blocks the statistics passes read.
BLOCK = 1024
#: At most this many pixels go into the modality guess's subsample.
SUBSAMPLE_PIXELS = 2048 * 2048
ZARR_SUFFIXES = (".zarr", ".ome.zarr")


class LazyImage:
    """A 2-D image, 1, 3 or 4 channels, read window by window.

    Parameters
    ----------
    array : array-like
        Anything sliceable with ``shape`` and ``dtype``: numpy array, memory map, zarr array.
    axes : str
        Its axes: ``"YX"``, ``"YXC"`` or ``"CYX"``.
    name : str
        Used in messages (the file name).
    """

    def __init__(self, array, axes: str, name: str) -> None:
        if axes not in ("YX", "YXC", "CYX") or len(array.shape) != len(axes):
            raise ValueError(f"{name}: unsupported image of shape {tuple(array.shape)} (axes {axes}); expected one 2-D plane with 1, 3 or 4 channels")
        self.array, self.axes, self.name = array, axes, name
        self.dtype = np.dtype(array.dtype)
        shape = tuple(int(n) for n in array.shape)
        self.shape = shape[1:] if axes == "CYX" else shape[:2]
        channels = 1 if axes == "YX" else shape[0 if axes == "CYX" else 2]
        if channels not in (1, 3, 4):
            raise ValueError(f"{name}: {channels} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA)")
        if min(self.shape) < 1:
            raise ValueError(f"{name}: empty image of shape {self.shape}")
        if not (self.dtype == bool or np.issubdtype(self.dtype, np.integer) or np.issubdtype(self.dtype, np.floating)):
            raise TypeError(f"{name}: unsupported pixel type {self.dtype}")
        self._range: tuple[float, float] | None = None

    def describe(self) -> dict:
        """``bit_depth`` and ``channels`` of the stored pixels, as :func:`nucseg.imageio.describe_pixels`
        gives them for the decoded file (alpha counted)."""
        shape = tuple(self.array.shape)
        return pixel_description(self.dtype, 1 if self.axes == "YX" else shape[0 if self.axes == "CYX" else 2])

    def raw(self, rows: slice, cols: slice) -> np.ndarray:
        """The stored pixels of a window, ``(h, w)`` or ``(h, w, C)``, alpha dropped."""
        if self.axes == "CYX":
            block = np.moveaxis(np.asarray(self.array[:, rows, cols]), 0, -1)
        else:
            block = np.asarray(self.array[rows, cols])
        return block[..., :3] if block.ndim == 3 and block.shape[2] == 4 else block

    def blocks(self, block: int = BLOCK):
        """``(rows, cols)`` slices of square blocks covering the image, row by row."""
        return blocks(self.shape, block)

    def value_range(self) -> tuple[float, float]:
        """Minimum and maximum over the whole image (one pass; cached)."""
        if self._range is None:
            lo, hi = math.inf, -math.inf
            for rows, cols in self.blocks():
                b = self.raw(rows, cols)
                if np.issubdtype(b.dtype, np.floating) and not np.all(np.isfinite(b)):
                    raise ValueError(f"{self.name}: image contains NaN or infinite values")
                lo, hi = min(lo, float(b.min())), max(hi, float(b.max()))
            self._range = (lo, hi)
        return self._range

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """A window as ``(h, w, 3) uint8``: the same pixels as :func:`nucseg.imageio.to_rgb_uint8`
        of the whole image, cut to the window."""
        b = self.raw(rows, cols)
        if self.dtype not in (np.uint8, bool):
            lo, hi = self.value_range()
            if hi <= lo:
                b = np.zeros(b.shape, np.uint8)
            else:  # to_rgb_uint8's scaling, with the whole image's range
                b = np.round((b.astype(np.float64) - lo) / (hi - lo) * 255).astype(np.uint8)
        return to_rgb_uint8(b, self.name)

    def read_rows(self, index_y: np.ndarray, index_x: np.ndarray) -> np.ndarray:
        """Pixels at the grid ``index_y x index_x`` (increasing, possibly repeated indices:
        mirrored padding), as ``(len(index_y), len(index_x), 3) uint8``; reads their bounding window."""
        y0, y1, x0, x1 = int(index_y.min()), int(index_y.max()) + 1, int(index_x.min()), int(index_x.max()) + 1
        window = self.read(slice(y0, y1), slice(x0, x1))
        if len(index_y) == y1 - y0 and len(index_x) == x1 - x0:  # no mirrored padding: the window itself
            return window
        return window[np.ix_(index_y - y0, index_x - x0)]

    def rgb(self) -> "RGBView":
        """The image as a read-only ``(H, W, 3) uint8`` array-like, sliced lazily (dask, measurements)."""
        return RGBView(self)

    @property
    def channels(self) -> int:
        """Channels of the stored pixels, alpha dropped: 1 (grey) or 3."""
        return 1 if self.axes == "YX" else min(3, int(self.array.shape[0 if self.axes == "CYX" else 2]))

    def pixels(self) -> "PixelsView":
        """The stored pixels as a read-only ``(H, W, C)`` array-like of the file's own type (C
        :attr:`channels`), sliced lazily: the raw intensities that ``objects.csv`` measures and the
        OME-Zarr holds."""
        return PixelsView(self)


class RGBView:
    """``(H, W, 3) uint8`` array-like over a :class:`LazyImage`: ``view[rows, cols(, channels)]``
    with slices reads only that window."""

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, image: LazyImage) -> None:
        self.image = image
        self.shape = tuple(image.shape) + (3,)

    def _window(self, rows: slice, cols: slice) -> np.ndarray:
        return self.image.read(rows, cols)

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        rows, cols, channels = (tuple(key) + (slice(None),) * 3)[:3]
        if not (isinstance(rows, slice) and isinstance(cols, slice)) or rows.step not in (None, 1) or cols.step not in (None, 1):
            raise TypeError(f"{self.image.name}: lazy images are sliced by unit-step row and column slices, got {key}")
        h, w = self.image.shape
        return self._window(slice(*rows.indices(h)), slice(*cols.indices(w)))[:, :, channels]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:, :]
        return whole if dtype is None else whole.astype(dtype)


class PixelsView(RGBView):
    """``(H, W, C)`` array-like of a :class:`LazyImage`'s stored pixels (its own type, alpha
    dropped), sliced as :class:`RGBView`."""

    def __init__(self, image: LazyImage) -> None:
        self.image = image
        self.dtype = np.dtype(np.uint8) if image.dtype == bool else image.dtype
        self.shape = tuple(image.shape) + (image.channels,)

    def _window(self, rows: slice, cols: slice) -> np.ndarray:
        block = self.image.raw(rows, cols)
        block = block[..., None] if block.ndim == 2 else block
        return block.astype(np.uint8) if block.dtype == bool else block


@dataclass(frozen=True)
class ImageStatistics:
    """Whole-image statistics for normalisation.

    Attributes
    ----------
    histogram : (256,) ndarray of int64
        Counts of the uint8 values over all pixels and all 3 channels.
    modality : str
        :func:`nucseg.imageio.guess_modality` of the (subsampled) image.
    stride : int
        The subsample's stride (1: the whole image).
    """

    histogram: np.ndarray
    modality: str
    stride: int

    @property
    def dark_nuclei(self) -> bool:
        """:func:`nucseg.imageio.has_dark_nuclei` of the (subsampled) image."""
        return self.modality != "fluorescence"

    def percentiles(self, low: float, high: float) -> tuple[float, float]:
        """Values at two percentiles, as :func:`numpy.percentile` (``method="linear"``) gives them
        over the pixels the histogram counts."""
        return histogram_percentile(self.histogram, low), histogram_percentile(self.histogram, high)


def histogram_percentile(histogram: np.ndarray, q: float) -> float:
    """The ``q``-th percentile of the values ``0..len(histogram)-1`` counted by ``histogram``,
    interpolated linearly between order statistics like :func:`numpy.percentile`.

    Examples
    --------
    >>> histogram_percentile(np.bincount([0, 10, 10, 20], minlength=21), 50)
    10.0
    """
    cumulative = np.cumsum(histogram)
    n = int(cumulative[-1])
    if n == 0:
        raise ValueError("percentile of an empty histogram")
    position = q / 100 * (n - 1)
    below = math.floor(position)
    v0 = int(np.searchsorted(cumulative, below, side="right"))
    v1 = int(np.searchsorted(cumulative, min(below + 1, n - 1), side="right"))
    return float(v0 + (v1 - v0) * (position - below))


def image_statistics(image: LazyImage, max_subsample: int = SUBSAMPLE_PIXELS) -> ImageStatistics:
    """Histogram and modality of a whole image, one block at a time (memory: one block).

    The modality guess runs on every ``stride``-th pixel in both directions, with the smallest
    stride that keeps the subsample within ``max_subsample`` pixels: the whole image when it fits.
    """
    h, w = image.shape
    stride = max(1, math.ceil(math.sqrt(h * w / max_subsample)))
    histogram = np.zeros(256, np.int64)
    sub = np.empty((-(-h // stride), -(-w // stride), 3), np.uint8)
    for rows, cols in image.blocks(BLOCK - BLOCK % stride if stride < BLOCK else stride):
        block = image.read(rows, cols)
        histogram += np.bincount(block.ravel(), minlength=256)
        # block starts are multiples of the stride, so the block's own stride grid is the image's
        sub[rows.start // stride : -(-rows.stop // stride), cols.start // stride : -(-cols.stop // stride)] = block[::stride, ::stride]
    return ImageStatistics(histogram=histogram, modality=guess_modality(sub), stride=stride)


def _ome_level0(group: zarr.Group, name: str) -> tuple[object, str]:
    """The full-resolution array of an OME-Zarr image group and its axes (t and z of size 1 dropped)."""
    attrs = dict(group.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        arrays = list(group.array_keys())
        if len(arrays) != 1:
            raise ValueError(f"{name}: a zarr group without OME-Zarr 'multiscales' must hold exactly one array, found {arrays}")
        array = group[arrays[0]]
        return array, _default_axes(array.shape, name)
    ms = multiscales[0]
    array = group[ms["datasets"][0]["path"]]
    axes = "".join((a["name"] if isinstance(a, dict) else a)[0].upper() for a in ms.get("axes", [])) or _default_axes(array.shape, name)
    index = tuple(0 if a in "TZ" else slice(None) for a in axes)
    extra = [a for a, n in zip(axes, array.shape) if a in "TZ" and n != 1]
    if extra:
        raise ValueError(f"{name}: OME-Zarr image with {', '.join(extra)} of more than one plane; nucseg segments one 2-D plane")
    return _Sliced(array, index), "".join(a for a in axes if a not in "TZ")


class _Sliced:
    """An array with leading singleton axes (t, z) fixed, sliceable lazily."""

    def __init__(self, array, index: tuple) -> None:
        self.array, self.index = array, index
        self.shape = tuple(n for n, i in zip(array.shape, index) if isinstance(i, slice))
        self.dtype = array.dtype

    def __getitem__(self, key):
        key = list(key if isinstance(key, tuple) else (key,))
        full = tuple(i if not isinstance(i, slice) else key.pop(0) if key else slice(None) for i in self.index)
        return self.array[full]


def _default_axes(shape: tuple, name: str) -> str:
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3 and shape[2] in (1, 3, 4):
        return "YXC"
    if len(shape) == 3 and shape[0] in (1, 3, 4):
        return "CYX"
    raise ValueError(f"{name}: unsupported image shape {tuple(shape)}; expected (H, W), (H, W, C) or (C, H, W) with C 1, 3 or 4")


def _open_tiff(path: Path, name: str) -> LazyImage:
    """Memory-map an uncompressed contiguous TIFF, else open it through tifffile's zarr store."""
    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.series) > 1:  # pages that are separate images, not one image's pyramid
                raise ValueError(
                    f"{name}: TIFF of {len(tif.pages)} pages in {len(tif.series)} images (a z-stack, time series or channels as "
                    "pages); nucseg segments one 2-D image per file: save the page (or a projection) to segment as a file of its own"
                )
            series = tif.series[0]
            axes, shape, contiguous = series.axes, series.shape, series.dataoffset is not None
        mapped = {"YX": "YX", "YXS": "YXC", "YXC": "YXC", "SYX": "CYX", "CYX": "CYX"}.get(axes)
        if mapped is None:
            raise ValueError(f"{name}: TIFF with axes {axes} and shape {shape}; nucseg segments one 2-D plane with 1, 3 or 4 channels")
        if contiguous:
            array = tifffile.memmap(path, mode="r")
        else:
            array = zarr.open(tifffile.imread(path, aszarr=True, series=0, level=0), mode="r")
    except (tifffile.TiffFileError, OSError, KeyError, IndexError) as exc:
        raise ValueError(f"{name}: not a readable TIFF image ({exc})") from exc
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name}: TIFF reads as {tuple(array.shape)}, its series says {shape}")
    return LazyImage(array, mapped, name)


def open_image(path: str | os.PathLike) -> LazyImage:
    """Open an image file or zarr store for window-by-window reading (see the module docstring).

    Raises
    ------
    ValueError
        The file is missing, unreadable, not an image, or not one 2-D plane; the message names it.
    """
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise ValueError(f"{name}: no such file or folder")
    lower = path.name.lower()
    if path.is_dir() or lower.endswith(ZARR_SUFFIXES):
        try:
            node = zarr.open(path, mode="r")
        except Exception as exc:  # zarr raises several types for a folder that is no store
            raise ValueError(f"{name}: not a readable zarr array or OME-Zarr image ({exc})") from exc
        array, axes = _ome_level0(node, name) if isinstance(node, zarr.Group) else (node, _default_axes(node.shape, name))
        return LazyImage(array, axes, name)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ValueError(f"{name}: cannot read image file ({exc.strerror})") from exc
    if magic in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _open_tiff(path, name)
    if not lower.endswith(IMAGE_SUFFIXES):
        log.warning("%s: unknown suffix; trying to decode it as PNG/JPEG", name)
    pixels = read_image_pixels(path)
    return LazyImage(pixels, "YX" if pixels.ndim == 2 else "YXC", name)
