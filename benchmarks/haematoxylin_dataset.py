"""The challenge set's stained images as their haematoxylin channel, a training dataset folder
(stardist layout): the experiment of BENCHMARKS.md, "A haematoxylin channel for stained images
held out" (issue 20).

Colour deconvolution turns a stained image into a grey one whose nuclei are bright on a dark
background, as in fluorescence (:func:`benchlib.haematoxylin`). ``config/sources_hed_without_he.yaml``
trains on these beside the challenge's and Kromp's images, with MoNuSeg's H&E held out; then
``bench_sources.py --input haematoxylin`` scores it on MoNuSeg's channel.

    python benchmarks/haematoxylin_dataset.py --accuracy-workdir results/run-sources_he --out results/hed/dsb_histology_h
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchlib import ROOT, challenge_index, haematoxylin


def main() -> None:
    import tifffile
    from skimage.io import imsave

    from nucseg.datasets import read_sample

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    workdir_help = "a run that preprocessed stage1_train_fixed (its modality guess)"
    parser.add_argument("--accuracy-workdir", type=Path, default=ROOT / "results" / "accuracy", help=workdir_help)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "hed" / "dsb_histology_h")
    args = parser.parse_args()
    index, dataset = challenge_index(args.accuracy_workdir)
    ids = index.loc[index["modality"] == "histology", "image_id"].tolist()
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    (args.out / "masks").mkdir(exist_ok=True)
    for image_id in ids:
        sample = read_sample(dataset, image_id)
        imsave(args.out / "images" / f"{image_id}.png", haematoxylin(sample.image)[..., 0], check_contrast=False)
        tifffile.imwrite(args.out / "masks" / f"{image_id}.tif", sample.labels.astype(np.uint16))
    print(f"{len(ids)} stained images as their haematoxylin channel in {args.out}")


if __name__ == "__main__":
    main()
