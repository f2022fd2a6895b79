"""``nucseg``: the pipeline's functions for one-off use, without Snakemake.

Examples
--------
Segment your own images with a trained model folder (any size: large TIFF and zarr images
are read tile by tile)::

    nucseg segment --model results/model/resunet --out my_labels/ img1.png img2.tif

Probability maps only, as a zarr group::

    nucseg predict --model results/model/resunet --out maps.zarr slide.ome.tif

Score a label image against its ground truth::

    nucseg score truth.tif prediction.tif
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from nucseg import __version__

log = logging.getLogger(__name__)


#: Suffixes stripped whole from an input's name to make its output name.
_LONG_SUFFIXES = (".ome.zarr", ".ome.tiff", ".ome.tif")


def _stem_and_ext(path: Path) -> tuple[str, str]:
    lower = path.name.lower()
    for suffix in _LONG_SUFFIXES:
        if lower.endswith(suffix):
            return path.name[: -len(suffix)], suffix[1:].replace(".", "_")
    return path.stem, path.suffix[1:].lower().replace(".", "_")


def output_names(images: list[str], out: Path, suffixes: tuple[str, ...] = (".tif", ".ome.zarr", ".geojson", "_rois.zip")) -> list[str]:
    """Output name (without suffix) of each input image: ``<stem>``; ``<stem>_<ext>`` (``a_tif``,
    ``a_png``) when several inputs share the stem with different extensions or ``<out>/<stem>.tif``
    would be an input itself; ``<stem>_<n>`` (1, 2, ... in command-line order) when they share the
    extension too (same name in different folders).

    Raises
    ------
    ValueError
        Some output would still overwrite an input (named), or two would coincide.
    """
    paths = [Path(p) for p in images]
    inputs = {p.resolve() for p in paths}
    parts = [_stem_and_ext(p) for p in paths]
    stems = [stem for stem, _ in parts]
    names = []
    for i, (stem, ext) in enumerate(parts):
        same = [j for j, s in enumerate(stems) if s == stem]
        if len(same) > 1 and len({parts[j][1] for j in same}) < len(same):
            names.append(f"{stem}_{same.index(i) + 1}")
        elif len(same) > 1 or any((out / f"{stem}{suffix}").resolve() in inputs for suffix in suffixes):
            names.append(f"{stem}_{ext}")
        else:
            names.append(stem)
    for name, path in zip(names, paths):
        clash = [out / f"{name}{suffix}" for suffix in suffixes if (out / f"{name}{suffix}").resolve() in inputs]
        if clash or names.count(name) > 1:
            raise ValueError(
                f"{path}: its output name {name!r} would overwrite {clash[0] if clash else 'another output'}; rename the input or choose another --out"
            )
    return names


#: The command-line options that are settings of the workflow's sections, by section.
SECTION_OPTIONS = {"predict": ("tta", "tile", "margin", "batch", "engine", "device", "scale"), "segment": ("threshold",)}


def _settings(args: argparse.Namespace, section: str, cls: type):
    """The ``section`` settings (``cls``) of this run: ``--config``'s file, as the workflow reads
    it (with ``--config-model``'s overrides), under the options given on the command line; the
    workflow's defaults for what neither sets."""
    from nucseg.config import settings_from_file

    given = {key: getattr(args, key) for key in SECTION_OPTIONS[section] if getattr(args, key, None) is not None}
    if args.config is None:
        if args.config_model is not None:
            raise ValueError("--config-model names a model of a config file: give the file with --config")
        return cls(**given)
    return settings_from_file(args.config, section, cls, args.config_model, given)


def _predict_settings(args: argparse.Namespace):
    from nucseg.infer import PredictSettings

    return _settings(args, "predict", PredictSettings)


def _open_predictor(args: argparse.Namespace, settings):
    """The model (``--model``, else the shipped pretrained one) ready to predict with ``settings``."""
    from nucseg import model_folder
    from nucseg.infer import open_predictor

    model = str(model_folder(args.model))
    if args.model is None and not (Path(model) / "config.json").is_file():
        raise ValueError(f"no --model given and no pretrained model at {model}: pass --model <folder of a trained model>")
    return model, open_predictor(model, settings, args.threads)


def _each_image(args: argparse.Namespace, out: Path, step) -> None:
    """Open each input and call ``step(path, name, image)``; an unreadable input is reported
    and skipped, and a ValueError naming all of them is raised at the end."""
    from nucseg.bigimage import open_image

    names = output_names(args.images, out)
    failed = []
    for path, name in zip(args.images, names):
        try:
            image = open_image(path)
        except (ValueError, TypeError) as exc:
            log.error("skipped: %s", exc)
            failed.append(path)
            continue
        step(path, name, image)
    if failed:
        raise ValueError(f"{len(failed)} of {len(names)} inputs could not be read and were skipped: {', '.join(map(str, failed))}")


#: What ``nucseg segment`` leaves in ``--out`` when it is killed outright: its scratch folder
#: (``.nucseg-<8 characters>``: probability maps, large label stores, the image outputs being
#: written) and the temporaries of the tables (``.objects.csv.part``, ``.images.csv.part``).
#: The next run into the folder removes them, holding the folder's lock.
SEGMENT_LEFTOVERS = r"\.nucseg-[a-z0-9_]{8}|\.(objects|images)\.csv\.part"


#: The files ``nucseg segment`` writes per image, after its name.
IMAGE_OUTPUTS = (".tif", ".ome.zarr", ".geojson", "_rois.zip")


def _old_table(path: Path, **read) -> pd.DataFrame | Iterator[pd.DataFrame]:
    """A table an earlier run left in ``--out`` (empty when there is none); a ValueError naming
    it when it cannot be read or has no ``image_id`` column."""
    if not path.is_file():
        return iter(()) if "chunksize" in read else pd.DataFrame(columns=["image_id"])
    try:
        if "image_id" not in pd.read_csv(path, nrows=0).columns:
            raise ValueError("it has no image_id column")
        return pd.read_csv(path, dtype={"image_id": str, "source": str, "model": str, "modality": str}, **read)
    except (ValueError, OSError) as exc:
        message = f"{path}: the table of an earlier run cannot be read to merge this run's rows into ({exc}); move it away or choose another --out"
        raise ValueError(message) from exc


def write_merged_tables(out: Path, tables: list[pd.DataFrame], rows: list[dict]) -> None:
    """Write ``objects.csv`` and ``images.csv`` into ``out``: this run's rows, after the rows an
    earlier run left for the other images whose files (:data:`IMAGE_OUTPUTS`) are still in
    ``out``. The images this run wrote have only this run's rows; an image whose files are gone
    has none. ``objects.csv`` is copied in blocks of rows (memory: one block)."""
    from nucseg.files import atomic_file, write_csv
    from nucseg.measure import COLUMNS, IMAGE_COLUMNS

    rewritten = {row["image_id"] for row in rows}
    present: dict[str, bool] = {}

    def kept(image_ids: pd.Series) -> pd.Series:
        for name in set(image_ids) - present.keys():
            present[name] = name not in rewritten and any((out / f"{name}{suffix}").exists() for suffix in IMAGE_OUTPUTS)
        return image_ids.map(present).astype(bool)

    object_columns = ["image_id", *COLUMNS]
    with atomic_file(out / "objects.csv") as tmp, open(tmp, "w", newline="") as f:
        f.write(",".join(object_columns) + "\n")
        for block in _old_table(out / "objects.csv", chunksize=200_000):
            block[kept(block["image_id"])].reindex(columns=object_columns).to_csv(f, header=False, index=False)
        for table in tables:
            table.reindex(columns=object_columns).to_csv(f, header=False, index=False)
    old = _old_table(out / "images.csv")
    old = old[kept(old["image_id"])].reindex(columns=IMAGE_COLUMNS)
    new = pd.DataFrame(rows, columns=IMAGE_COLUMNS)
    write_csv(pd.concat([old, new], ignore_index=True) if len(old) else new, out / "images.csv")
    dropped = sorted(name for name, keep in present.items() if not keep and name not in rewritten)
    if dropped:
        log.info("%s: rows of %d images whose files are no longer there left out of the tables: %s", out, len(dropped), ", ".join(dropped))


def _publish(staging: Path, out: Path, name: str) -> None:
    """Move one image's finished outputs from ``staging`` into ``out`` (same file system: renames),
    replacing those of an earlier run."""
    import shutil

    for suffix in IMAGE_OUTPUTS:
        source, dest = staging / f"{name}{suffix}", out / f"{name}{suffix}"
        if not source.exists():
            continue
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(source, dest)


def _segment(args: argparse.Namespace) -> None:
    import zarr

    from nucseg.calibration import resolve
    from nucseg.files import NoSpaceError, locked_folder, remove_stale, reporting_no_space, scratch_dir
    from nucseg.outputs import ImageWriters
    from nucseg.postprocess import SegmentSettings, map_heads
    from nucseg.segment_one import predict_maps, segment_maps

    settings = _settings(args, "segment", SegmentSettings)
    out = Path(args.out)
    predict_settings = _predict_settings(args)
    model, predictor = _open_predictor(args, predict_settings)  # a broken model folder is named before anything is written
    tables, rows = [], []

    def write_tables() -> None:
        write_merged_tables(out, tables, rows)

    with locked_folder(out, "nucseg segment"):
        remove_stale(out, SEGMENT_LEFTOVERS)  # a killed run's: no live run writes here while we hold the lock
        for table in ("objects.csv", "images.csv"):  # tables this run cannot merge into are named before any work
            _old_table(out / table, nrows=0)
        with scratch_dir(out, ".nucseg-") as scratch:
            maps_zarr, staging = scratch / "maps.zarr", scratch / "outputs"
            maps_group = zarr.open_group(maps_zarr, mode="w")
            staging.mkdir()
            # an image's files are written into the scratch folder and moved into --out together
            # once all are complete: an image has all of them or none, and the tables list it then
            writers = ImageWriters(*(staging if on else None for on in (settings.tiff, settings.ome_zarr, settings.geojson, settings.rois)))

            def step(path, name, image):
                with reporting_no_space(maps_zarr):  # zarr's writer threads raise the bare OSError
                    maps = predict_maps(predictor, image, maps_group, name, predict_settings)
                objects: list = []
                pixel_size = resolve(path, args.pixel_size)
                try:
                    with reporting_no_space(scratch):  # the label store of a large image (the outputs name themselves)
                        row = segment_maps(
                            maps, map_heads(maps, predictor.heads), image, name, settings, scratch, objects, writers, str(path), str(model), pixel_size
                        )
                except NoSpaceError as exc:  # name the output, not its place in the scratch folder
                    written = Path(exc.filename)
                    raise NoSpaceError(out / written.relative_to(staging) if written.is_relative_to(staging) else written, exc.errno) from exc
                _publish(staging, out, name)
                tables.extend(objects)
                rows.append(row)
                log.info("%s: %d nuclei -> %s/%s{.tif,.ome.zarr,.geojson,_rois.zip}", path, row["count"], out, name)

            try:
                _each_image(args, out, step)
            except BaseException:
                # the tables always match the label images written; when they cannot be written
                # either (the disk is full) the first error is the one to report
                try:
                    write_tables()
                except NoSpaceError as exc:
                    log.debug("tables not written: %s", exc)
                raise
            write_tables()


def _predict(args: argparse.Namespace) -> None:
    from nucseg.files import atomic_dir
    from nucseg.infer import open_output_group
    from nucseg.segment_one import predict_maps

    out = Path(args.out)
    if out.resolve() in {Path(p).resolve() for p in args.images}:
        raise ValueError(f"{out}: --out is one of the input images; choose another name")
    settings = _predict_settings(args)
    model, predictor = _open_predictor(args, settings)
    with atomic_dir(out, overwrite=True) as tmp:
        group = open_output_group(tmp, predictor, model, settings)
        _each_image(args, out.parent, lambda path, name, image: predict_maps(predictor, image, group, name, settings))


def _score(args: argparse.Namespace) -> None:
    from nucseg.imageio import read_labels
    from nucseg.metrics import evaluate_image

    scores = evaluate_image(read_labels(args.truth), read_labels(args.prediction))
    # JSON has no NaN: a score without a defined value (no objects to divide by) is null
    scores = {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in scores.items()}
    json.dump(scores, sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")


def _export_bioimageio(args: argparse.Namespace) -> None:
    from nucseg import model_folder
    from nucseg.export import export_bioimageio, run_model_test

    try:
        package = export_bioimageio(model_folder(args.model), args.out, invert=args.invert)
    except ImportError as exc:
        raise ValueError(f"export-bioimageio needs bioimageio.core: pip install 'nucseg[bioimageio]' ({exc})") from exc
    if args.test:
        summary = run_model_test(package)
        failed = [d["name"] for d in summary["details"] if d["status"] != "passed"]
        if summary["status"] != "passed":
            raise ValueError(f"{package}: bioimageio.core's model test failed: {'; '.join(failed)}")
        log.info("%s: bioimageio.core's model test passed (%d checks)", package, len(summary["details"]))


def _word_or_number(text: str, word: str, accept, what: str) -> str | float:
    """``word`` itself, or ``text`` as a number that ``accept`` takes; else an argparse error
    saying what is wanted (``'abc' is neither 'otsu' nor a probability between 0 and 1``)."""
    if text == word:
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not accept(value):
        raise argparse.ArgumentTypeError(f"{text!r} is neither {word!r} nor {what}")
    return value


def _threshold(text: str) -> str | float:
    return _word_or_number(text, "otsu", lambda v: 0 < v < 1, "a probability between 0 and 1")


def _scale(text: str) -> str | float:
    return _word_or_number(text, "auto", lambda v: 0.05 <= v <= 20, "a factor between 0.05 and 20")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _add_predict_arguments(parser: argparse.ArgumentParser, out_help: str) -> None:
    from nucseg.infer import ENGINES, PredictSettings
    from nucseg.model import DEVICES

    defaults = PredictSettings()
    parser.add_argument("images", nargs="+", help="PNG, JPEG, TIFF (8/16-bit, float, BigTIFF, tiled: read tile by tile), zarr or OME-Zarr images")
    parser.add_argument(
        "--model", default=None, help="model folder (results/model/<name> of a workflow run; default: the pretrained model shipped with nucseg)"
    )
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a workflow config file (YAML): its predict: and segment: settings, as a workflow run with it uses them "
        "(the options below override them; what neither sets takes the workflow's defaults)",
    )
    parser.add_argument("--config-model", default=None, metavar="NAME", help="with --config: the overrides of that file's models.NAME too")
    parser.add_argument("--tta", action="store_true", default=None, help="8-fold test-time augmentation (8x slower)")
    parser.add_argument(
        "--tile",
        type=_positive,
        default=None,
        help=f"window stride in pixels, a multiple of 32 (default {defaults.tile}); lower it to fit a small GPU",
    )
    parser.add_argument("--margin", type=int, default=None, help=f"half the blended overlap of windows, a multiple of 16 (default {defaults.margin})")
    parser.add_argument("--batch", type=_positive, default=None, help=f"windows per forward pass (default {defaults.batch}); raise it on a GPU")
    parser.add_argument(
        "--engine",
        default=None,
        choices=ENGINES,
        help="eager: plain PyTorch; onnx: ONNX Runtime (CPU, faster); onnx-int8: ONNX Runtime, the graph quantised to 8 bits (CPU); "
        f"auto: onnx on CPU, eager on CUDA (default {defaults.engine})",
    )
    parser.add_argument("--device", default=None, choices=DEVICES, help=f"default {defaults.device}")
    parser.add_argument(
        "--scale",
        type=_scale,
        default=None,
        help="resize windows by this factor before the network, maps back after: objects to the training size (0.5 for nuclei twice as large); "
        f"auto: each image's own factor, estimated from a probe of it (recorded in images.csv; default {defaults.scale})",
    )
    parser.add_argument("--threads", type=_positive, default=None, help="CPU threads (default: PyTorch's, all cores)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nucseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"nucseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="predict and segment image files with a trained model folder")
    _add_predict_arguments(
        seg,
        "folder for <name>.tif label images, <name>.ome.zarr, <name>.geojson, <name>_rois.zip, objects.csv and images.csv "
        "(a folder of an earlier run: its tables keep the rows of the images not segmented again)",
    )
    seg.add_argument("--threshold", default=None, type=_threshold, help="'otsu' or a probability in (0, 1) (default otsu)")
    seg.add_argument(
        "--pixel-size",
        type=_positive_number,
        default=None,
        metavar="UM",
        help="pixel size in micrometres, for every input (default: each file's own, from OME-TIFF, ImageJ, TIFF resolution or OME-Zarr "
        "metadata; unknown when it records none: the µm columns are then empty)",
    )
    seg.set_defaults(func=_segment)
    pred = sub.add_parser("predict", help="probability maps of image files as a zarr group (one float16 (K, H, W) array per image)")
    _add_predict_arguments(pred, "the zarr group to write, e.g. maps.zarr")
    pred.set_defaults(func=_predict)
    score = sub.add_parser("score", help="score a predicted label TIFF against a ground-truth label TIFF")
    score.add_argument("truth")
    score.add_argument("prediction")
    score.set_defaults(func=_score)
    export = sub.add_parser("export-bioimageio", help="write a model folder as a BioImage Model Zoo package (zip) and test it")
    export.add_argument("--model", default=None, help="model folder (default: the pretrained model shipped with nucseg)")
    export.add_argument("--out", required=True, help="the package to write, e.g. nucseg-nuclei.zip")
    export.add_argument(
        "--invert",
        choices=("auto", "never", "always"),  # nucseg.export.INVERT (not imported: it imports torch)
        default="auto",
        help="dark-nuclei inversion: auto (as trained: decided per block), never (a package for fluorescence images), "
        "always (for bright-field and histology images)",
    )
    export.add_argument("--no-test", dest="test", action="store_false", help="skip bioimageio.core's model test of the written package")
    export.set_defaults(func=_export_bioimageio)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from nucseg.files import NoSpaceError

    try:
        args.func(args)
    except (ValueError, FileNotFoundError, NoSpaceError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
