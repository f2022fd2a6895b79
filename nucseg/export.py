"""Export a model folder as a BioImage Model Zoo package (bioimage.io, format 0.5).

The package holds ``rdf.yaml``, TorchScript weights, a test input and its expected output, a
sample input and output (TIFF), a cover image (the test input with the predicted outlines beside
its body probability) and the model card, zipped; ilastik, deepImageJ, QuPath (through its
bioimage.io extension) and ``bioimageio.core`` run it. What a consumer gets:

1. **Normalisation declared in the rdf, over the whole image.** The preprocessing is
   ``scale_range`` (the values at the model's ``low`` / ``high`` percentiles over channel, y and
   x of each sample map to 0 and 1) and ``clip`` to [-0.5, 1.5], as
   :func:`nucseg.imageio.normalize_image` does. A consumer computes these sample statistics
   over the whole image before cutting it into blocks (``bioimageio.core`` does: measured in
   BENCHMARKS.md), so the blocks are normalised alike. Percentiles are affine-invariant: any
   intensity scale (8-bit, 16-bit, float) gives the same normalised values.
2. **A declared halo** of :data:`HALO` pixels on the output's y and x axes: a blockwise
   consumer predicts each block with that much context on every side and keeps the centre.
3. **Inputs of any size in steps of 32 pixels** (at least ``2 * HALO + 32``), in one
   ``(1, 3, H, W)`` RGB tensor (grey images: the same values in all three channels).
4. **The dark-nuclei inversion** (models trained with ``invert_dark``) is decided inside the
   TorchScript module, on the normalised block it is given (:meth:`Packaged.dark`): inverted
   when coloured (``mean |r - g| + mean |g - b|`` above 10/255) or when its median is above 0.5.
   No bioimage.io preprocessing step can branch on a statistic of the image, so this decision
   is the one thing made per block. Over a whole image it agrees with nucseg's own rule
   (:func:`nucseg.imageio.guess_modality` on the raw values) on all 742 images of the 2018 Data
   Science Bowl, Kromp et al. and MoNuSeg training sets; a block nearly filled with nuclei can be
   decided otherwise (256-px blocks: 3 of 285 on the sample's test images, 34 of 470 on six
   dense Kromp images, none on MoNuSeg). ``invert="never"`` or ``"always"`` fixes it for a
   package meant for one modality.
5. The network, then a sigmoid: one probability map per head (``body``, ``border``).

What stays different from ``nucseg predict`` (BENCHMARKS.md "BioImage Model Zoo package: blocks
against the whole image"): the network's context reaches 128-192 px, more than a halo a 256-px
block can hold, so block by block 0.3 % of the body pixels fall on the other side of 0.5 than in
a whole-image run (sample, MoNuSeg; 0.1 % in 512-px blocks; 0.9-1.2 % before this package
declared the normalisation and a halo); and ``bioimageio.core`` pads even a whole image by the
halo (mirrored), which changes the maps within that reach of the border (0.3 % of the pixels),
where nucseg gives the network no context. The whole-image output without that padding (the
package's test output, computed from nucseg's own normalisation) is nucseg's prediction.

The package holds the folder's main model only, at scale 1: it neither routes images to the
folder's modality models (``config.json`` ``modalities``) nor rescales them (``predict.scale``).

Needs the optional dependencies ``pip install "nucseg[bioimageio]"``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import tifffile
import torch
from torch import nn

from nucseg.files import atomic_file
from nucseg.imageio import intensity_range, rescale_intensity
from nucseg.model import MULTIPLE
from nucseg.modelfolder import load_model

log = logging.getLogger(__name__)

#: Context (pixels, each side) a blockwise consumer adds around every block: the output's halo.
#: The network's context reaches far (mirrored padding changes its output up to 128-192 px
#: in); 64 px is where 256-px blocks stop gaining much (BENCHMARKS.md "BioImage Model Zoo
#: package: blocks against the whole image"): body pixels flipping at 0.5 against the whole
#: image fall from 0.72 % (no halo) to 0.55 % (32 px) and 0.32 % (64 px) on the sample's test
#: images, 0.26 % at 96 px for four times the blocks; 512-px blocks with it: 0.12 %. 128 px
#: would rule out 256-px blocks.
HALO = 64
#: The inversion decision on normalised values (:meth:`Packaged.dark`): nucseg's raw thresholds
#: (colour above 10 grey levels, median above 100) carried over to the normalised scale.
DARK_COLOUR = 10.0 / 255.0
DARK_MEDIAN = 0.5
#: ``export_bioimageio(invert=...)``: the dark-nuclei inversion as the model was trained
#: (``auto``: decided per block, for a model trained with ``invert_dark``), or fixed for a
#: package meant for one modality (``never``: fluorescence; ``always``: bright-field, histology).
INVERT = ("auto", "never", "always")


class Packaged(nn.Module):
    """A trained network behind the dark-nuclei inversion and before a sigmoid (TorchScript-able).

    Input ``(B, 3, H, W)`` float32 already normalised (the rdf's ``scale_range`` and ``clip``);
    output ``(B, K, H, W)`` probabilities. ``invert`` is one of :data:`INVERT` (``auto``: each
    sample inverted where :meth:`dark` says so).
    """

    def __init__(self, net: nn.Module, invert: str) -> None:
        super().__init__()
        if invert not in INVERT:
            raise ValueError(f"invert must be one of {list(INVERT)}, got {invert!r}")
        self.net = net
        self.invert = INVERT.index(invert)  # TorchScript keeps ints: 0 auto, 1 never, 2 always

    @torch.jit.export
    def dark(self, y: torch.Tensor) -> torch.Tensor:
        """``(B,)`` bool: which normalised samples have dark nuclei on a light background (coloured,
        or a median above 0.5: the median is the lower middle value, as ``torch.median`` takes it)."""
        colour = (y[:, 0] - y[:, 1]).abs().mean(dim=(1, 2)) + (y[:, 1] - y[:, 2]).abs().mean(dim=(1, 2))
        median = y.reshape(y.shape[0], -1).median(dim=1).values
        return (colour > 0.0392156862745098) | (median > 0.5)  # DARK_COLOUR, DARK_MEDIAN (no module constants in TorchScript)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        if self.invert == 2:
            y = 1.0 - y
        elif self.invert == 0:
            y = torch.where(self.dark(y)[:, None, None, None], 1.0 - y, y)
        return torch.sigmoid(self.net(y))


def sample_image(height: int = 256, width: int = 256, index: int = 0) -> np.ndarray:
    """A real image to test the package with: the embedded sample's ``index``-th test image (in
    :func:`nucseg.datasets.list_images` order), cropped (or padded by reflection) to ``height`` x
    ``width``; ``(1, 3, H, W) float32``, 0-255."""
    from nucseg.datasets import list_images, read_sample, unpack_zip

    archive = Path(__file__).resolve().parents[1] / "resources" / "sample" / "sample_test.zip"
    if not archive.is_file():
        raise ValueError(f"{archive} not found: pass a test image (the sample ships with the repository)")
    with tempfile.TemporaryDirectory() as tmp:
        root = unpack_zip(archive, Path(tmp) / "sample")
        image = read_sample(root, list_images(root)[index]).image
    image = np.pad(image, ((0, max(0, height - image.shape[0])), (0, max(0, width - image.shape[1])), (0, 0)), mode="reflect")[:height, :width]
    return image.transpose(2, 0, 1)[None].astype(np.float32)


def normalize_sample(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """What the package's declared preprocessing computes, with nucseg's own functions: the values
    at the ``low`` / ``high`` percentiles of the whole ``(1, C, H, W)`` sample onto 0 and 1,
    clipped to [-0.5, 1.5] (:func:`nucseg.imageio.rescale_intensity`); float32."""
    return rescale_intensity(image, *intensity_range(image, low, high))


def render_cover(image: np.ndarray, body: np.ndarray, path: str | os.PathLike, zoom: int = 2) -> Path:
    """Write the package's cover: the image with the outlines of its predicted nuclei (body above
    0.5, magenta) beside the body probability (magma colour map), ``zoom`` times enlarged; a PNG
    of twice its height in width (the 2:1 bioimage.io asks for) for a square image.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
    body : (H, W) ndarray of float in [0, 1]
    """
    from matplotlib import colormaps
    from PIL import Image
    from scipy import ndimage as ndi

    from nucseg.qc import outline_overlay

    labels, _ = ndi.label(body > 0.5)
    left = outline_overlay(np.asarray(image, np.uint8), None, labels)
    right = (colormaps["magma"](np.clip(body, 0.0, 1.0))[..., :3] * 255).round().astype(np.uint8)
    picture = np.concatenate([left, right], axis=1).repeat(zoom, axis=0).repeat(zoom, axis=1)
    with atomic_file(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG", optimize=True)
    return Path(path)


def export_bioimageio(
    model_dir: str | os.PathLike, out_zip: str | os.PathLike, image: np.ndarray | None = None, halo: int = HALO, invert: str = "auto"
) -> Path:
    """Write ``model_dir`` as a bioimage.io model package ``out_zip`` and return its path.

    Parameters
    ----------
    model_dir : path-like
        A nucseg model folder (weights.pt, config.json; MODEL_CARD.md is the package's
        documentation when present).
    out_zip : path-like
        The package to write (a zip; written under a temporary name, then renamed).
    image : (1, 3, H, W) ndarray of float32, optional
        Test input, values 0-255, H and W multiples of 32, at least ``2 * halo + 32``; default
        :func:`sample_image` (256 x 256, or that much where larger). It is also the sample input,
        and the cover shows it with its prediction.
    halo : int
        The output's halo, pixels on each side of y and x (:data:`HALO`); 0 declares none.
    invert : {"auto", "never", "always"}
        The dark-nuclei inversion (:data:`INVERT`): ``auto`` as the model was trained (decided
        per block for a model trained with ``invert_dark``, else never); ``never`` or ``always``
        for a package meant for fluorescence, or for bright-field and histology images only,
        which then agrees with nucseg's own prediction of such images in every block.
    """
    from bioimageio.spec import save_bioimageio_package

    model_dir, out_zip = Path(model_dir), Path(out_zip)
    if halo < 0:
        raise ValueError(f"halo must be >= 0 pixels, got {halo}")
    if invert not in INVERT:
        raise ValueError(f"invert must be one of {list(INVERT)}, got {invert!r}")
    net, config = load_model(model_dir, "cpu")
    norm = {"low": 1.0, "high": 99.8, "invert_dark": False, **config.get("normalize", {})}
    if invert == "always" and not norm["invert_dark"]:
        raise ValueError(f"{model_dir}: invert 'always' for a model not trained with normalize.invert_dark (it saw no inverted images)")
    invert = "never" if invert == "auto" and not norm["invert_dark"] else invert
    heads = list(config["model"]["heads"])
    image, min_side = _test_image(image, halo)
    scripted = _scripted(net, invert)
    with torch.no_grad():
        expected = scripted(torch.from_numpy(normalize_sample(image, norm["low"], norm["high"]))).numpy()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _write_package_files(tmp, scripted, image, expected)
        _write_documentation(tmp / "README.md", model_dir, config, norm, halo, invert)
        descr = _model_descr(tmp, config, norm, halo, invert, min_side)
        out_zip.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(out_zip) as part:
            save_bioimageio_package(descr, output_path=Path(part))
    log.info("%s: bioimage.io package of %s (heads %s, halo %d px, dark-nuclei inversion %s)", out_zip, model_dir, heads, halo, invert)
    return out_zip


def _test_image(image: np.ndarray | None, halo: int) -> tuple[np.ndarray, int]:
    """The package's test input, checked (default :func:`sample_image`), and its smallest input
    side (pixels) for ``halo``."""
    # the smallest input a block may be: a multiple of the step with at least 32 px inside the halo
    min_side = max(2 * MULTIPLE, -(-(2 * halo + MULTIPLE) // MULTIPLE) * MULTIPLE)
    image = sample_image(max(256, min_side), max(256, min_side)) if image is None else np.asarray(image, dtype=np.float32)
    if image.ndim != 4 or image.shape[:2] != (1, 3) or image.shape[2] % MULTIPLE or image.shape[3] % MULTIPLE:
        raise ValueError(f"test image must be (1, 3, H, W) with H, W multiples of {MULTIPLE}, got {image.shape}")
    if min(image.shape[2:]) < min_side:
        raise ValueError(f"test image of {image.shape[2]}x{image.shape[3]} px is smaller than the package's smallest input, {min_side} px (halo {halo})")
    return image, min_side


def _scripted(net: nn.Module, invert: str) -> torch.jit.ScriptModule:
    """The packaged module (:class:`Packaged`) as TorchScript."""
    # the network is traced (a convolutional net: any size the trace's multiple allows), the
    # inversion around it scripted (it branches on the data)
    with torch.no_grad():
        traced = torch.jit.trace(net, torch.zeros(1, 3, 2 * MULTIPLE, 2 * MULTIPLE), check_trace=False)
    return torch.jit.script(Packaged(traced, invert).eval())


def _write_package_files(tmp: Path, scripted: torch.jit.ScriptModule, image: np.ndarray, expected: np.ndarray) -> None:
    """Write the package's weights, test and sample tensors and cover into ``tmp``."""
    scripted.save(str(tmp / "weights.torchscript.pt"))
    np.save(tmp / "test_input.npy", image)
    np.save(tmp / "test_output.npy", expected)
    tifffile.imwrite(tmp / "sample_input.tif", np.clip(image[0], 0, 255).round().astype(np.uint8))
    tifffile.imwrite(tmp / "sample_output.tif", expected[0].astype(np.float32))
    render_cover(np.clip(image[0], 0, 255).round().astype(np.uint8).transpose(1, 2, 0), expected[0, 0], tmp / "cover.png")


