rule train:
    # Residual U-Net on all training datasets; CUDA when present, else CPU.
    input:
        stores=training_stores(),
        indexes=training_indexes(),
        init=init_weights,
    output:
        directory(MODEL),
    params:
        settings=settings("train"),
        task=TASK,
        classes=CLASSES,
        datasets=TRAIN_SETS,
        # not an output: it survives a failed job, so a rerun resumes from it
        checkpoint=f"{RESULTS}/checkpoints/{{model}}.pt",
        code=script_code("../workflow_scripts/train.py"),
    threads: 4
    resources:
        gpu=1,
    log:
        f"{LOGS}/train/{{model}}.log",
    benchmark:
        f"{BENCH}/train/{{model}}.tsv"
    conda:
        "../envs/nucseg.yaml"
    script:
        "../workflow_scripts/train.py"
