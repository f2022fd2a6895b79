"""Adapter of rule plots -> nucseg.plots.plot_results."""

from nucseg.logs import setup_logging
from nucseg.plots import plot_results

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
plot_results(
    metric_csvs=list(snakemake.input),  # noqa: F821
    score_png=snakemake.output.challenge_score,  # noqa: F821
    curve_png=snakemake.output.score_vs_threshold,  # noqa: F821
    counts_png=snakemake.output.counts,  # noqa: F821
)