def _write_documentation(doc: Path, model_dir: Path, config: dict, norm: dict, halo: int, invert: str) -> None:
    """Write the package's documentation: the model card (else the folder's config) and :func:`_package_notes`."""
    card = model_dir / "MODEL_CARD.md"
    doc.write_text(
        (card.read_text() if card.is_file() else f"# nucseg model\n\n```json\n{json.dumps(config, indent=2)}\n```\n") + _package_notes(norm, halo, invert)
    )


def _model_descr(tmp: Path, config: dict, norm: dict, halo: int, invert: str, min_side: int):
    """The package's description (its ``rdf.yaml``), of the files :func:`_write_package_files` and
    :func:`_write_documentation` wrote into ``tmp``."""
    from bioimageio.spec.model import v0_5 as bio

    heads = list(config["model"]["heads"])
    return bio.ModelDescr(
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
        documentation=bio.FileDescr(source=tmp / "README.md"),
        covers=[bio.FileDescr(source=tmp / "cover.png")],
        tags=["nuclei", "instance-segmentation", "unet", "2d", "fluorescence-light-microscopy", "bright-field", "histology", "pytorch"],
        inputs=[_input_descr(tmp, norm, min_side)],
        outputs=[_output_descr(tmp, heads, halo)],
        weights=bio.WeightsDescr(
            torchscript=bio.TorchscriptWeightsDescr(source=tmp / "weights.torchscript.pt", pytorch_version=torch.__version__.split("+")[0])
        ),
        config={"nucseg": {"normalize": norm, "heads": heads, "model": config["model"], "halo": halo, "invert": invert}},
    )


