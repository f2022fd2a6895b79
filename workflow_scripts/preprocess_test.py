"""Adapter of rule preprocess_test -> nucseg.preprocess.preprocess_fullsize."""

from nucseg.logs import setup_logging
from nucseg.preprocess import preprocess_fullsize

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
preprocess_fullsize(
    dataset_dir=snakemake.input[0],  # noqa: F821
    out_zarr=snakemake.output.zarr,  # noqa: F821
    index_csv=snakemake.output.index,  # noqa: F821
    layout=snakemake.params.layout,  # noqa: F821
    exclude=snakemake.params.exclude,  # noqa: F821
    classes=snakemake.params.classes,  # noqa: F821 (semantic task; empty: instance)
    pixel_size=snakemake.params.pixel_size,  # noqa: F821 (µm; None: each file's own)
)
