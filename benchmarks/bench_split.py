"""One slide over many jobs: wall time of the workflow on one large slide, whole and split.

Builds a ``size x size`` grey mosaic of the embedded sample's fluorescence test images (256 x 256
corners, rotated by position; written tile by tile as a tiled TIFF), then runs the workflow
(predict -> segment with the shipped model, every output on) on it once per ``--regions``
setting, one after the other in one run: ``0`` is one job per stage, ``N`` is ``split: {region:
N}`` (``(size / N)^2`` region jobs of each kind). Prints the wall time of each run, its ratio to
the single job, the jobs' own seconds per rule (Snakemake's benchmark files: predict, plan,
region predicts, statistics, region segments, merge, segment) and whether the label image
equals the single job's, nucleus for nucleus.

    nice -n 10 python benchmarks/bench_split.py --size 16384 --regions 0 8192 --cores 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import yaml

REPO = Path(__file__).resolve().parents[1]


def sample_tiles() -> list[np.ndarray]:
    from nucseg.imageio import decode_image, has_dark_nuclei, to_rgb_uint8

    tiles = []
    with zipfile.ZipFile(REPO / "resources/sample/sample_test.zip") as archive:
        for name in sorted(archive.namelist()):
            if "/images/" in name:
                image = to_rgb_uint8(decode_image(archive.read(name), name))
                if not has_dark_nuclei(image) and min(image.shape[:2]) >= 256:
                    tiles.append(np.ascontiguousarray(image[:256, :256, 0]))
    return tiles


def write_slide(path: Path, size: int) -> None:
    tiles = sample_tiles()

    def pieces():
        for k in range((size // 256) ** 2):
            yield np.rot90(tiles[k % len(tiles)], (k // len(tiles)) % 4)

    tifffile.imwrite(path, pieces(), shape=(size, size), dtype=np.uint8, tile=(256, 256), compression="zlib")


def run(root: Path, slide_dir: Path, region: int, cores: int) -> dict:
    workdir = root / f"region_{region}"
    workdir.mkdir()
    config = {
        "datasets": {"slide": {"source": str(slide_dir), "layout": "images", "role": "test"}},
        "models": {"shipped": {"folder": "pretrained"}},
        "split": {"region": region},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", str(cores)]
    command += ["--configfile", str(workdir / "config.yaml"), "--replace-workflow-config"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"region {region}: the workflow failed:\n{result.stderr[-4000:]}")
    seconds = {}
    for tsv in (workdir / "results/benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(workdir / "results/benchmarks").parts[0]
        table = pd.read_csv(tsv, sep="\t")
        seconds[rule] = seconds.get(rule, 0.0) + float(table["s"].iloc[0])
        seconds[f"{rule}_rss"] = max(seconds.get(f"{rule}_rss", 0.0), float(table["max_rss"].iloc[0]))
    labels = workdir / "results/segmentation/shipped/slide/labels/slide.tif"
    return dict(region=region, wall=wall, seconds=seconds, labels=labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--regions", type=int, nargs="+", default=[0, 8192])
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=REPO / "results") as tmp:
        root = Path(tmp)
        (root / "slide").mkdir()
        write_slide(root / "slide" / "slide.tif", args.size)
        runs = [run(root, root / "slide", region, args.cores) for region in args.regions]
        base = runs[0]
        reference = tifffile.imread(base["labels"])
        print(f"{args.size}^2 slide, {args.cores} cores, shipped model; seconds per rule: the jobs' own, summed over a rule's jobs; max RSS: the largest job's")
        print(f"{'region':>7} {'jobs':>5} {'wall s':>8} {'x single':>9} {'nuclei':>8} {'same':>5}  rule seconds (max RSS MB)")
        for r in runs:
            labels = reference if r is base else tifffile.imread(r["labels"])
            same = bool(np.array_equal(labels, reference))
            n = len(range(0, args.size, r["region"])) ** 2 if r["region"] else 1
            rules = "  ".join(f"{rule} {s:.0f} ({r['seconds'][rule + '_rss']:.0f})" for rule, s in sorted(r["seconds"].items()) if not rule.endswith("_rss"))
            print(f"{r['region']:>7} {n:>5} {r['wall']:>8.1f} {r['wall'] / base['wall']:>9.2f} {int(labels.max()):>8} {str(same):>5}  {rules}")
            del labels


if __name__ == "__main__":
    main()
