"""Adapter of rule qc -> the task's qc (nucseg.tasks; instance: nucseg.qc.qc_pictures)."""

from nucseg.logs import setup_logging
from nucseg.tasks import make_task

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
make_task(snakemake.params.task, snakemake.params.classes).qc(  # noqa: F821
    per_image_csv=snakemake.input.metrics,  # noqa: F821
    labels_dir=snakemake.input.labels,  # noqa: F821
    truth_zarr=snakemake.input.zarr,  # noqa: F821
    out_pngs=dict(snakemake.output.items()),  # noqa: F821
)
