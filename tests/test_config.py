"""The documented defaults are one set: config/config.yaml's values, the schema's defaults (filled
in by the workflow for keys a config leaves out) and the nucseg settings classes' defaults."""

from __future__ import annotations

import copy
import dataclasses
import math
import time

import pytest
import yaml

from nucseg.config import MAX_CONFIG_VALUES, config_problems, config_size_problem, type_cli_config
from nucseg.download import DownloadSettings
from nucseg.infer import PredictSettings
from nucseg.postprocess import SegmentSettings
from nucseg.preprocess import PreprocessSettings
from nucseg.split import SplitSettings
from nucseg.training import TrainSettings

from .conftest import REPO, snakemake

CONFIG = yaml.safe_load((REPO / "config/config.yaml").read_text())
SCHEMA = yaml.safe_load((REPO / "config/config.schema.yaml").read_text())
CLASSES = {
    "download": DownloadSettings,
    "preprocess": PreprocessSettings,
    "train": TrainSettings,
    "predict": PredictSettings,
    "segment": SegmentSettings,
    "split": SplitSettings,
}
# fields of the settings classes that are not settings of the workflow
NOT_IN_CONFIG = {"download": {"progress"}}


def schema_section(section: str) -> dict:
    node = SCHEMA["properties"][section]
    if "$ref" in node:
        node = SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node["properties"]


def class_defaults(cls) -> dict:
    defaults = {}
    for f in dataclasses.fields(cls):
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        defaults[f.name] = list(value) if isinstance(value, tuple) else value
    return defaults


@pytest.mark.parametrize("section", sorted(CLASSES))
def test_config_schema_and_code_give_the_same_defaults(section):
    schema = schema_section(section)
    assert set(CONFIG[section]) == set(schema), "config.yaml and the schema name different keys"
    missing = [key for key, spec in schema.items() if "default" not in spec]
    assert not missing, f"the schema gives no default for {section}.{missing}"
    code = class_defaults(CLASSES[section])
    assert set(code) - NOT_IN_CONFIG.get(section, set()) == set(schema)
    for key, spec in schema.items():
        assert CONFIG[section][key] == spec["default"] == code[key], (
            f"{section}.{key}: config.yaml {CONFIG[section][key]!r}, schema {spec['default']!r}, {CLASSES[section].__name__} {code[key]!r}"
        )


# Checking a config: one line per problem, naming the key by its dotted path.


@pytest.mark.parametrize("name", ["config.yaml", "full_challenge.yaml"])
def test_the_shipped_configs_are_valid(name):
    assert config_problems(yaml.safe_load((REPO / "config" / name).read_text()), SCHEMA) == []


def test_config_problems_name_each_key():
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["segment"]["min_sise"] = 20  # a typo
    config["train"]["epochs"] = "ten"  # a wrong type
    config["datasets"]["sample_train"]["role"] = "trian"  # not one of the choices
    config["models"]["paper"] = {"predict": {"tiles": 512}}  # a typo in a model's override
    assert config_problems(config, SCHEMA) == [
        "datasets.sample_train.role: 'trian' is not one of ['train', 'test'] (train (model fitting) or test (predicted and evaluated))",
        f"models.paper.predict.tiles: unknown key (models.paper.predict takes: {', '.join(schema_section('predict'))})",
        f"segment.min_sise: unknown key (segment takes: {', '.join(schema_section('segment'))})",
        "train.epochs: 'ten' is not of type 'integer' (maximum epochs)",
    ]


def test_config_problems_at_the_top_level():
    problems = config_problems({"datasets": {}, "sample": 1}, SCHEMA)
    assert problems[0] == "the config's top level: 'models' is a required property"
    assert problems[-1] == f"sample: unknown key (the top level takes: {', '.join(SCHEMA['properties'])})"


