"""Adapter of rule predict -> nucseg.infer.predict_dataset."""

from nucseg.infer import PredictSettings, predict_dataset
from nucseg.logs import setup_logging
from nucseg.split import read_plan

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
predict_dataset(
    model_dir=snakemake.input.model,  # noqa: F821
    images_zarr=snakemake.input.zarr,  # noqa: F821
    index_csv=snakemake.input.index,  # noqa: F821
    out_zarr=snakemake.output[0],  # noqa: F821
    settings=PredictSettings(**snakemake.params.settings),  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
    # the images split into regions: predicted by the region jobs (rules/split.smk)
    skip=read_plan(snakemake.input.plan).ids if "plan" in snakemake.input.keys() else frozenset(),  # noqa: F821
)
