"""Adapter of rule evaluate -> the task's evaluate (nucseg.tasks; instance: nucseg.evaluate.evaluate_dataset)."""

from nucseg.logs import setup_logging
from nucseg.tasks import make_task

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
make_task(snakemake.params.task, snakemake.params.classes).evaluate(  # noqa: F821
    labels_dir=snakemake.input.labels,  # noqa: F821
    truth_zarr=snakemake.input.zarr,  # noqa: F821
    index_csv=snakemake.input.index,  # noqa: F821
    out_csv=snakemake.output[0],  # noqa: F821
    dataset=snakemake.wildcards.dataset,  # noqa: F821
    model=snakemake.wildcards.model,  # noqa: F821
)
