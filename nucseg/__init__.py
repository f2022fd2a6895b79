"""nucseg: nucleus instance segmentation, from a dataset archive to result tables.

Each stage of the Snakemake workflow calls one function of this package:

================  ==========================  ========================================
stage             module                      function
================  ==========================  ========================================
download          :mod:`nucseg.datasets`      :func:`~nucseg.datasets.download_dataset`
preprocess        :mod:`nucseg.preprocess`    :func:`~nucseg.preprocess.preprocess_training`,
                                              :func:`~nucseg.preprocess.preprocess_fullsize`
train             :mod:`nucseg.training`      :func:`~nucseg.training.train_model`
predict           :mod:`nucseg.infer`         :func:`~nucseg.infer.predict_dataset`
segment           :mod:`nucseg.postprocess`   :func:`~nucseg.postprocess.segment_dataset`
evaluate          :mod:`nucseg.evaluate`      :func:`~nucseg.evaluate.evaluate_dataset`
aggregate         :mod:`nucseg.report`        :func:`~nucseg.report.aggregate`
plots             :mod:`nucseg.plots`         :func:`~nucseg.plots.plot_results`
training_curves   :mod:`nucseg.plots`         :func:`~nucseg.plots.copy_training_curves`
qc                :mod:`nucseg.qc`            :func:`~nucseg.qc.qc_pictures`
================  ==========================  ========================================
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

__version__ = "0.1.0"

# The model folder is resolved in one place (nucseg.modelfolder); its names are the package's too
from nucseg.modelfolder import PRETRAINED_MODEL as PRETRAINED_MODEL  # noqa: E402
from nucseg.modelfolder import model_folder as model_folder  # noqa: E402

#: The workflow's stages in data-flow order: a stage's results are made from the code and the
#: results of the stages before it, never from those after it.
STAGES = ("download", "preprocess", "train", "predict", "segment", "evaluate", "aggregate", "figures")

#: The stage of each rule of the workflow, by name; its adapter is ``workflow_scripts/<rule>.py``.
#: An adapter not named here is taken as of the last stage: every module it reaches is one of its
#: rerun triggers.
RULE_STAGES = {
    "download": "download",
    "preprocess_train": "preprocess",
    "preprocess_test": "preprocess",
    "train": "train",
    "predict": "predict",
    "segment": "segment",
    "plan_regions": "predict",
    "predict_region": "predict",
    "region_statistics": "segment",
    "segment_region": "segment",
    "merge_regions": "segment",
    "evaluate": "evaluate",
    "aggregate": "aggregate",
    "image_tables": "aggregate",
    "plots": "figures",
    "qc": "figures",
    "training_curves": "figures",
}

#: The one exclusion from the rerun triggers: modules that a rule's imports reach but whose edits
#: cannot change that rule's results, each with the first stage whose rules they do rerun. They
#: make a later stage's results, and an earlier rule reaches them only through imports inside
#: functions it never runs for its results: the task classes (:mod:`nucseg.tasks`) import each
#: stage's step inside that stage's method (segment, evaluate, qc, plot), so the train rule
#: reaches the watershed and the metrics; and train draws
#: ``curves.png`` with :mod:`nucseg.plots`, a picture that is no reason to retrain (nor is a QC
#: colour). ``None``: no rule's results (where the log lines go). A rule neither hashes an
#: excluded module nor follows its imports. Every module not named here is a trigger of every
#: rule that reaches it, so a new module or import is a trigger until it is named here
#: (tests/test_rerun_triggers.py checks this against the imports and against dry runs).
EXCLUDED_BEFORE: dict[str, str | None] = {
    "logs": None,
    "postprocess": "segment",
    "measure": "segment",
    "outputs": "segment",
    "evaluate": "evaluate",
    "metrics": "evaluate",
    "report": "aggregate",
    "plots": "figures",
    "qc": "figures",
}


def rule_stage(script: str | os.PathLike) -> str:
    """The stage of the rule whose adapter is ``script`` (:data:`RULE_STAGES`; the last stage
    for a script that is no rule's adapter)."""
    return RULE_STAGES.get(Path(script).stem, STAGES[-1])


def excluded_modules(stage: str) -> set[str]:
    """The modules that rules of ``stage`` do not hash (:data:`EXCLUDED_BEFORE`)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; the stages are {list(STAGES)}")
    order = STAGES.index(stage)
    return {name for name, first in EXCLUDED_BEFORE.items() if first is None or STAGES.index(first) > order}


def imported_modules(source: str | os.PathLike, stage: str | None = None) -> list[str]:
    """The ``nucseg`` modules that are the rerun triggers of a rule whose adapter is ``source``.

    Follows every import of the script and of each package module it reaches, to the closure:
    ``import nucseg.x``, ``from nucseg.x import ...``, ``from nucseg import x`` and relative
    imports, at module level and inside functions alike (``if TYPE_CHECKING:`` blocks, which
    never run, aside), and the packages a module lies in (importing ``nucseg.tasks.semantic``
    runs ``nucseg/tasks/__init__.py``). The modules :data:`EXCLUDED_BEFORE` names for the rule's
    ``stage`` (by default :func:`rule_stage` of the script's name) are left out and not
    followed. Returns module names relative to the package (``"train"``, ``"tasks.semantic"``),
    sorted. The workflow hashes them (:func:`script_code_hash`), so that a rule reruns when any
    code it runs changes, without a hand-written list that can go stale.
    """
    excluded = excluded_modules(stage or rule_stage(source))
    return sorted(_closure(_imports_of(Path(source), None), excluded))


def reachable_modules(source: str | os.PathLike) -> list[str]:
    """Every ``nucseg`` module the imports of ``source`` reach, nothing excluded, sorted."""
    return sorted(_closure(_imports_of(Path(source), None), set()))


def stage_modules(*modules: str, stage: str) -> list[str]:
    """The modules that ``modules`` and everything they import reach, as :func:`imported_modules`
    derives them for a rule of ``stage`` (the train stage's checkpoint identity, for one)."""
    return sorted(_closure(set(modules), excluded_modules(stage)))


def _closure(names: set[str], excluded: set[str]) -> set[str]:
    package = _package()
    seen: set[str] = set()
    todo = [name for name in names if name not in excluded]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(other for other in _imports_of(_module_path(package, name), name) if other not in excluded)
    return seen


def _package() -> Path:
    return Path(resources.files(__name__))


def _module_path(package: Path, name: str) -> Path:
    base = package.joinpath(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _imports_of(path: Path, current: str | None) -> set[str]:
    """The package modules the file ``path`` imports (``current``: its module name, None for a
    script outside the package). Read once per version of the file in a process: a workflow
    parses each module once however many rules reach it."""
    stat = path.stat()
    return set(_cached_imports(str(path), stat.st_mtime_ns, stat.st_size, current))


@functools.lru_cache(maxsize=None)
def _cached_imports(path: str, mtime_ns: int, size: int, current: str | None) -> frozenset[str]:
    package = _package()
    is_package = Path(path).name == "__init__.py"
    found: set[str] = set()

    def add(dotted: str) -> None:
        # the longest prefix that is a module or subpackage of nucseg, and the packages above it
        parts = dotted.split(".")
        for k in range(len(parts), 0, -1):
            if _module_path(package, ".".join(parts[:k])).is_file():
                found.update(".".join(parts[:j]) for j in range(1, k + 1))
                return

    for node in _runnable_nodes(ast.parse(Path(path).read_bytes(), path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(f"{__name__}."):
                    add(alias.name[len(__name__) + 1 :])
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y / from .. import z
                if current is None:
                    continue
                own = current.split(".") if is_package else current.split(".")[:-1]
                base = own[: len(own) - (node.level - 1)] if node.level - 1 <= len(own) else []
                module = ".".join(base + ([node.module] if node.module else []))
            elif node.module == __name__:
                module = ""
            elif node.module and node.module.startswith(f"{__name__}."):
                module = node.module[len(__name__) + 1 :]
            else:
                continue
            if module:
                add(module)
            for alias in node.names:
                candidate = f"{module}.{alias.name}" if module else alias.name
                if _module_path(package, candidate).is_file():
                    add(candidate)
    return frozenset(found)


def _runnable_nodes(tree: ast.Module) -> Iterator[ast.AST]:
    """Every node of a module, at any depth, except those of ``if TYPE_CHECKING:`` blocks."""
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def script_code_hash(script: str | os.PathLike) -> str:
    """:func:`code_hash` of every ``nucseg`` module that is a trigger of the rule whose adapter
    is ``script`` (:func:`imported_modules`), and of the script itself: the code that decides
    the rule's output."""
    digest = hashlib.sha256(code_hash(*imported_modules(script)).encode())
    digest.update(Path(script).read_bytes())
    return digest.hexdigest()[:12]


def code_hash(*modules: str) -> str:
    """Short hash of the source of the named ``nucseg`` modules.

    The workflow passes it to each rule as a ``param``, so that Snakemake reruns
    a stage when the code it calls changes, and only then. Each file is read and hashed
    once per version in a process (a workflow's rules share most of their modules).

    Parameters
    ----------
    *modules : str
        Module names inside the package, e.g. ``"postprocess"``.

    Returns
    -------
    str
        12 hexadecimal characters.
    """
    digest = hashlib.sha256(__version__.encode())
    package = _package()
    for name in sorted(set(modules)):
        source = _module_path(package, name.replace("/", "."))
        if not source.is_file():
            raise ValueError(f"nucseg has no module {name!r} (looked for {source})")
        stat = source.stat()
        digest.update(name.encode())
        digest.update(_file_digest(str(source), stat.st_mtime_ns, stat.st_size))
    return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=None)
def _file_digest(path: str, mtime_ns: int, size: int) -> bytes:
    return hashlib.sha256(Path(path).read_bytes()).digest()
