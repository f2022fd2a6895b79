"""Adapter of rule region_statistics -> nucseg.merge.region_statistics."""

from nucseg.logs import setup_logging
from nucseg.merge import region_statistics
from nucseg.watershed import SegmentSettings

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
region_statistics(
    plan_json=snakemake.input.plan,  # noqa: F821
    position=snakemake.wildcards.image,  # noqa: F821
    map_folders=list(snakemake.input.maps),  # noqa: F821
    out_json=snakemake.output[0],  # noqa: F821
    settings=SegmentSettings(**snakemake.params.settings),  # noqa: F821
)
