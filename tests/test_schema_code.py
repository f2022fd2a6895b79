"""Allowed values have one home: the schema's enums equal the package's own constants."""

import pytest
import yaml

from nucseg.infer import ENGINES
from nucseg.losses import LOSSES
from nucseg.model import DEVICES, HEADS, PRESETS
from nucseg.nets import SEMANTIC_PRESETS
from nucseg.postprocess import METHODS
from nucseg.preprocess import MODES
from nucseg.train import SAMPLING

from .conftest import REPO

SCHEMA = yaml.safe_load((REPO / "config/config.schema.yaml").read_text())


def enum(section: str, key: str) -> list:
    spec = SCHEMA["$defs"][f"{section}_settings"]["properties"][key] if f"{section}_settings" in SCHEMA["$defs"] else SCHEMA["properties"][section]["properties"][key]
    return spec.get("enum") or spec["items"]["enum"]


@pytest.mark.parametrize("section, key, code", [
    ("train", "model", sorted(set(PRESETS) | set(SEMANTIC_PRESETS))),
    ("train", "heads", sorted(HEADS)),
    ("train", "loss", sorted(LOSSES)),
    ("train", "sampling", sorted(SAMPLING)),
    ("train", "device", sorted(DEVICES)),
    ("predict", "engine", sorted(ENGINES)),
    ("predict", "device", sorted(DEVICES)),
    ("segment", "method", sorted(METHODS)),
    ("preprocess", "mode", sorted(MODES)),
])
def test_schema_enum_equals_the_code(section, key, code):
    assert sorted(enum(section, key)) == code