def _input_descr(tmp: Path, norm: dict, min_side: int):
    """The package's input tensor ``raw``: RGB, sizes from ``min_side`` in steps of :data:`MULTIPLE`,
    with the declared normalisation."""
    from bioimageio.spec.model import v0_5 as bio

    y, x = bio.AxisId("y"), bio.AxisId("x")
    every = [bio.AxisId("channel"), y, x]
    return bio.InputTensorDescr(
        id=bio.TensorId("raw"),
        description=f"RGB, any intensity scale (grey: 3 equal channels); percentiles {norm['low']:g}, {norm['high']:g} of the image onto 0, 1",
        axes=[
            bio.BatchAxis(),
            bio.ChannelAxis(channel_names=[bio.Identifier(c) for c in ("r", "g", "b")]),
            bio.SpaceInputAxis(id=y, size=bio.ParameterizedSize(min=min_side, step=MULTIPLE)),
            bio.SpaceInputAxis(id=x, size=bio.ParameterizedSize(min=min_side, step=MULTIPLE)),
        ],
        test_tensor=bio.FileDescr(source=tmp / "test_input.npy"),
        sample_tensor=bio.FileDescr(source=tmp / "sample_input.tif"),
        preprocessing=[
            bio.EnsureDtypeDescr(kwargs=bio.EnsureDtypeKwargs(dtype="float32")),
            bio.ScaleRangeDescr(kwargs=bio.ScaleRangeKwargs(axes=every, min_percentile=norm["low"], max_percentile=norm["high"])),
            bio.ClipDescr(kwargs=bio.ClipKwargs(min=-0.5, max=1.5)),
        ],
    )


