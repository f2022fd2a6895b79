"""``nucseg``: the pipeline's functions for one-off use, without Snakemake.

Examples
--------
Segment your own images with a trained model folder::

    nucseg segment --model results/model --out my_labels/ img1.png img2.tif

Score a label image against its ground truth::

    nucseg score truth.tif prediction.tif
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import pandas as pd

from nucseg import __version__

log = logging.getLogger(__name__)


def _segment(args: argparse.Namespace) -> None:
    from nucseg.files import write_csv
    from nucseg.imageio import read_image
    from nucseg.infer import PredictSettings, predict_image
    from nucseg.measure import COLUMNS, IMAGE_COLUMNS
    from nucseg.outputs import ImageWriters
    from nucseg.postprocess import SegmentSettings, segment_image
    from nucseg.model import choose_device, load_model

    device = choose_device(args.device)
    model, config = load_model(args.model, device)
    heads = list(model.config.heads)
    settings = SegmentSettings(threshold=args.threshold if args.threshold == "otsu" else float(args.threshold))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tables, rows = [], []
    writers = ImageWriters(out, out, out)  # <name>.tif, <name>.ome.zarr, <name>.geojson
    for path in map(Path, args.images):
        image = read_image(path)
        maps = predict_image(model, image, PredictSettings(tta=args.tta, device=args.device), config.get("normalize"), device)
        rows.append(segment_image(maps, heads, image, path.stem, settings, out, tables.append, writers))
        log.info("%s: %d nuclei -> %s/%s.{tif,ome.zarr,geojson}", path, rows[-1]["count"], out, path.stem)
    write_csv(pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["image_id", *COLUMNS]), out / "objects.csv")
    write_csv(pd.DataFrame(rows, columns=IMAGE_COLUMNS), out / "images.csv")


def _score(args: argparse.Namespace) -> None:
    from nucseg.imageio import read_labels
    from nucseg.metrics import evaluate_image

    scores = evaluate_image(read_labels(args.truth), read_labels(args.prediction))
    json.dump(scores, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _export_bioimageio(args: argparse.Namespace) -> None:
    from nucseg import PRETRAINED_MODEL
    from nucseg.export import export_bioimageio, run_model_test

    try:
        package = export_bioimageio(args.model or PRETRAINED_MODEL, args.out)
    except ImportError as exc:
        raise ValueError(f"export-bioimageio needs bioimageio.core: pip install 'nucseg[bioimageio]' ({exc})") from exc
    if args.test:
        summary = run_model_test(package)
        failed = [d["name"] for d in summary["details"] if d["status"] != "passed"]
        if summary["status"] != "passed":
            raise ValueError(f"{package}: bioimageio.core's model test failed: {'; '.join(failed)}")
        log.info("%s: bioimageio.core's model test passed (%d checks)", package, len(summary["details"]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nucseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"nucseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="predict and segment image files with a trained model folder")
    seg.add_argument("images", nargs="+", help="PNG, JPEG or TIFF files")
    seg.add_argument("--model", required=True, help="model folder (results/model of a workflow run)")
    seg.add_argument("--out", required=True, help="folder for <name>.tif label images, <name>.ome.zarr, <name>.geojson, objects.csv and images.csv")
    seg.add_argument("--threshold", default="otsu", help="'otsu' or a probability in (0, 1)")
    seg.add_argument("--tta", action="store_true", help="8-fold test-time augmentation")
    seg.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    seg.set_defaults(func=_segment)
    score = sub.add_parser("score", help="score a predicted label TIFF against a ground-truth label TIFF")
    score.add_argument("truth")
    score.add_argument("prediction")
    score.set_defaults(func=_score)
    export = sub.add_parser("export-bioimageio", help="write a model folder as a BioImage Model Zoo package (zip) and test it")
    export.add_argument("--model", default=None, help="model folder (default: the pretrained model shipped with nucseg)")
    export.add_argument("--out", required=True, help="the package to write, e.g. nucseg-nuclei.zip")
    export.add_argument("--no-test", dest="test", action="store_false", help="skip bioimageio.core's model test of the written package")
    export.set_defaults(func=_export_bioimageio)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
