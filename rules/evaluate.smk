# Stage evaluate: each segmentation scored against its ground truth.

rule evaluate:
    # Per-image metrics against the ground truth.
    input:
        labels=f"{RESULTS}/segmentation/{{model}}/{{dataset}}/labels",
        zarr=f"{RESULTS}/preprocessed/{{dataset}}/full.zarr",
        index=f"{RESULTS}/preprocessed/{{dataset}}/full_index.csv",
    output:
        f"{RESULTS}/metrics/{{model}}/{{dataset}}/per_image.csv",
    params:
        task=TASK,
        classes=CLASSES,
        code=script_code("../workflow_scripts/evaluate.py"),
    log:
        f"{LOGS}/evaluate/{{model}}/{{dataset}}.log",
    conda:
        "../envs/nucseg.yaml"
    script:
        "../workflow_scripts/evaluate.py"
