"""Reading images and masks into well-defined arrays, and writing label images.

Every image, whatever its file format, bit depth or channel count, becomes an
``(H, W, 3) uint8`` array; label images are written as TIFF (uint16 or uint32),
never PNG or JPEG, which cannot hold more than 255 or 65,535 labels.

What is read: PNG (1-16 bit, grey, grey+alpha, RGB, RGBA, palette), JPEG, and
single-image TIFF (integer or float pixels, grey, grey+alpha, RGB(A) with its
samples interleaved or planar). A TIFF of several pages (a z-stack, a time
series, channels as pages) is refused with its page count: which page or
projection to segment is the user's choice, made by saving it as its own file.
An image is read whole into memory; one of more than :data:`MAX_PIXELS` pixels
is refused before decoding (Pillow's own lower bound against decompression
bombs, 179 million pixels, is lifted to it: microscopy images are legitimately large).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

from nucseg.files import atomic_file

log = logging.getLogger(__name__)

MIN_SIDE = 1
#: Largest image read, in pixels (height x width): 2**30, e.g. 32768 x 32768. Reading,
#: normalising and predicting an image whole takes about 20 bytes of memory per pixel, so
#: this is about 20 GB; larger images must be cut into tiles (or fields) first.
MAX_PIXELS = 1 << 30


def to_rgb_uint8(array: np.ndarray, source: str = "<array>") -> np.ndarray:
    """Turn a decoded image into an ``(H, W, 3) uint8`` array.

    Parameters
    ----------
    array : (H, W), (H, W, 1), (H, W, 2), (H, W, 3) or (H, W, 4) ndarray of bool, uint8, uint16 or float
        The decoded pixels ((H, W, 2): grey and alpha). Alpha is dropped; greyscale is repeated over three
        channels; 16-bit, wider integer and float images are scaled linearly
        from their minimum to their maximum onto 0..255, so nothing is clipped
        (contrast normalisation is a separate step: :func:`normalize_image`).
    source : str
        Name used in error messages (a file name).

    Returns
    -------
    (H, W, 3) ndarray of uint8
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] in (1, 2):  # grey, grey + alpha
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] in (3, 4):
        a = a[..., :3]
    else:
        raise ValueError(f"{source}: unsupported image shape {a.shape}; expected (H, W), (H, W, 2), (H, W, 3) or (H, W, 4)")
    if a.shape[0] < MIN_SIDE or a.shape[1] < MIN_SIDE:
        raise ValueError(f"{source}: empty image of shape {a.shape}")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{source}: image contains NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if hi <= lo:
            return np.zeros(a.shape, np.uint8)
        return np.round((a - lo) / (hi - lo) * 255).astype(np.uint8)
    raise TypeError(f"{source}: unsupported pixel type {a.dtype}")


class _Refused(ValueError):
    """A readable file that nucseg does not read (too large, several pages): its message stands as it is."""


