"""Export a model folder as a BioImage Model Zoo package (bioimage.io, format 0.5).

The package holds ``rdf.yaml``, TorchScript weights, a test input and its expected output, the
model card and the training curves, zipped; ilastik, deepImageJ, QuPath (through its
bioimage.io extension) and ``bioimageio.core`` run it. The TorchScript module carries nucseg's
own normalisation, so that the consumer's preprocessing is only a cast to float32:

1. the values at the model's ``low`` / ``high`` percentiles over the whole input (all channels;
   every ``k``-th value above 16 million, ``torch.quantile``'s limit) map to 0 and 1, clipped to
   [-0.5, 1.5] (:func:`nucseg.imageio.normalize_image`);
2. where the model was trained with ``invert_dark``, an input whose nuclei are dark on a light
   background (:func:`nucseg.imageio.guess_modality`: coloured, or grey with a median above 100)
   is inverted;
3. the network, then a sigmoid: one probability map per head (``body``, ``border``).

The input is ``(1, 3, H, W)`` RGB with values on the 0-255 scale, H and W multiples of 32 (at
least 64). A consumer that tiles a large image normalises each tile on its own: for whole-image
normalisation, use nucseg itself (``nucseg segment``).

Needs the optional dependencies ``pip install "nucseg[bioimageio]"``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nucseg.files import atomic_file
from nucseg.model import MULTIPLE, load_model

log = logging.getLogger(__name__)

#: ``torch.quantile`` refuses inputs of more than 2**24 values.
QUANTILE_LIMIT = 2**24


class Packaged(nn.Module):
    """A trained network with nucseg's normalisation in front and a sigmoid behind (TorchScript-able)."""

    def __init__(self, net: nn.Module, low: float, high: float, invert_dark: bool) -> None:
        super().__init__()
        self.net = net
        self.low, self.high, self.invert_dark = float(low) / 100.0, float(high) / 100.0, bool(invert_dark)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        flat = x.reshape(-1)
        limit = 16777216  # QUANTILE_LIMIT (TorchScript takes no module constants)
        if flat.numel() > limit:
            flat = flat[:: (flat.numel() + limit - 1) // limit]
        q = torch.quantile(flat, torch.tensor([self.low, self.high], dtype=x.dtype, device=x.device))
        lo, hi = q[0], q[1]
        scale = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        y = torch.clamp((x - lo) / scale, -0.5, 1.5)
        if self.invert_dark:
            colour = (x[:, 0] - x[:, 1]).abs().mean() + (x[:, 1] - x[:, 2]).abs().mean()
            if bool(colour > 10.0) or bool(torch.median(flat) > 100.0):
                y = 1.0 - y
        return torch.sigmoid(self.net(y))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sample_image(height: int = 256, width: int = 256) -> np.ndarray:
    """A real image to test the package with: the embedded sample's first test image, cropped
    (or padded by reflection) to ``height`` x ``width``; ``(1, 3, H, W) float32``, 0-255."""
    from nucseg.datasets import list_images, read_sample, unpack_zip

    archive = Path(__file__).resolve().parents[1] / "resources" / "sample" / "sample_test.zip"
    if not archive.is_file():
        raise ValueError(f"{archive} not found: pass a test image (the sample ships with the repository)")
    with tempfile.TemporaryDirectory() as tmp:
        root = unpack_zip(archive, Path(tmp) / "sample")
        image = read_sample(root, list_images(root)[0]).image
    image = np.pad(image, ((0, max(0, height - image.shape[0])), (0, max(0, width - image.shape[1])), (0, 0)), mode="reflect")[:height, :width]
    return image.transpose(2, 0, 1)[None].astype(np.float32)


def export_bioimageio(model_dir: str | os.PathLike, out_zip: str | os.PathLike, image: np.ndarray | None = None) -> Path:
    """Write ``model_dir`` as a bioimage.io model package ``out_zip`` and return its path.

    Parameters
    ----------
    model_dir : path-like
        A nucseg model folder (weights.pt, config.json; MODEL_CARD.md and curves.png are
        included when present).
    out_zip : path-like
        The package to write (a zip; written under a temporary name, then renamed).
    image : (1, 3, H, W) ndarray of float32, optional
        Test input, values 0-255, H and W multiples of 32; default :func:`sample_image`.
    """
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bio

    model_dir, out_zip = Path(model_dir), Path(out_zip)
    net, config = load_model(model_dir, "cpu")
    norm = {"low": 1.0, "high": 99.8, "invert_dark": False, **config.get("normalize", {})}
    heads = list(config["model"]["heads"])
    image = sample_image() if image is None else np.asarray(image, dtype=np.float32)
    if image.ndim != 4 or image.shape[:2] != (1, 3) or image.shape[2] % MULTIPLE or image.shape[3] % MULTIPLE:
        raise ValueError(f"test image must be (1, 3, H, W) with H, W multiples of {MULTIPLE}, got {image.shape}")
    # the network is traced (a convolutional net: any size the trace's multiple allows), the
    # normalisation around it scripted (it branches on the data)
    with torch.no_grad():
        traced = torch.jit.trace(net, torch.zeros(1, 3, 2 * MULTIPLE, 2 * MULTIPLE), check_trace=False)
    scripted = torch.jit.script(Packaged(traced, norm["low"], norm["high"], norm["invert_dark"]).eval())
    with torch.no_grad():
        expected = scripted(torch.from_numpy(image)).numpy()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = tmp / "weights.torchscript.pt"
        scripted.save(str(weights))
        np.save(tmp / "test_input.npy", image)
        np.save(tmp / "test_output.npy", expected)
        card = model_dir / "MODEL_CARD.md"
        doc = tmp / "README.md"
        doc.write_text(card.read_text() if card.is_file() else f"# nucseg model\n\n{json.dumps(config, indent=2)}\n")
        covers = []
        if (model_dir / "curves.png").is_file():
            covers.append(model_dir / "curves.png")
        y, x = bio.AxisId("y"), bio.AxisId("x")
        descr = bio.ModelDescr(
            name="nucseg residual U-Net nuclei",
            description=(
                "Nucleus (body) and touching-border probabilities for 2-D microscopy images of any modality (fluorescence, "
                "bright-field, stained histology); residual U-Net trained by the nucseg pipeline on the 2018 Data Science Bowl data."
            ),
            authors=[bio.Author(name="nucseg developers")],
            cite=[
                bio.CiteEntry(
                    text="Caicedo et al. 2019, Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. Nature Methods 16",
                    doi=bio.Doi("10.1038/s41592-019-0612-7"),
                ),
            ],
            license=bio.LicenseId("MIT"),
            documentation=bio.FileDescr(source=doc),
            covers=covers,
            tags=["nuclei", "instance-segmentation", "unet", "2d", "fluorescence-light-microscopy", "bright-field", "histology", "pytorch"],
            inputs=[
                bio.InputTensorDescr(
                    id=bio.TensorId("raw"),
                    description="RGB image, values 0-255 (grey images: the same value in all three channels); normalised inside the model",
                    axes=[
                        bio.BatchAxis(),
                        bio.ChannelAxis(channel_names=[bio.Identifier(c) for c in ("r", "g", "b")]),
                        bio.SpaceInputAxis(id=y, size=bio.ParameterizedSize(min=64, step=MULTIPLE)),
                        bio.SpaceInputAxis(id=x, size=bio.ParameterizedSize(min=64, step=MULTIPLE)),
                    ],
                    test_tensor=bio.FileDescr(source=tmp / "test_input.npy"),
                    preprocessing=[bio.EnsureDtypeDescr(kwargs=bio.EnsureDtypeKwargs(dtype="float32"))],
                )
            ],
            outputs=[
                bio.OutputTensorDescr(
                    id=bio.TensorId("probabilities"),
                    description=f"probability maps, one channel per head: {', '.join(heads)}",
                    axes=[
                        bio.BatchAxis(),
                        bio.ChannelAxis(channel_names=[bio.Identifier(h) for h in heads]),
                        bio.SpaceOutputAxis(id=y, size=bio.SizeReference(tensor_id=bio.TensorId("raw"), axis_id=y)),
                        bio.SpaceOutputAxis(id=x, size=bio.SizeReference(tensor_id=bio.TensorId("raw"), axis_id=x)),
                    ],
                    test_tensor=bio.FileDescr(source=tmp / "test_output.npy"),
                    data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
                )
            ],
            weights=bio.WeightsDescr(torchscript=bio.TorchscriptWeightsDescr(source=weights, pytorch_version=torch.__version__.split("+")[0])),
            config={"nucseg": {"normalize": norm, "heads": heads, "model": config["model"]}},
        )
        out_zip.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(out_zip) as part:
            save_bioimageio_package(descr, output_path=Path(part))
    log.info("%s: bioimage.io package of %s (heads %s)", out_zip, model_dir, heads)
    return out_zip


def run_model_test(package: str | os.PathLike) -> dict:
    """Run ``bioimageio.core``'s model test on a package; returns its summary as a dict
    (``status`` "passed" or "failed", and the details)."""
    from bioimageio.core import test_model

    summary = test_model(str(package))
    return json.loads(summary.model_dump_json())
