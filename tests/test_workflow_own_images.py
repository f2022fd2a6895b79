"""A user's own images through the finished sample workflow: segmented and measured, not evaluated."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from PIL import Image

from .conftest import REPO, snakemake


@pytest.mark.parametrize("real", [False, True], ids=["synthetic", "with-real-fixture"])
def test_own_images_are_segmented_with_the_trained_model(sample_run, tmp_path, request, real):
    """With the real 16-bit fixture of ../shared too (skipped, saying why, where it is absent)."""
    workdir = tmp_path / "run"
    shutil.copytree(sample_run[0], workdir, symlinks=True)  # keeps times: nothing of the sample reruns
    mine = tmp_path / "my images"
    mine.mkdir()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 30, (90, 120), dtype=np.uint16) * 50
    image[20:40, 30:50] = 60000  # two bright square "nuclei", 16-bit
    image[55:75, 70:95] = 60000
    tifffile.imwrite(mine / "field 1.tif", image)
    Image.fromarray((image // 256).astype(np.uint8)).save(mine / "field2.png")
    if real:
        fixture = request.getfixturevalue("shared_data") / "fixtures" / "dsb2018_fluo_512_uint16.tif"
        shutil.copy(fixture, mine / "real.tif")

    # a config of one's own, as the README shows it: the sample's training set as in
    # config/config.yaml (so its trained model is reused) and the folder of images
    shipped = yaml.safe_load((REPO / "config/config.yaml").read_text())
    mine_config = tmp_path / "my_config.yaml"
    mine_config.write_text(
        yaml.safe_dump(
            {
                "datasets": {"sample_train": shipped["datasets"]["sample_train"], "mine": {"source": str(mine), "layout": "images", "role": "test"}},
                "models": {"resunet": {}},
            }
        )
    )
    override = ("--configfile", str(mine_config), "--replace-workflow-config")
    dry = snakemake(workdir, "--cores", "2", "-n", *override)
    assert dry.returncode == 0, dry.stderr[-3000:]
    scheduled = {line.split()[1].rstrip(":") for line in dry.stdout.splitlines() if line.startswith(("rule ", "localrule "))}
    assert scheduled <= {"download", "preprocess_test", "predict", "segment", "image_tables", "all"}
    assert "evaluate" not in scheduled and "train" not in scheduled

    result = snakemake(workdir, "--cores", "2", *override)
    assert result.returncode == 0, result.stderr[-3000:]
    # nothing is evaluated, so the sample's summary.csv, still there, is not printed as this run's
    assert (workdir / "results/summary.csv").exists() and "Summary (" not in result.stdout + result.stderr
    out = workdir / "results/segmentation/resunet/mine"
    names = {"field 1", "field2"} | ({"real"} if real else set())
    assert {p.stem for p in (out / "labels").glob("*.tif")} == names
    labels = tifffile.imread(out / "labels" / "field 1.tif")
    assert labels.shape == (90, 120) and labels.dtype == np.uint16
    objects = pd.read_csv(out / "objects.csv", dtype={"image_id": str})
    assert set(objects["image_id"]) <= names
    # something was found: the two bright 20 x 20 squares of "field 1" (16-bit) at least, and the
    # per-image table counts what the object table lists
    assert (objects["image_id"] == "field 1").sum() >= 1, objects.to_string()
    per_image = pd.read_csv(out / "images.csv", dtype={"image_id": str}).set_index("image_id")
    assert per_image.loc["field 1", "count"] == (objects["image_id"] == "field 1").sum()
    if real:
        assert (objects["image_id"] == "real").sum() > 50  # the real fixture holds 125 nuclei
    index = pd.read_csv(workdir / "results/preprocessed/mine/full_index.csv")
    assert index.set_index("image_id").loc["field 1", "bit_depth"] == 16
    assert not (workdir / "results/metrics/resunet/mine").exists()

    # an image added to the folder reruns this dataset's stages, nothing of the sample
    Image.fromarray((image // 256).astype(np.uint8)).save(mine / "field3.png")
    dry = snakemake(workdir, "--cores", "2", "-n", *override)
    assert dry.returncode == 0, dry.stderr[-3000:]
    scheduled = {line.split()[1].rstrip(":") for line in dry.stdout.splitlines() if line.startswith(("rule ", "localrule "))}
    assert {"download", "preprocess_test", "predict", "segment"} <= scheduled <= {"download", "preprocess_test", "predict", "segment", "image_tables", "all"}, (
        dry.stdout[-3000:]
    )


def test_a_dsb_test_set_without_ground_truth(sample_run, tmp_path):
    """The challenge's test archive alone (images, no masks, no solution): evaluate stops with a
    message saying what to do; with evaluate: false it is predicted and segmented only."""
    workdir = tmp_path / "run"
    shutil.copytree(sample_run[0], workdir, symlinks=True)
    archive = tmp_path / "test_images_only.zip"
    with zipfile.ZipFile(REPO / "resources/sample/sample_test.zip") as src, zipfile.ZipFile(archive, "w") as dst:
        images = sorted(n for n in src.namelist() if "/images/" in n and n.endswith(".png"))[:2]
        for name in images:
            dst.writestr(name, src.read(name))
    ids = {name.split("/images/")[1][: -len(".png")] for name in images}

    dataset = f"nomasks: {{source: '{archive}', role: test}}"
    failed = snakemake(workdir, "--cores", "2", "--config", f"datasets={{{dataset}}}")
    assert failed.returncode != 0
    log = (workdir / "results/logs/evaluate/resunet/nomasks.log").read_text()
    assert "no image of dataset 'nomasks' has ground truth" in log and "evaluate: false" in log, log[-2000:]
    assert not (workdir / "results/metrics/resunet/nomasks").exists()

    unevaluated = f"datasets={{nomasks: {{source: '{archive}', role: test, evaluate: false}}}}"
    result = snakemake(workdir, "--cores", "2", "--config", unevaluated)
    assert result.returncode == 0, result.stderr[-3000:]
    out = workdir / "results/segmentation/resunet/nomasks"
    assert {p.stem for p in (out / "labels").glob("*.tif")} == ids
    assert not (workdir / "results/metrics/resunet/nomasks").exists()

    contradiction = f"datasets={{mine: {{source: '{archive}', layout: images, role: test, evaluate: true}}}}"
    refused = snakemake(workdir, "--cores", "2", "-n", "--config", contradiction)
    assert refused.returncode != 0 and "datasets.mine.evaluate: true, but layout: images has no ground truth" in refused.stdout + refused.stderr


@pytest.mark.slow
def test_the_command_line_with_the_runs_config_gives_the_workflows_labels(sample_run, tmp_path):
    """``nucseg segment --config <the run's config file>`` with the run's model gives, image for
    image, the label images the workflow's segment rule wrote with that file's settings: the
    same settings dataclasses, filled the same way (a predict and three segment settings
    changed from the defaults, so that the file is what makes them agree)."""
    from nucseg.cli import main
    from nucseg.imageio import read_labels

    workdir = tmp_path / "run"
    shutil.copytree(sample_run[0], workdir, symlinks=True)
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["predict"] = {**(config.get("predict") or {}), "scale": 1.25}
    config["segment"] = {**config["segment"], "threshold": 0.6, "min_size": 40, "marker_spacing": 0.8}
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "--cores", "2", "--configfile", str(path), "--replace-workflow-config", "results/segmentation/resunet/sample_test/objects.csv")
    assert result.returncode == 0, result.stderr[-3000:]
    workflow = workdir / "results/segmentation/resunet/sample_test/labels"

    images = tmp_path / "images"
    images.mkdir()
    with zipfile.ZipFile(REPO / "resources/sample/sample_test.zip") as archive:
        for name in archive.namelist():
            if "/images/" in name and name.endswith(".png"):
                (images / name.rsplit("/", 1)[1]).write_bytes(archive.read(name))
    pngs = sorted(images.glob("*.png"))
    out = tmp_path / "out"
    assert main(["segment", "--model", str(workdir / "results/models/resunet"), "--config", str(path), "--out", str(out), *map(str, pngs)]) == 0
    assert {p.stem for p in pngs} == {p.stem for p in workflow.glob("*.tif")}
    for png in pngs:
        assert np.array_equal(read_labels(out / f"{png.stem}.tif"), read_labels(workflow / f"{png.stem}.tif")), png.stem
    ours = pd.read_csv(out / "images.csv", dtype={"image_id": str}).set_index("image_id").sort_index()
    theirs = pd.read_csv(workdir / "results/segmentation/resunet/sample_test/images.csv", dtype={"image_id": str}).set_index("image_id").sort_index()
    assert ours["count"].tolist() == theirs["count"].tolist() and (ours["predict_scale"] == 1.25).all()
