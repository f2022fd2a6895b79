# Workflow-level Python: config validation, dataset tables, paths, input functions.

import glob
import json
import os
import re

import nucseg
import nucseg.tasks
import yaml
from nucseg.config import SECTIONS, config_problems, config_size_problem, read_model_folder_config, type_cli_config
from nucseg.datasets import GROUND_TRUTH_LAYOUTS
from snakemake.exceptions import WorkflowError

# Before anything else touches it: a config of YAML anchors nested in each other (an alias
# bomb) would be expanded in memory by every step below. (Snakemake's own merge of config files,
# before this runs, copies nested mappings: anchors of mappings expand there already; see README.)
_too_large = config_size_problem(config)
if _too_large:
    raise WorkflowError(f"invalid config: {_too_large}")

# The jobs inherit this: OpenMP threads that spin while waiting for each other take the cores
# from one another on a busy machine (a sample run took 19 minutes instead of 1 at load 5);
# passive waiting costs nothing on a quiet one. A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# `--config train='{epochs: 5}'` gives the text '5', and a list the texts of its items
# (Snakemake parses nested values as text): read them as YAML numbers, booleans and lists again
type_cli_config(config)

# The schema's defaults are not filled in here, since they would also fill the per-model
# overrides (which must hold only what they change); section_settings() fills them.
with open(os.path.join(workflow.basedir, "config", "config.schema.yaml")) as _file:
    SCHEMA = yaml.safe_load(_file)
_problems = config_problems(config, SCHEMA)
if _problems:
    raise WorkflowError(
        "invalid config (checked against config/config.schema.yaml; config/config.yaml explains "
        "every key):\n" + "\n".join(f"  {line}" for line in _problems)
    )


def schema_defaults(schema):
    """The defaults the schema gives the keys of each settings section (they equal
    config/config.yaml's values and nucseg's own defaults: tests/test_config.py)."""
    defaults = {}
    for section in SECTIONS:
        node = schema["properties"][section]
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        defaults[section] = {key: spec["default"] for key, spec in node["properties"].items() if "default" in spec}
    return defaults


DEFAULTS = schema_defaults(SCHEMA)


def section_settings(section):
    """A settings section as given, its missing keys at the schema's defaults, keys sorted:
    leaving a key out and writing it at its default are the same params to Snakemake."""
    return sorted_settings({**DEFAULTS[section], **(config.get(section) or {})})


DATASETS = config["datasets"]
TRAIN_SETS = sorted(name for name, d in DATASETS.items() if d["role"] == "train")
TEST_SETS = sorted(name for name, d in DATASETS.items() if d["role"] == "test")


def dataset_layout(name):
    return DATASETS[name].get("layout", "dsb")


# test sets with ground truth (masks in the dsb layout, or a solution CSV) are evaluated;
# a folder of the user's own images, or a dsb set marked evaluate: false, is predicted,
# segmented and measured only (evaluate: true with layout: images, and a config without a
# test set, are refused with the config above: nucseg.config)
EVAL_SETS = [name for name in TEST_SETS if DATASETS[name].get("evaluate", dataset_layout(name) in GROUND_TRUTH_LAYOUTS)]

# The task (nucseg.tasks): instance or semantic. It decides the training targets, network and
# loss, the segment step, the metrics, QC pictures and plots; the stages stay the same rules.
# The rules of the stages that differ (segment, evaluate, qc, plots) call the task's method
# from their one adapter.
TASK = config.get("task", "instance")
CLASSES = [[name, value] for name, value in (config.get("classes") or {}).items()]
try:  # the semantic task: two or more classes, distinct names, values 0..255
    TASK_PLOTS = list(nucseg.tasks.make_task(TASK, CLASSES).plots)
except ValueError as _exc:
    raise WorkflowError(f"config: {_exc}") from None
if TASK == "semantic":
    _wrong = sorted(name for name in DATASETS if dataset_layout(name) != "semantic")
    if _wrong:
        raise WorkflowError(f"config: task: semantic reads datasets of layout: semantic; {_wrong} have another layout")
elif CLASSES:
    raise WorkflowError("config: classes are declared but task is instance (set task: semantic)")


#: The caption of each plot in the report (report/<plot>.rst has the long one).
PLOT_LABELS = {"challenge_score": "challenge score per image", "score_vs_threshold": "score against IoU threshold", "counts": "predicted against true counts", "class_scores": "per-class Dice and IoU"}


def script_code(script):
    """Rerun trigger of a rule: the hash of its adapter script (a path as the rule's `script:`
    gives it, relative to rules/) and of every nucseg module its imports reach, function-level
    imports included, less the modules of later stages that nucseg.EXCLUDED_BEFORE names
    (nucseg.imported_modules): no hand-written list to go stale. Each module is read and hashed
    once per run, however many rules reach it."""
    return nucseg.script_code_hash(os.path.normpath(os.path.join(workflow.basedir, "rules", script)))


