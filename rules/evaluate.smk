rule evaluate:
    # Per-image metrics against the ground truth.
    input:
        labels=f"{RESULTS}/segmentation/{{model}}/{{dataset}}/labels",
        zarr=f"{RESULTS}/preprocessed/{{dataset}}/full.zarr",
        index=f"{RESULTS}/preprocessed/{{dataset}}/full_index.csv",
    output:
        f"{RESULTS}/metrics/{{model}}/{{dataset}}/per_image.csv",
    params:
        code=nucseg.code_hash("evaluate", "metrics", "imageio", "files"),
    log:
        f"{LOGS}/evaluate/{{model}}/{{dataset}}.log",
    conda:
        "../envs/nucseg.yaml"
    script:
        "../workflow_scripts/evaluate.py"


rule aggregate:
    # Mean of every metric over images, per dataset and overall.
    input:
        expand(f"{RESULTS}/metrics/{{model}}/{{dataset}}/per_image.csv", model=MODELS, dataset=EVAL_SETS),
    output:
        SUMMARY,
    params:
        code=nucseg.code_hash("report", "evaluate", "files"),
    log:
        f"{LOGS}/aggregate/aggregate.log",
    conda:
        "../envs/nucseg.yaml"
    script:
        "../workflow_scripts/aggregate.py"
