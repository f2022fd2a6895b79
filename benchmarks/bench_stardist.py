"""Side by side with StarDist: wall time and peak memory of StarDist's ``predict_instances_big``
and ``nucseg segment`` on the same real-data mosaics, one after the other in one run.

Mosaics: square greyscale uint8 TIFFs (tiled, zlib; BigTIFF above 16,000 pixels a side) tiled
from the real 512 x 512 DSB 2018 fluorescence fixture (``../shared/data/fixtures``, scaled to
8 bits as ``bench_segment.py`` does), each copy rotated or flipped by its position so that
neighbours differ; where ``../shared`` is absent (a fresh clone), from 256 x 256 crops of the
embedded sample's fluorescence images (``resources/sample/sample_train.zip``).

StarDist: a small StarDist2D (32 rays, grid 2 x 2, the default U-Net: depth 3, 32 base filters)
trained by this script, in a process of its own, for a fixed budget on the same training images
as the sample workflow (``resources/sample/sample_train.zip`` read with :mod:`nucseg.datasets`,
the fluorescence images, as grey, holes of the labels filled): random 128 x 128 crops (the
sample's ``preprocess.size``), turned, flipped and scaled in intensity as in StarDist's example,
15 epochs of 32 steps of 4 crops (1,920 crops, the sample's 15 epochs of 128), then thresholds
optimised on the fluorescence images of ``sample_test.zip``.
``--random-weights`` skips the training (fixed-seed weights, default thresholds 0.5 / 0.4): the
network's cost does not depend on its weights but the non-maximum suppression's does (the
number of candidate polygons), so the trained model is the default.

Each tool runs on each mosaic in its own child process, StarDist first, with the same thread
count (``OMP_NUM_THREADS``, TensorFlow's intra- and inter-op threads, ``nucseg --threads``):

- StarDist: read the TIFF into memory, 1 / 99.8 percentiles of every 4th row and column,
  ``predict_instances_big(img, axes='YX', block_size, min_overlap, context, n_tiles,
  normalizer=...)`` with each block normalised by ``csbdeep.utils.normalize_mi_ma`` (what
  ``csbdeep.utils.normalize`` does, without holding a float32 copy of the whole image: StarDist's
  own big-data example), then the label image written as a tiled zlib TIFF. ``--block-size``
  defaults to 4096 (StarDist's docstring example: 16384^2 is then 25 blocks, 1.56x its pixels
  through the network with their context); 5760 covers 16384^2 with 9 blocks, 1.11x.
- nucseg: ``nucseg segment MOSAIC --out DIR --threads N``, the shipped model and default
  settings (label TIFF, OME-Zarr, GeoJSON, ROI zip, tables).

Reported per tool and size: wall seconds of the child process (Python start and imports
included), seconds per megapixel, CPU seconds of the child (user + system, all its threads: they
leave out the time a process waits for a core on a shared machine, and above the wall time they
would show a tool using more than its threads), peak RSS of the child (its own
``ru_maxrss``), nuclei found;
for StarDist also the seconds of set-up (imports, model, reading), ``predict_instances_big`` and
the label TIFF; then the ratios nucseg / StarDist. With ``--max-minutes`` a size is skipped when
the seconds per megapixel of the size before it say it would not finish in the time left.

StarDist and TensorFlow are an optional extra, best in a virtual environment of their own (the
CPU build of PyTorch first, as in ``.ci/run``)::

    python3 -m venv ../venv-stardist
    ../venv-stardist/bin/pip install torch==2.13.0
    ../venv-stardist/bin/pip install -e ".[bench-stardist]"
    nice -n 10 ../venv-stardist/bin/python benchmarks/bench_stardist.py 4096 16384 --threads 1

Where ``stardist`` or ``tensorflow`` does not import, the script prints ``skipped: ...`` with the
reason and exits with status 0.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "data" / "fixtures" / "dsb2018_fluo_512_uint16.tif"
SAMPLE = REPO / "resources" / "sample"
RUN_NUCSEG = (
    "import resource, sys; from nucseg.cli import main; rc = main(sys.argv[1:]); "
    "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)"
)
CHECK = (
    "import json, csbdeep, keras, stardist, tensorflow; "
    "print(json.dumps({'stardist': stardist.__version__, 'tensorflow': tensorflow.__version__, "
    "'keras': keras.__version__, 'csbdeep': csbdeep.__version__}))"
)


def source_tiles() -> tuple[list[np.ndarray], str]:
    """The real images the mosaics are made of (square, one size, grey uint8), and where from."""
    import tifffile

    from nucseg.imageio import decode_image, has_dark_nuclei, to_rgb_uint8

    if FIXTURE.is_file():
        image = tifffile.imread(FIXTURE).astype(np.float32)
        return [(image / image.max() * 255).astype(np.uint8)], f"the 512 x 512 fixture {FIXTURE.name}"
    tiles = []
    with zipfile.ZipFile(SAMPLE / "sample_train.zip") as z:
        for name in sorted(z.namelist()):
            if "/images/" in name and name.endswith(".png"):
                image = to_rgb_uint8(decode_image(z.read(name), name))
                if min(image.shape[:2]) >= 256 and not has_dark_nuclei(image):
                    tiles.append(image[:256, :256, 0])
    return tiles, f"256 x 256 crops of the sample's {len(tiles)} fluorescence training images"


def mosaic_pieces(side: int, tiles: list[np.ndarray]):
    """The tiles of a ``side x side`` mosaic in row-major order: the images cycled, each rotated
    and flipped by its position so that neighbours differ.

    Raises
    ------
    ValueError
        ``side`` is not a positive multiple of the tiles' side.
    """
    t = tiles[0].shape[0]
    if side < t or side % t:
        raise ValueError(f"mosaic side {side} is not a multiple of the tiles' side {t}")
    n = side // t
    for r in range(n):
        for c in range(n):
            i = r * n + c
            piece = np.rot90(tiles[i % len(tiles)], (i // len(tiles) + r) % 4)
            yield piece[:, ::-1] if (r + c) % 2 else piece


def write_mosaic(path: Path, side: int, tiles: list[np.ndarray]) -> None:
    """Write the mosaic as a tiled zlib TIFF one tile at a time (never held whole)."""
    import tifffile

    t = tiles[0].shape[0]
    tifffile.imwrite(path, mosaic_pieces(side, tiles), shape=(side, side), dtype=np.uint8, tile=(t, t), compression="zlib", bigtiff=side > 16000)


def child_env(threads: int) -> dict[str, str]:
    """The environment of both tools' processes: the same thread count everywhere."""
    n = str(threads)
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        env[name] = n
    env.update(OMP_WAIT_POLICY="PASSIVE", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return env


def stardist_versions(env: dict[str, str]) -> tuple[dict | None, str]:
    """The versions of StarDist and TensorFlow in a child process, or None and why they do not import."""
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env)
    if result.returncode:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        return None, lines[-1] if lines else f"the import check exited with {result.returncode}"
    return json.loads(result.stdout.strip().splitlines()[-1]), ""


