"""A large image over many jobs, the functions (nucseg.split, nucseg.merge) without the workflow:
the regions put together equal one job, and bad plans, stale region stores and a changed image
are named (the workflow's own test: tests/test_workflow_split.py)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
import zarr

import nucseg
from nucseg import merge, split
from nucseg.config import config_problems
from nucseg.infer import PredictSettings, predict_dataset
from nucseg.postprocess import SegmentSettings, segment_dataset

from .conftest import snakemake
from .test_config import CONFIG, SCHEMA
from .test_workflow_split import real_mosaic

PREDICT = PredictSettings(tile=256, margin=64, chunk=256)
SEGMENT = SegmentSettings(chunk=128, overlap=64)
MODEL = str(nucseg.model_folder("pretrained"))


def store(root, image: np.ndarray):
    group = zarr.open_group(root / "full.zarr", mode="w")
    group.create_group("images").create_array("mosaic", data=np.repeat(image[..., None], 3, axis=2), chunks=(256, 256, 3))
    pd.DataFrame({"image_id": ["mosaic"], "source": ["mosaic.tif"]}).to_csv(root / "index.csv", index=False)
    return root / "full.zarr", root / "index.csv"


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """A 700 x 600 real mosaic planned in regions of 256 (3 x 3), each region predicted."""
    root = tmp_path_factory.mktemp("split")
    images, index = store(root, real_mosaic()[:700, :600])
    plan = split.plan_dataset(MODEL, images, index, root / "plan.json", PREDICT, 256)
    maps = [root / f"maps/{k}.zarr" for k in range(len(plan.image(0).regions))]
    for k, folder in enumerate(maps):
        split.predict_region(MODEL, images, root / "plan.json", 0, k, folder, PREDICT)
    return root, images, index, maps


def test_regions_put_together_equal_one_job(planned):
    root, images, index, maps = planned
    entry = split.read_plan(root / "plan.json").image(0)
    assert len(entry.regions) == 9 and entry.shape == (700, 600)
    merge.region_statistics(root / "plan.json", 0, maps, root / "statistics.json", SEGMENT)
    chunks = [root / f"chunks/{k}.zarr" for k in range(9)]
    counts = [merge.segment_region(root / "plan.json", 0, k, maps, root / "statistics.json", chunks[k], SEGMENT) for k in range(9)]
    merge.merge_image(root / "plan.json", 0, maps, chunks, images, index, root / "merged", SEGMENT)

    predict_dataset(MODEL, images, index, root / "whole.zarr", PREDICT)
    whole = zarr.open_group(root / "whole.zarr", mode="r")["mosaic"]
    np.testing.assert_array_equal(merge.RegionMaps(maps, entry)[1, 0:700, 0:600], whole[1])
    outputs = {}
    for name, merged in (("single", None), ("split", {"mosaic": merge.merge_outputs(root / "merged")})):
        out = root / name
        segment_dataset(root / "whole.zarr", images, index, out / "labels", out / "objects.csv", SEGMENT, out / "images.csv", merged=merged)
        outputs[name] = out
    single = tifffile.imread(outputs["single"] / "labels/mosaic.tif")
    np.testing.assert_array_equal(tifffile.imread(outputs["split"] / "labels/mosaic.tif"), single)
    assert single.max() == sum(counts) > 50
    for table in ("objects.csv", "images.csv"):
        assert (outputs["single"] / table).read_text() == (outputs["split"] / table).read_text()


def test_a_changed_image_or_a_stale_region_store_is_named(planned, tmp_path):
    root, images, index, maps = planned
    smaller, _ = store(tmp_path, real_mosaic()[:650, :600])
    with pytest.raises(ValueError, match=r"image 'mosaic' is \(650, 600\), the plan .*plan.json says \(700, 600\): plan again"):
        split.predict_region(MODEL, smaller, root / "plan.json", 0, 0, tmp_path / "region.zarr", PREDICT)
    assert not (tmp_path / "region.zarr").exists()
    with pytest.raises(ValueError, match="has regions 0..8, not 9"):
        split.predict_region(MODEL, images, root / "plan.json", 0, 9, tmp_path / "region.zarr", PREDICT)
    entry = split.read_plan(root / "plan.json").image(0)
    with pytest.raises(ValueError, match=r"maps/1.zarr: maps of region \[0, 256, 256, 512\], the plan has \[0, 256, 0, 256\]: predict it again"):
        merge.RegionMaps([maps[1]] + maps[1:], entry)
    with pytest.raises(ValueError, match="9 regions planned, 8 map folders given"):
        merge.RegionMaps(maps[:8], entry)
    with pytest.raises(ValueError, match=r"plan.json: image 3 is not split \(split images: \[0\]\)"):
        split.read_plan(root / "plan.json").image(3, root / "plan.json")
    with pytest.raises(ValueError, match=r"no merged files given for the split images at positions \['0'\]"):
        merge.merged_images(root / "plan.json", [])


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"version": 1, "region": 512, "ima', "Unterminated string"),  # truncated
        ('{"version": 0, "region": 512, "images": []}', "plan version 0, this nucseg reads 1"),
        ('{"version": 1, "region": 512, "images": [{"position": 0}]}', "'histogram'"),  # a key missing
    ],
)
def test_a_bad_plan_file_is_named(tmp_path, text, problem):
    path = tmp_path / "plan.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"plan.json: not a readable plan of split images \(.*{problem}"):
        split.read_plan(path)


def test_an_empty_plan_when_no_image_is_larger_than_a_region(tmp_path):
    images, index = store(tmp_path, real_mosaic()[:300, :200])
    plan = split.plan_dataset(MODEL, images, index, tmp_path / "plan.json", PREDICT, 512)
    assert plan.images == {} and plan.ids == frozenset()
    assert json.loads((tmp_path / "plan.json").read_text())["images"] == []


@pytest.mark.parametrize("region", [1, 255])
def test_a_region_under_256_is_refused(region):
    with pytest.raises(ValueError, match=f"split region must be 0 \\(off\\) or at least 256 pixels, got {region}"):
        split.SplitSettings(region=region)
    config = {**CONFIG, "split": {"region": region}}
    (problem,) = config_problems(config, SCHEMA)
    assert problem.startswith(f"split.region: {region} is not allowed: use 0, or a whole number at least 256 (images larger than")


def test_the_workflow_refuses_split_for_the_semantic_task(tmp_path):
    archive = tmp_path / "semantic.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images/001.png", b"")
    config = {
        "task": "semantic",
        "classes": {"background": 0, "nucleus": 1},
        "datasets": {"sem": {"source": str(archive), "layout": "semantic", "role": "test"}},
        "models": {"unet": {"folder": "pretrained"}},
        "split": {"region": 1024},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(tmp_path / "c.yaml"), "--replace-workflow-config")
    assert result.returncode != 0
    assert "config: split.region is for the instance task (task is semantic); set it to 0" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()
