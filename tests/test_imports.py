"""The package's import graph, walked from the source (function-level imports included): no
circle, and no module reaches up: a stage imports only its own and earlier stages' modules and
the stage-free ones; no stage imports a task (the tasks import the stages), but for the two
kept in :data:`KEPT`, each with its reason."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import nucseg

PACKAGE = Path(nucseg.__file__).parent

#: The stage each stage module belongs to (:data:`nucseg.STAGES` order); a module not named is
#: stage-free (files, logs, config, imageio, tiling ... used by every stage) and may import only
#: stage-free modules itself.
STAGE_OF = {
    "download": "download",
    "datasets": "download",
    "layouts": "download",
    "rle": "download",
    "preprocess": "preprocess",
    "bigimage": "preprocess",
    "augment": "train",
    "losses": "train",
    "sampling": "train",
    "training": "train",
    "training.settings": "train",
    "training.data": "train",
    "training.checkpoint": "train",
    "training.loop": "train",
    "infer": "predict",
    "split": "predict",
    "scale": "predict",
    "int8": "predict",
    "watershed": "predict",  # the probes of predict.scale auto are segmented
    "chunks": "predict",
    "measure": "segment",
    "outputs": "segment",
    "postprocess": "segment",
    "merge": "segment",
    "evaluate": "evaluate",
    "metrics": "evaluate",
    "vscores": "evaluate",
    "report": "aggregate",
    "plots": "figures",
    "qc": "figures",
}
#: Modules above the stages: the task wiring, the command line and what it shares with the
#: napari plugin (segment_one), the plugin, the model-zoo export, the package index.
ABOVE = {"", "cli", "export", "segment_one", "napari", "napari.reader", "napari.widget", "tasks", "tasks.instance", "tasks.semantic"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """The nucseg modules a module imports anywhere in its source (``from nucseg import x`` as ``x``)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "nucseg":
            target = node.module.partition(".")[2]
            found.add(target)
            found.update(f"{target}.{a.name}".strip(".") for a in node.names if f"{target}.{a.name}".strip(".") in MODULES)
        elif isinstance(node, ast.Import):
            found.update(a.name.partition(".")[2] for a in node.names if a.name.startswith("nucseg."))
    return {m for m in found if m in MODULES and m != name}


def test_every_module_is_placed():
    unplaced = set(MODULES) - set(STAGE_OF) - ABOVE - STAGE_FREE
    assert not unplaced, f"add these modules to STAGE_OF, ABOVE or STAGE_FREE: {sorted(unplaced)}"


#: Modules every stage may use; they import only each other.
STAGE_FREE = {
    "calibration",
    "classmaps",
    "columns",
    "config",
    "files",
    "imageio",
    "logs",
    "model",
    "modelfolder",
    "nets",
    "nets.resunet",
    "nets.semantic",
    "sizes",
    "tiling",
}


def test_no_import_circle():
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for other in sorted(imports(name)):
            if state.get(other) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(other) :] + [name, other]))
            if other not in state:
                visit(other, path + [name])
        state[name] = 2

    for name in MODULES:
        if name not in state:
            visit(name, [])


#: The upward imports kept, with the reason.
KEPT = {
    ("training.loop", "tasks"): "train_model is given a task; without one (the tests, the benchmarks) it builds the instance task",
    ("training.checkpoint", "tasks"): "checkpoint_identity records the task; without one it takes the instance task",
    ("training.data", "tasks"): "for the annotations only (if TYPE_CHECKING): the sampler asks the task for its weights",
    ("training.loop", "plots"): "the model folder's curves.png is drawn as training ends; plots is no rerun trigger of train (nucseg.EXCLUDED_BEFORE)",
}


@pytest.mark.parametrize("name", sorted(set(STAGE_OF) | STAGE_FREE))
def test_no_module_reaches_up(name):
    """A stage module imports no later stage and no task; a stage-free module no stage."""
    order = {stage: k for k, stage in enumerate(nucseg.STAGES)}
    for other in imports(name) - {b for a, b in KEPT if a == name}:
        assert other not in ABOVE, f"{name} imports {other}, which is above the stages"
        if name in STAGE_FREE:
            assert other in STAGE_FREE, f"{name} (stage-free) imports {other} (stage {STAGE_OF.get(other)})"
        elif other in STAGE_OF:
            assert order[STAGE_OF[other]] <= order[STAGE_OF[name]], f"{name} (stage {STAGE_OF[name]}) imports {other}, of the later stage {STAGE_OF[other]}"
