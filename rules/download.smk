rule download:
    # Fetch (or copy) the dataset archive, verify its sha256, unpack it safely.
    output:
        directory(f"{RESULTS}/datasets/{{dataset}}"),
    params:
        source=lambda wc: dataset_source(wc.dataset),
        sha256=lambda wc: DATASETS[wc.dataset].get("sha256"),
        cache_dir=f"{RESULTS}/downloads",
        code=nucseg.code_hash("datasets", "files", "imageio"),
    log:
        f"{LOGS}/download/{{dataset}}.log",
    conda:
        "../envs/nucseg.yaml"
    script:
        "../workflow_scripts/download.py"
