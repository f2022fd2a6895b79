# Stage aggregate: the per-image tables of every model and dataset, and the summary tables.

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
