"""One image through the command's steps in memory (nucseg.segment_one), against ``nucseg segment``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import tifffile

from nucseg import PRETRAINED_MODEL
from nucseg.bigimage import LazyImage, open_image
from nucseg.imageio import decode_image, to_rgb_uint8
from nucseg.infer import PredictSettings, open_predictor
from nucseg.measure import COLUMNS
from nucseg.postprocess import SegmentSettings
from nucseg.segment_one import segment_in_memory


def test_in_memory_gives_the_labels_and_rows_the_command_writes(sample_segmented):
    """The napari widget's path (the image's pixels in memory, no file written) and ``nucseg
    segment`` of the file, both with the command's defaults: the same labels, the same rows."""
    png, out = sample_segmented
    settings = PredictSettings()
    image = open_image(png)
    labels, objects, row = segment_in_memory(open_predictor(PRETRAINED_MODEL, settings), image, "sample", settings, SegmentSettings())
    expected = tifffile.imread(out / "sample.tif")
    assert labels.dtype == expected.dtype == np.uint16
    np.testing.assert_array_equal(labels, expected)
    assert row["count"] == labels.max() > 50
    table = pd.read_csv(out / "objects.csv", dtype={"image_id": str})
    assert list(objects.columns) == ["image_id", *COLUMNS]
    pd.testing.assert_frame_equal(objects.reset_index(drop=True), table[objects.columns], check_dtype=False, rtol=1e-12)


def test_an_image_without_nuclei_gives_empty_labels_and_no_rows():
    settings = PredictSettings(engine="eager", scale=1.0)
    blank = LazyImage(np.full((64, 80), 7, np.uint8), "YX", "blank")
    labels, objects, row = segment_in_memory(open_predictor(PRETRAINED_MODEL, settings), blank, "blank", settings, SegmentSettings(threshold=0.5))
    assert labels.shape == (64, 80) and labels.dtype == np.uint16 and not labels.any()
    assert objects.empty and list(objects.columns) == ["image_id", *COLUMNS]
    assert row["count"] == 0


def test_the_shipped_histology_model_segments_by_its_seed_head():
    """The shipped folder's histology model has a seed head, its main model none: a colour image
    of the embedded sample gets maps with three channels (recorded in their ``heads``), and the
    default method (``auto``) segments it by its seeds, as method ``seed`` does, not as ``paper``."""
    import zipfile

    from .conftest import REPO

    with zipfile.ZipFile(REPO / "resources" / "sample" / "sample_test.zip") as z:
        member = next(n for n in z.namelist() if n.startswith("b0e35e06") and "/images/" in n)
        pixels = decode_image(z.read(member), member)
    settings = PredictSettings(engine="eager", scale=1.0)
    predictor = open_predictor(PRETRAINED_MODEL, settings)
    assert predictor.route("histology")[0].heads == ["body", "border", "seed"] and "seed" not in predictor.heads
    image = LazyImage(to_rgb_uint8(pixels), "YXC", "he")
    assert SegmentSettings().method == "auto"
    results = {m: segment_in_memory(predictor, image, "he", settings, SegmentSettings(method=m)) for m in ("auto", "seed", "paper")}
    np.testing.assert_array_equal(results["auto"][0], results["seed"][0])
    assert results["auto"][0].max() > 10 and not np.array_equal(results["auto"][0], results["paper"][0])
