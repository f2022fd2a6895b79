"""What post-processing and scale can do for the weak modalities: BENCHMARKS.md "Accuracy".

On the held-out validation images of the corrected challenge set (the split of
``config/pretrained.yaml``: its workdir must hold the preprocessed data, as
``bench_accuracy.py`` leaves it), for the bright-field and histology images and every fourth
fluorescence one:

1. the threshold (0.3-0.8) and marker spacing (0.3, 0.5, 0.8) of the published watershed, per
   modality: the best a per-modality setting could reach, chosen on these very images;
2. the predict scale (0.5, 0.75, 1, 1.5), and the mean over images of each image's best scale
   chosen knowing its truth (an upper bound of any automatic choice of scale).

    python benchmarks/bench_modality_limits.py --workdir results/accuracy
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

import nucseg
from nucseg.datasets import read_sample
from nucseg.infer import PredictSettings, open_predictor
from nucseg.metrics import evaluate_image
from nucseg.postprocess import SegmentSettings, segment_probability

from benchlib import DATASET, machine, predict_maps

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
SPACINGS = (0.3, 0.5, 0.8)
SCALES = (0.5, 0.75, 1.0, 1.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("results/accuracy"), help="bench_accuracy.py's working directory (preprocessed data)")
    parser.add_argument("--model", type=Path, default=Path(nucseg.PRETRAINED_MODEL))
    args = parser.parse_args()
    torch.set_num_threads(1)
    index = pd.read_csv(args.workdir / "results" / "preprocessed" / DATASET / "train_index.csv", dtype={"image_id": str})
    val = index[index["split"] == "val"]
    val = pd.concat([val[val["modality"] != "fluorescence"], val[val["modality"] == "fluorescence"].iloc[::4]])
    predictors = {s: open_predictor(args.model, PredictSettings(scale=s)) for s in SCALES}
    grid, scales = [], []
    for row in val.itertuples():
        sample = read_sample(args.workdir / "results" / "datasets" / DATASET, row.image_id)
        for scale, predictor in predictors.items():
            body = predict_maps(predictor, sample.image, row.image_id, PredictSettings(scale=scale))[predictor.heads.index("body")]
            default = evaluate_image(sample.labels, segment_probability(body, SegmentSettings()))["challenge_score"]
            scales.append(dict(modality=row.modality, image_id=row.image_id, scale=scale, challenge=default))
            if scale == 1.0:
                for threshold in THRESHOLDS:
                    for spacing in SPACINGS:
                        labels = segment_probability(body, SegmentSettings(threshold=threshold, marker_spacing=spacing))
                        score = evaluate_image(sample.labels, labels)["challenge_score"]
                        grid.append(dict(modality=row.modality, threshold=threshold, marker_spacing=spacing, challenge=score))
    grid, scales = pd.DataFrame(grid), pd.DataFrame(scales)
    pd.set_option("display.width", 200)
    print(f"model: {args.model}; images: {val['modality'].value_counts().to_dict()}")
    table = grid.groupby(["modality", "threshold", "marker_spacing"])["challenge"].mean().unstack("modality")
    print("\n1. published watershed, threshold x marker spacing (challenge score per modality; default: Otsu, 0.5):")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    best = {m: table[m].idxmax() for m in table.columns}
    print("best per modality: " + "; ".join(f"{m} {table[m].max():.3f} (threshold {t:g}, spacing {sp:g})" for m, (t, sp) in best.items()))
    by_scale = scales.pivot_table(index="scale", columns="modality", values="challenge", aggfunc="mean")
    oracle = scales.groupby(["modality", "image_id"])["challenge"].max().groupby("modality").mean()
    print("\n2. predict scale (default segment settings), and each image's best scale chosen knowing its truth:")
    print(pd.concat([by_scale, oracle.to_frame("per-image best").T]).to_string(float_format=lambda v: f"{v:.3f}"))
    print(machine())


if __name__ == "__main__":
    main()
