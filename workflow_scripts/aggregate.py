"""Adapter of rule aggregate -> nucseg.report.aggregate."""

from nucseg.logs import setup_logging
from nucseg.report import aggregate

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
aggregate(
    metric_csvs=list(snakemake.input),  # noqa: F821
    out_csv=snakemake.output.summary,  # noqa: F821
    stats_csv=snakemake.output.stats,  # noqa: F821
    comparison_csv=snakemake.output.get("comparison"),  # noqa: F821 (only with several models)
    html_path=snakemake.output.html,  # noqa: F821
)
