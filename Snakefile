# nucseg: nucleus instance segmentation, from a dataset archive to result tables.
#
#   snakemake --cores all                      # the embedded sample, CPU or GPU
#   snakemake --cores all --resources gpu=1    # at most one GPU job at a time
#
# Stages: download -> preprocess -> train -> predict -> segment -> evaluate -> aggregate
# (tables, plots, QC pictures).
# Settings: config/config.yaml (validated against config/config.schema.yaml).

from snakemake.utils import min_version

min_version("9.19")  # several --profile layered (pyproject.toml pins the same)


configfile: os.path.join(workflow.basedir, "config/config.yaml")


# snakemake --report report.html: tables, plots, training curves and QC pictures, captioned
report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/preprocess.smk"
include: "rules/train.smk"
include: "rules/predict.smk"
include: "rules/segment.smk"
include: "rules/split.smk"
include: "rules/evaluate.smk"
include: "rules/aggregate.smk"
include: "rules/figures.smk"


rule all:
    input:
        all_outputs(),
    default_target: True


onsuccess:
    print_summary(SUMMARY)
