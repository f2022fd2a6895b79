"""Segment at scale: throughput and peak memory of the segment stage on large probability maps.

For each size (default 2048, 8192, 16384) a child process builds a float16 zarr probability
map of size x size in 1024-pixel chunks, tiled from the real 512 x 512 fluorescence fixture's
labels (smoothed foreground; ../shared/data/fixtures), and an RGB image store beside it, then
runs everything after the network as the segment rule does (:func:`nucseg.postprocess.segment_image`:
statistics, chunked watershed, measurements, label TIFF, GeoJSON, OME-Zarr) and reports
seconds, megapixels per second and the peak resident memory of the child. Right before and
after, the child times the forward pass of resunet-small on a 1024 x 1024 tile (the predict
stage's network, same thread count; the mean of the two, so that both see the same machine
load) with eager PyTorch and with ONNX Runtime (the predict stage's engine on a CPU), and the
predict stage end to end with ONNX Runtime on a 2048 x 2048 image (statistics,
normalisation, 2 x 2 blended windows, float16 zarr: the tiling overlap of any larger image);
the segment share of predict + segment is printed against each. The peak RSS includes
the forward pass (about 0.5 GB of activations at 1024 x 1024).

With ``--own-pixels both`` each size runs twice, side by side: measuring the input's own 16-bit
pixels with a known pixel size (the raw and µm columns, a one-channel 16-bit OME-Zarr), and the
0-255 RGB copy only.

    nice -n 10 python benchmarks/bench_segment.py 2048 8192 [--threads 1] [--no-outputs] [--own-pixels both]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchlib import FIXTURES


def build_inputs(folder: Path, size: int):
    import tifffile
    import zarr
    from scipy import ndimage as ndi

    truth = tifffile.imread(FIXTURES / "dsb2018_fluo_512_uint16_labels.tif")
    image = tifffile.imread(FIXTURES / "dsb2018_fluo_512_uint16.tif")
    grey = (image.astype(np.float32) / image.max() * 255).astype(np.uint8)
    tile = 1024
    maps = zarr.create_array(folder / "maps.zarr", shape=(1, size, size), chunks=(1, tile, tile), dtype=np.float16)
    rgb = zarr.create_array(folder / "image.zarr", shape=(size, size, 3), chunks=(tile, tile, 3), dtype=np.uint8)
    own = zarr.create_array(folder / "raw.zarr", shape=(size, size, 1), chunks=(tile, tile, 1), dtype=np.uint16)
    for y in range(0, size, tile):
        for x in range(0, size, tile):
            k = (y // tile + x // tile) % 4
            block = np.block([[np.rot90(truth, k + i + j) for j in range(tile // 512)] for i in range(tile // 512)])
            maps[0, y : y + tile, x : x + tile] = ndi.gaussian_filter((block > 0).astype(np.float32), 1.5)
            pixels = np.block([[np.rot90(grey, k + i + j) for j in range(tile // 512)] for i in range(tile // 512)])
            rgb[y : y + tile, x : x + tile] = np.repeat(pixels[..., None], 3, axis=2)
            own[y : y + tile, x : x + tile, 0] = np.block([[np.rot90(image, k + i + j) for j in range(tile // 512)] for i in range(tile // 512)])
    return maps, rgb, own


def child(size: int, threads: int, outputs: bool, own_pixels: bool) -> dict:
    import dask.array  # noqa: F401 (imported before the clock starts, as in a long run)
    import ome_zarr.writer  # noqa: F401

    from nucseg.calibration import PixelSize
    from nucseg.outputs import ImageWriters
    from nucseg.postprocess import SegmentSettings, segment_image

    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parents[1] / "results") as tmp:
        tmp = Path(tmp)
        maps, rgb, own = build_inputs(tmp, size)
        # as the workflow passes a 16-bit grey input: its own pixels (raw_* columns, the OME-Zarr's
        # one channel and display window) and a known pixel size (the µm columns, TIFF and OME-Zarr scale)
        extra = dict(raw=own, pixel_size=PixelSize(0.325, 0.325, "given")) if own_pixels else {}
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        predict = [predict_seconds_per_mp(threads)]
        folders = [tmp / name for name in ("tif", "ome", "geo")]
        for f in folders:
            f.mkdir()
        writers = ImageWriters(*folders, threads=threads) if outputs else ImageWriters(None, None, None)
        with open(tmp / "objects.csv", "w") as table_file:
            start = time.perf_counter()
            row = segment_image(
                maps, ["body"], rgb, "bench", SegmentSettings(), tmp, lambda t: t.to_csv(table_file, header=False, index=False), writers, threads, **extra
            )
            seconds = time.perf_counter() - start
        predict.append(predict_seconds_per_mp(threads))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mean = {name: float(np.mean([p[name] for p in predict])) for name in predict[0]}
    return {"size": size, "nuclei": row["count"], "seconds": seconds, "peak_rss_mb": peak, "rss_before_mb": before, "predict_s_per_mp": mean}


def predict_seconds_per_mp(threads: int) -> dict[str, float]:
    """Seconds per megapixel of resunet-small's forward pass on a 1024 x 1024 tile: eager
    PyTorch and ONNX Runtime (the predict stage's engine on a CPU)."""
    import tifffile
    import torch
    import zarr

    from nucseg.bigimage import LazyImage
    from nucseg.infer import EagerEngine, OnnxEngine, Predictor, PredictSettings, predict_to_zarr
    from nucseg.model import PRESETS, ResUNet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ResUNet(PRESETS["resunet-small"]).eval()
    x = np.random.default_rng(0).random((1, 3, 1024, 1024), dtype=np.float32)
    seconds = {}
    onnx = OnnxEngine(model, None)
    for name, engine in (("eager", EagerEngine(model, torch.device("cpu"))), ("onnx", onnx)):
        engine(x)  # warm-up at the timed shape (ONNX Runtime plans each new input shape)
        start = time.perf_counter()
        engine(x)
        seconds[name] = (time.perf_counter() - start) / (1024 * 1024 / 1e6)
    # the predict stage end to end with ONNX Runtime: statistics, normalisation, the blended
    # windows, float16 maps written to zarr, on the real fixture's pixels tiled to 2048 x 2048:
    # 2 x 2 windows of 1280^2 at the default tile and margin, the same overlap as on any larger
    # image (1.56x the pixels through the network), so its seconds per megapixel hold for them
    grey = tifffile.imread(FIXTURES / "dsb2018_fluo_512_uint16.tif")
    pixels = np.tile((grey.astype(np.float32) / grey.max() * 255).astype(np.uint8), (4, 4))
    image = LazyImage(np.repeat(pixels[..., None], 3, axis=2), "YXC", "fixture")
    settings = PredictSettings(engine="onnx")
    predictor = Predictor(onnx, list(model.config.heads), None, False)
    with tempfile.TemporaryDirectory() as tmp:
        group = zarr.open_group(Path(tmp) / "maps.zarr", mode="w")
        predict_to_zarr(predictor, image, group, "warm", settings)
        start = time.perf_counter()
        predict_to_zarr(predictor, image, group, "timed", settings)
        seconds["stage"] = (time.perf_counter() - start) / (pixels.size / 1e6)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[2048, 8192, 16384])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-outputs", action="store_true", help="tables only (no TIFF, GeoJSON, OME-Zarr)")
    parser.add_argument(
        "--own-pixels",
        choices=("both", "on", "off"),
        default="on",
        help="measure the input's own 16-bit pixels with a known pixel size, as the workflow does for such an input (on), "
        "the 0-255 RGB copy only (off, the stage before issue 22's raw measurements), or both side by side",
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-own", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads, not args.no_outputs, args.child_own)))
        return
    if not FIXTURES.is_dir():
        sys.exit(f"{FIXTURES} not found (../shared/data)")
    print(f"segment with all outputs: {not args.no_outputs}; {args.threads} thread(s); predict = resunet-small forward, 1024^2 tile, eager and ONNX")
    print(
        f"{'size':>7} {'own px':>6} {'nuclei':>8} {'seconds':>8} {'s/MP':>6} {'MP/s':>6} {'peak RSS MB':>11} {'eager s/MP':>10} {'share':>6} "
        f"{'onnx s/MP':>9} {'share':>6} {'stage s/MP':>10} {'share':>6}"
    )
    variants = {"both": (False, True), "on": (True,), "off": (False,)}[args.own_pixels]
    for size in args.sizes:
        for own_pixels in variants:
            cmd = [sys.executable, __file__, "--child", str(size), "--threads", str(args.threads)]
            cmd += (["--no-outputs"] if args.no_outputs else []) + (["--child-own"] if own_pixels else [])
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            mp = size * size / 1e6
            per_mp = r["seconds"] / mp
            eager, onnx, stage = (r["predict_s_per_mp"][k] for k in ("eager", "onnx", "stage"))
            print(
                f"{size:>7} {'on' if own_pixels else 'off':>6} {r['nuclei']:>8} {r['seconds']:>8.1f} {per_mp:>6.2f} {1 / per_mp:>6.2f} "
                f"{r['peak_rss_mb']:>11.0f} "
                f"{eager:>10.2f} {per_mp / (per_mp + eager):>6.2f} {onnx:>9.2f} {per_mp / (per_mp + onnx):>6.2f} "
                f"{stage:>10.2f} {per_mp / (per_mp + stage):>6.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
