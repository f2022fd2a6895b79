"""Adapter of rule segment for tasks other than instance -> the task's segment (nucseg.tasks)."""

from nucseg.logs import setup_logging
from nucseg.tasks import make_task

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
make_task(snakemake.params.task, snakemake.params.classes).segment(  # noqa: F821
    pred_zarr=snakemake.input.pred,  # noqa: F821
    images_zarr=snakemake.input.zarr,  # noqa: F821
    index_csv=snakemake.input.index,  # noqa: F821
    outputs=dict(snakemake.output.items()),  # noqa: F821 (labels, objects and the others the rule names)
    settings=snakemake.params.settings,  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
)
