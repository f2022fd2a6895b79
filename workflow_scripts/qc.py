"""Adapter of rule qc -> nucseg.qc.qc_pictures."""

from nucseg.logs import setup_logging
from nucseg.qc import qc_pictures

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
qc_pictures(
    per_image_csv=snakemake.input.metrics,  # noqa: F821
    labels_dir=snakemake.input.labels,  # noqa: F821
    truth_zarr=snakemake.input.zarr,  # noqa: F821
    out_pngs=dict(snakemake.output.items()),  # noqa: F821
)
