"""The BioImage Model Zoo package run block by block, as deepImageJ and QuPath run it, against the
whole image: does a tiled run in another tool agree with ``nucseg predict``?

Exports the shipped model (``nucseg/pretrained``) with :func:`nucseg.export.export_bioimageio`,
once per halo of ``--halos``, and runs each package through ``bioimageio.core``: the whole image
at once (``predict_sample_without_blocking``) and in ``--block``-pixel blocks with the package's
declared halo inside them (``predict_sample_with_fixed_blocking``, what
``bioimageio.core.predict(..., input_block_shape=...)`` does). "before" is the package as commit
``BEFORE`` wrote it (nucseg's normalisation inside the TorchScript module, so every block was
normalised on its own; no halo), exported by that commit's own ``nucseg/export.py`` (read with
``git show``) from a copy of the folder without its curves.png (that commit's export failed on it).

Per set of images it prints the largest ``|block - whole|`` of either map, the share of pixels
whose body probability falls on the other side of 0.5, and, for the current package, both runs
against nucseg's own ``predict_image`` (scale 1, the main model). It also checks what the
TorchScript module is given block by block: every value of every block must be one of the whole
image's normalised values (whole-image percentiles), and counts the blocks whose dark-nuclei
decision (:meth:`nucseg.export.Packaged.dark`) differs from nucseg's for the whole image.

Images: the embedded sample's 12 test images (``resources/sample/sample_test.zip``, every
modality) and, where ``../shared/data`` has them, every 7th Kromp et al. fluorescence image
(dense cytospins) and the first 3 MoNuSeg H&E images; each cropped to multiples of 32 px
(the whole-image run needs them).

    env OMP_NUM_THREADS=1 python benchmarks/bench_bioimageio_blocks.py --halos 0 32 64 96
    env OMP_NUM_THREADS=1 python benchmarks/bench_bioimageio_blocks.py --block 512 --halos 64 128 --no-before
    env OMP_NUM_THREADS=1 python benchmarks/bench_bioimageio_blocks.py --sets kromp_train --invert never --halos 64 --no-before
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SETS = ("sample", "kromp_train", "monuseg_train")
#: The last commit whose package normalised each block inside the TorchScript module.
BEFORE = "6ee16432019fb609ed9e0c9f45248e8bc87fca0b"


def sample_images() -> dict[str, np.ndarray]:
    from nucseg.datasets import list_images, read_sample, unpack_zip

    with tempfile.TemporaryDirectory() as tmp:
        root = unpack_zip(REPO / "resources" / "sample" / "sample_test.zip", Path(tmp) / "sample")
        return {f"sample/{i[:8]}": read_sample(root, i).image for i in list_images(root)}


def shared_images(archive: Path, every: int, first: int) -> dict[str, np.ndarray]:
    from nucseg.imageio import decode_image, to_rgb_uint8

    if not archive.is_file():
        return {}
    with zipfile.ZipFile(archive) as z:
        names = sorted(n for n in z.namelist() if "/images/" in n)[::every][:first]
        return {f"{archive.parent.name}/{Path(n).stem}": to_rgb_uint8(decode_image(z.read(n), n)) for n in names}


def whole_image_decisions(module, low: float, high: float) -> str:
    """The module's inversion rule (:meth:`nucseg.export.Packaged.dark`) on whole normalised images
    against nucseg's (:func:`nucseg.imageio.has_dark_nuclei` on the raw values), over every image
    of the shared training sets that are present."""
    from nucseg.export import normalize_sample
    from nucseg.imageio import decode_image, has_dark_nuclei, to_rgb_uint8

    lines = []
    for archive in (SHARED / "dsb2018" / "stage1_train.zip", SHARED / "kromp_train" / "kromp_train.zip", SHARED / "monuseg_train" / "monuseg_train.zip"):
        if not archive.is_file():
            continue
        n = differ = dark = 0
        with zipfile.ZipFile(archive) as z:
            for name in sorted(x for x in z.namelist() if "/images/" in x and not x.endswith("/")):
                image = to_rgb_uint8(decode_image(z.read(name), name))
                theirs = has_dark_nuclei(image)
                normalised = normalize_sample(image.transpose(2, 0, 1)[None].astype(np.float32), low, high)
                ours = bool(module.dark(torch.from_numpy(normalised))[0])
                n, differ, dark = n + 1, differ + (ours != theirs), dark + theirs
        lines.append(f"{archive.name}: {n} images ({dark} with dark nuclei by nucseg's rule), decided otherwise: {differ}")
    return "\n".join(lines) or "(no shared data)"


def padding_reach(module, images: dict[str, np.ndarray], low: float, high: float, pad: int) -> str:
    """How far in from the border mirrored padding (what bioimageio.core pads an image with, by
    the halo) changes the maps: the largest ``|padded - unpadded|`` per band of distance from the
    border, over the images of at least 512 px a side."""
    from nucseg.export import normalize_sample

    bands = [(0, 32), (32, 64), (64, 96), (96, 128), (128, 192), (192, 10**9)]
    worst = np.zeros(len(bands))
    for image in (v for v in images.values() if min(v.shape[:2]) >= 512):
        x = normalize_sample(image.transpose(2, 0, 1)[None].astype(np.float32), low, high)
        with torch.no_grad():
            plain = module(torch.from_numpy(x)).numpy()[0]
            padded = module(torch.from_numpy(np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="symmetric"))).numpy()[0, :, pad:-pad, pad:-pad]
        h, w = image.shape[:2]
        yy, xx = np.mgrid[:h, :w]
        distance = np.minimum(np.minimum(yy, h - 1 - yy), np.minimum(xx, w - 1 - xx))
        diff = np.abs(plain - padded).max(axis=0)
        for i, (lo, hi) in enumerate(bands):
            worst[i] = max(worst[i], diff[(distance >= lo) & (distance < hi)].max())
    return ", ".join(f"{lo}-{hi if hi < 10**9 else ''} px: {v:.3f}" for (lo, hi), v in zip(bands, worst))


def crop32(image: np.ndarray) -> np.ndarray:
    h, w = (s - s % 32 for s in image.shape[:2])
    return image[:h, :w]


def before_package(out: Path) -> Path | None:
    """The package as commit ``BEFORE`` exported the shipped model, or ``None`` without git."""
    from nucseg import PRETRAINED_MODEL
    from nucseg.export import sample_image

    try:
        source = subprocess.run(["git", "-C", str(REPO), "show", f"{BEFORE}:nucseg/export.py"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"# before: cannot read {BEFORE}:nucseg/export.py ({exc}); skipped", file=sys.stderr)
        return None
    module_path = out.parent / "export_before.py"
    module_path.write_text(source)
    spec = importlib.util.spec_from_file_location("export_before", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = out.parent / "pretrained_before"
    shutil.copytree(PRETRAINED_MODEL, folder, ignore=shutil.ignore_patterns("curves.png", "histology", "*.onnx"))
    return module.export_bioimageio(folder, out, image=sample_image())  # its own looks for the sample beside itself


class Runner:
    """One package in ``bioimageio.core``: whole-image and blockwise predictions; records what the
    TorchScript module is given (the blocks, normalised) while ``record`` is a list."""

    def __init__(self, package: Path) -> None:
        from bioimageio.core import create_prediction_pipeline, load_description

        self.descr = load_description(str(package))
        self.pipeline = create_prediction_pipeline(self.descr)
        self.pipeline.load()
        self.record: list[np.ndarray] | None = None
        forward = self.pipeline._adapter.forward  # noqa: SLF001 (a probe of what the module receives)

        def recording(inputs):
            if self.record is not None:
                self.record.append(np.asarray(inputs["raw"].data).copy())
            return forward(inputs)

        self.pipeline._adapter.forward = recording

    def _sample(self, image: np.ndarray):
        from bioimageio.core.digest_spec import create_sample_for_model

        return create_sample_for_model(self.descr, inputs={"raw": image.transpose(2, 0, 1)[None].astype(np.float32)}, sample_id="bench")

    def whole(self, image: np.ndarray) -> np.ndarray:
        out = self.pipeline.predict_sample_without_blocking(self._sample(image))
        return np.asarray(out.members["probabilities"].data)[0]

    def blocks(self, image: np.ndarray, block: int) -> np.ndarray:
        from bioimageio.core.axis import AxisId
        from bioimageio.core.common import MemberId

        shape = {MemberId("raw"): {AxisId("batch"): 1, AxisId("y"): block, AxisId("x"): block}}
        out = self.pipeline.predict_sample_with_fixed_blocking(self._sample(image), input_block_shape=shape)
        return np.asarray(out.members["probabilities"].data)[0]

    def preprocessed(self, image: np.ndarray) -> np.ndarray:
        sample = self._sample(image)
        self.pipeline.apply_preprocessing(sample)
        return np.asarray(sample.members["raw"].data)


#: Pixels at least this far from the image border are its interior: where the mirrored context
#: that bioimageio.core pads the image with (its halo) no longer reaches (measured: below 0.01
#: beyond 192 px, up to 0.3 at 96-128 px).
INTERIOR = 192


def compare(a: np.ndarray, b: np.ndarray, margin: int = 0) -> tuple[float, int, int]:
    """Largest |a - b| over both maps; body pixels on either side of 0.5; pixels; over the pixels
    at least ``margin`` from the border (none: ``(0.0, 0, 0)``)."""
    a, b = (m[:, margin : m.shape[1] - margin, margin : m.shape[2] - margin] for m in (a, b))
    if not a[0].size:
        return 0.0, 0, 0
    return float(np.abs(a - b).max()), int(((a[0] > 0.5) != (b[0] > 0.5)).sum()), int(a[0].size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--halos", type=int, nargs="+", default=[0, 32, 64, 96])
    parser.add_argument("--block", type=int, default=256, help="block side, pixels, the halo included (bioimageio.core's block shape)")
    parser.add_argument("--no-before", dest="before", action="store_false", help="skip the package as commit BEFORE wrote it")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS, help="sets of images (default: all found)")
    parser.add_argument("--invert", default="auto", help="the packages' dark-nuclei inversion (nucseg.export.INVERT); 'before' has its own")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    import bioimageio.core
    import bioimageio.spec

    from nucseg import PRETRAINED_MODEL
    from nucseg.export import HALO, export_bioimageio
    from nucseg.imageio import has_dark_nuclei
    from nucseg.infer import PredictSettings, predict_image
    from nucseg.modelfolder import load_model

    images = sample_images() if "sample" in args.sets else {}
    if "kromp_train" in args.sets:
        images.update(shared_images(SHARED / "kromp_train" / "kromp_train.zip", 7, 6))
    if "monuseg_train" in args.sets:
        images.update(shared_images(SHARED / "monuseg_train" / "monuseg_train.zip", 1, 3))
    images = {k: crop32(v) for k, v in images.items() if min(v.shape[:2]) >= args.block}
    sets = sorted({k.split("/")[0] for k in images})
    print(f"# bioimageio.core {bioimageio.core.__version__}, bioimageio.spec {bioimageio.spec.__version__}, torch {torch.__version__}, 1 thread")
    counts = ", ".join(f"{s}: {sum(k.startswith(s + '/') for k in images)}" for s in sets)
    print(f"# {len(images)} images ({counts}), blocks of {args.block} px (halo included); the package's halo (nucseg.export.HALO): {HALO} px")
    print(f"# dark-nuclei inversion: {args.invert}")

    net, config = load_model(PRETRAINED_MODEL)
    start = time.perf_counter()
    reference = {k: predict_image(net, v, PredictSettings(scale=1.0, engine="eager"), config["normalize"]) for k, v in images.items()}
    print(f"# nucseg predict_image (scale 1, eager): {time.perf_counter() - start:.0f} s")

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        packages = {f"halo {h}": export_bioimageio(PRETRAINED_MODEL, tmp / f"halo{h}.zip", halo=h, invert=args.invert) for h in args.halos}
        if args.before:
            (tmp / "before").mkdir()
            before = before_package(tmp / "before" / "before.zip")
            if before is not None:
                packages = {"before": before, **packages}
        for label, package in packages.items():
            runner = Runner(package)
            with zipfile.ZipFile(package) as z:
                (tmp / "module.pt").write_bytes(z.read("weights.torchscript.pt"))
            module = torch.jit.load(str(tmp / "module.pt"))
            start = time.perf_counter()
            rows = {}
            for key, image in images.items():
                whole = runner.whole(image)
                runner.record = [] if label != "before" else None
                block = runner.blocks(image, args.block)
                row = dict(block_whole=compare(block, whole), block_whole_interior=compare(block, whole, INTERIOR))
                if label != "before":
                    blocks = np.concatenate(runner.record)
                    runner.record = None
                    if args.invert == "auto":
                        decided = module.dark(torch.from_numpy(blocks)).numpy()
                    else:  # a package for one modality: every block alike
                        decided = np.full(len(blocks), args.invert == "always")
                    row.update(
                        whole_nucseg=compare(whole, reference[key]),
                        block_nucseg=compare(block, reference[key]),
                        block_nucseg_interior=compare(block, reference[key], INTERIOR),
                        inputs_whole_normalised=bool(np.isin(blocks, np.unique(runner.preprocessed(image))).all()),
                        blocks=len(decided),
                        blocks_decided_otherwise=int((decided != has_dark_nuclei(image)).sum()),
                    )
                rows[key] = row
            runner.pipeline.unload()
            results[label] = rows
            print(f"# {label}: {time.perf_counter() - start:.0f} s")

    def pooled(rows: dict, column: str, keys: list[str]) -> str:
        values = [rows[k][column] for k in keys]
        flips, pixels = sum(v[1] for v in values), sum(v[2] for v in values)
        return f"{max(v[0] for v in values):.3f} / {100 * flips / pixels:.2f} %" if pixels else "-"

    columns = {
        "block vs whole": "block_whole",
        f"interior (>= {INTERIOR} px in)": "block_whole_interior",
        "whole vs nucseg": "whole_nucseg",
        "block vs nucseg": "block_nucseg",
        f"interior (>= {INTERIOR} px in) ": "block_nucseg_interior",
    }
    print("\nmax |difference| / body pixels flipping at 0.5, per set of images")
    print(" | ".join(["package", "set", *columns]))
    for label, rows in results.items():
        for s in sets:
            keys = [k for k in rows if k.startswith(s + "/")]
            cells = [pooled(rows, c, keys) if c in rows[keys[0]] else "-" for c in columns.values()]
            print(" | ".join([label, s, *cells]))
    print("\nwhat the TorchScript module is given, block by block")
    for label, rows in results.items():
        for s in sets if label != "before" else []:
            keys = [k for k in rows if k.startswith(s + "/")]
            same = all(rows[k]["inputs_whole_normalised"] for k in keys)
            n, other = sum(rows[k]["blocks"] for k in keys), sum(rows[k]["blocks_decided_otherwise"] for k in keys)
            print(f"{label}, {s}: every value one of the whole image's normalised values: {same}; inverted otherwise than by nucseg: {other} of {n} blocks")
    print(f"\nmirrored padding by {HALO} px against none, largest change of the maps by distance from the border")
    print(padding_reach(module, images, config["normalize"]["low"], config["normalize"]["high"], HALO))
    print("\nthe inversion rule on whole images (the module's on normalised values, nucseg's on raw values)")
    print(whole_image_decisions(module, config["normalize"]["low"], config["normalize"]["high"]))
    print("\nper image, block vs whole: max |difference| / body pixels flipping (blocks inverted otherwise than by nucseg)")
    for key in images:
        cells = []
        for label, rows in results.items():
            row = rows[key]
            other = f" ({row['blocks_decided_otherwise']}/{row['blocks']})" if "blocks" in row else ""
            cells.append(f"{label}: {row['block_whole'][0]:.3f}/{row['block_whole'][1]}{other}")
        print(key, "x".join(map(str, images[key].shape[:2])), "; ".join(cells))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
