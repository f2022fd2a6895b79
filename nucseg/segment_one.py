"""One image through ``nucseg segment``'s steps: probability maps, then labels and measurements.

``nucseg segment`` (:mod:`nucseg.cli`) calls :func:`predict_maps` and :func:`segment_maps` for
each input file, writing the files into its output folder; the napari widget
(:mod:`nucseg.napari`) calls :func:`segment_in_memory` on an image layer, which runs the same two
functions and keeps the label image instead of writing it. The same image, model and settings
give the same labels and the same rows of ``objects.csv`` either way.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def predict_maps(predictor, image, group, name: str, settings):
    """The predict step: one image's probability maps into ``group[name]``.

    Parameters
    ----------
    predictor : nucseg.infer.Predictor
    image : nucseg.bigimage.LazyImage
    group : zarr.Group
    name : str
    settings : nucseg.infer.PredictSettings

    Returns
    -------
    zarr.Array
        ``(K, H, W)`` float16 in [0, 1], one channel per ``predictor.heads``.
    """
    from nucseg.infer import predict_to_zarr

    return predict_to_zarr(predictor, image, group, name, settings)


def segment_maps(
    maps,
    heads: list[str],
    image,
    image_id: str,
    settings,
    scratch: str | os.PathLike,
    tables: list,
    writers,
    source: str = "",
    model: str = "",
    pixel_size=None,
) -> dict:
    """The segment step: labels, measurements and files of one image from its maps.

    Parameters
    ----------
    maps : (K, H, W) array-like of float
        :func:`predict_maps`' result.
    heads : list of str
    image : nucseg.bigimage.LazyImage
        The image the maps were predicted from: its 0-255 RGB and its own pixels (the
        measurements, the ``raw_*`` columns, the OME-Zarr).
    image_id : str
    settings : nucseg.postprocess.SegmentSettings
    scratch : path-like
        Folder for a temporary label store (large images).
    tables : list
        Receives the image's object tables (``image_id`` + :data:`nucseg.measure.COLUMNS`), one
        per chunk that has nuclei: none for an image without nuclei.
    writers : nucseg.outputs.ImageWriters
    source, model : str
        The input's path and the model folder, for the per-image table.
    pixel_size : nucseg.calibration.PixelSize, optional
        The µm columns, the TIFF's resolution, the OME-Zarr's scale (:func:`nucseg.calibration.resolve`); unknown without it.

    Returns
    -------
    dict
        The image's row of ``images.csv``.
    """
    from nucseg.postprocess import segment_image

    return segment_image(
        maps, heads, image.rgb(), image_id, settings, scratch, tables.append, writers, source=source, model=model, raw=image.pixels(), pixel_size=pixel_size
    )


class _KeptLabels:
    """:class:`nucseg.outputs.ImageWriters` that writes no file and keeps the label image."""

    def __init__(self) -> None:
        from nucseg.outputs import ImageWriters

        self._none = ImageWriters()
        self.labels_image: np.ndarray | None = None

    def objects(self, image_id: str):
        return self._none.objects(image_id)

    def labels(self, image_id: str, labels, count: int, image=None, pixel_size=None, objects=None) -> None:
        from nucseg.outputs import label_dtype

        self.labels_image = np.asarray(labels).astype(label_dtype(count))


def segment_in_memory(predictor, image, name: str, predict_settings, settings, source: str = "", model: str = "") -> tuple[np.ndarray, pd.DataFrame, dict]:
    """Segment one image as ``nucseg segment`` does, keeping the results instead of writing files.

    The maps go into a temporary folder, removed afterwards (as does the label store of an image
    over :data:`nucseg.postprocess.IN_MEMORY_PIXELS`; the returned labels are in memory).

    Parameters
    ----------
    predictor : nucseg.infer.Predictor
        :func:`nucseg.infer.open_predictor` of the model folder with ``predict_settings``.
    image : nucseg.bigimage.LazyImage
        ``(H, W)`` grey or ``(H, W, 3|4)`` colour pixels of any dtype that
        :class:`~nucseg.bigimage.LazyImage` takes.
    name : str
        The image's id in the tables.
    predict_settings : nucseg.infer.PredictSettings
    settings : nucseg.postprocess.SegmentSettings
    source, model : str
        For the per-image row.

    Returns
    -------
    labels : (H, W) ndarray of uint16 (uint32 above 65,535 nuclei)
        0 background, 1..N the nuclei; all 0 for an image without nuclei.
    objects : pandas.DataFrame
        One row per nucleus, ``image_id`` + :data:`nucseg.measure.COLUMNS` (no rows, the same
        columns, for an image without nuclei).
    row : dict
        The image's row of ``images.csv``.
    """
    import zarr

    from nucseg.chunks import map_heads
    from nucseg.measure import COLUMNS

    with tempfile.TemporaryDirectory(prefix="nucseg-") as tmp:
        group = zarr.open_group(Path(tmp) / "maps.zarr", mode="w")
        maps = predict_maps(predictor, image, group, name, predict_settings)
        tables: list[pd.DataFrame] = []
        writers = _KeptLabels()
        row = segment_maps(maps, map_heads(maps, predictor.heads), image, name, settings, tmp, tables, writers, source=source, model=model)
    objects = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["image_id", *COLUMNS])
    return writers.labels_image, objects, row