def _check_size(height: int, width: int, source: str, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise _Refused(
            f"{source}: image of {height} x {width} pixels is too large to read whole "
            f"(more than {max_pixels:,} pixels, nucseg.imageio.MAX_PIXELS); cut it into tiles first"
        )


def _decode_tiff(data: bytes, source: str, max_pixels: int) -> np.ndarray:
    """One TIFF image as (H, W[, samples]); a file of several pages is refused."""
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            pages = [page for page in tif.pages if not page.is_reduced]  # not the pyramid's levels
            page = pages[0]
            axes = page.axes
            shape = dict(zip(axes, page.shape))
            if len(pages) == 1:
                _check_size(shape.get("Y", 1), shape.get("X", 1), source, max_pixels)
                array = page.asarray()
    except _Refused:
        raise
    except Exception as exc:  # tifffile raises many types for broken files
        raise ValueError(f"{source}: not a readable TIFF image ({exc})") from exc
    if len(pages) > 1:
        raise _Refused(
            f"{source}: TIFF of {len(pages)} pages (a z-stack, time series or channels as pages); nucseg segments "
            "one 2-D image per file: save the page (or a projection) to segment as a file of its own"
        )
    if axes == "SYX":  # planar samples (PlanarConfiguration 2): channels last
        array = np.moveaxis(array, 0, -1)
    if array.ndim > 3 or (array.ndim == 3 and axes not in ("YXS", "SYX")):
        raise ValueError(f"{source}: unsupported TIFF image of shape {array.shape} (axes {axes}); expected one 2-D grey or colour image")
    return array


_PIL_LIMIT = threading.Lock()


@contextlib.contextmanager
def _pil_pixel_limit(max_pixels: int):
    """Pillow refuses images over twice ``Image.MAX_IMAGE_PIXELS`` (a global, checked when a file
    is opened): lift it to ours while a file is opened (its size is then checked against
    ``max_pixels`` before decoding), and put it back."""
    with _PIL_LIMIT:
        before = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None if before is None else max(max_pixels, before)
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def _png_header(data: bytes) -> tuple[int, int] | None:
    """``(bit depth, colour type)`` of PNG bytes, or ``None`` when they are not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 26:
        return None
    return data[24], data[25]


def decode_image(data: bytes, source: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode image file bytes (PNG, JPEG, TIFF) into the raw pixel array.

    Parameters
    ----------
    data : bytes
        The file's contents.
    source : str
        The file as messages name it.
    max_pixels : int
        Largest image (height x width) decoded; see :data:`MAX_PIXELS`.

    Returns
    -------
    (H, W) or (H, W, C) ndarray
        The file's own pixels: bool, uint8, uint16 or float; C = 2 (grey and alpha), 3 or 4.

    Raises
    ------
    ValueError
        When the bytes are not an image any reader understands, are a TIFF of several pages,
        or hold more than ``max_pixels`` pixels; the message names ``source``.
    """
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _decode_tiff(data, source, max_pixels)
    try:
        with _pil_pixel_limit(max_pixels):  # held while the header is read, not while decoding
            opened = Image.open(io.BytesIO(data))
        with opened as im:
            _check_size(im.height, im.width, source, max_pixels)
            if _png_header(data) in ((16, 2), (16, 4), (16, 6)):
                # Pillow reads 16-bit RGB, grey+alpha and RGBA PNGs as 8-bit: libpng keeps the 16 bits
                return imagecodecs.png_decode(data)
            im.load()
            if im.mode in ("P", "PA"):
                im = im.convert("RGBA")
            elif im.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(im, dtype=np.uint16)
            return np.asarray(im)
    except _Refused:
        raise
    except Exception as exc:  # Pillow and libpng raise many types for broken files
        raise ValueError(f"{source}: not a readable image ({exc})") from exc


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def describe_pixels(array: np.ndarray) -> dict:
    """What a decoded image holds: ``bit_depth`` (1, 8, 16, 32 ...) and ``channels`` (1-4)."""
    a = np.asarray(array)
    return pixel_description(a.dtype, 1 if a.ndim == 2 else int(a.shape[2]))


def pixel_description(dtype: np.dtype, channels: int) -> dict:
    """:func:`describe_pixels` from a pixel type and a channel count (an image not decoded whole)."""
    return dict(bit_depth=1 if np.dtype(dtype) == bool else np.dtype(dtype).itemsize * 8, channels=int(channels))


def _display_name(path: Path) -> str:
    """The path, and the file it points to when it is a link (datasets link to users' files)."""
    return f"{path} (-> {path.resolve()})" if path.is_symlink() else str(path)


def read_image_info(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Read an image file: ``(H, W, 3) uint8`` pixels and :func:`describe_pixels` of the file's own.

    Raises
    ------
    ValueError
        The file cannot be read or is not an image; the message names it.
    """
    raw, name = _decode_file(path)
    return to_rgb_uint8(raw, name), describe_pixels(raw)


def _decode_file(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    path = Path(path)
    name = _display_name(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{name}: cannot read image file ({exc.strerror})") from exc
    return decode_image(data, name), name


def own_pixels(raw: np.ndarray) -> np.ndarray:
    """A decoded image's own pixels as nucseg keeps them: ``(H, W)`` for grey (grey + alpha, or a
    single channel), ``(H, W, 3)`` for colour (alpha dropped), the file's pixel type."""
    if raw.ndim == 3 and raw.shape[2] in (1, 2):
        return raw[..., 0]
    return raw[..., :3] if raw.ndim == 3 and raw.shape[2] == 4 else raw


def read_image_pixels(path: str | os.PathLike) -> np.ndarray:
    """Read an image file's own pixels (:func:`own_pixels`: any bit depth, grey or RGB)."""
    return own_pixels(_decode_file(path)[0])


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file into an ``(H, W, 3) uint8`` array (see :func:`to_rgb_uint8`)."""
    return read_image_info(path)[0]


#: Default percentiles of :func:`normalize_image`: model configs record them, and the
#: training store records each image's values at them (:func:`intensity_range`).
NORMALIZE_LOW, NORMALIZE_HIGH = 1.0, 99.8


def intensity_range(image: np.ndarray, low: float = NORMALIZE_LOW, high: float = NORMALIZE_HIGH) -> tuple[float, float]:
    """The values at the ``low`` and ``high`` percentiles of a whole image (all channels).

    The training store keeps them for every example (one pair per source image), so that a
    crop is normalised exactly as inference normalises the whole image it came from.
    """
    lo, hi = np.percentile(np.asarray(image, dtype=np.float32), [low, high])
    return float(lo), float(hi)


def rescale_intensity(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``lo`` to 0 and ``hi`` to 1 (float32), clipped to [-0.5, 1.5]; ``hi <= lo`` maps
    ``lo`` to 0 with unit scale (a constant image becomes zeros)."""
    scale = float(hi - lo) if hi > lo else 1.0
    return np.clip((np.asarray(image, dtype=np.float32) - lo) / scale, -0.5, 1.5).astype(np.float32)


def normalize_image(image: np.ndarray, low: float = NORMALIZE_LOW, high: float = NORMALIZE_HIGH, invert_dark: bool = False) -> np.ndarray:
    """Percentile-normalise a whole image to float32, about 0..1.

    The percentiles are taken over the whole image (all channels), never per
    tile, so that tiled inference leaves no seams; training crops use their
    source image's percentiles too (:func:`intensity_range`).

    Parameters
    ----------
    image : (H, W, C) ndarray
    low, high : float
        Percentiles mapped to 0 and 1.
    invert_dark : bool
        Invert the normalised image (``1 - x``) when its nuclei are dark on a light
        background (:func:`has_dark_nuclei`: bright-field, stained histology), so that the
        network sees bright nuclei on a dark background for every modality. A model records
        whether it was trained so (``config.json``: ``normalize.invert_dark``).

    Returns
    -------
    (H, W, C) ndarray of float32
        Values below ``low`` and above ``high`` percentiles fall slightly
        outside 0..1 and are clipped to [-0.5, 1.5].

    Examples
    --------
    >>> normalize_image(np.array([[[0], [100], [200]]], np.uint8), 0, 100).ravel()
    array([0. , 0.5, 1. ], dtype=float32)
    """
    x = rescale_intensity(image, *intensity_range(image, low, high))
    return invert(x) if invert_dark and has_dark_nuclei(image) else x


def invert(x: np.ndarray) -> np.ndarray:
    """``1 - x`` of a normalised image: [-0.5, 1.5] onto itself, 0 and 1 swapped."""
    return (1.0 - x).astype(np.float32)


def has_dark_nuclei(image: np.ndarray) -> bool:
    """Whether an image's nuclei are dark on a light background: any modality
    :func:`guess_modality` does not call fluorescence."""
    return guess_modality(image) != "fluorescence"


def guess_modality(image: np.ndarray) -> str:
    """Guess the imaging modality of an ``(H, W, 3)`` image.

    Returns ``"histology"`` for coloured images (stained tissue), otherwise
    ``"brightfield"`` when the background is light (dark nuclei), otherwise
    ``"fluorescence"`` (bright nuclei on a dark background).
    """
    a = np.asarray(image, dtype=np.float32)
    colour = np.abs(a[..., 0] - a[..., 1]).mean() + np.abs(a[..., 1] - a[..., 2]).mean()
    if colour > 10:
        return "histology"
    return "brightfield" if float(np.median(a)) > 100 else "fluorescence"


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write a label image as a compressed TIFF, atomically.

    Parameters
    ----------
    path : path-like
        Destination; written to a temporary name first, then renamed.
    labels : (H, W) ndarray of integers
        Stored as uint16 when the largest label fits, else uint32.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: label image must be a 2-D integer array, got {labels.shape} {labels.dtype}")
    low, high = int(labels.min(initial=0)), int(labels.max(initial=0))
    if low < 0 or high > np.iinfo(np.uint32).max:
        raise ValueError(f"{path}: labels must lie in 0..{np.iinfo(np.uint32).max}, got {low}..{high}")
    dtype = np.uint16 if high <= np.iinfo(np.uint16).max else np.uint32
    with atomic_file(path) as tmp:
        tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib")


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read a label TIFF written by :func:`write_labels`."""
    try:
        return tifffile.imread(path)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable label TIFF ({exc})") from exc
