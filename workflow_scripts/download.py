"""Adapter of rule download -> nucseg.datasets.download_dataset."""

from nucseg.datasets import download_dataset
from nucseg.logs import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
download_dataset(
    source=snakemake.params.source,  # noqa: F821
    dest=snakemake.output[0],  # noqa: F821
    sha256=snakemake.params.sha256,  # noqa: F821
    cache_dir=snakemake.params.cache_dir,  # noqa: F821
)
