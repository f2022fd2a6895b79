rule preprocess_train:
    # Training images -> crops (or resized images) and labels in a zarr store.
    input:
        f"{RESULTS}/datasets/{{dataset}}",
    output:
        zarr=directory(f"{RESULTS}/preprocessed/{{dataset}}/train.zarr"),
        index=f"{RESULTS}/preprocessed/{{dataset}}/train_index.csv",
    params:
        settings=section_settings("preprocess"),
        layout=lambda wc: dataset_layout(wc.dataset),
        exclude=lambda wc: dataset_exclude(wc.dataset),
        classes=CLASSES,
        code=script_code("../workflow_scripts/preprocess_train.py"),
    log:
        f"{LOGS}/preprocess_train/{{dataset}}.log",
    benchmark:
        f"{BENCH}/preprocess_train/{{dataset}}.tsv"
    conda:
        "../envs/nucseg.yaml"
    script:
        "../workflow_scripts/preprocess_train.py"


rule preprocess_test:
    # Test images at full resolution (and their ground truth) in a zarr store.
    input:
        f"{RESULTS}/datasets/{{dataset}}",
    output:
        zarr=directory(f"{RESULTS}/preprocessed/{{dataset}}/full.zarr"),
        index=f"{RESULTS}/preprocessed/{{dataset}}/full_index.csv",
    params:
        layout=lambda wc: dataset_layout(wc.dataset),
        exclude=lambda wc: dataset_exclude(wc.dataset),
        classes=CLASSES,
        pixel_size=lambda wc: DATASETS[wc.dataset].get("pixel_size"),
        code=script_code("../workflow_scripts/preprocess_test.py"),
    log:
        f"{LOGS}/preprocess_test/{{dataset}}.log",
    conda:
        "../envs/nucseg.yaml"
    script:
        "../workflow_scripts/preprocess_test.py"
