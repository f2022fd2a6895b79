rule segment:
    # Otsu + hole filling + distance-transform markers + watershed -> label TIFFs, object table.
    input:
        pred=f"{RESULTS}/predictions/{{model}}/{{dataset}}.zarr",
        zarr=f"{RESULTS}/preprocessed/{{dataset}}/full.zarr",
        index=f"{RESULTS}/preprocessed/{{dataset}}/full_index.csv",
    output:
        labels=directory(f"{RESULTS}/segmentation/{{model}}/{{dataset}}/labels"),
        objects=f"{RESULTS}/segmentation/{{model}}/{{dataset}}/objects.csv",
    params:
        settings=settings("segment"),
        code=nucseg.code_hash("postprocess", "measure", "imageio", "files"),
    log:
        f"{LOGS}/segment/{{model}}/{{dataset}}.log",
    benchmark:
        f"{BENCH}/segment/{{model}}/{{dataset}}.tsv"
    conda:
        "../envs/nucseg.yaml"
    script:
        "../workflow_scripts/segment.py"
