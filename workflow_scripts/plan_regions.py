"""Adapter of rule plan_regions -> nucseg.split.plan_dataset."""

from nucseg.infer import PredictSettings
from nucseg.logs import setup_logging
from nucseg.split import plan_dataset

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
plan_dataset(
    model_dir=snakemake.input.model,  # noqa: F821
    images_zarr=snakemake.input.zarr,  # noqa: F821
    index_csv=snakemake.input.index,  # noqa: F821
    out_json=snakemake.output[0],  # noqa: F821
    settings=PredictSettings(**snakemake.params.settings),  # noqa: F821
    region=snakemake.params.region,  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
)
