"""Adapter of rule train -> nucseg.training.train_model."""

import os

from nucseg.logs import setup_logging
from nucseg.tasks import make_task
from nucseg.training import TrainSettings, train_model

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
settings = dict(snakemake.params.settings)  # noqa: F821
if snakemake.input.init:  # noqa: F821 (train.init, resolved as the rule's input: a model folder or its weights)
    init = snakemake.input.init[0]  # noqa: F821
    settings["init"] = init if os.path.isdir(init) else os.path.dirname(init)
train_model(
    stores=list(snakemake.input.stores),  # noqa: F821
    indexes=list(snakemake.input.indexes),  # noqa: F821
    out_dir=snakemake.output[0],  # noqa: F821
    settings=TrainSettings(**settings),
    checkpoint=snakemake.params.checkpoint,  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
    task=make_task(snakemake.params.task, snakemake.params.classes),  # noqa: F821
    datasets=list(snakemake.params.datasets),  # noqa: F821
)
