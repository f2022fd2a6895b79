"""Adapter of rule aggregate -> nucseg.report.aggregate."""

from nucseg.logs import setup_logging
from nucseg.report import aggregate

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
aggregate(metric_csvs=list(snakemake.input), out_csv=snakemake.output[0])  # noqa: F821
