"""The physical size of an image's pixels, read from the file where it says, never guessed.

:func:`read_pixel_size` reads, in this order of trust:

* **OME-TIFF**: ``Pixels/@PhysicalSizeY``, ``@PhysicalSizeX`` and their units (default µm);
* **ImageJ TIFF**: the ``unit`` of its description with the resolution tags (pixels per unit);
* **TIFF resolution tags** with ``ResolutionUnit`` centimetre or inch. A resolution in inches
  that is one of the usual screen and print resolutions (:data:`DISPLAY_DPI`: 72 dpi, 300 dpi
  ...) is what an image editor writes, not a microscope's calibration: it is ignored (and
  logged), as is ``ResolutionUnit`` none;
* **OME-Zarr**: the first level's ``scale`` transformation (times the multiscale's own) on the
  ``y`` and ``x`` axes, in their ``unit`` (an axis without a unit: unknown).

Anything else (PNG, JPEG, a TIFF without the tags) is unknown: :data:`UNKNOWN`, with ``source``
``"unknown"``. A size given by the user (``nucseg segment --pixel-size``, a dataset's
``pixel_size`` key) replaces the file's (:func:`resolve`); a disagreement of more than 1 % is
logged. Sizes are in micrometres; ``y`` and ``x`` may differ (anisotropic pixels: areas are
exact, lengths are not defined, :meth:`PixelSize.length`).
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Micrometres per unit, for the unit names OME, ImageJ and OME-NGFF write.
MICROMETRES = {
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
    "cm": 1e4,
    "centimeter": 1e4,
    "mm": 1e3,
    "millimeter": 1e3,
    "µm": 1.0,  # micro sign
    "μm": 1.0,  # Greek mu
    "\\u00b5m": 1.0,  # ImageJ's escaped micro sign
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "å": 1e-4,
    "angstrom": 1e-4,
    "pm": 1e-6,
    "picometer": 1e-6,
    "inch": 25400.0,
    "in": 25400.0,
}
#: Resolutions in dots per inch that image editors and scanners write by default; not a calibration.
DISPLAY_DPI = frozenset({72, 96, 100, 150, 200, 240, 300, 400, 600, 1200, 2400})
#: ``objects.csv``'s and ``images.csv``'s value of ``pixel_size_from`` for each way a size was found.
SOURCES = ("ome-tiff", "imagej", "tiff-resolution", "ome-zarr", "given", "unknown")
#: Relative difference above which a given size and the file's are reported as disagreeing.
TOLERANCE = 0.01


@dataclass(frozen=True)
class PixelSize:
    """A pixel's height ``y`` and width ``x`` in micrometres (NaN when unknown) and where they came from."""

    y: float = math.nan
    x: float = math.nan
    source: str = "unknown"

    @property
    def known(self) -> bool:
        return math.isfinite(self.y) and math.isfinite(self.x)

    @property
    def square(self) -> bool:
        return self.known and math.isclose(self.y, self.x, rel_tol=1e-6)

    @property
    def area(self) -> float:
        """µm² per pixel (NaN when unknown)."""
        return self.y * self.x

    @property
    def length(self) -> float:
        """µm per pixel for lengths in any direction: the size of a square pixel, else NaN
        (a perimeter or an axis length is not defined in µm on anisotropic pixels)."""
        return self.x if self.square else math.nan

    def columns(self) -> dict:
        """``images.csv``'s ``pixel_size_y_um``, ``pixel_size_x_um`` and ``pixel_size_from``."""
        return {"pixel_size_y_um": self.y, "pixel_size_x_um": self.x, "pixel_size_from": self.source}


UNKNOWN = PixelSize()


def from_columns(row) -> PixelSize:
    """The :class:`PixelSize` of a table row written by :meth:`PixelSize.columns` (UNKNOWN without them)."""
    try:
        y, x, source = float(row["pixel_size_y_um"]), float(row["pixel_size_x_um"]), str(row["pixel_size_from"])
    except (KeyError, TypeError, ValueError):
        return UNKNOWN
    return PixelSize(y, x, source) if math.isfinite(y) and math.isfinite(x) else UNKNOWN


def _checked(y: float, x: float, source: str, name: str) -> PixelSize:
    if not (math.isfinite(y) and math.isfinite(x) and y > 0 and x > 0):
        log.warning("%s: pixel size %g x %g µm from its %s metadata is not a positive number: pixel size unknown", name, y, x, source)
        return UNKNOWN
    return PixelSize(float(y), float(x), source)


def _unit(unit, name: str) -> float | None:
    factor = MICROMETRES.get(str(unit).strip().lower())
    if factor is None:
        log.warning("%s: unknown length unit %r in its metadata: pixel size unknown", name, unit)
    return factor


