"""Tests of nucseg.infer: whole-image normalisation from bounded-memory statistics, tiled
prediction blended without seams, the ONNX engine, and the probability maps' zarr contract."""

from __future__ import annotations

import functools
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import zarr

from nucseg.bigimage import LazyImage, open_image
from nucseg.imageio import decode_image, has_dark_nuclei, normalize_image, to_rgb_uint8
from nucseg.infer import EagerEngine, OnnxEngine, Predictor, PredictSettings, onnx_model, predict_dataset, predict_image, predict_to_zarr, to_float16
from nucseg.model import ModelConfig, ResUNet
from nucseg.scale import CANDIDATES
from nucseg.tiling import plan_windows

from .conftest import SHARED

MOSAIC_ZIP = SHARED / "data" / "dsb2018" / "stage1_train_fixed.zip"
FIXTURE = SHARED / "data" / "fixtures" / "dsb2018_fluo_512_uint16.tif"


def real_tiles(n: int, side: int | None = 256, fluorescence: bool = True) -> list[np.ndarray]:
    """The first ``n`` real images of the challenge's training set of a modality (and size, unless
    ``side`` is None), in archive order (skips without ../shared)."""
    if not MOSAIC_ZIP.is_file():
        pytest.skip(f"{MOSAIC_ZIP} not present (a fresh clone has no ../shared)")
    found = [image for image in _archive_images() if (side is None or image.shape[:2] == (side, side)) and has_dark_nuclei(image) != fluorescence]
    if len(found) < n:
        raise AssertionError(f"fewer than {n} such images among the first {len(_archive_images())} of {MOSAIC_ZIP}")
    return found[:n]


@functools.lru_cache(maxsize=1)
def _archive_images(limit: int = 160) -> list[np.ndarray]:
    with zipfile.ZipFile(MOSAIC_ZIP) as z:
        names = sorted(n for n in z.namelist() if "/images/" in n and n.endswith(".png"))[:limit]
        return [to_rgb_uint8(decode_image(z.read(name), name)) for name in names]


def mosaic(rows: int, cols: int) -> np.ndarray:
    """A real ``(256 rows, 256 cols, 3)`` mosaic of distinct fluorescence images."""
    tiles = real_tiles(rows * cols)
    return np.concatenate([np.concatenate(tiles[r * cols : (r + 1) * cols], axis=1) for r in range(rows)], axis=0)


def calibrated_model(heads=("body", "border"), width: int = 16, seed: int = 0) -> ResUNet:
    """resunet-small with fixed-seed random weights whose batch-norm statistics are set from real
    crops (a few forward passes in train mode, no gradient), so that its maps vary like a trained
    model's instead of sitting at one value; eval mode."""
    torch.manual_seed(seed)
    model = ResUNet(ModelConfig(width=width, heads=heads))
    crops = np.stack([normalize_image(t) for t in real_tiles(4)]).transpose(0, 3, 1, 2)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(np.ascontiguousarray(crops)))
    return model.eval()


#: A model's ``normalize`` section at the defaults, without inversion.
PLAIN_NORMALIZE = {"low": 1.0, "high": 99.8, "invert_dark": False}


