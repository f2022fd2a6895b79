# One large image over many jobs (split: {region: <pixels>}; nucseg.split, nucseg.merge). Each
# test image larger than one region runs as region jobs, on the local cores or on as many
# cluster nodes as the profile gets: plan (the whole image's statistics and scale, once) ->
# predict_region per region -> region_statistics (the whole map's threshold and nucleus size,
# once) -> segment_region per region -> merge_regions (one label image, OME-Zarr, GeoJSON,
# ROIs and tables, equal to the single job's); the dataset's segment job takes the merged files.
# The dataset's own predict and segment jobs run the images that are not split.


checkpoint plan_regions:
    input:
        unpack(model_input),
        zarr=f"{RESULTS}/preprocessed/{{dataset}}/full.zarr",
        index=f"{RESULTS}/preprocessed/{{dataset}}/full_index.csv",
    output:
        f"{REGIONS}/plan.json",
    params:
        settings=settings("predict"),
        region=SPLIT_REGION,
        code=script_code("../workflow_scripts/plan_regions.py"),
    threads: 4
    resources:
        gpu=1,
    log:
        f"{LOGS}/plan_regions/{{model}}/{{dataset}}.log",
    benchmark:
        f"{BENCH}/plan_regions/{{model}}/{{dataset}}.tsv"
    conda:
        "../envs/nucseg.yaml"
    script:
        "../workflow_scripts/plan_regions.py"


rule predict_region:
    input:
        unpack(model_input),
        zarr=f"{RESULTS}/preprocessed/{{dataset}}/full.zarr",
        plan=f"{REGIONS}/plan.json",
    output:
        directory(f"{REGIONS}/{{image}}/maps/{{region}}.zarr"),
    params:
        settings=settings("predict"),
        code=script_code("../workflow_scripts/predict_region.py"),
    threads: 4
    resources:
        gpu=1,
    log:
        f"{LOGS}/predict_region/{{model}}/{{dataset}}/{{image}}/{{region}}.log",
    benchmark:
        f"{BENCH}/predict_region/{{model}}/{{dataset}}/{{image}}/{{region}}.tsv"
    conda:
        "../envs/nucseg.yaml"
    script:
        "../workflow_scripts/predict_region.py"


rule region_statistics:
    input:
        plan=f"{REGIONS}/plan.json",
        maps=region_maps,
    output:
        f"{REGIONS}/{{image}}/statistics.json",
    params:
        settings=settings("segment"),
        code=script_code("../workflow_scripts/region_statistics.py"),
    log:
        f"{LOGS}/region_statistics/{{model}}/{{dataset}}/{{image}}.log",
    benchmark:
        f"{BENCH}/region_statistics/{{model}}/{{dataset}}/{{image}}.tsv"
    conda:
        "../envs/nucseg.yaml"
    script:
        "../workflow_scripts/region_statistics.py"


rule segment_region:
    input:
        plan=f"{REGIONS}/plan.json",
        statistics=f"{REGIONS}/{{image}}/statistics.json",
        maps=region_maps,
    output:
        directory(f"{REGIONS}/{{image}}/chunks/{{region}}.zarr"),
    params:
        settings=settings("segment"),
        code=script_code("../workflow_scripts/segment_region.py"),
    threads: 2
    log:
        f"{LOGS}/segment_region/{{model}}/{{dataset}}/{{image}}/{{region}}.log",
    benchmark:
        f"{BENCH}/segment_region/{{model}}/{{dataset}}/{{image}}/{{region}}.tsv"
    conda:
        "../envs/nucseg.yaml"
    script:
        "../workflow_scripts/segment_region.py"


rule merge_regions:
    input:
        plan=f"{REGIONS}/plan.json",
        maps=region_maps,
        chunks=region_chunks,
        zarr=f"{RESULTS}/preprocessed/{{dataset}}/full.zarr",
        index=f"{RESULTS}/preprocessed/{{dataset}}/full_index.csv",
    output:
        directory(f"{REGIONS}/{{image}}/merged"),
    params:
        settings=settings("segment"),
        code=script_code("../workflow_scripts/merge_regions.py"),
    threads: 2
    log:
        f"{LOGS}/merge_regions/{{model}}/{{dataset}}/{{image}}.log",
    benchmark:
        f"{BENCH}/merge_regions/{{model}}/{{dataset}}/{{image}}.tsv"
    conda:
        "../envs/nucseg.yaml"
    script:
        "../workflow_scripts/merge_regions.py"
