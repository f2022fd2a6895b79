"""napari widget: segment an image layer as ``nucseg segment`` does, into a labels layer.

Plugins > nucseg > Segment nuclei: choose the image layer, the model folder (the shipped model
by default) and the command's settings (threshold, scale, test-time augmentation, tile, engine,
device); Segment runs :func:`nucseg.segment_one.segment_in_memory`, the predict and segment steps
of the command, off the GUI thread, and adds a labels layer ``<image> nuclei`` whose features are
the nuclei's rows of ``objects.csv`` (the same columns and values the command writes). The same
image, model and settings give the labels the command writes into ``<name>.tif``.

The layer: 2-D grey, or RGB(A) (``rgb``), of any dtype :class:`nucseg.bigimage.LazyImage` takes;
a multiscale layer is segmented at full resolution. The labels layer takes the image layer's
``scale`` and ``translate``, so it lies over the image.
"""

# no `from __future__ import annotations`: magicgui reads the widget's annotations as types

import argparse
import logging
from pathlib import Path

import napari
import napari.layers
from magicgui import magic_factory
from napari.qt.threading import FunctionWorker, create_worker
from napari.utils.notifications import show_error, show_info

from nucseg import PRETRAINED_MODEL
from nucseg.infer import ENGINES, PredictSettings
from nucseg.model import DEVICES

log = logging.getLogger(__name__)

#: Predictors opened, by model folder and settings: a second click reuses the loaded model.
_PREDICTORS: dict[tuple, object] = {}
#: The workers running (one at a time).
_RUNNING: set = set()


def layer_image(layer: napari.layers.Image):
    """The full-resolution pixels of an image layer as a :class:`nucseg.bigimage.LazyImage`.

    Raises
    ------
    ValueError
        The layer is neither 2-D grey nor RGB(A); the message names its shape.
    """
    from nucseg.bigimage import LazyImage

    data = layer.data[0] if layer.multiscale else layer.data
    if layer.rgb:
        axes = "YXC"
    elif data.ndim == 2:
        axes = "YX"
    else:
        raise ValueError(f"{layer.name}: an image layer of shape {tuple(data.shape)}; nucseg segments one 2-D plane, grey or RGB (rgb layer)")
    return LazyImage(data, axes, layer.name)


def _option(parse, text: str, what: str):
    try:
        return parse(text.strip())
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"{what}: {exc}") from exc


def settings_from(threshold: str, scale: str, tta: bool, tile: int, engine: str, device: str):
    """The command's settings from the widget's values, checked as ``nucseg segment`` checks its
    options (``threshold``: ``otsu`` or a probability; ``scale``: ``auto`` or a factor).

    Returns
    -------
    (PredictSettings, SegmentSettings)

    Raises
    ------
    ValueError
        A value the command would refuse, named.
    """
    from nucseg.cli import _scale, _threshold
    from nucseg.postprocess import SegmentSettings

    predict = PredictSettings(tta=tta, tile=tile, engine=engine, device=device, scale=_option(_scale, scale, "scale"))
    return predict, SegmentSettings(threshold=_option(_threshold, threshold, "threshold"))


def _predictor(model: Path, settings: PredictSettings):
    from nucseg.infer import open_predictor

    if not (model / "config.json").is_file():
        raise ValueError(f"{model}: not a model folder (no config.json); choose the folder of a trained model")
    key = (str(model.resolve()), settings)
    if key not in _PREDICTORS:
        _PREDICTORS.clear()  # one model in memory
        _PREDICTORS[key] = open_predictor(model, settings)
    return _PREDICTORS[key]


def segment_layer(layer: napari.layers.Image, model: str | Path, predict_settings: PredictSettings, settings) -> tuple:
    """Segment an image layer (synchronously): the labels layer's ``(data, kwargs, "labels")``.

    Parameters
    ----------
    layer : napari.layers.Image
        2-D grey or RGB(A) (:func:`layer_image`).
    model : path-like
        A model folder (``config.json``, ``weights.pt``).
    predict_settings : nucseg.infer.PredictSettings
    settings : nucseg.postprocess.SegmentSettings

    Returns
    -------
    tuple
        ``(labels, kwargs, "labels")``: labels ``(H, W)`` uint16 (uint32 above 65,535 nuclei),
        all 0 for an image without nuclei; kwargs name the layer ``<image> nuclei`` and carry
        the nuclei's measurements as ``features`` (no rows when there are none).
    """
    from nucseg.napari.reader import as_features
    from nucseg.segment_one import segment_in_memory

    model = Path(model)
    image = layer_image(layer)
    predictor = _predictor(model, predict_settings)
    source = str(layer.source.path or "")
    labels, objects, row = segment_in_memory(predictor, image, layer.name, predict_settings, settings, source=source, model=str(model))
    kwargs = {
        "name": f"{layer.name} nuclei",
        "features": as_features(objects),
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "metadata": {"nucseg": {"image": row, "model": str(model)}},
    }
    return labels, kwargs, "labels"


def _add(viewer: napari.Viewer, layer_data: tuple) -> None:
    data, kwargs, _ = layer_data
    viewer.add_labels(data, **kwargs)
    show_info(f"nucseg: {kwargs['metadata']['nucseg']['image']['count']} nuclei in {kwargs['name'].removesuffix(' nuclei')}")


def _failed(exc: BaseException) -> None:
    log.error("segmentation failed: %s", exc)
    show_error(f"nucseg: {exc}")


@magic_factory(
    call_button="Segment",
    image={"label": "image layer"},
    model={"label": "model folder", "mode": "d", "tooltip": "a trained model folder (config.json, weights.pt); default the model shipped with nucseg"},
    threshold={"tooltip": "'otsu' or a probability in (0, 1), as nucseg segment --threshold"},
    scale={"tooltip": "'auto' (estimated per image) or a factor the image is resized by for the network (0.5 for nuclei twice the model's size)"},
    tta={"label": "test-time augmentation", "tooltip": "average over the 8 flips and rotations (8x slower)"},
    tile={"min": 32, "max": 8192, "step": 32, "tooltip": "window stride in pixels, a multiple of 32; lower it to fit a small GPU"},
    engine={"choices": list(ENGINES), "tooltip": "onnx: ONNX Runtime on the CPU; eager: PyTorch; auto: onnx on CPU, eager on CUDA"},
    device={"choices": list(DEVICES)},
)
def segment_widget(
    viewer: napari.Viewer,
    image: napari.layers.Image,
    model: Path = Path(PRETRAINED_MODEL),
    threshold: str = "otsu",
    scale: str = str(PredictSettings.scale),
    tta: bool = False,
    tile: int = PredictSettings.tile,
    engine: str = PredictSettings.engine,
    device: str = PredictSettings.device,
) -> FunctionWorker | None:
    """Segment ``image`` off the GUI thread; the labels layer is added when done.

    Returns the started worker (None when a value is refused or a segmentation is still
    running; the user is told why).
    """
    if _RUNNING:
        show_info("nucseg: a segmentation is still running")
        return None
    try:
        if image is None:
            raise ValueError("no image layer to segment: open an image first")
        predict_settings, settings = settings_from(threshold, scale, tta, tile, engine, device)
        layer_image(image)  # refused here, before the worker, with the layer named
    except ValueError as exc:
        _failed(exc)
        return None
    worker = create_worker(segment_layer, image, model, predict_settings, settings, _start_thread=False)
    worker.returned.connect(lambda layer_data: _add(viewer, layer_data))
    worker.errored.connect(_failed)
    worker.finished.connect(lambda: _RUNNING.discard(worker))
    _RUNNING.add(worker)
    worker.start()
    return worker