def save_model_folder(model: ResUNet, folder: Path, normalize: dict | None = None) -> Path:
    """A model folder as training writes it: ``weights.pt`` and ``config.json`` (``normalize``
    default :data:`PLAIN_NORMALIZE`)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "weights.pt")
    config = {"model": model.config.to_dict(), "normalize": normalize or PLAIN_NORMALIZE}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return ResUNet(ModelConfig(width=4, heads=("body", "border"))).eval()


@pytest.fixture(scope="module")
def model():
    return calibrated_model()


@pytest.mark.parametrize("shape", [(1, 1), (20, 30), (31, 5), (64, 64), (100, 200)])
def test_probabilities_have_the_image_size(tiny_model, shape):
    """Images smaller than 32 px a side keep working (mirror-padded like the whole image)."""
    image = np.random.default_rng(0).integers(0, 255, shape + (3,), dtype=np.uint8)
    prob = predict_image(tiny_model, image, PredictSettings(tile=64, margin=16, engine="eager"))
    assert prob.shape == (2,) + shape and prob.dtype == np.float32
    assert 0 <= prob.min() and prob.max() <= 1


def test_tiled_map_is_within_001_of_whole_image_inference_on_a_real_mosaic(model):
    """Regression guard for seams (issue 11: the old test never tiled): with the default tile and
    margin a 2048 x 2048 real mosaic runs as 2 x 2 blended windows, and every pixel of the stitched
    map is within 0.01 of one-piece inference."""
    image = mosaic(8, 8)
    settings = PredictSettings(engine="onnx")
    _, windows = plan_windows(image.shape[:2], settings.tile, settings.margin)
    assert len(windows) == 4 and windows[0].h == settings.tile + 2 * settings.margin < 2048
    whole = predict_image(model, image, PredictSettings(tile=2048, margin=0, engine="onnx"))
    assert whole.std() > 0.05, "the model's map barely varies: the comparison would prove nothing"
    tiled = predict_image(model, image, settings)
    assert np.abs(tiled - whole).max() <= 0.01


def test_normalisation_from_bounded_memory_statistics_equals_normalize_image():
    """Windows are normalised with whole-image percentiles and modality as normalize_image
    normalises the whole image; dark-nuclei images are inverted only when the model says so."""
    dark = real_tiles(1, side=None, fluorescence=False)[0]
    bright = real_tiles(1)[0]
    for image in (dark, bright):
        for invert_dark in (False, True):
            predictor = Predictor(None, ["body"], {"low": 1.0, "high": 99.8, "invert_dark": invert_dark})
            read = predictor.normalizer(LazyImage(image, "YXC", "test"))
            got = read(np.arange(image.shape[0]), np.arange(image.shape[1]))
            np.testing.assert_allclose(got, normalize_image(image, 1.0, 99.8, invert_dark), atol=1e-5)
    # an old model folder without invert_dark never inverts
    old = Predictor(None, ["body"], {"low": 1.0, "high": 99.8}).normalizer(LazyImage(dark, "YXC", "test"))
    np.testing.assert_allclose(old(np.arange(dark.shape[0]), np.arange(dark.shape[1])), normalize_image(dark, 1.0, 99.8), atol=1e-5)


def test_tta_of_a_symmetric_image_is_symmetric(tiny_model):
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 16:48] = 200
    prob = predict_image(tiny_model, image, PredictSettings(tta=True, engine="eager"))
    np.testing.assert_allclose(prob, prob[:, ::-1, :], atol=1e-5)
    np.testing.assert_allclose(prob, np.swapaxes(prob, 1, 2), atol=1e-5)


def test_onnx_engine_equals_eager_on_a_real_image(model, tmp_path):
    """The fast CPU path gives the eager maps to 1e-4 on a fixed real image, with and without TTA;
    the exported graph is cached beside the weights and reused."""
    image = mosaic(1, 2)[:250, :300]
    for tta in (False, True):
        eager = predict_image(model, image, PredictSettings(engine="eager", tta=tta))
        fast = predict_image(model, image, PredictSettings(engine="onnx", tta=tta))
        assert np.abs(fast - eager).max() < 1e-4
    first = onnx_model(model, tmp_path)
    cached = list(tmp_path.glob("weights-*.onnx"))
    assert len(cached) == 1 and cached[0].read_bytes() == first
    cached[0].write_bytes(first + b"")  # same key: read back, not exported again
    mtime = cached[0].stat().st_mtime_ns
    OnnxEngine(model, tmp_path)
    assert cached[0].stat().st_mtime_ns == mtime and len(list(tmp_path.glob("*.onnx"))) == 1


def test_streamed_zarr_from_a_tiled_tiff_equals_in_memory_prediction(tiny_model, tmp_path):
    """A 16-bit tiled, compressed TIFF is read window by window; the float16 zarr map written
    chunk row by chunk row equals in-memory prediction of the decoded image."""
    if not FIXTURE.is_file():
        pytest.skip(f"{FIXTURE} not present (a fresh clone has no ../shared)")
    raw = tifffile.imread(FIXTURE)
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, raw, tile=(128, 128), compression="zlib")
    image = open_image(path)
    assert isinstance(image.array, zarr.Array)  # not decoded whole
    settings = PredictSettings(tile=128, margin=32, chunk=200, batch=3, engine="eager")
    predictor = Predictor(EagerEngine(tiny_model, torch.device("cpu")), ["body", "border"], {"invert_dark": True})
    out = predict_to_zarr(predictor, image, zarr.open_group(tmp_path / "p.zarr", mode="w"), "img", settings)
    assert out.dtype == np.float16 and out.shape == (2, 512, 512) and out.chunks == (2, 200, 200)
    expected = predict_image(tiny_model, to_rgb_uint8(raw), settings, {"invert_dark": True})
    np.testing.assert_allclose(out[:].astype(np.float32), expected, atol=1e-3)


def test_a_wide_image_in_column_strips_equals_the_whole_width(tiny_model, tmp_path, monkeypatch):
    """Images wider than STRIP are predicted strip by strip (bounded memory on a 65536-wide slide):
    the maps equal those of the image at its whole width, bit for bit, and the scale is chosen once."""
    import nucseg.infer as infer

    image = LazyImage((np.random.default_rng(3).random((300, 700, 3)) * 255).astype(np.uint8), "YXC", "wide")
    settings = PredictSettings(tile=128, margin=32, chunk=96, batch=2, engine="eager", scale="auto")
    predictor = Predictor(EagerEngine(tiny_model, torch.device("cpu")), ["body", "border"], {"invert_dark": True})
    whole = predict_to_zarr(predictor, image, zarr.open_group(tmp_path / "w.zarr", mode="w"), "img", settings)
    regions, scales = [], []
    real_lazy, real_scale = infer.predict_lazy, infer.choose_scale
    monkeypatch.setattr(infer, "STRIP", 200)  # strips of 192 columns (2 chunks of 96): 4 strips
    monkeypatch.setattr(infer, "predict_lazy", lambda *a, **k: regions.append(k["region"]) or real_lazy(*a, **k))
    monkeypatch.setattr(infer, "choose_scale", lambda *a: scales.append(1) or real_scale(*a))
    strips = predict_to_zarr(predictor, image, zarr.open_group(tmp_path / "s.zarr", mode="w"), "img", settings)
    assert [r[1] for r in regions] == [slice(0, 192), slice(192, 384), slice(384, 576), slice(576, 700)] and len(scales) == 1
    np.testing.assert_array_equal(strips[:], whole[:])
    assert dict(strips.attrs) == dict(whole.attrs)


def test_predict_dataset_writes_the_documented_zarr(tiny_model, tmp_path):
    """Contract the segment stage reads: one (K, H, W) float16 array per image in [0, 1], chunks
    (K, chunk, chunk), group attributes heads, model, tta, engine, scale (the setting), and
    each image's own predict scale."""
    model_dir = save_model_folder(tiny_model, tmp_path / "model", {"low": 1.0, "high": 99.8, "invert_dark": False})
    store = zarr.open_group(tmp_path / "full.zarr", mode="w")
    rng = np.random.default_rng(0)
    shapes = {"a": (70, 90), "b": (20, 300)}
    for image_id, shape in shapes.items():
        store.create_array(f"images/{image_id}", data=rng.integers(0, 255, shape + (3,), dtype=np.uint8))
    pd.DataFrame({"image_id": list(shapes)}).to_csv(tmp_path / "index.csv", index=False)
    predict_dataset(model_dir, tmp_path / "full.zarr", tmp_path / "index.csv", tmp_path / "pred.zarr", PredictSettings(chunk=64, tile=64, margin=16), threads=1)
    root = zarr.open_group(tmp_path / "pred.zarr", mode="r")
    assert dict(root.attrs) == {"heads": ["body", "border"], "model": str(model_dir), "tta": False, "engine": "onnx", "scale": "auto"}
    for image_id, shape in shapes.items():
        array = root[image_id]
        assert array.attrs["scale"] in (*CANDIDATES, 1.0)  # the factor this image was predicted at
        assert array.shape == (2,) + shape and array.dtype == np.float16
        assert array.chunks == (2, min(64, shape[0]), min(64, shape[1]))
        values = array[:]
        assert 0 <= values.min() and values.max() <= 1
    assert list(model_dir.glob("weights-*.onnx")), "the ONNX graph is cached beside the weights"