def _ome_xml(xml: str, name: str) -> PixelSize | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        log.warning("%s: unreadable OME-XML (%s): pixel size not read from it", name, exc)
        return None
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None
    sizes = []
    for axis in ("Y", "X"):
        value = pixels.attrib.get(f"PhysicalSize{axis}", pixels.attrib["PhysicalSizeX"])  # Y missing: square
        factor = _unit(pixels.attrib.get(f"PhysicalSize{axis}Unit", "µm"), name)
        if factor is None:
            return UNKNOWN
        try:
            sizes.append(float(value) * factor)
        except ValueError:
            log.warning("%s: OME-XML PhysicalSize%s %r is not a number: pixel size unknown", name, axis, value)
            return UNKNOWN
    return _checked(sizes[0], sizes[1], "ome-tiff", name)


def _resolution(tag) -> float:
    """Pixels per unit from a TIFF rational ``(numerator, denominator)``; NaN when not positive."""
    try:
        num, den = tag.value
        return num / den if num > 0 and den > 0 else math.nan
    except (TypeError, ValueError, ZeroDivisionError):
        return math.nan


def _tiff(path: Path, name: str) -> PixelSize:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if tif.is_ome and tif.ome_metadata:
            found = _ome_xml(tif.ome_metadata, name)
            if found is not None:
                return found
        page = tif.pages[0]
        tags = page.tags
        if "XResolution" not in tags or "YResolution" not in tags:
            return UNKNOWN
        per_y, per_x = _resolution(tags["YResolution"]), _resolution(tags["XResolution"])
        if tif.is_imagej and (tif.imagej_metadata or {}).get("unit"):
            unit = tif.imagej_metadata["unit"]
            if str(unit).strip().lower() in ("pixel", "pixels", ""):
                return UNKNOWN
            factor = _unit(unit, name)
            return UNKNOWN if factor is None else _checked(factor / per_y, factor / per_x, "imagej", name)
        resolution_unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2  # TIFF's default: inch
        if resolution_unit == 3:
            return _checked(1e4 / per_y, 1e4 / per_x, "tiff-resolution", name)
        if resolution_unit == 2:
            if per_x == per_y and per_x in DISPLAY_DPI:
                log.info("%s: resolution %g dpi is a screen or print default, not a calibration: pixel size unknown", name, per_x)
                return UNKNOWN
            return _checked(25400.0 / per_y, 25400.0 / per_x, "tiff-resolution", name)
    return UNKNOWN


def _ome_zarr(path: Path, name: str) -> PixelSize:
    import zarr

    node = zarr.open(path, mode="r")
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not isinstance(node, zarr.Group) or not multiscales:
        return UNKNOWN
    ms = multiscales[0]
    axes = [a if isinstance(a, dict) else {"name": a} for a in ms.get("axes", [])]
    scale = [1.0] * len(axes)
    for transforms in (ms["datasets"][0].get("coordinateTransformations", []), ms.get("coordinateTransformations", [])):
        for t in transforms:
            if t.get("type") == "scale" and len(t.get("scale", [])) == len(axes):
                scale = [a * b for a, b in zip(scale, t["scale"])]
    sizes = {}
    for axis, value in zip(axes, scale):
        if axis.get("name") in ("y", "x"):
            if "unit" not in axis:
                return UNKNOWN
            factor = _unit(axis["unit"], name)
            if factor is None:
                return UNKNOWN
            sizes[axis["name"]] = float(value) * factor
    if set(sizes) != {"y", "x"}:
        return UNKNOWN
    return _checked(sizes["y"], sizes["x"], "ome-zarr", name)


def read_pixel_size(path: str | os.PathLike) -> PixelSize:
    """The pixel size an image file or OME-Zarr records (see the module docstring); :data:`UNKNOWN`
    where it records none. Never raises for a readable image: metadata it cannot use is logged."""
    path = Path(path)
    name = str(path)
    try:
        if path.is_dir() or path.name.lower().endswith((".zarr", ".ome.zarr")):
            return _ome_zarr(path, name)
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return _tiff(path, name)
    except Exception as exc:  # metadata only: the image itself is read (and its errors named) elsewhere
        log.warning("%s: pixel size not read (%s)", name, exc)
    return UNKNOWN


def given(size: float | None) -> PixelSize | None:
    """A square pixel size given by the user in µm (None: not given)."""
    if size is None:
        return None
    size = float(size)
    if not (math.isfinite(size) and size > 0):
        raise ValueError(f"pixel size must be a positive number of micrometres, got {size}")
    return PixelSize(size, size, "given")


def resolve(path: str | os.PathLike | None, size: float | None = None) -> PixelSize:
    """The pixel size of an image: ``size`` (µm, given by the user) when given, else the file's.

    A given size that differs from the file's by more than :data:`TOLERANCE` is logged as a
    warning naming both."""
    user = given(size)
    found = UNKNOWN if path is None or str(path) == "" else read_pixel_size(path)
    if user is None:
        return found
    if found.known and not (math.isclose(found.y, user.y, rel_tol=TOLERANCE) and math.isclose(found.x, user.x, rel_tol=TOLERANCE)):
        log.warning("%s: the given pixel size %g µm replaces the file's %g x %g µm (%s)", path, user.x, found.y, found.x, found.source)
    return user
