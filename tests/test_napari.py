"""The napari plugin inside napari (napari's ``make_napari_viewer`` fixture): the reader opens
``nucseg segment``'s outputs, the widget segments an image layer as the command does.

Needs ``pip install -e ".[test,napari]" pytest-qt`` and a display: CI runs pytest under
``xvfb-run`` (Qt's ``offscreen`` platform has no OpenGL for napari's canvas). Skipped without
napari, pytest-qt or a display, or failed instead where ``NUCSEG_REQUIRE_NAPARI=1`` (CI sets it).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import pytest
import tifffile


def _unavailable(reason: str):
    if os.environ.get("NUCSEG_REQUIRE_NAPARI") == "1":
        pytest.fail(f"NUCSEG_REQUIRE_NAPARI=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


try:
    import napari
    import pytestqt  # noqa: F401  (make_napari_viewer's qtbot)
except ImportError as exc:
    _unavailable(f"napari or pytest-qt is not installed ({exc}): pip install -e '.[test,napari]' pytest-qt")
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    # Qt aborts the whole process without a display; offscreen has no OpenGL for the canvas
    _unavailable("no display for napari's Qt window: run pytest under xvfb-run (apt-get install xvfb)")

from nucseg.napari.widget import layer_image, settings_from  # noqa: E402

#: Seconds the widget's worker may take (the shipped model on a 260 x 347 image: about 5 s on 2 busy cores).
SEGMENT_TIMEOUT_MS = 300_000


def test_napari_plugin_leaves_log_records_alone():
    """napari's pytest plugin makes every log argument a string for the whole session, which
    breaks ``%d`` of numpy integers in all tests; tests/conftest.py overrides its fixture."""
    assert logging.getLogRecordFactory() is logging.LogRecord
    logging.getLogger(__name__).info("%d nuclei", np.int64(3))


def test_napari_finds_the_plugin(sample_segmented):
    """The entry point and manifest as napari reads them: the reader is offered for the
    outputs (and declines the input image), the widget is listed."""
    from npe2 import PluginManager

    _, out = sample_segmented
    manager = PluginManager.instance()
    manager.discover()
    assert manager.get_manifest("nucseg").package_metadata.name == "nucseg"
    readers = [reader.command for reader in manager.iter_compatible_readers([str(out / "sample.ome.zarr")])]
    assert "nucseg.get_reader" in readers
    assert [w.display_name for w in manager.get_manifest("nucseg").contributions.widgets] == ["Segment nuclei"]


def test_opens_the_outputs_of_nucseg_segment(make_napari_viewer, sample_segmented):
    """File > Open of ``<name>.ome.zarr``: the image and the nuclei, the labels equal to the
    TIFF, the measurements under the pointer; of ``<name>.tif``: the labels alone."""
    _, out = sample_segmented
    truth = tifffile.imread(out / "sample.tif")
    table = pd.read_csv(out / "objects.csv", dtype={"image_id": str})
    viewer = make_napari_viewer()
    layers = viewer.open(str(out / "sample.ome.zarr"), plugin="nucseg")
    assert [type(layer).__name__ for layer in layers] == ["Image", "Labels"]
    image, labels = layers
    assert image.multiscale and labels.multiscale and labels.visible
    np.testing.assert_array_equal(np.asarray(labels.data[0]), truth)
    assert np.asarray(image.data[0]).shape[:2] == truth.shape
    assert list(labels.features["label"]) == list(table["label"])
    np.testing.assert_allclose(labels.features["area"], table["area"])
    [tiff] = viewer.open(str(out / "sample.tif"), plugin="nucseg")
    np.testing.assert_array_equal(tiff.data, truth)
    assert len(tiff.features) == truth.max()
    # the pointer over nucleus 1 shows its row
    y, x = np.argwhere(truth == 1)[0]
    assert "area: " in tiff.get_status((y, x), world=True)["coordinates"]


def test_the_widget_segments_an_image_layer_as_the_command_does(make_napari_viewer, qtbot, sample_segmented):
    """The PNG opened by napari's own reader, Plugins > nucseg > Segment nuclei with its defaults
    (the shipped model, the command's settings): the labels ``nucseg segment`` wrote for the file,
    and its rows of objects.csv as the layer's features."""
    png, out = sample_segmented
    viewer = make_napari_viewer()
    [image] = viewer.open(str(png), plugin="napari")
    _, widget = viewer.window.add_plugin_dock_widget("nucseg", "Segment nuclei")
    widget.image.value = image
    errors: list = []
    worker = widget()
    assert worker is not None
    worker.errored.connect(errors.append)
    qtbot.waitUntil(lambda: errors or len(viewer.layers) == 2, timeout=SEGMENT_TIMEOUT_MS)
    assert not errors, errors
    labels = viewer.layers[-1]
    assert type(labels).__name__ == "Labels" and labels.name == f"{image.name} nuclei"
    np.testing.assert_array_equal(labels.data, tifffile.imread(out / "sample.tif"))
    table = pd.read_csv(out / "objects.csv", dtype={"image_id": str})
    pd.testing.assert_frame_equal(labels.features.drop(columns="index"), table.drop(columns="image_id"), check_dtype=False, rtol=1e-12)
    assert tuple(labels.scale) == tuple(image.scale)


def test_the_widget_refuses_a_layer_that_is_no_2d_plane():
    with pytest.raises(ValueError, match=r"stack: an image layer of shape \(3, 8, 8\)"):
        layer_image(napari.layers.Image(np.zeros((3, 8, 8), np.uint8), name="stack"))
    assert layer_image(napari.layers.Image(np.zeros((8, 8, 3), np.uint8), rgb=True)).shape == (8, 8)


def test_the_widget_checks_its_values_as_the_command_does():
    predict, segment = settings_from(" 0.4 ", "0.5", True, 512, "eager", "cpu")
    assert (predict.scale, predict.tta, predict.tile, predict.engine, predict.device, segment.threshold) == (0.5, True, 512, "eager", "cpu", 0.4)
    assert settings_from("otsu", "auto", False, 1024, "auto", "auto")[0].scale == "auto"
    with pytest.raises(ValueError, match=r"threshold: '2' is neither 'otsu' nor a probability"):
        settings_from("2", "auto", False, 1024, "auto", "auto")
    with pytest.raises(ValueError, match="scale: 'big'"):
        settings_from("otsu", "big", False, 1024, "auto", "auto")
    with pytest.raises(ValueError, match="multiple of 32"):
        settings_from("otsu", "auto", False, 100, "auto", "auto")


def test_the_ome_zarr_shows_its_true_colours(make_napari_viewer, tmp_path):
    """A screenshot of napari's canvas (under Xvfb) of an RGB OME-Zarr that nucseg wrote: the
    red, green and blue thirds of the image look red, green and blue, not a white blend of
    three additive layers; the labels layer is shown on top."""
    from nucseg.outputs import write_ome_zarr

    rgb = np.zeros((96, 96, 3), np.uint8)
    for c in range(3):
        rgb[:, 32 * c : 32 * (c + 1), c] = 255
    labels = np.zeros((96, 96), np.uint16)
    labels[40:56, 4:20] = 1
    write_ome_zarr(tmp_path / "rgb.ome.zarr", rgb, labels, 1)
    viewer = make_napari_viewer(show=True)
    image, nuclei = viewer.open(str(tmp_path / "rgb.ome.zarr"), plugin="nucseg")
    assert nuclei.visible
    nuclei.visible = False
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    h, w = shot.shape[:2]
    side = min(h, w)  # the square image fills the canvas's shorter side, centred
    for c in range(3):  # the middle of each third of the image, in canvas pixels
        pixel = shot[h // 2, w // 2 + (c - 1) * side // 3]
        expected = np.zeros(3, int)
        expected[c] = 255
        assert np.abs(pixel - expected).max() < 40, (c, pixel)
