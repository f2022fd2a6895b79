"""Write the model folder of a training run stopped before its last epoch, from its checkpoint.

A run on a CPU budget can be stopped at any epoch: its checkpoint holds the best epoch's weights
so far, the history and the settings, and this writes from them the folder ``train_model``
would have written had ``train.epochs`` been the number of epochs run (weights.pt of the best
epoch, config.json, history.csv, curves.png). The shipped pretrained model was made so:

    python scripts/checkpoint_to_model.py results/checkpoints/pretrained.pt nucseg/pretrained

A checkpoint is a file of one's own runs: it is read with ``weights_only=False`` (checkpoints
of nucseg versions before 0.1 hold numpy random states), never use it on a file from elsewhere.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

import nucseg
from nucseg.files import atomic_dir
from nucseg.plots import save_curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    identity, history = ckpt["identity"], pd.DataFrame(ckpt["history"])
    settings = identity["settings"]
    best = history.loc[history["val_iou"].idxmax()]
    config = dict(
        nucseg_version=nucseg.__version__,
        task="instance",
        architecture="ResUNet",
        model=identity["model"],
        normalize=dict(low=1.0, high=99.8, invert_dark=settings.get("invert_dark", False)),
        train={**settings, "epochs": int(ckpt["epoch"])},
        device="cpu",
        torch_version=torch.__version__,
        cpu_threads=1,
        best_epoch=int(best["epoch"]),
        best_val_iou=float(best["val_iou"]),
        epochs_run=len(history),
        stopped=f"after epoch {ckpt['epoch']} of the run's {settings['epochs']} (checkpoint {args.checkpoint.name}, scripts/checkpoint_to_model.py)",
    )
    with atomic_dir(args.out_dir, overwrite=True) as tmp:
        with open(tmp / "weights.pt", "wb") as out:
            torch.save(ckpt["best_state"], out)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        history.to_csv(tmp / "history.csv", index=False)
        save_curves(history, tmp / "curves.png", settings["loss"], "pixel IoU (nucleus)")
    print(f"{args.out_dir}: best epoch {config['best_epoch']} of {config['epochs_run']} (validation crop IoU {config['best_val_iou']:.4f})")


if __name__ == "__main__":
    main()