def test_image_must_be_rgb_uint8(tiny_model):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 image, got shape \(8, 8\)"):
        predict_image(tiny_model, np.zeros((8, 8), np.uint8), PredictSettings())


@pytest.mark.parametrize(
    "field, value, message",
    [("tile", 48, "multiple of 32"), ("margin", 40, "multiple of 16"), ("batch", 0, "batch"), ("engine", "tensorrt", "engine"), ("chunk", 0, "chunk")],
)
def test_settings_refuse_bad_values_naming_them(field, value, message):
    with pytest.raises(ValueError, match=message):
        PredictSettings(**{field: value})


def test_to_float16_equals_numpy_bit_for_bit():
    """The fast float16 conversion of the maps gives numpy's values, subnormals, rounding and
    non-contiguous input included."""
    rng = np.random.default_rng(0)
    x = 1.0 / (1.0 + np.exp(-rng.normal(-10, 6, (2, 64, 96)).astype(np.float32)))
    x[0, 0, :4] = [0.0, 1.0, 6e-8, 5.9604645e-08]
    view = x[:, ::2, 3:]
    for a in (x, view):
        assert np.array_equal(to_float16(a).view(np.uint16), a.astype(np.float16).view(np.uint16))
    assert to_float16(view).dtype == np.float16


def test_a_model_folder_routes_an_image_to_its_modality_model(tmp_path):
    """config.json ``modalities``: a colour (histology) image is predicted by the folder's own
    model for it, a grey one by the main model, each exactly as that model alone predicts it;
    the route is recorded in the maps' attributes, and so are the heads of the model that
    predicted them (a modality model may have a seed head where the main model has none)."""
    torch.manual_seed(1)
    main, he = (ResUNet(ModelConfig(width=4, heads=heads)).eval() for heads in (("body", "border"), ("body", "border", "seed")))
    folder = save_model_folder(main, tmp_path / "model")
    save_model_folder(he, folder / "he")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "modalities": {"histology": "he"}}))
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 255, (64, 96, 1), dtype=np.uint8), 3, axis=2)
    colour = np.stack([rng.integers(150, 255, (64, 96)), rng.integers(0, 120, (64, 96)), rng.integers(100, 200, (64, 96))], axis=2).astype(np.uint8)
    settings = PredictSettings(scale=1.0, engine="eager", tile=64, margin=16)
    from nucseg.infer import open_predictor

    predictor = open_predictor(folder, settings)
    group = zarr.open_group(tmp_path / "maps.zarr", mode="w")
    for name, image, model in (("grey", grey, main), ("colour", colour, he)):
        maps = predict_to_zarr(predictor, LazyImage(image, "YXC", name), group, name, settings)
        np.testing.assert_allclose(maps[:].astype(np.float32), predict_image(model, image, settings, PLAIN_NORMALIZE), atol=1e-3)
    assert group["grey"].attrs["modality_model"] is None and group["colour"].attrs["modality_model"] == "histology"
    assert group["grey"].attrs["heads"] == ["body", "border"] and group["colour"].attrs["heads"] == ["body", "border", "seed"]
    assert group["colour"].shape[0] == 3


