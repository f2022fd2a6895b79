"""napari reader of nucseg's outputs: ``<name>.ome.zarr`` and the label TIFF ``<name>.tif``.

What it takes (anything else it leaves to napari's other readers, :func:`get_reader` returning
None):

``<name>.ome.zarr`` with ``labels/nuclei``
    As :func:`nucseg.outputs.write_ome_zarr` writes it (``nucseg segment``, the workflow's
    ``ome_zarr/``): the image as a multiscale image layer (3 channels of uint8 as RGB; one
    channel as one grey layer; other counts one layer per channel, coloured and windowed as
    its ``omero`` metadata says) and the nuclei as a multiscale labels layer.
``<name>.tif`` beside (or one folder below) an ``images.csv`` that lists ``<name>``
    A label TIFF of ``nucseg segment`` or of the workflow's ``labels/``: a labels layer.

Each labels layer carries its nuclei's rows of ``objects.csv`` (found in the same folder or the
one above, as the command and the workflow lay them out) as its ``features``, one row per label
(the ``index`` column), every column the table has: napari shows them under the pointer. No
table: no features. Large arrays are read lazily (dask; a tiled TIFF through its zarr store).

This module imports nothing of napari: the layers are napari's plain ``(data, kwargs,
layer_type)`` tuples.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: The labels image nucseg writes into its OME-Zarr files.
LABELS_NAME = "nuclei"
#: The tables ``nucseg segment`` and the workflow write beside (or one folder above) the images' files.
OBJECTS_TABLE, IMAGES_TABLE = "objects.csv", "images.csv"
LABEL_SUFFIXES = (".tif", ".tiff")
#: Rows of ``objects.csv`` read at a time while picking one image's (memory: one block).
TABLE_BLOCK = 200_000
#: Label TIFFs with more pixels are read lazily, tile by tile.
LAZY_PIXELS = 4096 * 4096
#: ``omero`` channel colours with a napari colormap of their own name.
_NAMED_COLOURS = {"FFFFFF": "gray", "FF0000": "red", "00FF00": "green", "0000FF": "blue", "FF00FF": "magenta", "00FFFF": "cyan", "FFFF00": "yellow"}

LayerData = tuple  # (data, kwargs, layer_type)
PathOrPaths = str | os.PathLike | Sequence[str | os.PathLike]


def get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerData]] | None:
    """napari's reader hook: :func:`read_outputs` when every path is a nucseg output, else None."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(is_nucseg_output(p) for p in paths):
        return None
    return read_outputs


def read_outputs(path: PathOrPaths) -> list[LayerData]:
    """The layers of one or several nucseg outputs, in order (:func:`read_output` of each)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    return [layer for p in paths for layer in read_output(p)]


def is_nucseg_output(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an OME-Zarr with ``labels/nuclei`` or a label TIFF listed in its
    folder's ``images.csv`` (see the module docstring). Never raises."""
    path = Path(path)
    try:
        if path.is_dir():
            return path.name.lower().endswith(".zarr") and _nuclei_group(path) is not None
        return path.suffix.lower() in LABEL_SUFFIXES and _is_label_tiff(path)
    except Exception as exc:  # a reader hook that raises stops napari's search for another reader
        log.debug("%s: not a nucseg output (%s)", path, exc)
        return False


def read_output(path: str | os.PathLike) -> list[LayerData]:
    """The layers of one nucseg output: image layer(s) and the labels layer of an OME-Zarr, the
    labels layer of a label TIFF.

    Raises
    ------
    ValueError
        ``path`` is not a nucseg output (:func:`is_nucseg_output`).
    """
    path = Path(path)
    if not is_nucseg_output(path):
        raise ValueError(f"{path}: not an OME-Zarr with labels/{LABELS_NAME} nor a label TIFF listed in an {IMAGES_TABLE} beside it")
    return read_ome_zarr(path) if path.is_dir() else [read_label_tiff(path)]


