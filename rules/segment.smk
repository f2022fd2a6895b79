rule segment:
    # Otsu + hole filling + distance-transform markers + watershed (method paper), seeds cut by
    # the border head (method border), chunk by chunk -> per image a label TIFF, an OME-Zarr
    # (image + labels), GeoJSON outlines (QuPath) and an ImageJ ROI zip (Fiji), each switchable
    # off, and the object and image tables.
    input:
        unpack(split_segment),
        pred=f"{RESULTS}/predictions/{{model}}/{{dataset}}.zarr",
        zarr=f"{RESULTS}/preprocessed/{{dataset}}/full.zarr",
        index=f"{RESULTS}/preprocessed/{{dataset}}/full_index.csv",
    output:
        labels=directory(f"{RESULTS}/segmentation/{{model}}/{{dataset}}/labels"),
        ome_zarr=directory(f"{RESULTS}/segmentation/{{model}}/{{dataset}}/ome_zarr"),
        geojson=directory(f"{RESULTS}/segmentation/{{model}}/{{dataset}}/geojson"),
        rois=directory(f"{RESULTS}/segmentation/{{model}}/{{dataset}}/rois"),
        objects=f"{RESULTS}/segmentation/{{model}}/{{dataset}}/objects.csv",
        images=f"{RESULTS}/segmentation/{{model}}/{{dataset}}/images.csv",
    params:
        settings=settings("segment"),
        task=TASK,
        classes=CLASSES,
        code=script_code("../workflow_scripts/segment.py"),
    threads: 2
    log:
        f"{LOGS}/segment/{{model}}/{{dataset}}.log",
    benchmark:
        f"{BENCH}/segment/{{model}}/{{dataset}}.tsv"
    conda:
        "../envs/nucseg.yaml"
    script:
        # the semantic task: argmax class maps and class areas (nucseg.tasks.semantic)
        "../workflow_scripts/segment.py"
