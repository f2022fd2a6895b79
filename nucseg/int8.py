"""The ``onnx-int8`` engine's graph: the model's ONNX graph statically quantised to 8 bits.

ONNX Runtime's static quantisation (:func:`onnxruntime.quantization.quantize_static`):
weights int8 per output channel, activations uint8 with one scale per tensor, the scales
calibrated on real images (the ranges the activations take on them). ONNX Runtime runs the
quantised convolutions with the CPU's VNNI instructions where it has them (AVX512-VNNI,
AVX-VNNI: ``vpdpbusd``); without VNNI, x86 CPUs multiply uint8 by int8 pairwise into int16,
which can saturate, so there the weights are quantised to 7 bits (``reduce_range``) and the
file says so in its key.

Calibration data: the embedded sample's training images (``resources/sample/sample_train.zip``,
which ships with the repository, so a fresh clone has it), normalised exactly as the predict
stage normalises a whole image (:func:`nucseg.imageio.normalize_image` with the model's
``normalize`` setting: its percentiles, dark nuclei inverted where the model was trained so),
cut into non-overlapping :data:`CALIBRATION_SIDE`-pixel crops. A model of a model folder's
``modalities`` calibrates on the sample's images of its modality (nucseg's modality guess, the
same guess that routes images to it), the folder's main model on the others. The same
calibration serves a model the workflow trains: the sample has fluorescence, bright-field and
stained histology; a model trained on very different images may quantise less well on it
(measure with ``benchmarks/bench_int8.py``).

The quantised graph is cached beside the weights as ``weights-<hash>-int8.onnx``, the hash
covering the float graph (weights, architecture, torch version, opset), the calibration data
(the sample archive's bytes, the ``normalize`` setting, the modalities, the crop side), the
quantisation settings, VNNI or not, and the ONNX Runtime version. It is written under a
temporary name of its own and renamed, so that two processes building it at once each leave a
whole file; a cached file ONNX Runtime cannot read is logged by name and rebuilt. Measured in
``BENCHMARKS.md`` ("int8 on the CPU").
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from nucseg.modelfolder import cache_graph, cached_graph

log = logging.getLogger(__name__)

#: The embedded sample's training images: the calibration data of every model.
CALIBRATION_SAMPLE = Path(__file__).resolve().parents[1] / "resources" / "sample" / "sample_train.zip"
#: Side of the calibration crops, pixels (a multiple of 32: the network's input).
CALIBRATION_SIDE = 256
#: nucseg's modality guesses (:func:`nucseg.imageio.guess_modality`).
MODALITIES = ("fluorescence", "brightfield", "histology")
#: Quantisation settings (measured in BENCHMARKS.md "int8 on the CPU"): ``QOperator`` (the
#: graph holds QLinearConv, QLinearAdd, QLinearConcat; ``QDQ`` becomes the same kernels once
#: ONNX Runtime fuses it, measured as fast), MinMax calibration (Percentile measured no better).
QUANT_FORMAT = "QOperator"
CALIBRATION_METHOD = "MinMax"
#: Keep the first and the last layer in float (the convolutions that read the image and write
#: the logits): quantising them measured no faster and 3-4x further from the float scores.
FLOAT_ENDS = True
#: Bump when the calibration crops or the quantisation change in a way the key does not see.
INT8_VERSION = 1
_QUANTISED: dict[str, bytes] = {}  # the graph quantised last in this process (predict_image in a loop)


def quantization_available() -> str | None:
    """``None`` where ``onnxruntime.quantization`` imports (it needs the ``onnx`` package),
    else why not."""
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError as exc:
        return f"onnxruntime.quantization does not import ({exc}); install onnxruntime and onnx"
    return None


@functools.lru_cache(maxsize=1)
def cpu_has_vnni() -> bool:
    """Whether the CPU has 8-bit dot-product instructions ONNX Runtime uses for int8: x86's
    AVX512-VNNI or AVX-VNNI (Linux's ``/proc/cpuinfo`` flags), or any 64-bit ARM CPU (whose
    int8 kernels do not saturate). ``False`` where it cannot tell."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_vnni" in flags or "avx_vnni" in flags


def calibration_crops(
    normalize: dict | None, modalities: tuple[str, ...] | None = None, archive: str | os.PathLike = CALIBRATION_SAMPLE, side: int = CALIBRATION_SIDE
) -> np.ndarray:
    """The calibration inputs: the archive's images of ``modalities`` (all images where none
    is of them, or ``modalities`` is None), each normalised whole as the predict stage
    normalises it, cut into non-overlapping ``side`` x ``side`` crops (an image smaller than
    that is padded by reflection), in the archive's order.

    Returns
    -------
    (N, 3, side, side) ndarray of float32

    Raises
    ------
    ValueError
        The archive is not there (an installed package without the repository's resources).
    """
    from nucseg.imageio import NORMALIZE_HIGH, NORMALIZE_LOW, decode_image, guess_modality, normalize_image, to_rgb_uint8

    archive = Path(archive)
    if not archive.is_file():
        raise ValueError(f"{archive} not found: the int8 engine calibrates on the embedded sample (it ships with the repository); use engine 'onnx'")
    normalize = dict(normalize or {})
    low, high = float(normalize.get("low", NORMALIZE_LOW)), float(normalize.get("high", NORMALIZE_HIGH))
    invert_dark = bool(normalize.get("invert_dark", False))
    # the images only, read from the archive as nucseg.imageio.read_image reads a file (the
    # sample's thousands of mask files are not needed), in image id order
    with zipfile.ZipFile(archive) as z:
        names = sorted(n for n in z.namelist() if n.count("/") == 2 and n.split("/")[1] == "images" and not n.endswith("/"))
        images = [to_rgb_uint8(decode_image(z.read(n), f"{archive}:{n}"), f"{archive}:{n}") for n in names]
    if not images:
        raise ValueError(f"{archive}: no <id>/images/<id>.* members to calibrate on")
    chosen = [im for im in images if modalities is None or guess_modality(im) in modalities]
    if not chosen:
        log.info("%s has no %s images: calibrating on all %d", archive.name, "/".join(modalities or ()), len(images))
        chosen = images
    crops = []
    for image in chosen:
        x = normalize_image(image, low, high, invert_dark)
        h, w = x.shape[:2]
        if h < side or w < side:
            x = np.pad(x, ((0, max(0, side - h)), (0, max(0, side - w)), (0, 0)), mode="reflect")
            h, w = x.shape[:2]
        for y in range(0, h - side + 1, side):
            for x0 in range(0, w - side + 1, side):
                crops.append(x[y : y + side, x0 : x0 + side].transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(crops), dtype=np.float32)


