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
        code=script_code(task_script("evaluate")),
    log:
        f"{LOGS}/evaluate/{{model}}/{{dataset}}.log",
    conda:
        "../envs/nucseg.yaml"
    script:
        task_script("evaluate")


rule image_tables:
    # The segment stage's per-image tables (count, density, areas, coverage) of every model and
    # test dataset in one table, evaluated or not.
    input:
        [f"{RESULTS}/segmentation/{model}/{dataset}/images.csv" for model in MODELS for dataset in TEST_SETS],
    output:
        report(IMAGES_TABLE, caption="../report/images.rst", category="Summary", labels={"table": "counts and coverage per image"}),
    params:
        pairs=[[model, dataset] for model in MODELS for dataset in TEST_SETS],
        code=script_code("../workflow_scripts/image_tables.py"),
    log:
        f"{LOGS}/image_tables/image_tables.log",
    conda:
        "../envs/nucseg.yaml"
    script:
        "../workflow_scripts/image_tables.py"


rule aggregate:
    # Summary tables over images: means (summary.csv), mean/median/std/count overall and per
    # modality (summary_stats.csv), models side by side (comparison.csv, with several models).
    input:
        expand(f"{RESULTS}/metrics/{{model}}/{{dataset}}/per_image.csv", model=MODELS, dataset=EVAL_SETS),
    output:
        summary=report(SUMMARY, caption="../report/summary.rst", category="Summary", labels={"table": "means per model and dataset"}),
        stats=report(SUMMARY_STATS, caption="../report/summary_stats.rst", category="Summary", labels={"table": "statistics overall and per modality"}),
        html=report(SUMMARY_HTML, caption="../report/summary_html.rst", category="Summary", labels={"table": "summary tables (view)"}),
        **({"comparison": report(COMPARISON, caption="../report/comparison.rst", category="Summary", labels={"table": "models side by side"})} if len(MODELS) > 1 else {}),
    params:
        code=script_code("../workflow_scripts/aggregate.py"),
    log:
        f"{LOGS}/aggregate/aggregate.log",
    conda:
        "../envs/nucseg.yaml"
    script:
        "../workflow_scripts/aggregate.py"


rule plots:
    # Per model, the task's plots (TASK_PLOTS). Instance: distribution of the per-image
    # challenge score, score against IoU threshold, predicted against true nucleus counts.
    # Semantic: per-class Dice and IoU over images.
    input:
        expand(f"{RESULTS}/metrics/{{model}}/{{dataset}}/per_image.csv", dataset=EVAL_SETS, allow_missing=True),
    output:
        **{plot: report(f"{PLOTS}/{plot}.png", caption=f"../report/{plot}.rst", category="Plots", subcategory="{model}", labels={"model": "{model}", "plot": PLOT_LABELS[plot]}) for plot in TASK_PLOTS},
    params:
        task=TASK,
        classes=CLASSES,
        code=script_code(task_script("plots")),
    log:
        f"{LOGS}/plots/{{model}}.log",
    conda:
        "../envs/nucseg.yaml"
    script:
        task_script("plots")


rule training_curves:
    # The model folder's training curves, beside the other plots (and in the report).
    input:
        unpack(model_input),
    output:
        report(f"{PLOTS}/training_curves.png", caption="../report/training_curves.rst", category="Training", labels={"model": "{model}"}),
    params:
        code=script_code("../workflow_scripts/training_curves.py"),
    log:
        f"{LOGS}/training_curves/{{model}}.log",
    conda:
        "../envs/nucseg.yaml"
    script:
        "../workflow_scripts/training_curves.py"


rule qc:
    # Quality-control pictures: the best, median and worst test image by challenge score, with
    # the true and the predicted outlines.
    input:
        metrics=f"{RESULTS}/metrics/{{model}}/{{dataset}}/per_image.csv",
        labels=f"{RESULTS}/segmentation/{{model}}/{{dataset}}/labels",
        zarr=f"{RESULTS}/preprocessed/{{dataset}}/full.zarr",
    output:
        **{pick: report(f"{QC}/{pick}.png", caption="../report/qc.rst" if TASK == "instance" else f"../report/qc_{TASK}.rst", category="QC", subcategory="{model} / {dataset}", labels={"model": "{model}", "dataset": "{dataset}", "image": pick}) for pick in QC_PICKS},
    params:
        task=TASK,
        classes=CLASSES,
        code=script_code(task_script("qc")),
    log:
        f"{LOGS}/qc/{{model}}/{{dataset}}.log",
    conda:
        "../envs/nucseg.yaml"
    script:
        task_script("qc")
