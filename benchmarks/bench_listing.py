"""Listing a dataset of many images: list_images and image_path for every image, at three sizes.

A plate screen holds 100,000 images and more (issue 24: 200,000 PNGs took over 8 minutes,
``ids.count`` per id and a folder scan per ``image_path``). The same work at 2,000, 20,000 and
200,000 files, one after the other in one run: linear work gives time ratios of about 10 and
100 against the smallest; the old quadratic code gave 100 and 10,000.

    python benchmarks/bench_listing.py [--sizes 2000 20000 200000]

The files are empty (the listing reads names, not pixels), in one folder of the ``images``
layout, under a temporary folder.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from nucseg.datasets import image_path, list_images


def listing_seconds(n: int, root: Path) -> float:
    folder = root / f"plate{n}"
    folder.mkdir()
    for k in range(n):
        (folder / f"well_{k:07d}.png").touch()
    t0 = time.perf_counter()
    ids = list_images(folder, "images")
    for image_id in ids:
        image_path(folder, image_id, "images")
    assert len(ids) == n
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 200000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        times = {n: listing_seconds(n, Path(tmp)) for n in args.sizes}
    base = args.sizes[0]
    print("images  seconds (list_images + image_path of every id)  ratio to the smallest  ratio linear work would give")
    for n, seconds in times.items():
        print(f"{n:7d}  {seconds:9.3f}  {seconds / times[base]:8.1f}  {n / base:8.1f}")
    print(f"machine: {platform.machine()}, python={platform.python_version()}")


if __name__ == "__main__":
    main()
