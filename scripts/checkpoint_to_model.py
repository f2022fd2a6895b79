"""Write the model folder of a training run stopped before its last epoch, from its checkpoint.

A run on a CPU budget can be stopped at any epoch: its checkpoint holds the best epoch's weights
so far, the history and the settings, and this writes from them the folder ``train_model``
would have written had ``train.epochs`` been the number of epochs run (weights.pt of the best
epoch, config.json, history.csv, curves.png), for example to score a long run part-way:

    python scripts/checkpoint_to_model.py results/checkpoints/pretrained.pt /tmp/pretrained_so_far

A checkpoint is a file of one's own runs: it is read with ``weights_only=False`` (checkpoints
of nucseg versions before 0.1 hold numpy random states), never use it on a file from elsewhere.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from nucseg.tasks import make_task
from nucseg.train import TrainSettings, write_model_folder


def checkpoint_to_model(checkpoint: Path, out_dir: Path) -> dict:
    """The model folder of ``checkpoint`` (as :func:`nucseg.train.train_model` writes it, with
    ``train.epochs`` the epochs run and a ``stopped`` note); returns its config.json contents."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    identity, history = ckpt["identity"], pd.DataFrame(ckpt["history"])
    task = make_task(identity["task"]["task"], identity["task"].get("classes"))
    settings = TrainSettings(**identity["settings"])
    model, model_config, architecture = task.build_model(settings)
    model.load_state_dict(ckpt["best_state"])  # the checkpoint's weights fit the network its settings build
    config = write_model_folder(
        out_dir,
        ckpt["best_state"],
        history,
        replace(settings, epochs=int(ckpt["epoch"])),
        task,
        architecture,
        model_config,
        settings.invert_dark and task.invert_dark,
        torch.device("cpu"),
    )
    config["stopped"] = f"after epoch {ckpt['epoch']} of the run's {settings.epochs} (checkpoint {checkpoint.name}, scripts/checkpoint_to_model.py)"
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    config = checkpoint_to_model(args.checkpoint, args.out_dir)
    print(f"{args.out_dir}: best epoch {config['best_epoch']} of {config['epochs_run']} (validation crop IoU {config['best_val_iou']:.4f})")


if __name__ == "__main__":
    main()
