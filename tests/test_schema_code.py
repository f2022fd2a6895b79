"""Allowed values have one home: the schema's enums equal the package's own constants."""

import re

import pytest
import yaml

from nucseg.infer import ENGINES
from nucseg.losses import LOSSES
from nucseg.model import DEVICES, HEADS, PRESETS
from nucseg.nets import SEMANTIC_PRESETS
from nucseg.postprocess import METHODS
from nucseg.preprocess import MODES
from nucseg.sampling import SAMPLING

from .conftest import REPO

SCHEMA = yaml.safe_load((REPO / "config/config.schema.yaml").read_text())


def enum(section: str, key: str) -> list:
    spec = (
        SCHEMA["$defs"][f"{section}_settings"]["properties"][key]
        if f"{section}_settings" in SCHEMA["$defs"]
        else SCHEMA["properties"][section]["properties"][key]
    )
    return spec.get("enum") or spec["items"]["enum"]


@pytest.mark.parametrize(
    "section, key, code",
    [
        ("train", "model", sorted(set(PRESETS) | set(SEMANTIC_PRESETS))),
        ("train", "heads", sorted(HEADS)),
        ("train", "loss", sorted(LOSSES)),
        ("train", "sampling", sorted(SAMPLING)),
        ("train", "device", sorted(DEVICES)),
        ("predict", "engine", sorted(ENGINES)),
        ("predict", "device", sorted(DEVICES)),
        ("segment", "method", sorted(METHODS)),
        ("preprocess", "mode", sorted(MODES)),
    ],
)
def test_schema_enum_equals_the_code(section, key, code):
    assert sorted(enum(section, key)) == code


def test_rule_code_hashes_cover_what_each_adapter_imports():
    """Each rule's rerun trigger follows its adapter's imports (nucseg.imported_modules)."""
    import nucseg

    train = nucseg.imported_modules(REPO / "workflow_scripts/train.py")
    assert {"training", "training.loop", "training.checkpoint", "modelfolder", "model", "augment", "preprocess", "imageio", "tasks"} <= set(train)
    assert "plots" not in train and "qc" not in train  # a curve colour does not retrain
    predict = nucseg.imported_modules(REPO / "workflow_scripts/predict.py")
    assert {"infer", "tiling", "bigimage", "model"} <= set(predict) and "training" not in predict
    assert set(nucseg.imported_modules(REPO / "workflow_scripts/segment.py")) >= {"postprocess", "measure"}
    for rules in (REPO / "rules").glob("*.smk"):
        text = rules.read_text()
        assert "nucseg.code_hash(" not in text, f"{rules.name}: a hand-written module list"
        assert text.count("code=script_code(") == len(re.findall(r"(?m)^(?:rule|checkpoint) ", text)), rules.name


def test_script_code_hash_changes_with_an_imported_module(tmp_path):
    import nucseg

    script = tmp_path / "adapter.py"
    script.write_text("from nucseg.postprocess import segment_dataset\n")
    assert "measure" in nucseg.imported_modules(script)  # through postprocess
    before = nucseg.script_code_hash(script)
    script.write_text("from nucseg.postprocess import segment_dataset\n# a comment\n")
    assert nucseg.script_code_hash(script) != before