def _output_descr(tmp: Path, heads: list[str], halo: int):
    """The package's output tensor ``probabilities``: one channel per head, the input's size, with
    ``halo`` pixels on each side of y and x (none for 0)."""
    from bioimageio.spec.model import v0_5 as bio

    raw = bio.TensorId("raw")
    out_axes = [
        bio.SpaceOutputAxisWithHalo(id=a, size=bio.SizeReference(tensor_id=raw, axis_id=a), halo=halo)
        if halo
        else bio.SpaceOutputAxis(id=a, size=bio.SizeReference(tensor_id=raw, axis_id=a))
        for a in (bio.AxisId("y"), bio.AxisId("x"))
    ]
    return bio.OutputTensorDescr(
        id=bio.TensorId("probabilities"),
        description=f"probability maps, one channel per head: {', '.join(heads)}",
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier(h) for h in heads]), *out_axes],
        test_tensor=bio.FileDescr(source=tmp / "test_output.npy"),
        sample_tensor=bio.FileDescr(source=tmp / "sample_output.tif"),
        data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )


def _package_notes(norm: dict, halo: int, invert: str) -> str:
    """The package's own section of its documentation: what a consumer gets."""
    inversion = {
        "auto": (
            "Dark nuclei on a light background are inverted inside the model, decided per block on the normalised values "
            f"(coloured: mean |r - g| + mean |g - b| above {DARK_COLOUR:.4f}; or a median above {DARK_MEDIAN:g}). Over a whole "
            "image this is nucseg's own decision; a block nearly filled with nuclei can be decided otherwise."
        ),
        "never": "No inversion: for images with bright nuclei on a dark background (fluorescence).",
        "always": "Every image inverted: for images with dark nuclei on a light background (bright-field, stained histology).",
    }[invert]
    return (
        "\n\n## This bioimage.io package\n\n"
        f"- Preprocessing: `scale_range` (percentiles {norm['low']:g} and {norm['high']:g} over channel, y and x of each image) "
        "and `clip` to [-0.5, 1.5]: computed over the whole image, so blocks are normalised alike.\n"
        f"- Halo: {halo} px on each side of y and x; inputs in steps of {MULTIPLE} px.\n"
        f"- {inversion}\n"
        "- The folder's main model only, at scale 1: no routing to modality models, no rescaling (`nucseg predict` does both).\n"
    )


def run_model_test(package: str | os.PathLike) -> dict:
    """Run ``bioimageio.core``'s model test on a package; returns its summary as a dict
    (``status`` "passed" or "failed", and the details)."""
    from bioimageio.core import test_model

    summary = test_model(str(package))
    return json.loads(summary.model_dump_json())
