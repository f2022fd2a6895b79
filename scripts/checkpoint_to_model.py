"""Write the model folder of a training run stopped before its last epoch, from its checkpoint.

A run on a CPU budget can be stopped at any epoch: its checkpoint holds the best epoch's weights
so far, the history and the settings, and this writes from them the folder ``train_model``
would have written had ``train.epochs`` been the number of epochs run (weights.pt of the best
epoch, config.json, history.csv, curves.png), for example to score a long run part-way:

    python scripts/checkpoint_to_model.py results/checkpoints/pretrained.pt /tmp/pretrained_so_far

The checkpoint is read with PyTorch's ``weights_only=True``, as training reads it to resume:
it holds tensors and plain data only (numbers, text, lists, dicts). A file that holds pickled
Python objects besides them (which could run code when loaded; checkpoints of nucseg before
0.1 held numpy random states as objects) is refused with a message, and nothing is written.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from nucseg.tasks import make_task
from nucseg.training import TrainSettings
from nucseg.training.loop import write_trained_model

log = logging.getLogger("checkpoint_to_model")


def read_checkpoint(checkpoint: Path) -> dict:
    """The checkpoint's contents, read weights-only.

    Raises
    ------
    ValueError
        The file is missing or unreadable, holds pickled objects besides tensors and plain data
        (refused: loading them could run code), or lacks what a model folder is made from.
    """
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{checkpoint}: refused: it holds pickled Python objects besides tensors and plain data, which could run code when loaded") from exc
    except (OSError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{checkpoint}: not a readable checkpoint ({exc})") from exc
    missing = [key for key in ("identity", "history", "best_state", "epoch") if not isinstance(ckpt, dict) or key not in ckpt]
    if missing:
        raise ValueError(f"{checkpoint}: not a nucseg training checkpoint (no {', '.join(missing)})")
    return ckpt


def checkpoint_to_model(checkpoint: Path, out_dir: Path) -> dict:
    """The model folder of ``checkpoint`` (as :func:`nucseg.training.train_model` writes it, with
    ``train.epochs`` the epochs run and a ``stopped`` note); returns its config.json contents."""
    ckpt = read_checkpoint(checkpoint)
    identity, history = ckpt["identity"], pd.DataFrame(ckpt["history"])
    task = make_task(identity["task"]["task"], identity["task"].get("classes"))
    settings = TrainSettings(**identity["settings"])
    model, model_config, architecture = task.build_model(settings)
    model.load_state_dict(ckpt["best_state"])  # the checkpoint's weights fit the network its settings build
    stopped = f"after epoch {ckpt['epoch']} of the run's {settings.epochs} (checkpoint {checkpoint.name}, scripts/checkpoint_to_model.py)"
    return write_trained_model(
        out_dir,
        ckpt["best_state"],
        history,
        replace(settings, epochs=int(ckpt["epoch"])),
        task,
        architecture,
        model_config,
        settings.invert_dark and task.invert_dark,
        torch.device("cpu"),
        notes={"stopped": stopped},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = checkpoint_to_model(args.checkpoint, args.out_dir)
    except ValueError as exc:
        log.error("%s", exc)
        sys.exit(1)
    print(f"{args.out_dir}: best epoch {config['best_epoch']} of {config['epochs_run']} (validation crop IoU {config['best_val_iou']:.4f})")


if __name__ == "__main__":
    main()