def test_a_modality_model_of_another_task_is_refused(tiny_model, tmp_path):
    """A folder's model for one modality may add heads to the main model's, but a model of the
    other task (class maps, no body head) is refused by name."""
    from nucseg.infer import open_predictor
    from nucseg.nets.semantic import NetConfig, build_net

    folder = save_model_folder(tiny_model, tmp_path / "model")
    net_config = NetConfig("unet", 4, ("background", "cell"))
    (folder / "classes").mkdir()
    torch.save(build_net(net_config).state_dict(), folder / "classes" / "weights.pt")
    semantic = dict(task="semantic", classes={"background": 0, "cell": 1}, architecture="unet", model=net_config.to_dict(), normalize=PLAIN_NORMALIZE)
    (folder / "classes" / "config.json").write_text(json.dumps(semantic))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "modalities": {"histology": "classes"}}))
    with pytest.raises(ValueError, match=r"the model for histology images has heads \['background', 'cell'\]"):
        open_predictor(folder, PredictSettings(engine="eager"))


@pytest.mark.parametrize(
    "modalities, message",
    [
        ({"histology": "missing"}, r"missing"),
        ({"histology": "../elsewhere"}, r"modalities"),
        ({"stained": "he"}, r"modalities"),
    ],
)
def test_bad_modality_models_are_named(tiny_model, tmp_path, modalities, message):
    from nucseg.infer import open_predictor

    folder = save_model_folder(tiny_model, tmp_path / "model")
    save_model_folder(tiny_model, folder / "he")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "modalities": modalities}))
    with pytest.raises(ValueError, match=message):
        open_predictor(folder, PredictSettings(engine="eager"))
