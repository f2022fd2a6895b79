"""Adapter of rule evaluate -> nucseg.evaluate.evaluate_dataset."""

from nucseg.evaluate import evaluate_dataset
from nucseg.logs import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
evaluate_dataset(
    labels_dir=snakemake.input.labels,  # noqa: F821
    truth_zarr=snakemake.input.zarr,  # noqa: F821
    index_csv=snakemake.input.index,  # noqa: F821
    out_csv=snakemake.output[0],  # noqa: F821
    dataset=snakemake.wildcards.dataset,  # noqa: F821
    model=snakemake.wildcards.model,  # noqa: F821
)
