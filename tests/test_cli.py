"""The command line, called for real (``nucseg.cli.main``) on real images with a real model folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import zarr

from nucseg import PRETRAINED_MODEL
from nucseg.cli import main, output_names
from nucseg.files import locked_folder
from nucseg.imageio import read_labels
from nucseg.measure import COLUMNS, IMAGE_COLUMNS
from nucseg.model import ModelConfig, ResUNet
from nucseg.outputs import ImageWriters

from .test_infer import FIXTURE, real_tiles, save_model_folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = ResUNet(ModelConfig(width=4, heads=("body", "border"))).eval()
    return save_model_folder(model, tmp_path_factory.mktemp("model"), {"low": 1.0, "high": 99.8, "invert_dark": True})


@pytest.fixture
def images(tmp_path) -> Path:
    """A folder with a.tif (the real 16-bit fluorescence fixture) and a.png (a real DSB image)."""
    if not FIXTURE.is_file():
        pytest.skip(f"{FIXTURE} not present (a fresh clone has no ../shared)")
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(FIXTURE, folder / "a.tif")
    tifffile.imwrite(folder / "a.png.tmp.tif", real_tiles(1)[0])  # decoded below into a PNG
    from PIL import Image

    Image.fromarray(tifffile.imread(folder / "a.png.tmp.tif")).save(folder / "a.png")
    (folder / "a.png.tmp.tif").unlink()
    return folder


def cli(*args) -> int:
    return main([str(a) for a in args])


def test_output_names_never_overwrite_an_input(tmp_path):
    out = tmp_path
    assert output_names(["x/a.png", "x/b.tif"], out) == ["a", "b"]
    # same stem, different extensions: <stem>_<ext>
    assert output_names(["x/a.tif", "x/a.png"], out) == ["a_tif", "a_png"]
    # same name in two folders: numbered in command-line order
    assert output_names(["p1/a.png", "p2/a.png", "c.png"], out) == ["a_1", "a_2", "c"]
    # the label TIFF would be the input itself (output folder = input folder)
    (tmp_path / "a.tif").touch()
    assert output_names([str(tmp_path / "a.tif")], out) == ["a_tif"]
    assert output_names(["x/s.ome.tif", "x/z.ome.zarr"], out) == ["s", "z"]
    # an input named like another input's output is refused, naming both
    (tmp_path / "b_tif.tif").touch()
    (tmp_path / "b.tif").touch()
    with pytest.raises(ValueError, match="b_tif.tif"):
        output_names([str(tmp_path / "b.tif"), str(tmp_path / "b_tif.tif")], out)


def test_segment_into_the_input_folder_keeps_the_inputs(model_dir, images):
    """Issue 10: output folder = input folder, and a.tif beside a.png: both get their own labels,
    no input is touched, and the objects table names exactly the label images written."""
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    assert cli("segment", "--model", model_dir, "--out", images, "--tile", 128, "--margin", 32, "--batch", 2, images / "a.tif", images / "a.png") == 0
    assert {p.name: p.read_bytes() for p in images.iterdir() if p.name in before} == before
    for name, size in (("a_tif", 512), ("a_png", 256)):
        assert read_labels(images / f"{name}.tif").shape == (size, size)
    objects = pd.read_csv(images / "objects.csv", dtype={"image_id": str})
    per_image = pd.read_csv(images / "images.csv", dtype={"image_id": str})
    assert set(per_image["image_id"]) == {"a_tif", "a_png"}
    assert per_image["predict_scale"].notna().all()  # scale auto (the default): each image's own factor
    for name in ("a_tif", "a_png"):
        assert (objects["image_id"] == name).sum() == len(np.setdiff1d(read_labels(images / f"{name}.tif"), [0]))


def test_unreadable_input_is_skipped_reported_and_fails_the_run(model_dir, images, tmp_path, caplog):
    broken = images / "broken.png"
    broken.write_bytes(b"not an image at all")
    out = tmp_path / "out"
    assert cli("segment", "--model", model_dir, "--out", out, "--engine", "eager", images / "a.png", broken, images / "missing.tif") == 1
    assert "broken.png" in caplog.text and "missing.tif" in caplog.text and "2 of 3 inputs" in caplog.text
    written = sorted(p.stem for p in out.glob("*.tif"))
    assert written == ["a"]
    objects = pd.read_csv(out / "objects.csv", dtype={"image_id": str})
    assert set(objects["image_id"]) <= {"a"} and (objects["image_id"] == "a").sum() == len(np.setdiff1d(read_labels(out / "a.tif"), [0]))


def test_bad_threshold_names_the_option(capsys):
    with pytest.raises(SystemExit) as exc:
        cli("segment", "--out", "x", "--threshold", "abc", "a.png")
    assert exc.value.code == 2
    assert "argument --threshold: 'abc' is neither 'otsu' nor a probability" in capsys.readouterr().err


def test_bad_scale_names_the_option(capsys):
    for value in ("big", "0.01"):
        with pytest.raises(SystemExit) as exc:
            cli("segment", "--out", "x", "--scale", value, "a.png")
        assert exc.value.code == 2
        assert f"argument --scale: '{value}' is neither 'auto' nor a factor between 0.05 and 20" in capsys.readouterr().err


def test_fixed_scale_is_recorded(model_dir, images, tmp_path):
    out = tmp_path / "out"
    assert cli("segment", "--model", model_dir, "--out", out, "--engine", "eager", "--scale", "0.5", images / "a.png") == 0
    assert pd.read_csv(out / "images.csv")["predict_scale"].tolist() == [0.5]


def test_a_second_run_into_the_same_out_merges_the_tables_by_image(model_dir, images, tmp_path):
    """Issue 22: a second `nucseg segment` into one --out replaced objects.csv and images.csv
    with its own batch while the first run's files stayed. Now the tables list exactly the
    images whose files are in --out: the rewritten ones with the second run's rows, the others
    with the first run's; an image whose files were removed meanwhile drops out."""
    out = tmp_path / "out"
    shutil.copy(images / "a.png", images / "b.png")
    shutil.copy(images / "a.png", images / "c.png")
    run = ("segment", "--model", model_dir, "--out", out, "--engine", "eager", "--tile", 128, "--margin", 32)
    assert cli(*run, "--scale", "1", images / "a.tif", images / "a.png", images / "c.png") == 0  # names a_tif, a_png, c
    first = pd.read_csv(out / "images.csv", dtype={"image_id": str})
    assert first["image_id"].tolist() == ["a_tif", "a_png", "c"]
    for suffix in (".tif", ".ome.zarr", ".geojson", "_rois.zip"):  # c's files removed by hand
        path = out / f"c{suffix}"
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert cli(*run, "--scale", "0.5", images / "a.png", images / "b.png") == 0  # a.png again (now "a"), and b
    per_image = pd.read_csv(out / "images.csv", dtype={"image_id": str, "source": str, "model": str, "modality": str})
    objects = pd.read_csv(out / "objects.csv", dtype={"image_id": str})
    have_files = sorted(p.name[: -len(".tif")] for p in out.glob("*.tif"))
    assert sorted(per_image["image_id"]) == have_files == ["a", "a_png", "a_tif", "b"]
    assert list(per_image.columns) == IMAGE_COLUMNS and list(objects.columns) == ["image_id", *COLUMNS]
    # the first run's rows for the images it alone wrote, the second's for the ones it (re)wrote
    assert per_image.set_index("image_id")["predict_scale"].to_dict() == {"a_tif": 1.0, "a_png": 1.0, "a": 0.5, "b": 0.5}
    for name in have_files:
        assert (objects["image_id"] == name).sum() == len(np.setdiff1d(read_labels(out / f"{name}.tif"), [0]))
        assert per_image.set_index("image_id").loc[name, "count"] == (objects["image_id"] == name).sum()
    rows = per_image.set_index("image_id")
    assert rows.loc["a_tif", "source"] == str(images / "a.tif") and rows.loc["b", "source"] == str(images / "b.png")
    assert set(rows["model"]) == {str(model_dir)} and set(rows["modality"]) <= {"fluorescence", "brightfield", "histology"}
    # a third run of the same image replaces its rows rather than adding to them
    assert cli(*run, "--scale", "0.5", images / "b.png") == 0
    again = pd.read_csv(out / "objects.csv", dtype={"image_id": str})
    pd.testing.assert_frame_equal(again.sort_values(["image_id", "label"], ignore_index=True), objects.sort_values(["image_id", "label"], ignore_index=True))


