"""Adapter of rule download -> nucseg.datasets.download_dataset."""

from nucseg.datasets import download_dataset
from nucseg.download import DownloadSettings
from nucseg.logs import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
params = snakemake.params  # noqa: F821
download_dataset(
    source=params.source,
    dest=snakemake.output[0],  # noqa: F821
    sha256=params.sha256,
    layout=params.layout,
    solution=params.solution,
    solution_sha256=params.solution_sha256,
    subdir=params.subdir,
    cache_dir=params.cache_dir,
    # how hard to try cannot change the files: read from the config, not a rerun trigger
    settings=DownloadSettings(**(snakemake.config.get("download") or {})),  # noqa: F821
)