def test_a_run_without_train_or_test_set_says_what_it_needs():
    """Regression: 'datasets: {...} does not have enough properties' said nothing of roles."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    del config["datasets"]["sample_train"]
    assert config_problems(config, SCHEMA) == [
        "datasets: a run needs at least one dataset with role: train to train its models (resunet); this config has "
        "train: none; test: sample_test. To segment with a ready model and no training, give the model a folder: "
        "models: {pretrained: {folder: pretrained}}"
    ]
    config["models"] = {"pretrained": {"folder": "pretrained"}}  # a ready model needs no train set
    assert not [line for line in config_problems(config, SCHEMA) if line.startswith("datasets")]
    config["datasets"]["sample_test"]["role"] = "train"
    assert (
        "datasets: a run needs at least one dataset with role: test (the images it segments); this config has train: sample_test; test: none"
        in config_problems(config, SCHEMA)
    )


def test_a_value_of_none_of_the_allowed_kinds_says_which_are_allowed():
    """Regression: 'segment.threshold: 1.5 is not valid under any of the given schemas'."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["segment"]["threshold"] = 1.5
    assert config_problems(config, SCHEMA) == [
        "segment.threshold: 1.5 is not allowed: use 'otsu', or a number greater than 0 and less than 1 (foreground threshold)"
    ]


def test_rules_between_keys_are_checked_with_the_config():
    """Regression: inverted otsu_bounds and heads [border, body] were refused only inside the
    segment and train jobs, after download, preprocess (and training)."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["segment"]["otsu_bounds"] = [0.8, 0.2]
    config["train"]["heads"] = ["border", "body"]
    config["models"]["wide"] = {"segment": {"otsu_bounds": [0.6, 0.4]}, "train": {"heads": ["body", "border"]}}
    assert config_problems(config, SCHEMA) == [
        "models.wide.segment.otsu_bounds: [0.6, 0.4] is inverted: write the lower bound first ([0.4, 0.6])",
        "segment.otsu_bounds: [0.8, 0.2] is inverted: write the lower bound first ([0.2, 0.8])",
        "train.heads: ['border', 'body'] must start with body ([body], [body, border] or [body, border, seed]): "
        "the body head is the nucleus foreground every model predicts",
    ]
    config["segment"]["otsu_bounds"] = [0.5, 0.5]  # equal bounds fix the threshold: allowed
    config["train"]["heads"] = ["body", "border"]
    del config["models"]["wide"]
    assert config_problems(config, SCHEMA) == []


def test_models_that_start_from_each_other_are_refused():
    """train.init naming a model of the config: a chain that leads back to the model is refused
    with the chain; a chain to another model, and pretrained (the shipped model, even beside a
    model of that name), are fine."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["models"] = {
        "base": {},
        "tuned": {"train": {"init": "base"}},
        "pretrained": {"train": {"init": "pretrained"}},
        "a": {"train": {"init": "b"}},
        "b": {"train": {"init": "a"}},
        "self": {"train": {"init": "self"}},
    }
    assert config_problems(config, SCHEMA) == [
        "models.a.train.init: the models start from each other's weights (a -> b -> a): name a model folder, pretrained, or another model",
        "models.b.train.init: the models start from each other's weights (b -> a -> b): name a model folder, pretrained, or another model",
        "models.self.train.init: the models start from each other's weights (self -> self): name a model folder, pretrained, or another model",
    ]


def test_command_line_lists_are_typed_like_scalars():
    """Regression: --config segment='{otsu_bounds: [0.2, 0.8]}' gave ['0.2', '0.8'] and the
    error "'0.2' is not of type 'number'"."""
    config = {
        "segment": {"otsu_bounds": ["0.2", "0.8"], "threshold": "otsu", "min_size": "5"},
        "train": {"heads": ["body", "border"], "width": "null"},
        "datasets": {"a": {"sha256": "1234", "evaluate": "false"}},
        "models": {"m": {"segment": {"otsu_bounds": "[0.1, 0.9]"}}},
    }
    type_cli_config(config)
    assert config == {
        "segment": {"otsu_bounds": [0.2, 0.8], "threshold": "otsu", "min_size": 5},
        "train": {"heads": ["body", "border"], "width": None},
        "datasets": {"a": {"sha256": "1234", "evaluate": False}},
        "models": {"m": {"segment": {"otsu_bounds": [0.1, 0.9]}}},
    }


