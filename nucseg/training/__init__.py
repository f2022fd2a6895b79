"""Train stage: fit a network (the task's: :class:`~nucseg.nets.ResUNet` for nuclei) on training stores
from :mod:`nucseg.preprocess`.

Adam; the learning rate is cut x0.1 after ``lr_patience`` epochs in a row
without a better validation IoU, training stops after ``stop_patience`` such
epochs; the weights of the best validation epoch are kept (Rautaray et al.
2020, Algorithm 1; the counts are Keras's, which the paper used: with
``lr_patience=5`` the fifth epoch without improvement is the last at the old
rate). Training examples are augmented by :mod:`nucseg.augment`.

Device: CUDA when PyTorch sees a GPU (``device: auto``), else the CPU; the
choice is logged. On CUDA the forward pass runs in mixed precision (float16
autocast with a gradient scaler), batches come from pinned memory and cuDNN
picks its fastest kernels; ``num_workers`` processes load and augment
examples on either device.

Reproducible and resumable: every random draw comes from the seed (weights,
example order, and one generator per (seed, epoch, example) for the
augmentation), so on the CPU the same seed and data give the same weights and
history, given the same number of torch threads (``config.json`` records it: the
threads split the sums of convolutions differently, which changes the weights in
the last bits and, over many steps, the trained model). A checkpoint (weights,
optimiser, scheduler, gradient scaler, epoch, history, best weights, every random
state and the settings) is written after every epoch; a rerun with the same
checkpoint path, settings, training files (:func:`~nucseg.training.checkpoint.data_fingerprint`) and training
code resumes from it and ends where an uninterrupted run would have (CPU); any
other rerun starts afresh.

Progress: a progress bar per epoch when stderr is a terminal, and one log
line per epoch in any case.

The result is a self-describing model folder (written by :func:`nucseg.modelfolder.write_model_folder`):

``weights.pt``
    ``state_dict`` of the best epoch.
``config.json``
    Model configuration (enough to rebuild it), normalisation, training settings, best epoch and scores.
``history.csv``
    ``epoch, lr, train_loss, train_iou, val_loss, val_iou, seconds``.
``curves.png``
    Loss and IoU per epoch, training and validation.

The package, one room per concern:

:mod:`~nucseg.training.settings`
    :class:`TrainSettings`, the ``train:`` section.
:mod:`~nucseg.training.data`
    The crops of the training stores (:class:`CropDataset`), their train/val split, the sampler
    of each epoch's draws, and the training nuclei's sizes.
:mod:`~nucseg.training.checkpoint`
    Seeds and random states, the checkpoint's identity and :class:`TrainState` (save, resume),
    and the weights a run starts from (``train.init``).
:mod:`~nucseg.training.loop`
    :func:`train_model`: the epochs, and the model folder written at the end.
"""

from nucseg.training.checkpoint import TrainState, checkpoint_identity, data_fingerprint, initialise, training_code
from nucseg.training.data import CropDataset, make_sampler, split_examples, split_items, training_nuclei
from nucseg.training.loop import make_scheduler, optimizer_step, run_epoch, train_model
from nucseg.training.settings import TrainSettings

__all__ = [
    "CropDataset",
    "TrainSettings",
    "TrainState",
    "checkpoint_identity",
    "data_fingerprint",
    "initialise",
    "make_sampler",
    "make_scheduler",
    "optimizer_step",
    "run_epoch",
    "split_examples",
    "split_items",
    "train_model",
    "training_code",
    "training_nuclei",
]
