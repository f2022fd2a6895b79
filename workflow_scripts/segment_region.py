"""Adapter of rule segment_region -> nucseg.merge.segment_region."""

from nucseg.logs import setup_logging
from nucseg.merge import segment_region
from nucseg.watershed import SegmentSettings

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
segment_region(
    plan_json=snakemake.input.plan,  # noqa: F821
    position=snakemake.wildcards.image,  # noqa: F821
    region=snakemake.wildcards.region,  # noqa: F821
    map_folders=list(snakemake.input.maps),  # noqa: F821
    statistics_json=snakemake.input.statistics,  # noqa: F821
    out_zarr=snakemake.output[0],  # noqa: F821
    settings=SegmentSettings(**snakemake.params.settings),  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
)
