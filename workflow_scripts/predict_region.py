"""Adapter of rule predict_region -> nucseg.split.predict_region."""

from nucseg.infer import PredictSettings
from nucseg.logs import setup_logging
from nucseg.split import predict_region

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
predict_region(
    model_dir=snakemake.input.model,  # noqa: F821
    images_zarr=snakemake.input.zarr,  # noqa: F821
    plan_json=snakemake.input.plan,  # noqa: F821
    position=snakemake.wildcards.image,  # noqa: F821
    region=snakemake.wildcards.region,  # noqa: F821
    out_zarr=snakemake.output[0],  # noqa: F821
    settings=PredictSettings(**snakemake.params.settings),  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
)
