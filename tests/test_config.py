"""The documented defaults are one set: config/config.yaml's values, the schema's defaults (filled
in by the workflow for keys a config leaves out) and the nucseg settings classes' defaults."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from nucseg.config import config_problems
from nucseg.download import DownloadSettings
from nucseg.infer import PredictSettings
from nucseg.postprocess import SegmentSettings
from nucseg.preprocess import PreprocessSettings
from nucseg.train import TrainSettings

from .conftest import REPO

CONFIG = yaml.safe_load((REPO / "config/config.yaml").read_text())
SCHEMA = yaml.safe_load((REPO / "config/config.schema.yaml").read_text())
CLASSES = {"download": DownloadSettings, "preprocess": PreprocessSettings, "train": TrainSettings, "predict": PredictSettings, "segment": SegmentSettings}
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
        assert CONFIG[section][key] == spec["default"] == code[key], f"{section}.{key}: config.yaml {CONFIG[section][key]!r}, schema {spec['default']!r}, {CLASSES[section].__name__} {code[key]!r}"


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
        "models.paper.predict.tiles: unknown key (models.paper.predict takes: tta, tile, margin, device)",
        "segment.min_sise: unknown key (segment takes: threshold, otsu_bounds, min_size, marker_spacing, border_weight)",
        "train.epochs: 'ten' is not of type 'integer' (maximum epochs)",
    ]


def test_config_problems_at_the_top_level():
    assert config_problems({"datasets": {}, "sample": 1}, SCHEMA) == [
        "the config's top level: 'models' is a required property",
        "datasets: {} does not have enough properties (datasets by name)",
        "sample: unknown key (the top level takes: datasets, models, download, preprocess, train, predict, segment)",
    ]
