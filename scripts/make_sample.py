"""Rebuild the embedded sample dataset in ``resources/sample/`` from BBBC038.

The sample is about 40 images of the corrected DSB2018 stage-1 training set
(``stage1_train_fixed.zip``, BBBC038v1, CC0), chosen by a seeded draw from each
modality and image size so that every kind of image in the challenge is present.
Members are copied byte for byte, so the archives keep the challenge's layout::

    <image_id>/images/<image_id>.png
    <image_id>/masks/<mask_id>.png

Usage::

    python scripts/make_sample.py ../shared/data/dsb2018/stage1_train_fixed.zip resources/sample
"""

from __future__ import annotations

import argparse
import hashlib
import io
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

# (modality, (height, width)) -> (number for training, number for the held-out test part)
DRAW = {
    ("fluorescence", (256, 256)): (9, 3),
    ("fluorescence", (256, 320)): (2, 0),
    ("fluorescence", (260, 347)): (2, 1),
    ("fluorescence", (360, 360)): (3, 1),
    ("fluorescence", (512, 640)): (2, 1),
    ("fluorescence", (520, 696)): (3, 1),
    ("fluorescence", (603, 1272)): (1, 1),
    ("fluorescence", (1040, 1388)): (0, 1),
    ("histology", (256, 320)): (5, 2),
    ("brightfield", (1024, 1024)): (1, 1),
}


def modality(rgb: np.ndarray) -> str:
    """Guess the modality from colour and background brightness."""
    rgb = rgb.astype(float)
    colour = np.abs(rgb[..., 0] - rgb[..., 1]).mean() + np.abs(rgb[..., 1] - rgb[..., 2]).mean()
    if colour > 10:
        return "histology"
    return "brightfield" if rgb.mean() > 100 else "fluorescence"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=2018)
    args = parser.parse_args()

    src = zipfile.ZipFile(args.source)
    names = src.namelist()
    strata = defaultdict(list)
    for name in sorted(names):
        parts = name.split("/")
        if len(parts) == 3 and parts[1] == "images" and parts[2].endswith(".png"):
            image = np.asarray(Image.open(io.BytesIO(src.read(name))))[..., :3]
            strata[(modality(image), image.shape[:2])].append(parts[0])

    rng = np.random.default_rng(args.seed)
    chosen = {"train": [], "test": []}
    for key, (n_train, n_test) in DRAW.items():
        # nuclei counts of 0-2 make poor examples; prefer images with a few nuclei
        ids = [i for i in strata[key] if sum(n.startswith(f"{i}/masks/") and n.endswith(".png") for n in names) >= 3]
        picked = rng.choice(sorted(ids), size=n_train + n_test, replace=False)
        chosen["train"] += list(picked[:n_train])
        chosen["test"] += list(picked[n_train:])

    args.out.mkdir(parents=True, exist_ok=True)
    for part, ids in chosen.items():
        target = args.out / f"sample_{part}.zip"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
            for image_id in sorted(ids):
                for name in names:
                    if name.startswith(f"{image_id}/") and not name.endswith("/"):
                        info = src.getinfo(name)
                        out.writestr(info, src.read(name), compress_type=zipfile.ZIP_STORED)
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        print(f"{target}: {len(ids)} images, {target.stat().st_size / 1e6:.1f} MB, sha256 {digest}")


if __name__ == "__main__":
    main()
