"""Adapter of rule preprocess_train -> nucseg.preprocess.preprocess_training."""

from nucseg.logs import setup_logging
from nucseg.preprocess import PreprocessSettings, preprocess_training

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
preprocess_training(
    dataset_dir=snakemake.input[0],  # noqa: F821
    out_zarr=snakemake.output.zarr,  # noqa: F821
    index_csv=snakemake.output.index,  # noqa: F821
    layout=snakemake.params.layout,  # noqa: F821
    exclude=snakemake.params.exclude,  # noqa: F821
    classes=snakemake.params.classes,  # noqa: F821 (semantic task; empty: instance)
    settings=PreprocessSettings(**snakemake.params.settings),  # noqa: F821
)
