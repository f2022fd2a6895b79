"""Predict stage: probability maps of images of any size from a trained model.

One function per image, :func:`predict_to_zarr`, serves the workflow's predict rule
(:func:`predict_dataset`) and the command line (``nucseg segment`` / ``nucseg predict``):

1. whole-image statistics in bounded memory (:func:`nucseg.bigimage.image_statistics`): the
   percentiles of the model's ``normalize`` setting and, for a model trained with
   ``invert_dark``, whether the image's nuclei are dark (then it is inverted after rescaling);
2. overlapping windows read lazily, normalised with those whole-image values, run through the
   network in batches (optionally with test-time augmentation: the eight flips and 90-degree
   rotations, averaged) and blended with a smooth weight (:mod:`nucseg.tiling`);
3. the stitched map streams into a chunked zarr array, float16, chunk row by chunk row.

Engines (:class:`PredictSettings` ``engine``): ``eager`` (plain PyTorch, the reference; on CUDA
with float16 autocast), ``onnx`` (ONNX Runtime on the CPU; the exported graph is cached beside
the weights as ``weights-<hash>.onnx``, keyed by the weights, the architecture and the torch
version), ``onnx-int8`` (that graph statically quantised to 8 bits, calibrated on the embedded
sample's training images: :mod:`nucseg.int8`), ``auto`` (``onnx`` on the CPU, ``eager`` on
CUDA). Measured in ``BENCHMARKS.md``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import zarr
from scipy.special import expit

from nucseg.bigimage import ImageStatistics, LazyImage, image_statistics
from nucseg.files import atomic_dir
from nucseg.imageio import NORMALIZE_HIGH, NORMALIZE_LOW, invert, rescale_intensity
from nucseg.int8 import MODALITIES, int8_model, quantization_available
from nucseg.model import DEVICES, choose_device
from nucseg.modelfolder import cache_graph, cached_graph, load_model
from nucseg.scale import DEFAULT_NUCLEI, estimate_scale
from nucseg.tiling import MULTIPLE, stream_tiled

log = logging.getLogger(__name__)

ENGINES = ("auto", "eager", "onnx", "onnx-int8")
ONNX_OPSET = 17
_EXPORTED: dict[str, bytes] = {}


@dataclass(frozen=True)
class PredictSettings:
    """Inference settings.

    Attributes
    ----------
    tta : bool
        Average over the 8 flips/rotations (8x slower, smoother maps).
    tile : int
        Stride of the tiling windows, pixels; a multiple of 32. Windows are ``tile + 2 * margin``.
    margin : int
        Half the overlap of neighbouring windows, blended smoothly; a multiple of 16.
    batch : int
        Windows per forward pass (more uses more memory; helps a GPU).
    engine : {"auto", "eager", "onnx", "onnx-int8"}
        ``eager``: plain PyTorch; ``onnx``: ONNX Runtime (CPU); ``onnx-int8``: ONNX Runtime with
        the graph quantised to 8 bits (CPU, :mod:`nucseg.int8`); ``auto``: onnx on CPU, eager on CUDA.
    chunk : int
        Chunk side of the probability maps' zarr arrays, pixels.
    device : {"auto", "cpu", "cuda"}
    scale : float or "auto"
        Each window is resized by this factor before the network and its maps back after
        (bilinear): for objects of another size in pixels than the model was trained on, the
        factor that brings them to the training size (0.4 for cells 2.5x larger). The tiling,
        the statistics and the maps stay at the image's own resolution. ``"auto"``: each image's
        own factor, estimated from a probe of it (:mod:`nucseg.scale`), logged and recorded in
        its maps' attributes.
    """

    tta: bool = False
    tile: int = 1024
    margin: int = 128
    batch: int = 1
    engine: str = "auto"
    chunk: int = 1024
    device: str = "auto"
    scale: float | str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.scale, str):
            if self.scale != "auto":
                raise ValueError(f"predict scale must be a number or 'auto', got {self.scale!r}")
        elif not 0.05 <= self.scale <= 20:
            raise ValueError(f"predict scale must be between 0.05 and 20, got {self.scale}")
        if self.tile < 32 or self.tile % 32:
            raise ValueError(f"predict tile must be a positive multiple of 32, got {self.tile}")
        if self.margin < 0 or self.margin % 16:
            raise ValueError(f"predict margin must be a multiple of 16 and >= 0, got {self.margin}")
        if self.batch < 1:
            raise ValueError(f"predict batch must be >= 1, got {self.batch}")
        if self.chunk < 1:
            raise ValueError(f"predict chunk must be >= 1, got {self.chunk}")
        if self.engine not in ENGINES:
            raise ValueError(f"predict engine must be one of {list(ENGINES)}, got {self.engine!r}")
        if self.device not in DEVICES:
            raise ValueError(f"predict device must be auto, cpu or cuda, got {self.device!r}")


# Engines: (B, 3, h, w) float32 ndarray -> (B, K, h, w) float32 logits.


class EagerEngine:
    """Plain PyTorch; float16 autocast on CUDA."""

    name = "eager"

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model, self.device = model.to(device).eval(), device

    @torch.inference_mode()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda"):
            return self.model(t).float().cpu().numpy()


def _session(data: bytes, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _cached_session(build, threads: int | None, what: str):
    """A session of the graph ``build(refresh)`` returns as ``(bytes, cache file or None)``;
    a cached file ONNX Runtime cannot read (truncated, overwritten) is named and built again."""
    data, path = build(False)
    try:
        return _session(data, threads)
    except Exception as exc:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, ...)
        if path is None:
            raise
        log.warning("cannot read the cached %s %s (%s: %s): building it again", what, path, type(exc).__name__, str(exc).splitlines()[0][:200])
        data, _ = build(True)
        return _session(data, threads)


class OnnxEngine:
    """ONNX Runtime on the CPU, from a graph exported once and cached (see :func:`onnx_model`)."""

    name = "onnx"

    def __init__(self, model: torch.nn.Module, cache_dir: str | os.PathLike | None = None, threads: int | None = None) -> None:
        self.session = _cached_session(lambda refresh: _onnx_model(model, cache_dir, refresh), threads, "ONNX graph")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)})[0]


class OnnxInt8Engine(OnnxEngine):
    """ONNX Runtime on the CPU with the graph statically quantised to 8 bits (:mod:`nucseg.int8`),
    calibrated on the embedded sample's images of ``modalities`` normalised by ``normalize``
    (the model's setting); cached beside the float graph as ``weights-<hash>-int8.onnx``.

    Its ``probe`` is the float graph (:class:`OnnxEngine`): the probes of ``scale: auto``
    (:meth:`Predictor.network_maps`) run in float, so that every image gets the scale the
    ``onnx`` engine gives it (a choice between a few factors, which int8's small differences
    flipped on 4 of Kromp's 42 images, BENCHMARKS.md); the windows run in int8.
    """

    name = "onnx-int8"

    def __init__(
        self,
        model: torch.nn.Module,
        cache_dir: str | os.PathLike | None = None,
        threads: int | None = None,
        normalize: dict | None = None,
        modalities: tuple[str, ...] | None = None,
    ) -> None:
        missing = quantization_available()
        if missing:
            raise ValueError(f"predict engine 'onnx-int8': {missing}")
        self.probe = OnnxEngine(model, cache_dir, threads)
        fp32, _ = _onnx_model(model, cache_dir)
        key = onnx_key(model)
        self.session = _cached_session(lambda refresh: int8_model(fp32, key, cache_dir, normalize, modalities, refresh), threads, "int8 graph")


def onnx_key(model: torch.nn.Module) -> str:
    """The hash of ``weights-<hash>.onnx``: the weights, the architecture, the torch version, the opset."""
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    digest.update(f"{torch.__version__} {ONNX_OPSET}".encode())
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def onnx_model(model: torch.nn.Module, cache_dir: str | os.PathLike | None = None) -> bytes:
    """The model as ONNX bytes (dynamic batch, height and width), exported once per weights.

    With ``cache_dir`` (the model folder) the graph is read from, or written (atomically) to,
    ``<cache_dir>/weights-<hash>.onnx`` (:func:`onnx_key`); an unwritable folder only costs a
    re-export next time.
    """
    return _onnx_model(model, cache_dir)[0]


def _onnx_model(model: torch.nn.Module, cache_dir: str | os.PathLike | None = None, refresh: bool = False) -> tuple[bytes, Path | None]:
    """:func:`onnx_model`, and the cache file the bytes were read from (None: exported now);
    ``refresh``: export again and overwrite the cache."""
    model = model.cpu().eval()
    key = onnx_key(model)
    cached, path = cached_graph(cache_dir, key)
    if cached is not None and not refresh:
        return cached, path
    if refresh:
        _EXPORTED.pop(key, None)
    data = _EXPORTED.get(key)  # the same weights exported earlier in this process (predict_image in a loop)
    if data is None:
        start = time.perf_counter()
        buffer = io.BytesIO()
        with warnings.catch_warnings():  # the tracer's notes on the model's input checks, the exporter's deprecation notice
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (torch.zeros(1, model.config.in_channels, 64, 64),),
                buffer,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        data = buffer.getvalue()
        log.info("exported the model to ONNX in %.1f s", time.perf_counter() - start)
        _EXPORTED.clear()  # keep one graph: a training loop would otherwise pile them up
        _EXPORTED[key] = data
    cache_graph(path, data, "ONNX graph", "exporting")
    return data, None


def make_engine(
    model: torch.nn.Module,
    settings: PredictSettings,
    device: torch.device,
    cache_dir: str | os.PathLike | None = None,
    normalize: dict | None = None,
    modalities: tuple[str, ...] | None = None,
):
    """The engine ``settings.engine`` names (``auto``: onnx on CPU when onnxruntime imports, else
    eager). ``normalize`` (the model's setting) and ``modalities`` (the images it predicts:
    None, all) are the int8 engine's calibration (:mod:`nucseg.int8`)."""
    engine = settings.engine
    if engine == "auto":
        engine = "eager" if device.type != "cpu" else "onnx"
        if engine == "onnx":
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                log.warning("onnxruntime is not installed: predicting with eager PyTorch (slower on a CPU)")
                engine = "eager"
    if engine in ("onnx", "onnx-int8") and device.type != "cpu":
        raise ValueError(f"predict engine {engine!r} runs on the CPU; device {device.type!r} needs engine 'eager' (or 'auto')")
    if engine == "onnx":
        return OnnxEngine(model, cache_dir)
    if engine == "onnx-int8":
        return OnnxInt8Engine(model, cache_dir, normalize=normalize, modalities=modalities)
    return EagerEngine(model, device)


_TRANSFORMS = [(k, f) for k in range(4) for f in (False, True)]


class Predictor:
    """Normalised windows ``(B, h, w, 3)`` -> probabilities ``(B, K, h, w)`` float32, with optional TTA.

    Parameters
    ----------
    engine : callable
        ``(B, 3, h, w)`` float32 -> ``(B, K, h, w)`` logits (:func:`make_engine`).
    heads : list of str
        The model's output channels.
    normalize : dict
        The model's ``normalize`` setting (``low``, ``high``, ``invert_dark``; absent keys: defaults, no inversion).
    tta : bool
    scale : float
        The scale windows are resized by (:attr:`PredictSettings.scale`; :func:`predict_lazy`
        sets it per image from its settings).
    nuclei : dict, optional
        The model's training nucleus diameters, pixels (``config.json`` ``nuclei``: ``median``,
        ``p10``, ``p90``), the target of ``scale: auto``; :data:`nucseg.scale.DEFAULT_NUCLEI`
        (the shipped model's) for what a folder does not record.
    """

    def __init__(self, engine, heads: list[str], normalize: dict | None, tta: bool = False, scale: float | str = 1.0, nuclei: dict | None = None) -> None:
        self.engine, self.heads, self.routes = engine, list(heads), {}
        self.folder: Path | None = None  # the model folder it was opened from (open_predictor)
        self.tta = tta
        self.scale = 1.0 if scale == "auto" else float(scale)
        self.nuclei = {**DEFAULT_NUCLEI, **(nuclei or {})}
        self.sizes_recorded = bool(nuclei)  # a semantic model is measured against its own record only
        normalize = dict(normalize or {})
        self.low = float(normalize.get("low", NORMALIZE_LOW))
        self.high = float(normalize.get("high", NORMALIZE_HIGH))
        self.invert_dark = bool(normalize.get("invert_dark", False))

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        if self.scale == 1.0:
            return self._maps(windows)
        h, w = windows.shape[1:3]
        size = tuple(max(MULTIPLE, int(round(n * self.scale / MULTIPLE)) * MULTIPLE) for n in (h, w))
        shrink = cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR
        resized = np.stack([cv2.resize(np.ascontiguousarray(win, np.float32), size[::-1], interpolation=shrink) for win in windows])
        maps = self._maps(resized)
        return np.stack([np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in window]) for window in maps])

    def network_maps(self, windows: np.ndarray) -> np.ndarray:
        """Probabilities of windows ``(B, h, w, 3)`` already at the network's size (h, w multiples
        of 32): no resize and no test-time augmentation (the probes of ``scale: auto``), by the
        engine's ``probe`` where it has one (the int8 engine's float graph)."""
        x = np.ascontiguousarray(windows.transpose(0, 3, 1, 2), dtype=np.float32)
        return expit(getattr(self.engine, "probe", self.engine)(x))

    def _maps(self, windows: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(windows.transpose(0, 3, 1, 2), dtype=np.float32)
        if not self.tta:
            return expit(self.engine(x))
        acc = None
        for k, flip in _TRANSFORMS:
            t = np.rot90(x, k, axes=(2, 3))
            t = t[..., ::-1] if flip else t
            p = expit(self.engine(np.ascontiguousarray(t)))
            p = np.rot90(p[..., ::-1] if flip else p, -k, axes=(2, 3))
            acc = p if acc is None else acc + p
        return acc / len(_TRANSFORMS)

    @property
    def tta(self) -> bool:
        return self._tta

    @tta.setter
    def tta(self, value: bool) -> None:  # the models of other modalities (routes) follow
        self._tta = bool(value)
        for route in self.routes.values():
            route.tta = value

    def route(self, modality: str) -> tuple[Predictor, str | None]:
        """The predictor for an image of ``modality`` (:func:`nucseg.imageio.guess_modality`):
        the model folder's own model for that modality (``config.json`` ``modalities``) and
        its name, else this one and ``None``."""
        return (self.routes[modality], modality) if modality in self.routes else (self, None)

    def normalizer(self, image: LazyImage, stats=None):
        """``read(rows, cols)`` of normalised pixels: the whole image's percentiles and modality
        (gathered in bounded memory, unless ``stats`` gives them:
        :func:`nucseg.bigimage.image_statistics`), applied window by window as
        :func:`nucseg.imageio.normalize_image` applies them to a whole image."""
        stats = stats if stats is not None else image_statistics(image)
        lo, hi = stats.percentiles(self.low, self.high)
        inverted = self.invert_dark and stats.dark_nuclei
        log.info("%s: intensities %.1f..%.1f at percentiles %g..%g%s", image.name, lo, hi, self.low, self.high, ", dark nuclei: inverted" if inverted else "")

        def read(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            x = rescale_intensity(image.read_rows(rows, cols), lo, hi)
            return invert(x) if inverted else x

        return read


def choose_scale(predictor: Predictor, image: LazyImage, settings: PredictSettings, read) -> float:
    """The scale an image is predicted at: ``settings.scale``, or for ``"auto"`` the image's own
    estimate (:func:`nucseg.scale.estimate_scale`, logged), from ``read`` (:meth:`Predictor.normalizer`)
    of the predictor that predicts it (:meth:`Predictor.route`)."""
    if settings.scale != "auto":
        return float(settings.scale)
    semantic = "body" not in predictor.heads
    if semantic and not predictor.sizes_recorded:
        log.info(
            "%s: predict scale 1 (scale auto measures objects against the training sizes a model folder records; "
            "this semantic model's records none: retrain it, or set a number)",
            image.name,
        )
        return 1.0  # trained before the train stage recorded a semantic model's object sizes
    estimate = estimate_scale(predictor, read, image.shape, predictor.nuclei)
    found = ", ".join(f"{s:g}: {n} of {d:.1f} px" for s, (n, d) in estimate.by_scale.items())
    log.info(
        "%s: predict scale %g (%s of %.1f px; the model's %.1f-%.1f px; probes, found per scale: %s)",
        image.name,
        estimate.scale,
        "objects" if semantic else "nuclei",
        estimate.diameter,
        *estimate.band,
        found,
    )
    return estimate.scale


def predict_lazy(
    predictor: Predictor,
    image: LazyImage,
    settings: PredictSettings,
    sink,
    flush_rows: int = 1,
    stats: ImageStatistics | None = None,
    scale: float | None = None,
    region: tuple[slice, slice] | None = None,
) -> tuple[float, str | None]:
    """Stream the probability maps of one image into ``sink(row, (K, n, W) float32)``
    (:func:`nucseg.tiling.stream_tiled`) at ``settings.scale``, with the model folder's model
    for the image's modality where it has one (:meth:`Predictor.route`); returns the scale used
    (the image's estimate for ``"auto"``, :func:`choose_scale`) and the modality whose own model
    predicted it (``None``: the folder's main model). ``stats``: the image's
    :func:`nucseg.bigimage.image_statistics` when the caller has them already; ``scale``: the
    scale, when the caller has chosen it already; ``region``: only this part of the image (rows,
    columns), equal to the same pixels of the whole image's maps (the split workflow's regions,
    :mod:`nucseg.split`, given the whole image's ``stats`` and ``scale``)."""
    stats = image_statistics(image) if stats is None else stats
    predictor, routed = predictor.route(stats.modality)
    if routed:
        log.info("%s: %s image (modality guess): predicted by the model folder's %s model", image.name, routed, routed)
    read = predictor.normalizer(image, stats)
    scale = choose_scale(predictor, image, settings, read) if scale is None else scale
    saved, predictor.scale = predictor.scale, scale
    try:
        stream_tiled(predictor, read, image.shape, len(predictor.heads), sink, settings.tile, settings.margin, settings.batch, flush_rows, region=region)
    finally:
        predictor.scale = saved
    return scale, routed


def to_float16(array: np.ndarray) -> np.ndarray:
    """``array.astype(np.float16)``, bit for bit, through PyTorch's vectorised conversion: numpy
    converts values below float16's smallest normal number (probabilities under 6e-5, most of a
    map's background) in a slow software path, up to 40x slower (0.11 s per 2 megapixels)."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(torch.float16).numpy()


#: Images wider than this are predicted in column strips of about this width (whole chunks):
#: the blend holds a row of windows as wide as a strip, not as the image (0.4 GB of sums and
#: weights per 16384 columns for two heads). Each strip runs the whole image's windows that
#: reach it, so the maps are the same bit for bit; the window columns on a border between two
#: strips run twice (one in 16 at a tile of 1024).
STRIP = 16384


def predict_to_zarr(predictor: Predictor, image: LazyImage, group: zarr.Group, name: str, settings: PredictSettings) -> zarr.Array:
    """Predict one image into ``group[name]``: ``(K, H, W)`` float16 in [0, 1], chunks ``(K, chunk, chunk)``,
    written chunk row by chunk row, in column strips of :data:`STRIP` pixels for wider images
    (memory: a row of windows and a row of chunks of one strip, whatever the image size)."""
    h, w = image.shape
    c = settings.chunk
    start = time.perf_counter()
    stats = image_statistics(image)
    heads = predictor.route(stats.modality)[0].heads
    k = len(heads)
    array = group.create_array(name, shape=(k, h, w), dtype="float16", chunks=(k, min(h, c), min(w, c)), fill_value=0)
    width = max(c, STRIP // c * c)
    scale = routed = None
    for x0 in range(0, w, width):
        cols = slice(x0, min(w, x0 + width))

        def sink(row: int, block: np.ndarray, cols: slice = cols) -> None:
            array[:, row : row + block.shape[1], cols] = to_float16(block)

        region = None if cols == slice(0, w) else (slice(0, h), cols)
        scale, routed = predict_lazy(predictor, image, settings, sink, flush_rows=min(h, c), stats=stats, scale=scale, region=region)
    array.attrs.update(heads=heads, scale=scale, modality_model=routed, modality=stats.modality)  # the guess, for images.csv
    seconds = time.perf_counter() - start
    log.info("%s: %dx%d predicted in %.1f s (%.2f megapixels/s)", name, h, w, seconds, h * w / 1e6 / max(seconds, 1e-9))
    return array


def predict_image(
    model: torch.nn.Module, image: np.ndarray, settings: PredictSettings, normalize: dict | None = None, device: torch.device | None = None
) -> np.ndarray:
    """Probability maps of one image in memory (tests, benchmarks; files go through :func:`predict_to_zarr`).

    Parameters
    ----------
    model : ResUNet in eval mode
    image : (H, W, 3) ndarray of uint8
    settings : PredictSettings
        ``engine`` ``onnx`` exports the model in memory (no cache); ``onnx-int8`` quantises it
        too, calibrated on the embedded sample with ``normalize``.
    normalize : dict, optional
        The model's ``normalize`` setting (``config.json``).

    Returns
    -------
    (K, H, W) ndarray of float32 in [0, 1]
        One map per model head, in the order of ``model.config.heads``.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got shape {image.shape} {image.dtype}")
    device = device or next(model.parameters()).device
    predictor = Predictor(make_engine(model, settings, device, normalize=normalize), model.config.heads, normalize, settings.tta, settings.scale)
    out = np.empty((len(predictor.heads),) + image.shape[:2], np.float32)

    def sink(row: int, block: np.ndarray) -> None:
        out[:, row : row + block.shape[1]] = block

    predict_lazy(predictor, LazyImage(image, "YXC", "<array>"), settings, sink)
    return out


def open_predictor(model_dir: str | os.PathLike, settings: PredictSettings, threads: int | None = None) -> Predictor:
    """Load a model folder and build its :class:`Predictor` on the chosen device and engine.

    Raises
    ------
    ValueError
        Not a model folder; ``cuda`` asked for where there is none; ``onnx`` or ``onnx-int8``
        on a GPU; ``onnx-int8`` without ``onnxruntime.quantization`` or the embedded sample.
    """
    if threads:
        torch.set_num_threads(threads)
    try:
        device = choose_device(settings.device)
    except RuntimeError as exc:
        raise ValueError(f"--device/predict.device {settings.device}: {exc}") from exc
    predictor = _folder_predictor(model_dir, settings, device)
    log.info(
        "predicting with %s on %s, tile %d, margin %d, batch %d, tta %s, scale %s%s",
        predictor.engine.name,
        device.type,
        settings.tile,
        settings.margin,
        settings.batch,
        settings.tta,
        settings.scale,
        "".join(f"; {m} images: {route.folder}" for m, route in predictor.routes.items()),
    )
    return predictor


def _folder_predictor(model_dir: str | os.PathLike, settings: PredictSettings, device: torch.device, serves: tuple[str, ...] | None = None) -> Predictor:
    """``serves``: the modalities a folder's modality model predicts (None: the main model,
    which predicts the images of every modality not routed elsewhere)."""
    model, config = load_model(model_dir, device)
    routes = config.get("modalities") or {}
    if serves is None:
        serves = tuple(m for m in MODALITIES if m not in routes) if routes else None
    engine = make_engine(model, settings, device, cache_dir=model_dir, normalize=config.get("normalize"), modalities=serves)
    predictor = Predictor(engine, list(model.config.heads), config.get("normalize"), settings.tta, settings.scale, config.get("nuclei"))
    predictor.folder = Path(model_dir)
    for modality, sub in routes.items():
        route = _folder_predictor(Path(model_dir) / sub, settings, device, serves=(modality,))
        if route.routes:
            raise ValueError(f"{Path(model_dir) / sub}: the model for {modality} images has modality models of its own; one level only")
        same_task_heads = "body" in route.heads and "body" in predictor.heads  # instance models may add heads
        if route.heads != predictor.heads and not same_task_heads:
            raise ValueError(f"{Path(model_dir) / sub}: the model for {modality} images has heads {route.heads}, the folder's model {predictor.heads}")
        predictor.routes[modality] = route
    return predictor


def open_output_group(path: str | os.PathLike, predictor: Predictor, model_dir: str | os.PathLike, settings: PredictSettings) -> zarr.Group:
    """A new zarr group for probability maps, with the attributes the segment stage reads:
    ``heads`` (channel names), ``model`` (its folder), ``tta``, ``engine``."""
    root = zarr.open_group(path, mode="w")
    root.attrs.update(dict(heads=predictor.heads, model=str(model_dir), tta=settings.tta, engine=predictor.engine.name, scale=settings.scale))
    return root


def predict_dataset(
    model_dir: str | os.PathLike,
    images_zarr: str | os.PathLike,
    index_csv: str | os.PathLike,
    out_zarr: str | os.PathLike,
    settings: PredictSettings,
    threads: int | None = None,
    skip: frozenset[str] = frozenset(),
) -> None:
    """Predict stage: probability maps for every image of a full-size store.

    Writes ``out_zarr`` (atomically) with one array per image ``<id>``: ``(K, H, W)`` float16 in
    [0, 1], chunks ``(K, chunk, chunk)``; group attributes ``heads``, ``model``, ``tta``, ``engine``.
    ``skip``: image ids left out (predicted region by region: :mod:`nucseg.split`).
    """
    predictor = open_predictor(model_dir, settings, threads)
    ids = [i for i in pd.read_csv(index_csv, dtype={"image_id": str})["image_id"] if i not in skip]
    images = zarr.open_group(images_zarr, mode="r")["images"]
    with atomic_dir(out_zarr, overwrite=True) as tmp:
        root = open_output_group(tmp, predictor, model_dir, settings)
        for image_id in ids:
            predict_to_zarr(predictor, LazyImage(images[image_id], "YXC", f"{images_zarr}:images/{image_id}"), root, image_id, settings)
