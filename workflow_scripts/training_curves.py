"""Adapter of rule training_curves -> nucseg.plots.copy_training_curves."""

from nucseg.logs import setup_logging
from nucseg.plots import copy_training_curves

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
copy_training_curves(model_dir=snakemake.input.model, out_png=snakemake.output[0])  # noqa: F821