def quantize_onnx(
    fp32: bytes,
    crops: np.ndarray,
    quant_format: str = QUANT_FORMAT,
    method: str = CALIBRATION_METHOD,
    float_ends: bool = FLOAT_ENDS,
    reduce_range: bool | None = None,
) -> bytes:
    """Statically quantise an ONNX graph (input ``image``): int8 weights per channel, uint8
    activations calibrated on ``crops`` ``(N, 3, h, w) float32`` one at a time.

    Parameters
    ----------
    quant_format : {"QOperator", "QDQ"}
    method : {"MinMax", "Percentile", "Entropy"}
    float_ends : bool
        Leave the nodes that read the graph's input or write its output in float.
    reduce_range : bool, optional
        7-bit weights (against uint8 x int8 saturation on x86 without VNNI); default: where
        :func:`cpu_has_vnni` is false.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    batches = iter(crops[i : i + 1] for i in range(len(crops)))

    class Reader(CalibrationDataReader):
        def get_next(self):
            batch = next(batches, None)
            return None if batch is None else {"image": np.ascontiguousarray(batch)}

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (Path(tmp) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(fp32)
        # ONNX shape inference and graph clean-up, as ONNX Runtime asks before quantising (its
        # symbolic shape inference cannot follow the dynamic height and width: skipped)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        graph = onnx.load(str(pre)).graph
        ends = {v.name for v in graph.input} | {v.name for v in graph.output}
        exclude = [n.name for n in graph.node if ends & (set(n.input) | set(n.output))] if float_ends else []
        quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=getattr(QuantFormat, quant_format),
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, method),
            nodes_to_exclude=exclude,
        )
        return out.read_bytes()


def int8_key(fp32_key: str, normalize: dict | None, modalities: tuple[str, ...] | None, archive: str | os.PathLike = CALIBRATION_SAMPLE) -> str:
    """The cache key of the quantised graph (see the module's docstring for what it covers)."""
    import onnxruntime

    archive = Path(archive)
    digest = hashlib.sha256(fp32_key.encode())
    digest.update(hashlib.sha256(archive.read_bytes()).digest() if archive.is_file() else b"no calibration archive")
    settings = dict(
        normalize=normalize or {},
        modalities=sorted(modalities) if modalities else None,
        side=CALIBRATION_SIDE,
        format=QUANT_FORMAT,
        method=CALIBRATION_METHOD,
        float_ends=FLOAT_ENDS,
        reduce_range=not cpu_has_vnni(),
        onnxruntime=onnxruntime.__version__,
        version=INT8_VERSION,
    )
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def int8_model(
    fp32: bytes,
    fp32_key: str,
    cache_dir: str | os.PathLike | None,
    normalize: dict | None,
    modalities: tuple[str, ...] | None = None,
    refresh: bool = False,
) -> tuple[bytes, Path | None]:
    """The quantised graph of the float graph ``fp32`` (key ``fp32_key``): read from
    ``<cache_dir>/weights-<hash>-int8.onnx`` or built and written there (unless ``refresh``:
    built again). Returns the bytes and the cache file they came from (None: built now).
    An unwritable folder costs only a rebuild next time."""
    key = int8_key(fp32_key, normalize, modalities)
    cached, path = cached_graph(cache_dir, key, "-int8")
    if cached is not None and not refresh:
        return cached, path
    data = None if refresh else _QUANTISED.get(key)
    if data is None:
        start = time.perf_counter()
        crops = calibration_crops(normalize, modalities)
        data = quantize_onnx(fp32, crops, QUANT_FORMAT, CALIBRATION_METHOD, FLOAT_ENDS)
        log.info(
            "quantised the model to int8 in %.1f s (%s, %s calibration on %d crops of the embedded sample's images%s%s)",
            time.perf_counter() - start,
            QUANT_FORMAT,
            CALIBRATION_METHOD,
            len(crops),
            f" of {'/'.join(modalities)}" if modalities else "",
            "" if cpu_has_vnni() else "; no VNNI: 7-bit weights",
        )
        _QUANTISED.clear()
        _QUANTISED[key] = data
    cache_graph(path, data, "int8 graph", "quantising")
    return data, None