def test_an_unreadable_earlier_table_is_named(model_dir, images, tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    (out / "objects.csv").write_text("not,a\ntable,of nuclei\n")
    assert cli("segment", "--model", model_dir, "--out", out, "--engine", "eager", images / "a.png") == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith(f"{out / 'objects.csv'}: the table of an earlier run cannot be read")
    assert "no image_id column" in errors[0] and not (out / "a.tif").exists()  # named before any work


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_one_line_error(model_dir, images, tmp_path, caplog):
    assert cli("segment", "--model", model_dir, "--out", tmp_path / "o", "--device", "cuda", images / "a.png") == 1
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "cuda" in errors[0].getMessage() and "\n" not in errors[0].getMessage()


def test_missing_model_is_named(images, tmp_path, caplog):
    assert cli("segment", "--model", tmp_path / "nothing", "--out", tmp_path / "o", images / "a.png") == 1
    assert "nothing: not a readable nucseg model folder" in caplog.text
    if not (Path(PRETRAINED_MODEL) / "config.json").is_file():
        assert cli("segment", "--out", tmp_path / "o", images / "a.png") == 1
        assert "no --model given and no pretrained model" in caplog.text


def test_predict_writes_the_maps_contract(model_dir, images, tmp_path):
    """``nucseg predict`` writes what the workflow's predict rule writes, for files."""
    out = tmp_path / "maps.zarr"
    assert cli("predict", "--model", model_dir, "--out", out, "--engine", "eager", images / "a.tif") == 0
    root = zarr.open_group(out, mode="r")
    assert root.attrs["heads"] == ["body", "border"] and root.attrs["tta"] is False and root.attrs["engine"] == "eager"
    assert root["a"].shape == (2, 512, 512) and root["a"].dtype == np.float16
    # never over an input
    assert cli("predict", "--model", model_dir, "--out", out, out) == 1
    assert zarr.open_group(out, mode="r")["a"].shape == (2, 512, 512)


def test_score_prints_json_without_nan(tmp_path, capsys):
    """An empty prediction against an empty truth has undefined ratios: null, never NaN (not JSON)."""
    empty = np.zeros((20, 20), np.uint16)
    tifffile.imwrite(tmp_path / "t.tif", empty)
    tifffile.imwrite(tmp_path / "p.tif", empty)
    assert cli("score", tmp_path / "t.tif", tmp_path / "p.tif") == 0
    text = capsys.readouterr().out
    assert "NaN" not in text
    scores = json.loads(text)
    assert isinstance(scores, dict) and scores


# The output folder: one writer at a time, nothing half-written under a final name, no scratch left.


def test_a_second_writer_into_the_same_out_is_refused(model_dir, images, tmp_path, caplog):
    """Regression: two `nucseg segment` into one --out both exited 0 and left a GeoJSON mixing
    both runs. A live holder of the folder (here this process) refuses the second with one line."""
    out = tmp_path / "out"
    with locked_folder(out, "nucseg segment"):
        assert cli("segment", "--model", model_dir, "--out", out, images / "a.png") == 1
        assert list(out.iterdir()) == [out / ".nucseg.lock"]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"{out}: another nucseg segment (process {os.getpid()}) is writing into this folder; wait for it to end, or choose another folder"]
    assert cli("segment", "--model", model_dir, "--out", out, images / "a.png") == 0  # the lock ended with its block
    assert sorted(p.name for p in out.iterdir()) == ["a.geojson", "a.ome.zarr", "a.tif", "a_rois.zip", "images.csv", "objects.csv"]