def test_the_workflow_checks_the_command_line_config_before_any_job(tmp_path):
    """The workflow reads --config lists as numbers, and refuses an inverted otsu_bounds naming
    the key before any job runs (a dry run)."""
    ok = snakemake(tmp_path, "-n", "--config", "segment={otsu_bounds: [0.2, 0.8]}")
    assert ok.returncode == 0, ok.stderr[-3000:]
    bad = snakemake(tmp_path, "-n", "--config", "segment={otsu_bounds: [0.8, 0.2]}")
    assert bad.returncode != 0
    assert "segment.otsu_bounds: [0.8, 0.2] is inverted" in bad.stdout + bad.stderr
    assert not (tmp_path / "results").exists()


# Hostile values: NaN and infinity, YAML alias bombs.


@pytest.mark.parametrize(
    "section, key, value",
    [("segment", "threshold", math.nan), ("predict", "scale", math.nan), ("train", "learning_rate", math.nan), ("predict", "scale", math.inf)],
)
def test_nan_and_infinity_are_refused_for_every_number(section, key, value):
    """Regression: .nan passed the schema's bounds (every comparison with NaN is false) for
    segment.threshold, predict.scale and train.learning_rate, and failed only inside the job."""
    config = copy.deepcopy(CONFIG)
    config[section][key] = value
    assert config_problems(config, SCHEMA) == [f"{section}.{key}: {value} is not allowed: every number in the config must be finite (not NaN or infinity)"]


def test_nan_in_a_models_override_is_named_by_its_path():
    config = copy.deepcopy(CONFIG)
    config["models"] = {"m": {"segment": {"otsu_bounds": [0.2, -math.inf]}}}
    assert config_problems(config, SCHEMA) == [
        "models.m.segment.otsu_bounds.1: -inf is not allowed: every number in the config must be finite (not NaN or infinity)"
    ]


