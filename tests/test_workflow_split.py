"""One image over many jobs (split: {region: ...}; rules/split.smk, nucseg.split, nucseg.merge):
the workflow cuts a real mosaic into region jobs and merges them into the files one job writes,
nucleus for nucleus; a segment setting reruns the region segment jobs and the merge, not predict.
"""

from __future__ import annotations

import filecmp
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
import zarr

from nucseg.imageio import decode_image, has_dark_nuclei, to_rgb_uint8

from .conftest import REPO, snakemake
from .test_reruns import job_reasons

pytestmark = pytest.mark.slow

SHAPE = (1300, 1100)  # 3 x 3 regions of 512 (the last row and column narrower)
REGION = 512


def real_mosaic() -> np.ndarray:
    """A grey mosaic of the embedded sample's fluorescence test images (256 x 256 corners, rotated)."""
    tiles = []
    with zipfile.ZipFile(REPO / "resources/sample/sample_test.zip") as archive:
        for name in sorted(archive.namelist()):
            if "/images/" in name:
                image = to_rgb_uint8(decode_image(archive.read(name), name))
                if not has_dark_nuclei(image) and min(image.shape[:2]) >= 256:
                    tiles.append(image[:256, :256, 0])
    assert len(tiles) >= 4
    mosaic = np.zeros(SHAPE, np.uint8)
    for k, (y, x) in enumerate((y, x) for y in range(0, SHAPE[0], 256) for x in range(0, SHAPE[1], 256)):
        tile = np.rot90(tiles[k % len(tiles)], k % 4)
        mosaic[y : y + 256, x : x + 256] = tile[: SHAPE[0] - y, : SHAPE[1] - x]
    return mosaic


def write_config(path: Path, slides: Path, region: int, min_size: int = 10) -> list[str]:
    config = {
        "datasets": {"slides": {"source": str(slides), "layout": "images", "role": "test"}},
        "models": {"shipped": {"folder": "pretrained"}},
        # small windows and chunks, so that this small mosaic has many of each, as a slide has
        "predict": {"tile": 256, "margin": 64, "chunk": 256},
        "segment": {"chunk": 256, "overlap": 64, "min_size": min_size},
        "split": {"region": region},
    }
    path.write_text(yaml.safe_dump(config))
    return ["--configfile", str(path), "--replace-workflow-config"]


def scheduled(output: str) -> dict[str, int]:
    """{rule: number of jobs} of a dry run's job table."""
    table = re.search(r"Job stats:\n(.*?)\n\n", output, re.DOTALL)
    return {} if table is None else {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", table.group(1), re.MULTILINE) if m[0] != "total"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    slides = root / "slides"
    slides.mkdir()
    tifffile.imwrite(slides / "mosaic.tif", real_mosaic(), tile=(256, 256))
    tifffile.imwrite(slides / "small.tif", real_mosaic()[:300, :400])  # under one region: the dataset's own jobs
    done = {}
    for name, region in (("single", 0), ("split", REGION)):
        workdir = root / name
        workdir.mkdir()
        config = write_config(root / f"{name}.yaml", slides, region)
        result = snakemake(workdir, "--cores", "2", *config)
        assert result.returncode == 0, result.stderr[-4000:]
        done[name] = (workdir, config, result.stdout + result.stderr)
    return done


def test_the_split_run_equals_the_single_job_nucleus_for_nucleus(runs):
    single, split = (runs[name][0] / "results/segmentation/shipped/slides" for name in ("single", "split"))
    for name in ("mosaic", "small"):
        a, b = tifffile.imread(single / "labels" / f"{name}.tif"), tifffile.imread(split / "labels" / f"{name}.tif")
        np.testing.assert_array_equal(a, b)
        assert filecmp.cmp(single / "geojson" / f"{name}.geojson", split / "geojson" / f"{name}.geojson", shallow=False)
        assert filecmp.cmp(single / "rois" / f"{name}_rois.zip", split / "rois" / f"{name}_rois.zip", shallow=False)
        labels = [zarr.open_group(f / "ome_zarr" / f"{name}.ome.zarr", mode="r")["labels/nuclei/s0"][...] for f in (single, split)]
        np.testing.assert_array_equal(*labels)
    assert tifffile.imread(single / "labels/mosaic.tif").max() > 200  # real nuclei, numbered 1..n
    for table in ("objects.csv", "images.csv"):
        assert (single / table).read_text() == (split / table).read_text(), table
    # the mosaic ran as 9 region jobs of each kind, the small image in the dataset's own jobs
    workdir = runs["split"][0]
    maps = sorted(p.name for p in (workdir / "results/regions/shipped/slides").glob("*/maps/*.zarr"))
    assert len(maps) == 9
    preds = zarr.open_group(workdir / "results/predictions/shipped/slides.zarr", mode="r")
    assert "small" in preds and "mosaic" not in preds
    images = pd.read_csv(split / "images.csv", dtype={"image_id": str}).set_index("image_id")
    assert images.loc["mosaic", "count"] == pd.read_csv(split / "objects.csv", dtype={"image_id": str})["image_id"].eq("mosaic").sum()


def test_a_segment_setting_reruns_the_region_segments_and_the_merge_not_predict(runs, tmp_path):
    workdir, config, _ = runs["split"]
    assert "Nothing to be done" in snakemake(workdir, "--cores", "2", "-n", *config).stdout
    changed = write_config(tmp_path / "changed.yaml", Path(config[1]).parent / "slides", REGION, min_size=12)
    dry = snakemake(workdir, "--cores", "2", "-n", *changed)
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = scheduled(dry.stdout)
    assert jobs.get("segment_region") == 9 and jobs.get("merge_regions") == 1 and jobs.get("region_statistics") == 1, jobs
    assert not {"plan_regions", "predict_region", "predict"} & set(jobs), jobs
    assert "Params have changed" in job_reasons(dry.stdout)["region_statistics"]


def test_region_jobs_run_side_by_side(runs):
    """With 2 cores the region jobs of one kind overlap in time (each region a job of its own)."""
    output = runs["split"][2]
    assert output.count("rule predict_region:") == 9 and output.count("rule segment_region:") == 9
