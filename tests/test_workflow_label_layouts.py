"""Images beside label images (the StarDist and Cellpose folders) as scored test sets of the workflow."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pandas as pd
import tifffile
import yaml
from PIL import Image

from nucseg.datasets import list_images, read_sample, unpack_zip

from .conftest import REPO, snakemake

#: Three images of the embedded sample's test set: fluorescence and histology, 256 x 256 to 256 x 320.
IDS = ("2bf594e9d06f", "abc781c8721f", "f4b7c24baf69")


def test_stardist_and_cellpose_sets_score_as_the_challenge_layout(tmp_path):
    """The same three images and nuclei, given in the challenge's layout, as a StarDist folder
    and as a Cellpose zip, are predicted with the shipped model and scored alike: the per-image
    metrics of the three datasets are equal."""
    dsb = unpack_zip(REPO / "resources" / "sample" / "sample_test.zip", tmp_path / "dsb_all")
    ids = [i for i in list_images(dsb) if i.startswith(IDS)]
    assert len(ids) == len(IDS)
    subset = tmp_path / "dsb"
    stardist = tmp_path / "stardist folder"
    (stardist / "images").mkdir(parents=True)
    (stardist / "masks").mkdir()
    cellpose = tmp_path / "cellpose.zip"
    with zipfile.ZipFile(cellpose, "w") as zf:
        for image_id in ids:
            shutil.copytree(dsb / image_id, subset / image_id)
            sample = read_sample(dsb, image_id)
            Image.fromarray(sample.image).save(stardist / "images" / f"{image_id}.png")
            tifffile.imwrite(stardist / "masks" / f"{image_id}.tif", sample.labels.astype(np.uint16))
            zf.write(stardist / "images" / f"{image_id}.png", f"{image_id}_img.png")
            zf.write(stardist / "masks" / f"{image_id}.tif", f"{image_id}_masks.tif")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "datasets": {
                    "as_dsb": {"source": str(subset), "role": "test"},
                    "as_stardist": {"source": str(stardist), "layout": "stardist", "role": "test"},
                    "as_cellpose": {"source": str(cellpose), "layout": "cellpose", "role": "test"},
                },
                "models": {"pretrained": {"folder": "pretrained"}},
            }
        )
    )
    workdir = tmp_path / "run"
    result = snakemake(workdir, "--cores", "2", "--configfile", str(config), "--replace-workflow-config")
    assert result.returncode == 0, result.stderr[-4000:]
    tables = {
        name: pd.read_csv(workdir / f"results/metrics/pretrained/{name}/per_image.csv", dtype={"image_id": str}).set_index("image_id").sort_index()
        for name in ("as_dsb", "as_stardist", "as_cellpose")
    }
    reference = tables["as_dsb"].drop(columns=["dataset"])
    assert list(reference.index) == sorted(ids) and {"challenge_score", "aji"} <= set(reference.columns)
    assert (reference["n_true"] > 0).all() and (reference["challenge_score"] > 0).all()
    for name in ("as_stardist", "as_cellpose"):
        pd.testing.assert_frame_equal(tables[name].drop(columns=["dataset"]), reference)
