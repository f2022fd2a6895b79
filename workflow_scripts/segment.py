"""Adapter of rule segment -> the task's segment (nucseg.tasks; instance:
nucseg.postprocess.segment_dataset)."""

from nucseg.logs import setup_logging
from nucseg.merge import merged_images
from nucseg.tasks import make_task

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
make_task(snakemake.params.task, snakemake.params.classes).segment(  # noqa: F821
    pred_zarr=snakemake.input.pred,  # noqa: F821
    images_zarr=snakemake.input.zarr,  # noqa: F821
    index_csv=snakemake.input.index,  # noqa: F821
    outputs=dict(snakemake.output.items()),  # noqa: F821 (labels, objects and the others the rule names)
    settings=snakemake.params.settings,  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
    # the images split into regions: their files as the merge made them (rules/split.smk)
    merged=merged_images(snakemake.input.plan, snakemake.input.merged) if "plan" in snakemake.input.keys() else None,  # noqa: F821
)
