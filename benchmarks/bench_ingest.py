"""Ingest and preprocess a whole challenge archive: wall time and peak memory per stage.

Usage::

    python benchmarks/bench_ingest.py ../shared/data/dsb2018/stage1_train.zip [--size 256] [--mode crop]

Runs the download stage (sha256 + safe unpack) and both preprocess stages
(training crops with targets, and the full-size store) on the archive, each in
a fresh process so that its peak resident memory is its own, and prints one
line per stage plus the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

STAGE = r"""
import json, resource, sys, time
from nucseg.datasets import download_dataset
from nucseg.preprocess import PreprocessSettings, preprocess_fullsize, preprocess_training
stage, archive, work, size, mode = sys.argv[1:6]
t = time.perf_counter()
if stage == "download":
    download_dataset(archive, f"{work}/dataset")
elif stage == "preprocess_train":
    index = preprocess_training(f"{work}/dataset", f"{work}/train.zarr", f"{work}/train_index.csv", PreprocessSettings(size=int(size), mode=mode))
elif stage == "preprocess_test":
    index = preprocess_fullsize(f"{work}/dataset", f"{work}/full.zarr", f"{work}/full_index.csv")
extra = {}
if stage != "download":
    extra = dict(images=len(index), nuclei=int(index["n_nuclei"].sum()))
print(json.dumps(dict(stage=stage, seconds=time.perf_counter() - t, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra)))
"""


def du_mb(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--mode", default="crop", choices=["crop", "resize"])
    args = parser.parse_args()
    print(f"archive {args.archive} ({os.path.getsize(args.archive) / 1e6:.1f} MB), training size {args.size}, mode {args.mode}")
    with tempfile.TemporaryDirectory() as work:
        for stage in ("download", "preprocess_train", "preprocess_test"):
            out = subprocess.run([sys.executable, "-c", STAGE, stage, args.archive, work, str(args.size), args.mode], capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{stage} failed:\n{out.stderr[-3000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            extra = f", {row['images']} images, {row['nuclei']} nuclei" if "images" in row else ""
            print(f"{stage:17s} {row['seconds']:7.1f} s   peak RSS {row['peak_rss_mb']:6.0f} MB{extra}")
        print(f"store sizes: train.zarr {du_mb(work + '/train.zarr'):.0f} MB, full.zarr {du_mb(work + '/full.zarr'):.0f} MB")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, Python {platform.python_version()}"
    )


if __name__ == "__main__":
    main()