def _tensorflow_threads(threads: int) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def _stardist_data(archive: Path, folder: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The fluorescence images of a sample archive (grey, normalised 1 / 99.8) and their labels."""
    from csbdeep.utils import normalize
    from stardist import fill_label_holes

    from nucseg.datasets import list_images, read_sample, unpack_zip
    from nucseg.imageio import has_dark_nuclei

    root = unpack_zip(archive, folder)
    images, labels = [], []
    for image_id in list_images(root):
        sample = read_sample(root, image_id)
        if has_dark_nuclei(sample.image):
            continue
        images.append(normalize(sample.image.mean(axis=2), 1, 99.8).astype(np.float32))
        labels.append(fill_label_holes(sample.labels.astype(np.int32)))
    return images, labels


def _augment(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A random quarter turn and flip of a training crop and its labels, and an intensity scale
    and shift of the crop (the augmenter of StarDist's 2D training example)."""
    k = np.random.randint(4)
    x, y = np.rot90(x, k), np.rot90(y, k)
    if np.random.rand() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    return x * np.random.uniform(0.6, 2) + np.random.uniform(-0.2, 0.2), y


def _config(args: argparse.Namespace):
    from stardist.models import Config2D

    return Config2D(
        n_rays=32,
        grid=(2, 2),
        n_channel_in=1,
        train_patch_size=(128, 128),
        train_batch_size=4,
        train_epochs=args.epochs,
        train_steps_per_epoch=args.steps,
        train_tensorboard=False,
        use_gpu=False,
    )


def train_child(args: argparse.Namespace) -> dict:
    """Train the StarDist2D into ``args.model_dir`` and optimise its thresholds."""
    start = time.perf_counter()
    _tensorflow_threads(args.threads)
    import keras
    from stardist.models import StarDist2D

    keras.utils.set_random_seed(0)
    folder = Path(args.model_dir)
    x_train, y_train = _stardist_data(SAMPLE / "sample_train.zip", folder / "train")
    x_val, y_val = _stardist_data(SAMPLE / "sample_test.zip", folder / "test")
    model = StarDist2D(_config(args), name="stardist", basedir=str(folder))
    if args.random_weights:
        model.keras_model.save_weights(str(model.logdir / "weights_best.weights.h5"))  # found by name on loading
        return {"seconds": time.perf_counter() - start, "images": len(x_train), "thresholds": model.thresholds._asdict(), "trained": False}
    model.train(x_train, y_train, validation_data=(x_val, y_val), epochs=args.epochs, steps_per_epoch=args.steps, augmenter=_augment)
    trained = time.perf_counter() - start
    model.optimize_thresholds(x_val, y_val)
    return {
        "seconds": trained,
        "seconds_thresholds": time.perf_counter() - start - trained,
        "images": len(x_train),
        "val_images": len(x_val),
        "thresholds": model.thresholds._asdict(),
        "trained": True,
    }


def stardist_child(args: argparse.Namespace) -> dict:
    """Segment ``args.image`` with the StarDist2D of ``args.model_dir``; the label TIFF into ``args.out``."""
    start = time.perf_counter()
    _tensorflow_threads(args.threads)
    import tifffile
    from csbdeep.data import Normalizer
    from csbdeep.utils import normalize_mi_ma
    from stardist.models import StarDist2D

    class BlockNormalizer(Normalizer):
        """The whole image's percentiles applied to each block (StarDist's big-data example)."""

        def __init__(self, low: float, high: float):
            self.low, self.high = low, high

        def before(self, x, axes):
            return normalize_mi_ma(x, self.low, self.high, dtype=np.float32)

        def after(self, *args, **kwargs):
            raise NotImplementedError

        @property
        def do_after(self):
            return False

    folder = Path(args.model_dir)
    model = StarDist2D(None, name="stardist", basedir=str(folder))
    image = tifffile.imread(args.image)
    low, high = np.percentile(image[::4, ::4], (1, 99.8))
    ready = time.perf_counter()
    labels, polys = model.predict_instances_big(
        image,
        axes="YX",
        block_size=min(args.block_size, *image.shape),  # StarDist asks for a block no larger than the image
        min_overlap=args.min_overlap,
        context=args.context,
        n_tiles=(args.n_tiles, args.n_tiles),
        normalizer=BlockNormalizer(low, high),
        show_progress=False,
    )
    predicted = time.perf_counter()
    tifffile.imwrite(args.out, labels, tile=(256, 256), compression="zlib", bigtiff=labels.nbytes > 2**31)
    written = time.perf_counter()
    return {
        "nuclei": len(polys["prob"]),
        "seconds_setup": ready - start,
        "seconds_predict": predicted - ready,
        "seconds_write": written - predicted,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(argv: list[str], env: dict[str, str]) -> tuple[dict, float]:
    """This script in a child process: its JSON answer (the last line, with ``cpu_s`` added) and
    its wall seconds."""
    start, cpu = time.perf_counter(), _children_cpu_seconds()
    result = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"{' '.join(argv[:2])} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1]) | {"cpu_s": _children_cpu_seconds() - cpu}, seconds


def run_nucseg(image: Path, out: Path, threads: int, env: dict[str, str]) -> tuple[dict, float]:
    """``nucseg segment`` in a child process: nuclei, CPU seconds and peak RSS, and its wall seconds."""
    import pandas as pd

    start, cpu = time.perf_counter(), _children_cpu_seconds()
    result = subprocess.run(
        [sys.executable, "-c", RUN_NUCSEG, "segment", str(image), "--out", str(out), "--threads", str(threads)], capture_output=True, text=True, env=env
    )
    seconds = time.perf_counter() - start
    rss = [line for line in result.stderr.splitlines() if line.startswith("MAXRSS_KB")]
    if result.returncode or not rss:
        sys.exit(f"nucseg segment failed ({result.returncode}):\n{result.stderr[-4000:]}")
    count = int(pd.read_csv(out / "images.csv")["count"].iloc[0])
    return {"nuclei": count, "cpu_s": _children_cpu_seconds() - cpu, "peak_rss_mb": int(rss[-1].split()[1]) / 1024}, seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[4096, 16384], help="mosaic sides in pixels, multiples of 512 (default 4096 16384)")
    parser.add_argument("--threads", type=int, default=1, help="threads of both tools (default 1)")
    parser.add_argument("--epochs", type=int, default=15, help="StarDist training epochs (default 15)")
    parser.add_argument("--steps", type=int, default=32, help="StarDist steps per epoch, 4 crops of 128^2 each (default 32)")
    parser.add_argument("--random-weights", action="store_true", help="no StarDist training: fixed-seed weights, default thresholds")
    parser.add_argument("--block-size", type=int, default=4096, help="predict_instances_big block_size (default 4096)")
    parser.add_argument("--min-overlap", type=int, default=128, help="predict_instances_big min_overlap (default 128; nuclei are smaller)")
    parser.add_argument("--context", type=int, default=128, help="predict_instances_big context (default 128)")
    parser.add_argument("--n-tiles", type=int, default=4, help="network tiles per block and axis (default 4: n_tiles=(4, 4))")
    parser.add_argument("--max-minutes", type=float, default=None, help="skip a size the one before says would not finish in the minutes left")
    parser.add_argument("--work", default=None, help="folder for the mosaics and outputs (default: the system's temporary folder)")
    parser.add_argument("--child", choices=["train", "stardist"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for size in args.sizes:
        if size < 512 or size % 512:
            parser.error(f"mosaic side {size} is not a positive multiple of 512")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def _child_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--threads", str(args.threads), "--epochs", str(args.epochs), "--steps", str(args.steps)]
    flags += ["--block-size", str(args.block_size), "--min-overlap", str(args.min_overlap), "--context", str(args.context), "--n-tiles", str(args.n_tiles)]
    return flags + (["--random-weights"] if args.random_weights else [])


def _row(tool: str, side: int, wall: float, r: dict) -> str:
    """One line of the table; ``load`` is the 1-minute load average as the tool finished."""
    mp = side * side / 1e6
    return f"{tool:9} {side:6d} {mp:6.1f} {wall:8.1f} {wall / mp:6.2f} {r['cpu_s']:8.1f} {r['peak_rss_mb']:11.0f} {r['nuclei']:8d}  {os.getloadavg()[0]:4.1f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child == "train":
        print(json.dumps(train_child(args)))
        return 0
    if args.child == "stardist":
        print(json.dumps(stardist_child(args)))
        return 0
    env = child_env(args.threads)
    versions, reason = stardist_versions(env)
    if versions is None:
        print(f"skipped: stardist / tensorflow do not import here ({reason}); pip install -e '.[bench-stardist]'")
        return 0
    import torch

    import nucseg

    began = time.perf_counter()
    print(
        f"stardist {versions['stardist']}, tensorflow {versions['tensorflow']} (keras {versions['keras']}, csbdeep {versions['csbdeep']}); "
        f"nucseg {nucseg.__version__}, torch {torch.__version__}; {args.threads} thread(s) each; {os.cpu_count()} CPUs; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    tiles, where = source_tiles()
    with tempfile.TemporaryDirectory(dir=args.work, prefix="bench_stardist_") as tmp:
        tmp = Path(tmp)
        model_dir = tmp / "model"
        model_dir.mkdir()
        trained, _ = run_child(["--child", "train", "--model-dir", str(model_dir), *_child_flags(args)], env)
        t = trained["thresholds"]
        what = (
            f"trained {args.epochs} epochs x {args.steps} steps x 4 crops of 128^2 in {trained['seconds']:.0f} s"
            if trained["trained"]
            else "fixed-seed random weights"
        )
        print(
            f"StarDist2D: 32 rays, grid (2, 2), {what} on the sample's {trained['images']} fluorescence training images; "
            f"thresholds prob {t['prob']:.3f} nms {t['nms']:.3f}"
            + (f" (optimised on {trained['val_images']} test images in {trained['seconds_thresholds']:.0f} s)" if trained["trained"] else ""),
            flush=True,
        )
        print(
            f"predict_instances_big: block_size {args.block_size}, min_overlap {args.min_overlap}, context {args.context}, "
            f"n_tiles ({args.n_tiles}, {args.n_tiles}); "
            f"nucseg segment: shipped model, default settings; mosaics of {where}",
            flush=True,
        )
        print(f"{'tool':9} {'side':>6} {'MP':>6} {'wall s':>8} {'s/MP':>6} {'CPU s':>8} {'peak RSS MB':>11} {'nuclei':>8}  load   details")
        per_mp = None
        for side in args.sizes:
            mp = side * side / 1e6
            if args.max_minutes is not None and per_mp is not None:
                left = args.max_minutes * 60 - (time.perf_counter() - began)
                if per_mp * mp > left:
                    print(
                        f"skipped {side}: the size before says {per_mp * mp / 60:.0f} min for both tools, {left / 60:.0f} min left of --max-minutes", flush=True
                    )
                    continue
            path = tmp / f"mosaic_{side}.tif"
            write_mosaic(path, side, tiles)
            sd, sd_wall = run_child(
                ["--child", "stardist", "--model-dir", str(model_dir), "--image", str(path), "--out", str(tmp / "stardist.tif"), *_child_flags(args)], env
            )
            details = f"set-up {sd['seconds_setup']:.1f} s, predict_instances_big {sd['seconds_predict']:.1f} s, label TIFF {sd['seconds_write']:.1f} s"
            print(_row("stardist", side, sd_wall, sd) + f"   {details}", flush=True)
            ns, ns_wall = run_nucseg(path, tmp / f"nucseg_{side}", args.threads, env)
            print(_row("nucseg", side, ns_wall, ns), flush=True)
            ratios = f"wall {ns_wall / sd_wall:.2f}, CPU {ns['cpu_s'] / sd['cpu_s']:.2f}, peak RSS {ns['peak_rss_mb'] / sd['peak_rss_mb']:.2f}"
            print(f"{'ratio':9} {side:6d} nucseg / StarDist: {ratios}, nuclei {ns['nuclei'] / max(sd['nuclei'], 1):.2f}", flush=True)
            per_mp = (sd_wall + ns_wall) / mp
            for leftover in (path, tmp / "stardist.tif"):
                leftover.unlink()
            shutil.rmtree(tmp / f"nucseg_{side}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