def test_geojson_takes_its_name_only_when_complete(tmp_path):
    """Regression: the GeoJSON was written under its final name: a killed run left it cut off
    mid-feature, and truncated a good one of an earlier run."""
    good = '{"type": "FeatureCollection", "features": []}\n'
    (tmp_path / "a.geojson").write_text(good)
    with pytest.raises(KeyboardInterrupt), ImageWriters(geojson_dir=tmp_path).geojson("a"):
        assert (tmp_path / ".a.geojson.part").is_file()
        raise KeyboardInterrupt  # the run stopped while the collection was open
    assert (tmp_path / "a.geojson").read_text() == good and list(tmp_path.iterdir()) == [tmp_path / "a.geojson"]


def test_a_killed_run_leaves_scratch_that_the_next_run_removes(model_dir, images, tmp_path):
    """Regression: kill -9 left .nucseg-*/ (161 MB for 8192^2) in --out, which no later run
    removed, and a killed rerun truncated the GeoJSON of an earlier run; nor may the killed
    run's lock block the next run."""
    out = tmp_path / "out"
    assert cli("segment", "--model", model_dir, "--out", out, "--engine", "eager", images / "a.tif") == 0
    earlier = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    command = [sys.executable, "-m", "nucseg.cli", "segment", "--model", str(model_dir), "--out", str(out), "--engine", "eager", str(images / "a.tif")]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob(".nucseg-*/maps.zarr")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    child.kill()
    child.wait()
    left = sorted(p.name for p in out.iterdir())
    assert any(name.startswith(".nucseg-") for name in left), f"killed too late to leave scratch: {left}"
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name in earlier} == earlier  # the earlier run's files, whole
    (out / ".objects.csv.part").write_text("image_id,label,ar")  # as a kill while writing the table leaves it
    assert cli("segment", "--model", model_dir, "--out", out, "--engine", "eager", images / "a.tif") == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.geojson", "a.ome.zarr", "a.tif", "a_rois.zip", "images.csv", "objects.csv"]
    json.loads((out / "a.geojson").read_text())


