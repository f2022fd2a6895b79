"""Adapter of rule merge_regions -> nucseg.merge.merge_image."""

from nucseg.logs import setup_logging
from nucseg.merge import merge_image
from nucseg.watershed import SegmentSettings

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
merge_image(
    plan_json=snakemake.input.plan,  # noqa: F821
    position=snakemake.wildcards.image,  # noqa: F821
    map_folders=list(snakemake.input.maps),  # noqa: F821
    chunk_folders=list(snakemake.input.chunks),  # noqa: F821
    images_zarr=snakemake.input.zarr,  # noqa: F821
    index_csv=snakemake.input.index,  # noqa: F821
    out_dir=snakemake.output[0],  # noqa: F821
    settings=SegmentSettings(**snakemake.params.settings),  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
)