# Models by name; each may override keys of the train, predict and segment sections.
MODELS = {name: (overrides or {}) for name, overrides in config["models"].items()}
for _name, _overrides in MODELS.items():  # evaluate and qc read the label TIFFs
    if EVAL_SETS and not {**DEFAULTS["segment"], **(config.get("segment") or {}), **(_overrides.get("segment") or {})}["tiff"]:
        raise WorkflowError(f"config: model {_name!r} has segment.tiff: false, but evaluate and qc read the label TIFFs of {EVAL_SETS} (set tiff: true, or evaluate: false)")
# (a train set for the models to train: nucseg.config.config_problems checks it above)


def model_folder(value):
    """A model folder as the config gives it (`folder:`, `train.init`): 'pretrained' is the
    shipped one, a relative path is taken as local_or_url takes it."""
    return str(nucseg.model_folder(value)) if value == "pretrained" else local_or_url(value)  # a path: as local_or_url resolves paths


def check_model_folders():
    """The config.json of each model folder the config names (`folder:`, `train.init`) and that
    exists, against its schema before any job (nucseg.config.read_model_folder_config; the head
    and network names are checked when the folder is loaded, since this process does not import
    PyTorch). A folder that does not exist is a missing input, named by Snakemake."""
    for name, overrides in MODELS.items():
        init = {**(config.get("train") or {}), **(overrides.get("train") or {})}.get("init")
        places = [(f"models.{name}.folder", overrides.get("folder"))]
        if init and (init == "pretrained" or init not in MODELS):
            places.append((f"models.{name}.train.init" if "init" in (overrides.get("train") or {}) else "train.init", init))
        for key, value in places:
            folder = model_folder(value) if value else None
            if folder and os.path.isfile(os.path.join(folder, "config.json")):
                try:
                    read_model_folder_config(folder)
                except ValueError as exc:
                    raise WorkflowError(f"config: {key}: {exc}") from None


def ready_model(name):
    """The folder of a model given as `folder:` (the shipped one for 'pretrained'), else None
    (the model is trained by the train rule)."""
    folder = MODELS[name].get("folder")
    return None if folder is None else model_folder(folder)


def model_input(wildcards):
    """Input of the jobs that read a model: the trained folder, or a ready folder and its
    weights (replacing weights.pt reruns what depends on it)."""
    folder = ready_model(wildcards.model)
    if folder is None:
        return {"model": MODEL.format(model=wildcards.model)}
    return {"model": folder, "weights": os.path.join(folder, "weights.pt")}


def init_weights(wildcards):
    """Input of the train job: the model `train.init` names: another model of this config (trained
    first: a two-stage recipe), else the weights of a folder (a new file there reruns training)."""
    init = settings("train")(wildcards).get("init")
    if not init:
        return []
    if init in MODELS and init != "pretrained":  # (a model starting from itself: refused by the config check)
        return [ready_model(init) or MODEL.format(model=init)]
    return [os.path.join(model_folder(init), "weights.pt")]


RESULTS = "results"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
MODEL = f"{RESULTS}/models/{{model}}"
SUMMARY = f"{RESULTS}/summary.csv"
SUMMARY_STATS = f"{RESULTS}/summary_stats.csv"
IMAGES_TABLE = f"{RESULTS}/images.csv"  # every model's per-image counts, density, coverage
SUMMARY_HTML = f"{RESULTS}/summary.html"
COMPARISON = f"{RESULTS}/comparison.csv"  # written when there are several models
REGIONS = f"{RESULTS}/regions/{{model}}/{{dataset}}"  # split images (rules/split.smk)
PLOTS = f"{RESULTS}/plots/{{model}}"
QC = f"{RESULTS}/qc/{{model}}/{{dataset}}"
QC_PICKS = ["best", "median", "worst"]  # nucseg.qc.PICKS


wildcard_constraints:
    dataset="|".join(re.escape(name) for name in DATASETS),
    model="|".join(re.escape(name) for name in MODELS),
    image=r"\d+",  # an image's row in the dataset's index (rules/split.smk)
    region=r"\d+",




def sorted_settings(values):
    """Settings with sorted keys: Snakemake compares params by their text, so the order in which
    keys arrive (config file, --config) must not look like a change."""
    return dict(sorted((values or {}).items()))


def settings(section):
    """Input function: the settings of a section for the job's model (section + model's overrides)."""

    def merged(wildcards):
        return sorted_settings({**section_settings(section), **MODELS[wildcards.model].get(section, {})})

    return merged


def local_or_url(source):
    """A local path is taken relative to the working directory, else to the workflow folder."""
    if source is None or re.match(r"https?://", source) or os.path.isabs(source) or glob.glob(source):
        return source
    return os.path.join(workflow.basedir, source)