def test_a_broken_model_folder_is_one_line_and_writes_nothing(images, tmp_path, caplog):
    """config.json with a wrong type: the file and key are named, --out is not even created."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model": {"width": "sixteen", "blocks": 2, "heads": ["body"], "in_channels": 3}}))
    assert cli("segment", "--model", folder, "--out", tmp_path / "out", images / "a.png") == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"{folder / 'config.json'}: the top level: 'normalize' is a required property; model.width: 'sixteen' is not of type 'integer'"]
    assert not (tmp_path / "out").exists()


@pytest.fixture
def sample_png(tmp_path) -> Path:
    """One embedded sample image as a PNG (no ../shared needed)."""
    import zipfile

    from .conftest import REPO, SAMPLE_IMAGE

    png = tmp_path / "in" / "sample.png"
    png.parent.mkdir()
    with zipfile.ZipFile(REPO / "resources" / "sample" / "sample_test.zip") as archive:
        png.write_bytes(archive.read(f"{SAMPLE_IMAGE}/images/{SAMPLE_IMAGE}.png"))
    return png


def write_yaml(path: Path, config: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(config))
    return path


def test_a_config_file_sets_the_predict_and_segment_settings_under_the_options(model_dir, sample_png, tmp_path):
    """--config FILE: its predict: and segment: sections, as a workflow run reads them; an option
    given on the command line wins over the file; the file's output switches are honoured."""
    config = write_yaml(
        tmp_path / "run.yaml", {"predict": {"scale": 0.5, "engine": "eager"}, "segment": {"geojson": False, "rois": False}, "train": {"epochs": 3}}
    )
    assert cli("segment", "--model", model_dir, "--config", config, "--out", tmp_path / "a", sample_png) == 0
    assert pd.read_csv(tmp_path / "a" / "images.csv")["predict_scale"].tolist() == [0.5]
    assert (tmp_path / "a" / "sample.tif").is_file() and (tmp_path / "a" / "sample.ome.zarr").is_dir()
    assert not (tmp_path / "a" / "sample.geojson").exists() and not (tmp_path / "a" / "sample_rois.zip").exists()
    assert cli("segment", "--model", model_dir, "--config", config, "--scale", "1", "--out", tmp_path / "b", sample_png) == 0
    assert pd.read_csv(tmp_path / "b" / "images.csv")["predict_scale"].tolist() == [1.0]


def test_config_model_takes_that_models_overrides(sample_png, tmp_path):
    """--config-model NAME: models.NAME's sections over the file's top level, as the workflow
    gives that model (here a min_size no nucleus reaches: no nuclei). The shipped model."""
    config = write_yaml(
        tmp_path / "run.yaml",
        {"predict": {"scale": 1.0}, "segment": {"min_size": 20}, "models": {"small": {}, "huge": {"segment": {"min_size": 10**9}}}},
    )
    for model in ("small", "huge"):
        assert cli("segment", "--config", config, "--config-model", model, "--out", tmp_path / model, sample_png) == 0
    counts = {name: pd.read_csv(tmp_path / name / "images.csv")["count"].item() for name in ("small", "huge")}
    assert counts["small"] > 0 and counts["huge"] == 0, counts
    plain = write_yaml(tmp_path / "plain.yaml", {"segment": {"min_size": 20}})
    assert cli("segment", "--config", plain, "--scale", "1", "--out", tmp_path / "plain", sample_png) == 0
    assert np.array_equal(read_labels(tmp_path / "plain" / "sample.tif"), read_labels(tmp_path / "small" / "sample.tif"))


@pytest.mark.parametrize(
    "config, options, message",
    [
        ({"segment": {"min_sise": 5}}, [], "run.yaml: segment.min_sise: not a segment setting (the settings are method, threshold"),
        ({"predict": {"tile": 33}}, [], "run.yaml: predict: predict tile must be a positive multiple of 32, got 33"),
        ({"segment": {"min_size": "ten"}}, [], "run.yaml: segment: "),
        ({"segment": [1, 2]}, [], "run.yaml: segment: a mapping of settings, not list"),
        ({"models": {"a": {}}}, ["--config-model", "b"], "run.yaml: models: no model 'b' (the file has ['a'])"),
        ("just text", [], "run.yaml: a config file holds a mapping of sections"),
        (None, ["--config-model", "a"], "--config-model names a model of a config file: give the file with --config"),
    ],
    ids=["typo", "refused-value", "wrong-type", "not-a-mapping", "unknown-model", "not-a-config", "model-without-file"],
)
def test_a_bad_config_file_is_named_and_nothing_is_written(model_dir, sample_png, tmp_path, caplog, config, options, message):
    args = ["--config", write_yaml(tmp_path / "run.yaml", config)] if config is not None else []
    out = tmp_path / "out"
    assert cli("segment", "--model", model_dir, *args, *options, "--out", out, sample_png) == 1
    assert message in caplog.text
    assert not out.exists()
