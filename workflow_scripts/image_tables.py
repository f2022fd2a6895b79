"""Adapter of rule image_tables -> nucseg.report.collect_image_tables."""

from nucseg.logs import setup_logging
from nucseg.report import collect_image_tables

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
collect_image_tables(
    image_csvs=list(snakemake.input),  # noqa: F821
    keys=[tuple(pair) for pair in snakemake.params.pairs],  # noqa: F821
    out_csv=snakemake.output[0],  # noqa: F821
)
