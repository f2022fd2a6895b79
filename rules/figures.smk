# Stage figures: plots, training curves and QC pictures (their edits rerun nothing upstream).

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
        code=script_code("../workflow_scripts/plots.py"),
    log:
        f"{LOGS}/plots/{{model}}.log",
    conda:
        "../envs/nucseg.yaml"
    script:
        "../workflow_scripts/plots.py"


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
        code=script_code("../workflow_scripts/qc.py"),
    log:
        f"{LOGS}/qc/{{model}}/{{dataset}}.log",
    conda:
        "../envs/nucseg.yaml"
    script:
        "../workflow_scripts/qc.py"