def image_id(path: str | os.PathLike) -> str:
    """The image's id in the tables: the file name without ``.ome.zarr``, ``.zarr`` or ``.tif``."""
    name = Path(path).name
    for suffix in (".ome.zarr", ".zarr", *LABEL_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# ---------------------------------------------------------------- OME-Zarr


def _ome(attrs) -> dict:
    """NGFF metadata of a group: under ``ome`` (0.5, zarr 3), else at the top (0.4)."""
    attrs = dict(attrs)
    return dict(attrs.get("ome", attrs))


def _nuclei_group(path: Path):
    """The ``labels/nuclei`` group of an OME-Zarr, or None when it has none."""
    import zarr

    root = zarr.open_group(path, mode="r")
    if "labels" not in root:
        return None
    labels = root["labels"]
    if LABELS_NAME not in _ome(labels.attrs).get("labels", []) or LABELS_NAME not in labels:
        return None
    nuclei = labels[LABELS_NAME]
    return nuclei if _ome(nuclei.attrs).get("multiscales") else None


def _pyramid(group) -> tuple[list, list[str], list[str], list[float]]:
    """A multiscale group's levels (dask arrays, full resolution first), its axes' names and
    types, and the full-resolution level's scale per axis."""
    import dask.array as da

    multiscale = _ome(group.attrs)["multiscales"][0]
    axes = [a if isinstance(a, dict) else {"name": a} for a in multiscale.get("axes", [])]
    names = [str(a["name"]).lower() for a in axes]
    types = [str(a.get("type", "")).lower() for a in axes]
    levels = [da.from_zarr(group[d["path"]]) for d in multiscale["datasets"]]
    if not names:
        names = ["c", "y", "x"][-levels[0].ndim :]
        types = ["channel", "space", "space"][-levels[0].ndim :]
    scale = [1.0] * len(names)
    for transform in multiscale["datasets"][0].get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            scale = [float(s) for s in transform["scale"]]
    return levels, names, types, scale


def _drop_axis(levels: list, names: list, types: list, scale: list, axis: int) -> tuple[list, list, list, list]:
    keep = [i for i in range(len(names)) if i != axis]
    levels = [level[tuple(0 if i == axis else slice(None) for i in range(level.ndim))] for level in levels]
    return levels, [names[i] for i in keep], [types[i] for i in keep], [scale[i] for i in keep]


def _squeeze_planes(levels: list, names: list, types: list, scale: list) -> tuple[list, list, list, list]:
    """Time and z axes of one plane dropped (nucseg writes none; other writers add them)."""
    for axis in reversed(range(len(names))):
        if (names[axis] in ("t", "z") or types[axis] == "time") and levels[0].shape[axis] == 1:
            levels, names, types, scale = _drop_axis(levels, names, types, scale, axis)
    return levels, names, types, scale


def _data(levels: list):
    """napari's multiscale list, or the one array of a single-level pyramid."""
    return levels if len(levels) > 1 else levels[0]


def _colormap(colour: str | None) -> str:
    colour = (colour or "FFFFFF").upper().lstrip("#")
    return _NAMED_COLOURS.get(colour, f"#{colour.lower()}")


def _image_layers(root, name: str, metadata: dict) -> list[LayerData]:
    """The image of an OME-Zarr's root group as napari layer data (none when it has no image)."""
    if not _ome(root.attrs).get("multiscales"):
        return []
    levels, names, types, scale = _squeeze_planes(*_pyramid(root))
    channel = next((i for i, (n, t) in enumerate(zip(names, types)) if t == "channel" or n == "c"), None)
    channels = _ome(root.attrs).get("omero", {}).get("channels", [])
    kwargs = {"name": name, "metadata": metadata}
    if channel is None:
        return [(_data(levels), {**kwargs, "scale": scale}, "image")]
    count = levels[0].shape[channel]
    if count == 3 and levels[0].dtype == np.uint8:  # RGB: napari's rgb wants the channels last
        spatial = [s for i, s in enumerate(scale) if i != channel]
        return [(_data([_channels_last(level, channel) for level in levels]), {**kwargs, "rgb": True, "scale": spatial}, "image")]
    if count == 1:
        levels, names, types, scale = _drop_axis(levels, names, types, scale, channel)
        own = channels[0] if channels else {}
        kwargs.update(colormap=_colormap(own.get("color")), **_window(own))
        return [(_data(levels), {**kwargs, "scale": scale}, "image")]
    spatial = [s for i, s in enumerate(scale) if i != channel]
    names_of = [str(c.get("label") or f"{name} c{i}") for i, c in enumerate(channels)] if len(channels) == count else [f"{name} c{i}" for i in range(count)]
    kwargs.update(channel_axis=channel, name=names_of, scale=spatial, blending="additive")
    if len(channels) == count:
        kwargs["colormap"] = [_colormap(c.get("color")) for c in channels]
        windows = [_window(c).get("contrast_limits") for c in channels]
        if all(w is not None for w in windows):
            kwargs["contrast_limits"] = windows
    return [(_data(levels), kwargs, "image")]


def _channels_last(array, axis: int):
    """``array`` with ``axis`` moved last (lazily, dask)."""
    import dask.array as da

    return da.moveaxis(array, axis, -1)


def _window(channel: dict) -> dict:
    """``contrast_limits`` from an ``omero`` channel's ``window`` (start, end), when it has one."""
    window = channel.get("window") or {}
    if "start" in window and "end" in window and float(window["end"]) > float(window["start"]):
        return {"contrast_limits": [float(window["start"]), float(window["end"])]}
    return {}


def read_ome_zarr(path: str | os.PathLike) -> list[LayerData]:
    """An OME-Zarr of nucseg: the image layer(s), then the nuclei's labels layer with their
    measurements (:func:`nucleus_features`)."""
    import zarr

    path = Path(path)
    name = image_id(path)
    root = zarr.open_group(path, mode="r")
    metadata = {"nucseg": {"path": str(path), "image_id": name}}
    layers = _image_layers(root, name, metadata)
    nuclei = _nuclei_group(path)
    levels, names, types, scale = _squeeze_planes(*_pyramid(nuclei))
    kwargs = {"name": f"{name} {LABELS_NAME}", "scale": scale, "metadata": metadata, "visible": True}
    features = nucleus_features(path, name)
    if features is not None:
        kwargs["features"] = features
    layers.append((_data(levels), kwargs, "labels"))
    return layers


# ---------------------------------------------------------------- label TIFF and tables


def _table_folder(path: Path, table: str) -> Path | None:
    """The folder of ``table`` for an output: the output's own folder (``nucseg segment``) or
    the one above it (the workflow's ``labels/``, ``ome_zarr/``)."""
    for folder in (path.parent, path.parent.parent):
        if (folder / table).is_file():
            return folder
    return None


def _is_label_tiff(path: Path) -> bool:
    folder = _table_folder(path, IMAGES_TABLE)
    if folder is None or not path.is_file():
        return False
    ids = pd.read_csv(folder / IMAGES_TABLE, usecols=["image_id"], dtype={"image_id": str}, keep_default_na=False)["image_id"]
    if image_id(path) not in set(ids):
        return False
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        return len(tif.series) == 1 and len(series.shape) == 2 and np.issubdtype(series.dtype, np.integer)


def read_label_tiff(path: str | os.PathLike) -> LayerData:
    """A label TIFF of nucseg as a labels layer with its nuclei's measurements (:func:`nucleus_features`)."""
    import tifffile

    path = Path(path)
    name = image_id(path)
    with tifffile.TiffFile(path) as tif:
        shape = tif.series[0].shape
    if shape[0] * shape[1] > LAZY_PIXELS:
        import zarr

        data = zarr.open(tifffile.imread(path, aszarr=True, series=0, level=0), mode="r")
    else:
        data = tifffile.imread(path)
    kwargs = {"name": f"{name} {LABELS_NAME}", "metadata": {"nucseg": {"path": str(path), "image_id": name}}}
    features = nucleus_features(path, name)
    if features is not None:
        kwargs["features"] = features
    return data, kwargs, "labels"


def nucleus_features(path: str | os.PathLike, name: str) -> pd.DataFrame | None:
    """The rows of image ``name`` in the ``objects.csv`` of an output at ``path`` (its folder or
    the one above), as a labels layer's features: ``index`` (the label) first, then every column
    of the table but ``image_id``, whatever columns the table has. An empty table for an image
    without nuclei; None where there is no table or it has no ``label`` column (logged).

    The table is read in blocks of :data:`TABLE_BLOCK` rows (memory: a block and the image's rows).
    """
    folder = _table_folder(Path(path), OBJECTS_TABLE)
    if folder is None:
        return None
    table = folder / OBJECTS_TABLE
    columns = pd.read_csv(table, nrows=0).columns
    if "image_id" not in columns or "label" not in columns:
        log.warning("%s: no image_id and label columns; %s shown without measurements", table, name)
        return None
    blocks = pd.read_csv(table, dtype={"image_id": str}, keep_default_na=False, na_values=[""], chunksize=TABLE_BLOCK)
    parts = [block[block["image_id"] == name] for block in blocks]
    return as_features(pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns))


def as_features(objects: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``objects.csv`` (one image's) as a labels layer's features: ``index`` (the label,
    which napari looks each row up by) first, then the table's columns but ``image_id``."""
    features = objects.drop(columns="image_id", errors="ignore").reset_index(drop=True)
    features.insert(0, "index", features["label"].astype(np.int64))
    return features
