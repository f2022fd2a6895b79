rule predict:
    # Probability maps of the full-size test images: blended tiles, streamed into float16 zarr.
    input:
        unpack(model_input),
        unpack(split_plan),
        zarr=f"{RESULTS}/preprocessed/{{dataset}}/full.zarr",
        index=f"{RESULTS}/preprocessed/{{dataset}}/full_index.csv",
    output:
        directory(f"{RESULTS}/predictions/{{model}}/{{dataset}}.zarr"),
    params:
        settings=settings("predict"),
        code=script_code("../workflow_scripts/predict.py"),
    threads: 4
    resources:
        gpu=1,
    log:
        f"{LOGS}/predict/{{model}}/{{dataset}}.log",
    benchmark:
        f"{BENCH}/predict/{{model}}/{{dataset}}.tsv"
    conda:
        "../envs/nucseg.yaml"
    script:
        "../workflow_scripts/predict.py"
