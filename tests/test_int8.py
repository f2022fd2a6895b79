"""Tests of the ``onnx-int8`` engine (nucseg.int8): the shipped model quantised and calibrated on
the embedded sample, run through ``nucseg predict`` and ``nucseg segment``; its maps near fp32's;
the cached graph reused, rebuilt when unreadable, written whole when two writers race; the
engine name checked where users give it."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
import zarr
from PIL import Image

import nucseg.int8
from nucseg import PRETRAINED_MODEL
from nucseg.bigimage import LazyImage
from nucseg.cli import main
from nucseg.config import config_problems
from nucseg.imageio import guess_modality, read_labels
from nucseg.infer import OnnxInt8Engine, Predictor, PredictSettings, make_engine, onnx_key, onnx_model, open_predictor
from nucseg.int8 import CALIBRATION_SAMPLE, calibration_crops, int8_model

from .conftest import REPO

QUANTIZATION = importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("onnxruntime") is not None
needs_quantization = pytest.mark.skipif(not QUANTIZATION, reason="onnxruntime.quantization needs onnxruntime and onnx, not installed here")
SAMPLE_TEST = REPO / "resources" / "sample" / "sample_test.zip"
#: Two of the embedded sample's test images: fluorescence (the main model) and histology (routed
#: to the shipped folder's histology model).
IMAGES = {"fluo": "1815cf307859b3e13669041d181aa3b3dbbac1a95aef4c42164b223110c09168", "he": "b0e35e06"}


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    """A copy of the shipped model folder (main and histology models) without cached graphs."""
    folder = tmp_path_factory.mktemp("shipped") / "pretrained"
    shutil.copytree(PRETRAINED_MODEL, folder, ignore=shutil.ignore_patterns("weights-*.onnx", ".*"))
    return folder


@pytest.fixture(scope="module")
def sample_images(tmp_path_factory) -> Path:
    """The two embedded sample test images of :data:`IMAGES`, as PNG files."""
    import zipfile

    folder = tmp_path_factory.mktemp("images")
    with zipfile.ZipFile(SAMPLE_TEST) as z:
        for name, prefix in IMAGES.items():
            member = next(n for n in z.namelist() if n.startswith(prefix) and "/images/" in n)
            (folder / f"{name}.png").write_bytes(z.read(member))
    return folder


def int8_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("weights-*-int8.onnx")) + sorted(folder.glob("*/weights-*-int8.onnx"))


@needs_quantization
def test_predict_with_int8_is_near_fp32_on_the_embedded_sample(shipped, sample_images, tmp_path):
    """``nucseg predict --engine onnx-int8`` with the shipped folder: each model quantised once,
    cached beside its weights; the maps of a fluorescence and a histology image within a few
    times what was measured on them (largest |int8 - fp32| over the body / border maps 0.08 /
    0.07 and 0.11 / 0.20, mean 0.00006 and 0.0007, 0.013 % of the histology image's pixels off
    by more than 0.1, the body map's 0.5 contour the same at 99.99 % and 99.90 % of the pixels;
    BENCHMARKS.md "int8 on the CPU" for whole sets)."""
    images = sorted(sample_images.glob("*.png"))
    assert cli("predict", "--model", shipped, "--out", tmp_path / "fp32.zarr", "--engine", "onnx", "--threads", 1, *images) == 0
    assert cli("predict", "--model", shipped, "--out", tmp_path / "int8.zarr", "--engine", "onnx-int8", "--threads", 1, *images) == 0
    assert [p.parent.name for p in int8_files(shipped)] == ["pretrained", "histology"]
    fp32, int8 = (zarr.open_group(tmp_path / f"{name}.zarr", mode="r") for name in ("fp32", "int8"))
    assert int8.attrs["engine"] == "onnx-int8" and fp32.attrs["engine"] == "onnx"
    assert int8["he"].attrs["modality_model"] == "histology" and int8["fluo"].attrs["modality_model"] is None
    for name in ("fluo", "he"):
        a, b = (g[name][:].astype(np.float32) for g in (fp32, int8))
        assert int8[name].attrs["scale"] == fp32[name].attrs["scale"]  # the probes run in float
        assert a.std() > 0.05, "the maps barely vary: the comparison would prove nothing"
        diff = np.abs(a - b)
        assert diff.mean() < 0.002 and (diff > 0.1).mean() < 0.001 and diff.max() < 0.4, (name, diff.mean(), (diff > 0.1).mean(), diff.max())
        assert ((a[0] > 0.5) == (b[0] > 0.5)).mean() > 0.998


@needs_quantization
def test_segment_with_int8_finds_the_nuclei_fp32_finds(shipped, sample_images, tmp_path):
    """``nucseg segment --engine onnx-int8``: the same nuclei count as fp32 (measured 9 and 16,
    equal) within one, the same foreground at 99.9 % of the pixels (measured 99.98 / 99.90 %)."""
    out = {}
    for engine in ("onnx", "onnx-int8"):
        out[engine] = tmp_path / engine
        assert cli("segment", "--model", shipped, "--out", out[engine], "--engine", engine, "--threads", 1, *sorted(sample_images.glob("*.png"))) == 0
    for name in IMAGES:
        a, b = (read_labels(out[e] / f"{name}.tif") for e in out)
        assert a.max() > 5 and abs(int(b.max()) - int(a.max())) <= 1
        assert ((a > 0) == (b > 0)).mean() > 0.998
    assert (pd.read_csv(out["onnx-int8"] / "images.csv")["count"] > 0).all()


@needs_quantization
def test_the_cached_graph_is_reused_not_quantised_again(shipped, monkeypatch):
    settings = PredictSettings(engine="onnx-int8")
    open_predictor(shipped, settings, threads=1)  # built here or by an earlier test
    cached = {p: p.stat().st_mtime_ns for p in int8_files(shipped)}
    assert len(cached) == 2

    def refuse(*args, **kwargs):
        raise AssertionError("quantised again although the graph is cached")

    monkeypatch.setattr(nucseg.int8, "quantize_onnx", refuse)
    monkeypatch.setattr(nucseg.int8, "_QUANTISED", {})
    predictor = open_predictor(shipped, settings, threads=1)
    assert isinstance(predictor.engine, OnnxInt8Engine) and isinstance(predictor.routes["histology"].engine, OnnxInt8Engine)
    assert {p: p.stat().st_mtime_ns for p in int8_files(shipped)} == cached


@needs_quantization
def test_an_unreadable_cached_graph_is_named_and_rebuilt(shipped, caplog):
    open_predictor(shipped, PredictSettings(engine="onnx-int8"), threads=1)
    path = int8_files(shipped)[0]
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 3])  # a truncated copy, as a full disk or a bad sync leaves
    with caplog.at_level(logging.WARNING):
        predictor = open_predictor(shipped, PredictSettings(engine="onnx-int8", scale=1.0), threads=1)
    assert f"cannot read the cached int8 graph {path}" in caplog.text
    assert path.read_bytes() == good  # quantisation is deterministic: the same file again
    image = np.zeros((64, 64, 3), np.uint8)
    image[20:40, 20:40] = 200
    assert predictor.network_maps(image[None].astype(np.float32) / 255).shape == (1, 2, 64, 64)


@needs_quantization
def test_two_writers_at_once_leave_one_whole_file(tmp_path):
    """Two processes opening a new model folder at once both quantise; each writes its own
    temporary file and renames it, so the cache is one whole graph and nothing else."""
    import onnxruntime as ort

    torch.manual_seed(0)
    from nucseg.model import ModelConfig, ResUNet

    model = ResUNet(ModelConfig(width=4, heads=("body",))).eval()
    fp32, key = onnx_model(model), onnx_key(model)
    start, results = threading.Barrier(2), []

    def build() -> None:
        start.wait()
        results.append(int8_model(fp32, key, tmp_path, None, refresh=True)[0])

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].endswith("-int8.onnx"), files
    ort.InferenceSession((tmp_path / files[0]).read_bytes(), providers=["CPUExecutionProvider"])


def test_calibration_crops_are_normalised_as_predict_normalises(shipped):
    """The crops are the predict stage's normalised pixels (whole-image percentiles, dark
    nuclei inverted for a model trained so), cut from the embedded sample's training images;
    a folder's histology model calibrates on the sample's 5 histology images, its main model
    on the 23 others."""
    import zipfile

    from nucseg.imageio import decode_image, to_rgb_uint8

    normalize = json.loads((shipped / "config.json").read_text())["normalize"]
    assert normalize["invert_dark"]
    crops = calibration_crops(normalize, ("fluorescence", "brightfield"))
    histology = calibration_crops(normalize, ("histology",))
    assert crops.dtype == np.float32 and crops.shape[1:] == (3, 256, 256) and histology.shape == (5, 3, 256, 256)
    with zipfile.ZipFile(CALIBRATION_SAMPLE) as z:
        names = sorted(n for n in z.namelist() if "/images/" in n)
        images = [to_rgb_uint8(decode_image(z.read(n), n)) for n in names]
    he = [im for im in images if guess_modality(im) == "histology"]
    assert len(images) == 28 and len(he) == 5
    for image, crop in ((he[0], histology[0]), (next(im for im in images if guess_modality(im) != "histology"), crops[0])):
        read = Predictor(None, ["body"], normalize).normalizer(LazyImage(image, "YXC", "sample"))
        np.testing.assert_allclose(crop, read(np.arange(256), np.arange(256)).transpose(2, 0, 1), atol=1e-5)
    assert nucseg.int8.int8_key("k", normalize, ("histology",)) != nucseg.int8.int8_key("k", normalize, ("fluorescence", "brightfield"))


def test_a_missing_calibration_archive_is_named(tmp_path):
    with pytest.raises(ValueError, match=rf"{tmp_path / 'none.zip'} not found: .*use engine 'onnx'"):
        calibration_crops(None, archive=tmp_path / "none.zip")


def test_without_onnxruntime_quantization_the_engine_says_so(monkeypatch):
    torch.manual_seed(0)
    from nucseg.model import ModelConfig, ResUNet

    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)  # import fails
    assert "onnxruntime.quantization does not import" in nucseg.int8.quantization_available()
    with pytest.raises(ValueError, match="predict engine 'onnx-int8': onnxruntime.quantization does not import"):
        OnnxInt8Engine(ResUNet(ModelConfig(width=4)).eval())


def test_the_engine_name_is_checked_in_settings_config_and_command_line(capsys):
    with pytest.raises(ValueError, match=r"predict engine must be one of \['auto', 'eager', 'onnx', 'onnx-int8'\], got 'int8'"):
        PredictSettings(engine="int8")
    schema = yaml.safe_load((REPO / "config" / "config.schema.yaml").read_text())
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["predict"]["engine"] = "onnx-int8"
    assert config_problems(config, schema) == []
    config["predict"]["engine"] = "int8"
    (problem,) = config_problems(config, schema)
    assert problem.startswith("predict.engine: 'int8' is not one of ['auto', 'eager', 'onnx', 'onnx-int8']")
    with pytest.raises(SystemExit) as exc:
        cli("predict", "--out", "x.zarr", "--engine", "int8", "a.png")
    assert exc.value.code == 2 and "argument --engine: invalid choice: 'int8'" in capsys.readouterr().err
    from nucseg.model import ModelConfig, ResUNet

    with pytest.raises(ValueError, match="predict engine 'onnx-int8' runs on the CPU"):
        make_engine(ResUNet(ModelConfig(width=4)).eval(), PredictSettings(engine="onnx-int8"), torch.device("cuda"))


def test_png_sample_images_are_what_the_tests_expect(sample_images):
    """Guards the tests above: one fluorescence and one histology image (nucseg's guess)."""
    modality = {p.stem: guess_modality(np.asarray(Image.open(p).convert("RGB"))) for p in sample_images.glob("*.png")}
    assert modality == {"fluo": "fluorescence", "he": "histology"}
