rule download:
    # Fetch (or copy, or link) the dataset, verify its sha256, unpack it safely. The download
    # section (retries, back-off, timeout, unpacking bounds) is read from the config by the
    # script, not passed as params: it cannot change the files (a bound only refuses an
    # archive), so changing it must not rerun the data's stages.
    input:
        # the local archive, solution or image files: replacing or adding one reruns the data's stages
        lambda wc: dataset_files(wc.dataset),
    output:
        directory(f"{RESULTS}/datasets/{{dataset}}"),
    params:
        source=lambda wc: dataset_source(wc.dataset),
        sha256=lambda wc: DATASETS[wc.dataset].get("sha256"),
        layout=lambda wc: dataset_layout(wc.dataset),
        solution=lambda wc: dataset_solution(wc.dataset),
        solution_sha256=lambda wc: DATASETS[wc.dataset].get("solution_sha256"),
        subdir=lambda wc: DATASETS[wc.dataset].get("subdir"),
        cache_dir=f"{RESULTS}/downloads",
        code=script_code("../workflow_scripts/download.py"),
    log:
        f"{LOGS}/download/{{dataset}}.log",
    conda:
        "../envs/nucseg.yaml"
    script:
        "../workflow_scripts/download.py"