check_model_folders()  # (here: it resolves the folders with local_or_url)


def dataset_source(name):
    return local_or_url(DATASETS[name]["source"])


def dataset_solution(name):
    return local_or_url(DATASETS[name].get("solution"))


def dataset_exclude(name):
    """Image ids the dataset's `exclude` file lists (left out of training), sorted."""
    path = local_or_url(DATASETS[name].get("exclude"))
    if not path:
        return []
    from nucseg.preprocess import read_id_list  # (imports zarr, scipy, skimage: only when needed)

    return sorted(read_id_list(path))


def dataset_files(name):
    """Input of the download job: the dataset's local files (none for a URL)."""
    from nucseg.datasets import source_files

    files = source_files(dataset_source(name), dataset_layout(name)) + source_files(dataset_solution(name))
    return [str(path) for path in files]


def training_stores():
    return [f"{RESULTS}/preprocessed/{name}/train.zarr" for name in TRAIN_SETS]


def training_indexes():
    return [f"{RESULTS}/preprocessed/{name}/train_index.csv" for name in TRAIN_SETS]


def evaluation_outputs():
    """Tables, plots and QC pictures of the evaluated test sets (none without ground truth)."""
    if not EVAL_SETS:
        return []
    tables = [SUMMARY, SUMMARY_STATS, SUMMARY_HTML] + ([COMPARISON] if len(MODELS) > 1 else [])
    plots = expand(f"{PLOTS}/{{plot}}.png", model=MODELS, plot=TASK_PLOTS)
    qc = expand(f"{QC}/{{pick}}.png", model=MODELS, dataset=EVAL_SETS, pick=QC_PICKS)
    return tables + plots + qc


def all_outputs():
    return (
        evaluation_outputs()
        + expand(f"{RESULTS}/segmentation/{{model}}/{{dataset}}/{{table}}.csv", model=MODELS, dataset=TEST_SETS, table=["objects", "images"])
        + [IMAGES_TABLE]
        + expand(f"{PLOTS}/training_curves.png", model=MODELS)
    )


def run_makes_summary():
    """Whether this run's targets include the summary: a run of rule all (or of the summary
    itself) that nothing cut short (--until, --omit-from, --batch, --allowed-rules)."""
    dag = workflow.dag_settings
    if dag.until or dag.omit_from or dag.batch or dag.allowed_rules:
        return False
    targets = {str(target) for target in (dag.targets or ())}
    return not targets or bool(targets & {"all", SUMMARY})


def print_summary(path):
    """At the end of a run, the summary table, if this config evaluates anything and this run
    made (or found up to date) the summary: else a summary.csv left by an earlier run or config
    would read as this run's scores."""
    if EVAL_SETS and run_makes_summary() and os.path.exists(path):
        import pandas as pd
        from nucseg.report import format_summary

        print(f"\nSummary ({path}):\n{format_summary(pd.read_csv(path))}\n")


# One large image over many jobs (rules/split.smk): images larger than this many pixels a side
# are cut into regions; 0 (the default) runs every image in its dataset's jobs.
SPLIT_REGION = section_settings("split")["region"]
if SPLIT_REGION and TASK != "instance":
    raise WorkflowError(f"config: split.region is for the instance task (task is {TASK}); set it to 0")


def split_plan(wildcards):
    """Input of the dataset's predict and segment jobs where images are split: the plan, which
    names the images the region jobs run."""
    return {"plan": f"{REGIONS}/plan.json".format(**wildcards)} if SPLIT_REGION else {}


def planned_regions(wildcards):
    """{image position: number of regions} of the dataset's plan (once the checkpoint ran)."""
    with open(checkpoints.plan_regions.get(model=wildcards.model, dataset=wildcards.dataset).output[0]) as file:
        return {entry["position"]: len(entry["regions"]) for entry in json.load(file)["images"]}


def region_outputs(pattern):
    def outputs(wildcards):
        n = planned_regions(wildcards)[int(wildcards.image)]
        return expand(pattern, model=wildcards.model, dataset=wildcards.dataset, image=wildcards.image, region=range(n))

    return outputs


region_maps = region_outputs(f"{REGIONS}/{{image}}/maps/{{region}}.zarr")
region_chunks = region_outputs(f"{REGIONS}/{{image}}/chunks/{{region}}.zarr")


def split_segment(wildcards):
    """Input of the dataset's segment job: the plan and the merged files of its split images."""
    if not SPLIT_REGION:
        return {}
    merged = expand(f"{REGIONS}/{{image}}/merged", model=wildcards.model, dataset=wildcards.dataset, image=sorted(planned_regions(wildcards)))
    return {"plan": f"{REGIONS}/plan.json".format(**wildcards), "merged": merged}
