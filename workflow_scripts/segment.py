"""Adapter of rule segment -> nucseg.postprocess.segment_dataset."""

from nucseg.logs import setup_logging
from nucseg.merge import merged_images
from nucseg.postprocess import SegmentSettings, segment_dataset

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
segment_dataset(
    pred_zarr=snakemake.input.pred,  # noqa: F821
    images_zarr=snakemake.input.zarr,  # noqa: F821
    index_csv=snakemake.input.index,  # noqa: F821
    out_dir=snakemake.output.labels,  # noqa: F821
    objects_csv=snakemake.output.objects,  # noqa: F821
    images_csv=snakemake.output.images,  # noqa: F821
    ome_zarr_dir=snakemake.output.ome_zarr,  # noqa: F821
    geojson_dir=snakemake.output.geojson,  # noqa: F821
    rois_dir=snakemake.output.rois,  # noqa: F821
    settings=SegmentSettings(**snakemake.params.settings),  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
    # the images split into regions: their files as the merge made them (rules/split.smk)
    merged=merged_images(snakemake.input.plan, snakemake.input.merged) if "plan" in snakemake.input.keys() else None,  # noqa: F821
)
