"""int8 on the CPU: the ``onnx-int8`` engine against the fp32 ``onnx`` engine, side by side.

One run, one process, the same model folder (default: the shipped one) opened with each engine
(:func:`nucseg.infer.open_predictor`; its histology model too, each calibrated on its own
modality, :mod:`nucseg.int8`):

1. **Speed**: the predict stage end to end (:func:`nucseg.infer.predict_to_zarr`: whole-image
   statistics, normalisation, 2 x 2 blended windows of 1280^2, float16 zarr), as
   ``bench_segment.py``'s ``predict_seconds_per_mp`` times it, on a real 2048 x 2048 image (the
   fluorescence fixture of ``../shared/data`` tiled 4 x 4, or without it the embedded sample's
   test images tiled), at predict scale 1 (so that both engines run the same windows), after a
   warm-up of each engine; then ``--repeat`` rounds alternating the engines, so that both see
   the same machine load. Seconds per megapixel of wall time and of the process's CPU time (on
   a shared machine the CPU time is the steadier figure: waiting for a core is not counted),
   medians over the rounds, and their ratio. Beside it the forward pass alone on one 1280^2
   window.
2. **Accuracy**: every image of each set through the predict stage's own path with the
   default settings (``scale: auto``: each image's scale estimated by probes, which the int8
   engine runs in float), segmented with the default settings and scored by
   ``bench_sources.py``'s means (:func:`nucseg.metrics.evaluate_image`: the challenge score, the
   mean over IoU 0.50..0.95 of TP / (TP + FP + FN)); the maps' max and mean absolute difference,
   int8 against fp32, at the same scale (with ``--int8-probes``, an image whose int8 probes chose
   another scale is predicted once more at the fp32 scale for the comparison, and counted). Sets: ``sample_test`` (the embedded sample's 12 test
   images, always there), and where ``../shared/data`` is: ``dsb_val`` (the challenge's
   validation split, 93 images; needs ``bench_accuracy.py``'s workdir), ``kromp_train`` and
   ``monuseg_train`` (the held-out sources ``bench_sources.py`` scores).
3. **Verdict**: int8 qualifies as the CPU default when the stage is at least 1.5x as fast and
   every set's challenge score is within 0.005 of fp32's.

    nice -n 10 env OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_int8.py
    python benchmarks/bench_int8.py --sets sample_test dsb_val --limit 20 --repeat 3
    python benchmarks/bench_int8.py --method Percentile --format QDQ   # another quantisation
    python benchmarks/bench_int8.py --int8-probes --quantise-ends      # the design's alternatives
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import zarr

import nucseg
import nucseg.int8
from nucseg.bigimage import LazyImage
from nucseg.datasets import list_images, read_sample, unpack_zip
from nucseg.infer import PredictSettings, open_predictor, predict_lazy, predict_to_zarr
from nucseg.metrics import evaluate_image
from nucseg.postprocess import SegmentSettings, segment_probability

from benchlib import DATA, FIXTURES, ROOT, images_of, machine, summarise

SETS = ("sample_test", "dsb_val", "kromp_train", "monuseg_train")
ENGINES = ("onnx", "onnx-int8")
SIDE = 2048
#: The issue's bar for the default: speed ratio and the largest score difference on any set.
MIN_RATIO, MAX_DELTA = 1.5, 0.005


def timing_image() -> tuple[np.ndarray, str]:
    """A real ``SIDE`` x ``SIDE`` RGB image: the fluorescence fixture tiled 4 x 4 (as
    bench_segment.py), or the embedded sample's largest fluorescence test image tiled."""
    fixture = FIXTURES / "dsb2018_fluo_512_uint16.tif"
    if fixture.is_file():
        import tifffile

        grey = tifffile.imread(fixture)
        pixels = np.tile((grey.astype(np.float32) / grey.max() * 255).astype(np.uint8), (SIDE // 512, SIDE // 512))
        return np.repeat(pixels[..., None], 3, axis=2), f"{fixture.name} tiled 4 x 4"
    samples = sample_test()
    image = max((s.image for _, _, s in samples if s.image.mean() < 100), key=lambda a: a.size)
    reps = (-(-SIDE // image.shape[0]), -(-SIDE // image.shape[1]), 1)
    return np.ascontiguousarray(np.tile(image, reps)[:SIDE, :SIDE]), f"the embedded sample's {image.shape[1]} x {image.shape[0]} test image tiled"


def speed(predictors: dict, repeat: int) -> dict:
    """Seconds per megapixel (wall, CPU) of the predict stage per engine, medians over
    ``repeat`` alternating rounds, and of the forward pass on one 1280^2 window."""
    pixels, what = timing_image()
    settings = PredictSettings(scale=1.0)
    wall = {e: [] for e in predictors}
    cpu = {e: [] for e in predictors}
    fwd = {e: [] for e in predictors}
    window = np.ascontiguousarray(np.random.default_rng(0).random((1, 3, 1280, 1280), dtype=np.float32))
    mp = pixels.shape[0] * pixels.shape[1] / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        group = zarr.open_group(Path(tmp) / "maps.zarr", mode="w")
        for engine, predictor in predictors.items():
            predict_to_zarr(predictor, LazyImage(pixels, "YXC", "warm"), group, f"warm-{engine}", settings)
            predictor.engine(window)
        for k in range(repeat):
            for engine, predictor in predictors.items():
                image = LazyImage(pixels, "YXC", "timed")
                w0, c0 = time.perf_counter(), time.process_time()
                predict_to_zarr(predictor, image, group, f"{engine}-{k}", settings)
                wall[engine].append((time.perf_counter() - w0) / mp)
                cpu[engine].append((time.process_time() - c0) / mp)
                c0 = time.process_time()
                predictor.engine(window)
                fwd[engine].append((time.process_time() - c0) / (1280 * 1280 / 1e6))
    median = {name: {e: float(np.median(v)) for e, v in values.items()} for name, values in (("wall", wall), ("cpu", cpu), ("forward_cpu", fwd))}
    return dict(image=what, **median)


def sample_test() -> list:
    """``(group, image_id, sample)`` of the embedded sample's test images."""
    with tempfile.TemporaryDirectory() as tmp:
        root = unpack_zip(ROOT / "resources" / "sample" / "sample_test.zip", Path(tmp) / "sample")
        return [("sample_test", image_id, read_sample(root, image_id)) for image_id in list_images(root)]


def maps_of(predictor, image: np.ndarray, image_id: str, scale) -> tuple[np.ndarray, float, float]:
    """``(heads, H, W)`` maps of a whole image by the predict stage's path, the scale used, seconds."""
    prob = np.empty((len(predictor.heads),) + image.shape[:2], np.float32)

    def sink(r: int, block: np.ndarray) -> None:
        prob[:, r : r + block.shape[1]] = block

    t0 = time.perf_counter()
    used, _ = predict_lazy(predictor, LazyImage(image, "YXC", image_id), PredictSettings(scale=scale), sink)
    return prob, used, time.perf_counter() - t0


def score_set(predictors: dict, name: str, args) -> pd.DataFrame:
    """One row per (image, engine): the scores at ``scale: auto``, and for int8 the maps'
    difference from fp32's at fp32's scale."""
    images = sample_test() if name == "sample_test" else images_of(name, args.workdir, args.accuracy_workdir, args.limit)
    rows = []
    for k, (group, image_id, sample) in enumerate(images):
        if args.limit and k >= args.limit:
            break
        maps = {}
        for engine, predictor in predictors.items():
            prob, used, seconds = maps_of(predictor, sample.image, image_id, "auto")
            maps[engine] = (prob, used)
            metrics = evaluate_image(sample.labels, segment_probability(prob[predictor.heads.index("body")], SegmentSettings()))
            row = dict(source=name, group=group, image_id=image_id, engine=engine, scale_used=used, seconds=seconds)
            row.update(megapixels=sample.image.shape[0] * sample.image.shape[1] / 1e6)
            row.update({m: metrics[m] for m in ("n_true", "n_pred", "challenge_score", "ap_0.50", "ap_0.75", "aji")})
            rows.append(row)
        (ref, ref_scale), (q, q_scale) = maps["onnx"], maps["onnx-int8"]
        if q_scale != ref_scale:
            q, _, _ = maps_of(predictors["onnx-int8"], sample.image, image_id, ref_scale)
        diff = np.abs(q - ref)
        rows[-1].update(scale_changed=q_scale != ref_scale, max_diff=float(diff.max()), mean_diff=float(diff.mean()))
        rows[-1].update({f"max_diff_{h}": float(diff[i].max()) for i, h in enumerate(predictors["onnx"].heads)})
        logging.getLogger("bench_int8").info("%s %s done", name, image_id)
    return pd.DataFrame(rows)


def per_set(scores: pd.DataFrame, heads: list[str]) -> pd.DataFrame:
    """Per set: both engines' challenge scores, their difference, the maps' differences."""
    by = scores.pivot_table(index="source", columns="engine", values="challenge_score", aggfunc="mean")
    q = scores[scores["engine"] == "onnx-int8"].groupby("source")
    table = pd.DataFrame(
        {
            "images": q.size(),
            "fp32": by["onnx"],
            "int8": by["onnx-int8"],
            "delta": by["onnx-int8"] - by["onnx"],
            **{f"max_diff_{h}": q[f"max_diff_{h}"].max() for h in heads},
            "mean_diff": q["mean_diff"].mean(),
            "scale_changed": q["scale_changed"].sum().astype(int),
        }
    )
    return table.reindex([s for s in SETS if s in table.index])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path(nucseg.PRETRAINED_MODEL), help="model folder (default: the shipped model)")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=None, help="image sets to score (default: all there are)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "results" / "sources", help="where bench_sources.py unpacks the sources")
    parser.add_argument("--accuracy-workdir", type=Path, default=ROOT / "results" / "accuracy", help="bench_accuracy.py's workdir (dsb_val)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds of each engine")
    parser.add_argument("--limit", type=int, default=0, help="the first N images of each set (0: all)")
    parser.add_argument("--format", choices=["QOperator", "QDQ"], default=nucseg.int8.QUANT_FORMAT, help="quantisation format")
    parser.add_argument("--method", choices=["MinMax", "Percentile", "Entropy"], default=nucseg.int8.CALIBRATION_METHOD, help="calibration method")
    parser.add_argument("--quantise-ends", action="store_true", help="quantise the first and last layers too (nucseg.int8.FLOAT_ENDS off)")
    parser.add_argument("--int8-probes", action="store_true", help="run the probes of scale auto in int8 too (the engine runs them in float)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the per-image scores here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    # the cache key covers both settings: another choice here builds (and caches) its own file
    nucseg.int8.QUANT_FORMAT, nucseg.int8.CALIBRATION_METHOD = args.format, args.method
    nucseg.int8.FLOAT_ENDS = not args.quantise_ends
    sets = args.sets or [s for s in SETS if s == "sample_test" or DATA.is_dir()]
    if "dsb_val" in sets and not (args.accuracy_workdir / "results" / "preprocessed" / "stage1_train_fixed" / "train_index.csv").is_file():
        print(f"dsb_val left out: {args.accuracy_workdir} has no preprocessed challenge data (run bench_accuracy.py first)")
        sets.remove("dsb_val")
    t0 = time.perf_counter()
    predictors = {e: open_predictor(args.model, PredictSettings(engine=e), threads=args.threads) for e in ENGINES}
    opened = time.perf_counter() - t0
    if args.int8_probes:
        for predictor in (predictors["onnx-int8"], *predictors["onnx-int8"].routes.values()):
            predictor.engine.probe = predictor.engine  # Predictor.network_maps runs the probe
    s = speed(predictors, args.repeat)
    wall, cpu, fwd = s["wall"], s["cpu"], s["forward_cpu"]
    ratio_wall, ratio_cpu = wall["onnx"] / wall["onnx-int8"], cpu["onnx"] / cpu["onnx-int8"]
    print(
        f"model: {args.model}; int8: {args.format}, {args.method} calibration, first/last layers {'int8' if args.quantise_ends else 'float'}, "
        f"probes of scale auto {'int8' if args.int8_probes else 'float'}, VNNI {nucseg.int8.cpu_has_vnni()}"
    )
    print(f"engines opened in {opened:.1f} s (quantising included where not cached)")
    print(f"predict stage, {SIDE} x {SIDE} ({s['image']}), scale 1, {args.threads} thread(s), median of {args.repeat} alternating rounds,")
    print("seconds per megapixel:")
    print(f"  {'':10} {'fp32 onnx':>10} {'onnx-int8':>10} {'ratio':>6}")
    print(f"  {'wall':10} {wall['onnx']:>10.3f} {wall['onnx-int8']:>10.3f} {ratio_wall:>6.2f}")
    print(f"  {'cpu':10} {cpu['onnx']:>10.3f} {cpu['onnx-int8']:>10.3f} {ratio_cpu:>6.2f}")
    print(f"  {'forward':10} {fwd['onnx']:>10.3f} {fwd['onnx-int8']:>10.3f} {fwd['onnx'] / fwd['onnx-int8']:>6.2f}   (cpu, one 1280^2 window)")
    t1 = time.perf_counter()
    scores = pd.concat([score_set(predictors, name, args) for name in sets], ignore_index=True)
    if args.csv:
        scores.to_csv(args.csv, index=False)
    heads = predictors["onnx"].heads
    table = per_set(scores, heads)
    print("\nchallenge score at the default settings (scale auto), fp32 onnx vs onnx-int8; maps: |int8 - fp32| at the same scale;")
    print("scale_changed: images whose int8 probes chose another scale than fp32's")
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    groups = summarise(scores.assign(scale=scores["engine"]))[["images", "challenge", "ap50", "ap75", "aji", "scale_used", "s_per_mp"]]
    print("\nper group (bench_sources.py's summary; scale = engine):")
    print(groups.to_string(float_format=lambda v: f"{v:.3f}"))
    worst = float(table["delta"].abs().max())
    ok = ratio_cpu >= MIN_RATIO and ratio_wall >= MIN_RATIO and worst <= MAX_DELTA
    print(
        f"\nverdict: speed {ratio_cpu:.2f}x (cpu) / {ratio_wall:.2f}x (wall), need >= {MIN_RATIO}; largest score difference {worst:.4f} "
        f"({table['delta'].abs().idxmax()}), need <= {MAX_DELTA}: int8 {'qualifies' if ok else 'does not qualify'} as the CPU default"
    )
    print(f"scoring {time.perf_counter() - t1:.0f} s; whole run {time.perf_counter() - t0:.0f} s")
    print(machine())


if __name__ == "__main__":
    main()
