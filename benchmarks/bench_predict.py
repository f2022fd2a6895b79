"""Predict at scale: memory and time of ``nucseg predict`` / ``nucseg segment`` on real-data
mosaics of growing size, and megapixels per second of the forward pass vs the predict stage.

Part 1 builds square mosaics of real DSB 2018 fluorescence images (256 x 256 each, from
``../shared/data/dsb2018/stage1_train_fixed.zip``), written tile by tile as tiled, zlib-compressed
greyscale TIFFs (never held whole), and runs each command on each in its own subprocess, reporting
wall time, seconds per megapixel and peak RSS (``ru_maxrss`` of that process).

Part 2 times, on one real image that fits in one window (``--whole`` pixels a side):
the eager forward pass alone (normalised, padded tensor in, logits out), the predict stage end to
end from the TIFF file (lazy read, statistics, normalisation, tiling, blending, float16 zarr) with
each engine, and the ONNX Runtime forward pass alone; with and without TTA.

The model is resunet-small (width 16, body + border heads) with fixed-seed random weights (its
speed does not depend on training), or ``--model`` for a trained folder.

    nice -n 10 env OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_predict.py --sizes 2048 8192 --threads 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import torch

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "dsb2018" / "stage1_train_fixed.zip"
RUN = (
    "import resource, sys; from nucseg.cli import main; rc = main(sys.argv[1:]); "
    "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)"
)


def fluorescence_tiles(n: int = 64) -> list[np.ndarray]:
    """Up to ``n`` real 256 x 256 fluorescence images (grey, uint8)."""
    from nucseg.imageio import decode_image, has_dark_nuclei, to_rgb_uint8

    tiles = []
    with zipfile.ZipFile(ARCHIVE) as z:
        for name in sorted(z.namelist()):
            if "/images/" in name and name.endswith(".png"):
                image = to_rgb_uint8(decode_image(z.read(name), name))
                if image.shape[:2] == (256, 256) and not has_dark_nuclei(image):
                    tiles.append(image[..., 0])
                    if len(tiles) == n:
                        break
    return tiles


def write_mosaic(path: Path, side: int, tiles: list[np.ndarray]) -> None:
    """A ``side x side`` mosaic of the tiles (cycled, each flipped/rotated by its position so that
    neighbours differ), written as a tiled TIFF one 256 x 256 tile at a time."""

    def pieces():
        for r in range(side // 256):
            for c in range(side // 256):
                i = r * (side // 256) + c
                yield np.rot90(tiles[i % len(tiles)], (i // len(tiles)) % 4)

    tifffile.imwrite(path, pieces(), shape=(side, side), dtype=np.uint8, tile=(256, 256), compression="zlib", bigtiff=side > 16000)


def run_cli(args: list[str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS in MB and return code of ``nucseg <args>`` in a fresh process."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    rss = [line for line in result.stderr.splitlines() if line.startswith("MAXRSS_KB")]
    if result.returncode or not rss:
        print(result.stderr[-3000:], file=sys.stderr)
    return seconds, (int(rss[-1].split()[1]) / 1024 if rss else float("nan")), result.returncode


def model_folder(tmp: Path, given: str | None) -> Path:
    if given:
        return Path(given)
    from nucseg.model import ModelConfig, ResUNet

    torch.manual_seed(0)
    model = ResUNet(ModelConfig(width=16, heads=("body", "border"))).eval()
    folder = tmp / "model"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "weights.pt")
    (folder / "config.json").write_text(json.dumps({"model": model.config.to_dict(), "normalize": {"low": 1.0, "high": 99.8, "invert_dark": True}}))
    return folder


def scale(args, tmp: Path, model: Path, tiles: list[np.ndarray]) -> None:
    print(f"\n## Mosaics through the command line (threads {args.threads}, tile {args.tile}, margin {args.margin}, batch {args.batch}, engine {args.engine})")
    print(f"{'command':8} {'side':>6} {'megapixels':>10} {'wall s':>8} {'s/MP':>6} {'peak RSS MB':>11} {'rc':>3}")
    first = {}
    for side in args.sizes:
        path = tmp / f"mosaic_{side}.tif"
        write_mosaic(path, side, tiles)
        for command in args.commands:
            out = tmp / (f"{command}_{side}" + (".zarr" if command == "predict" else ""))
            common = [
                "--model",
                str(model),
                "--out",
                str(out),
                "--tile",
                str(args.tile),
                "--margin",
                str(args.margin),
                "--batch",
                str(args.batch),
                "--engine",
                args.engine,
                "--threads",
                str(args.threads),
            ]
            seconds, rss, rc = run_cli([command, *common, str(path)])
            mp = side * side / 1e6
            first.setdefault(command, (seconds / mp, rss))
            print(
                f"{command:8} {side:6d} {mp:10.1f} {seconds:8.1f} {seconds / mp:6.2f} {rss:11.0f} {rc:3d}   "
                f"(s/MP x{seconds / mp / first[command][0]:.2f}, RSS x{rss / first[command][1]:.2f} of the smallest)",
                flush=True,
            )
            if command == "segment" and args.check and rc == 0:
                check_outputs(out, path.stem, side, tiles, model, args)
        path.unlink()


def check_outputs(out: Path, name: str, side: int, tiles: list[np.ndarray], model: Path, args) -> None:
    """Every file of ``nucseg segment`` is there; the label TIFF's type, its largest label and the
    tables' counts agree; and the count against the tiles' own: each 256 x 256 tile of the mosaic
    segmented alone (as placed: rotated), at the mosaic's predict scale, summed over the placements.
    Nuclei cut by a seam between tiles count once or twice in the mosaic and in halves in the
    tiles, so the two agree within a few per cent, not exactly."""
    import zarr

    from nucseg.bigimage import LazyImage
    from nucseg.infer import PredictSettings, open_predictor
    from nucseg.postprocess import SegmentSettings
    from nucseg.segment_one import segment_in_memory

    row = pd.read_csv(out / "images.csv").iloc[-1]
    with open(out / "objects.csv") as f:
        rows = sum(1 for _ in f) - 1
    with tifffile.TiffFile(out / f"{name}.tif") as tif:
        dtype = tif.pages[0].dtype
        labels = zarr.open_array(tif.aszarr(), mode="r")
        largest = max(int(np.asarray(labels[y : y + 4096]).max()) for y in range(0, side, 4096))
    pyramid = sorted(p.name for p in (out / f"{name}.ome.zarr" / "labels" / "nuclei").iterdir() if p.is_dir())
    sizes = {f.name: sum(g.stat().st_size for g in ([f] if f.is_file() else f.rglob("*") if f.is_dir() else [])) / 1e9 for f in sorted(out.iterdir())}
    print(f"         {side}^2: label TIFF {dtype}, largest label {largest}, images.csv count {row['count']}, objects.csv rows {rows}; labels pyramid {pyramid}")
    print("         files (GB): " + ", ".join(f"{k} {v:.2f}" for k, v in sizes.items()))
    settings = PredictSettings(tile=args.tile, margin=args.margin, engine=args.engine, scale=float(row["predict_scale"]))
    predictor = open_predictor(model, settings, args.threads)
    own = {}
    for i in range(len(tiles)):
        for k in range(4):
            tile = np.rot90(tiles[i], k)
            own[i, k] = int(segment_in_memory(predictor, LazyImage(np.ascontiguousarray(tile), "YX", "tile"), "tile", settings, SegmentSettings())[0].max())
    n = side // 256
    expected = sum(own[p % len(tiles), (p // len(tiles)) % 4] for p in range(n * n))
    print(
        f"         tiles' own nuclei summed over the {n * n} placements: {expected}; the mosaic's {row['count']} ({row['count'] / expected:.3f}x)", flush=True
    )


def best_of(fn, repeat: int) -> float:
    fn()  # warm-up (allocations, ONNX Runtime's first run)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def throughput(args, tmp: Path, model_dir: Path, tiles: list[np.ndarray]) -> None:
    import zarr

    from nucseg.bigimage import open_image
    from nucseg.imageio import normalize_image
    from nucseg.infer import EagerEngine, OnnxEngine, PredictSettings, open_predictor, predict_to_zarr
    from nucseg.modelfolder import load_model
    from nucseg.tiling import pad_to_multiple

    side = args.whole
    path = tmp / "whole.tif"
    write_mosaic(path, side, tiles)
    image = tifffile.imread(path)
    model, config = load_model(model_dir, "cpu")
    x = normalize_image(np.repeat(image[..., None], 3, axis=2), **config["normalize"])
    x = np.ascontiguousarray(pad_to_multiple(x)[0].transpose(2, 0, 1)[None])
    eager, onnx = EagerEngine(model, torch.device("cpu")), OnnxEngine(model, model_dir)
    mp = side * side / 1e6
    print(f"\n## Throughput on one {side} x {side} real image (one window; threads {args.threads})")
    print(f"{'what':44} {'tta':>4} {'s':>7} {'MP/s':>6} {'x eager forward':>15}")
    for tta in (False, True):
        n = 8 if tta else 1
        base = best_of(lambda: [eager(x) for _ in range(n)], args.repeat)
        rows = [("eager forward pass (tensor in, logits out)", base)]
        rows.append(("onnx forward pass", best_of(lambda: [onnx(x) for _ in range(n)], args.repeat)))
        for engine in ("eager", "onnx"):
            settings = PredictSettings(tta=tta, engine=engine, tile=args.tile, margin=args.margin)
            predictor = open_predictor(model_dir, settings, args.threads)
            group = zarr.open_group(tmp / f"p_{engine}_{tta}.zarr", mode="w")
            counter = iter(range(1000))
            rows.append(
                (
                    f"predict stage end to end, {engine} (file -> zarr)",
                    best_of(lambda: predict_to_zarr(predictor, open_image(path), group, f"i{next(counter)}", settings), args.repeat),
                )
            )
        for what, seconds in rows:
            print(f"{what:44} {str(tta):>4} {seconds:7.2f} {mp / seconds:6.2f} {base / seconds:15.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[2048, 8192, 16384], help="mosaic sides (multiples of 256)")
    parser.add_argument("--commands", nargs="+", default=["predict", "segment"], choices=["predict", "segment"])
    parser.add_argument("--whole", type=int, default=1024, help="side of the one-window image of the throughput table (0: skip)")
    parser.add_argument("--model", default=None, help="model folder (default: resunet-small, fixed-seed random weights)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--margin", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--check", action="store_true", help="after segment: the files, the label type and counts, and the count against the tiles' own")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not ARCHIVE.is_file():
        sys.exit(f"{ARCHIVE} not found: the benchmark needs ../shared/data")
    tiles = fluorescence_tiles()
    print(f"machine: {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = model_folder(tmp, args.model)
        if args.whole:
            throughput(args, tmp, model, tiles)
        if args.sizes:
            scale(args, tmp, model, tiles)


if __name__ == "__main__":
    main()
