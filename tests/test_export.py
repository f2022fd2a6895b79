"""BioImage Model Zoo export: the package passes bioimageio.core's own model test and computes
what nucseg's prediction computes."""

import json

import numpy as np
import pytest
import torch

from nucseg.cli import main
from nucseg.export import export_bioimageio, run_model_test, sample_image
from nucseg.infer import PredictSettings, predict_image
from nucseg.model import ModelConfig, ResUNet, load_model

pytest.importorskip("bioimageio.core", reason="bioimageio.core not installed (pip install 'nucseg[bioimageio]')")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A small fixed-seed model with a border head that inverts dark-nuclei images."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    config = ModelConfig(width=4, heads=("body", "border"))
    torch.save(ResUNet(config).state_dict(), folder / "weights.pt")
    (folder / "config.json").write_text(json.dumps(dict(model=config.to_dict(), normalize=dict(low=1.0, high=99.8, invert_dark=True))))
    return folder


@pytest.mark.slow
def test_package_passes_bioimageio_core_model_test(model_folder, tmp_path):
    package = export_bioimageio(model_folder, tmp_path / "pkg.zip")
    summary = run_model_test(package)
    assert summary["status"] == "passed", [d for d in summary["details"] if d["status"] != "passed"]
    assert any("Reproduce test outputs" in d["name"] for d in summary["details"])


@pytest.mark.parametrize("dark", [False, True])
def test_packaged_model_computes_nucsegs_prediction(model_folder, tmp_path, dark):
    """The TorchScript module (normalisation + inversion inside) gives nucseg's probabilities."""
    image = sample_image(128, 160)
    if dark:
        image = 255 - image  # dark nuclei on a light background: inverted inside the model
    package = tmp_path / "pkg.zip"
    export_bioimageio(model_folder, package, image=image)
    import zipfile

    with zipfile.ZipFile(package) as z:
        expected = np.load(z.open("test_output.npy"))
    net, config = load_model(model_folder)
    ours = predict_image(net, image[0].transpose(1, 2, 0).astype(np.uint8), PredictSettings(scale=1.0), config["normalize"])
    np.testing.assert_allclose(expected[0], ours, atol=2e-3)


@pytest.mark.slow
def test_command_line_writes_a_tested_package(model_folder, tmp_path):
    assert main(["export-bioimageio", "--model", str(model_folder), "--out", str(tmp_path / "cli.zip")]) == 0
    assert (tmp_path / "cli.zip").is_file()
    assert main(["export-bioimageio", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "x.zip")]) == 1
    assert not (tmp_path / "x.zip").exists()
