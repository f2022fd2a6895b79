"""Adapter of rule plots -> the task's plot (nucseg.tasks; instance: nucseg.plots.plot_results)."""

from nucseg.logs import setup_logging
from nucseg.tasks import make_task

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
make_task(snakemake.params.task, snakemake.params.classes).plot(  # noqa: F821
    metric_csvs=list(snakemake.input),  # noqa: F821
    out_pngs=dict(snakemake.output.items()),  # noqa: F821
)