def alias_bomb(kind: str, levels: int = 9) -> str:
    """A config whose ``segment.threshold`` is nine aliases of nine aliases ... of nine values: 9**levels once expanded."""
    if kind == "list":
        lines = ["segment:", "  threshold:", "  - &a0 [x, x, x, x, x, x, x, x, x]"]
        lines += [f"  - &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    else:
        lines = ["segment:", "  threshold:", "    a0: &a0 {" + ", ".join(f"k{j}: x" for j in range(9)) + "}"]
        lines += [f"    a{i}: &a{i} {{" + ", ".join(f"k{j}: *a{i - 1}" for j in range(9)) + "}" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("kind, key", [("list", "segment.threshold"), ("dict", "segment.threshold.a4")])
def test_an_alias_bomb_is_refused_at_once_naming_the_key(kind, key):
    """Regression: nested anchors (9**9 values under one key) ended in MemoryError after 90 s.
    The key named is the first anchored value past the bound (a4: 9**5 mappings)."""
    config = yaml.safe_load(alias_bomb(kind))
    started = time.perf_counter()
    problems = config_problems(config, SCHEMA)
    assert time.perf_counter() - started < 1
    assert problems == [
        f"{key}: expands to more than {MAX_CONFIG_VALUES:,} values through YAML aliases (*name) of anchors (&name) nested in each other, "
        "or holds itself: refused before anything reads it (a config needs a few hundred values)"
    ]


def test_aliases_within_the_bound_and_a_value_holding_itself():
    shared = yaml.safe_load("a: &a [1, 2, 3]\nb: [*a, *a, *a]")
    assert config_size_problem(shared) is None
    assert config_size_problem(CONFIG) is None
    assert config_size_problem(yaml.safe_load("train: &t {heads: [*t]}")).startswith("train: expands to more than")


def test_the_workflow_refuses_an_alias_bomb_and_nan_before_any_job(tmp_path):
    """The workflow's own check, on a --configfile and on --config: one line naming the key, no
    traceback, no results. (A bomb of anchored mappings is expanded by Snakemake's merge of the
    config files before the workflow runs, so this one is of lists, which Snakemake keeps shared.)"""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb("list"))
    started = time.perf_counter()
    bad = snakemake(tmp_path, "-n", "--configfile", str(bomb))
    assert time.perf_counter() - started < 60
    output = bad.stdout + bad.stderr
    assert bad.returncode != 0 and "Traceback" not in output
    assert "invalid config: segment.threshold: expands to more than 100,000 values through YAML aliases" in output
    nan = snakemake(tmp_path, "-n", "--config", "train={learning_rate: .nan}")
    assert nan.returncode != 0
    assert "train.learning_rate: nan is not allowed: every number in the config must be finite" in nan.stdout + nan.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("name", ["../up", "a/b", "my data", "a;rm -rf x", "$(touch x)", ".hidden"])
def test_dataset_and_model_names_that_would_be_paths_or_commands_are_refused(name):
    """Held (issue 24): a dataset or model name becomes a folder and a wildcard value: ``../``,
    ``/``, spaces, ``;`` and ``$()`` are refused by the config check, before any job."""
    config = copy.deepcopy(CONFIG)
    config["datasets"][name] = config["datasets"]["sample_test"]
    config["models"][name] = {}
    problems = config_problems(config, SCHEMA)
    assert f"datasets: {name!r} does not match '^[A-Za-z0-9][A-Za-z0-9_.-]*$'" in problems
    assert f"models: {name!r} does not match '^[A-Za-z0-9][A-Za-z0-9_.-]*$'" in problems


def test_the_workflow_checks_a_model_folders_config_json_before_any_job(tmp_path):
    """Regression: a broken config.json of a `folder:` or `train.init` model folder failed inside
    the job, with a raw TypeError, after the earlier stages ran. Refused by the config check: one
    line naming the config key, the file and its key."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model": {"width": "sixteen", "blocks": 2, "heads": ["body"], "in_channels": 3}, "normalize": null}')
    (broken / "weights.pt").write_bytes(b"")
    problems = "model.width: 'sixteen' is not of type 'integer'; normalize: None is not of type 'object'"
    for key, models in (("models.mine.folder", {"mine": {"folder": str(broken)}}), ("models.tuned.train.init", {"tuned": {"train": {"init": str(broken)}}})):
        configfile = tmp_path / "config.yaml"
        configfile.write_text(yaml.safe_dump(dict(copy.deepcopy(CONFIG), models=models)))
        run = snakemake(tmp_path, "-n", "--configfile", str(configfile), "--replace-workflow-config")
        output = run.stdout + run.stderr
        assert run.returncode != 0, output[-2000:]
        assert f"config: {key}: {broken / 'config.json'}: {problems}" in output, output[-2000:]
    assert not (tmp_path / "results").exists()


def test_shares_name_training_datasets_and_sum_to_at_most_one():
    """train.shares (and a model's): names of role: train datasets, fractions summing to at most
    1, and to 1 when every training dataset is named; each problem by key, before any job."""

    def problems(train=None, model=None):
        config = {**CONFIG, "train": {**CONFIG["train"], **(train or {})}, "models": {"resunet": {"train": model} if model else {}}}
        return config_problems(config, SCHEMA)

    assert problems({"shares": {}}) == []
    assert problems({"shares": {"nope": 0.2}}) == [
        "train.shares.nope: 'nope' is not a training dataset (this config has train: sample_train; test: sample_test)"
    ]
    assert problems({"shares": {"sample_train": 0.5}}) == ["train.shares: the shares sum to 0.5; at most 1, and 1 when every training dataset is named"]
    assert problems({"shares": {"sample_train": 1.0}}) == []
    assert problems(model={"shares": {"x": 0.1}}) == [
        "models.resunet.train.shares.x: 'x' is not a training dataset (this config has train: sample_train; test: sample_test)"
    ]
    assert any("train.shares.sample_train: 1.5" in p for p in problems({"shares": {"sample_train": 1.5}}))


def test_a_datasets_pixel_size_is_a_positive_number():
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["datasets"]["sample_test"]["pixel_size"] = 0.325
    assert config_problems(config, SCHEMA) == []
    config["datasets"]["sample_test"]["pixel_size"] = 0
    (problem,) = config_problems(config, SCHEMA)
    assert problem.startswith("datasets.sample_test.pixel_size: 0 is less than or equal to the minimum of 0 (pixel size in micrometres")
