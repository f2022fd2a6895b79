"""nucseg: nucleus instance segmentation, from a dataset archive to result tables.

Each stage of the Snakemake workflow calls one function of this package:

================  ==========================  ========================================
stage             module                      function
================  ==========================  ========================================
download          :mod:`nucseg.datasets`      :func:`~nucseg.datasets.download_dataset`
preprocess        :mod:`nucseg.preprocess`    :func:`~nucseg.preprocess.preprocess_training`,
                                              :func:`~nucseg.preprocess.preprocess_fullsize`
train             :mod:`nucseg.train`         :func:`~nucseg.train.train_model`
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
import hashlib
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

__version__ = "0.1.0"

#: The pretrained model folder shipped inside the package (weights.pt, config.json and
#: MODEL_CARD.md: what it was trained on, how, and how well it scores per modality).
#: ``nucseg segment`` uses it when no ``--model`` is given; a workflow model entry
#: ``{folder: pretrained}`` uses it instead of training one.
PRETRAINED_MODEL = str(resources.files(__name__) / "pretrained")


def imported_modules(source: str | os.PathLike) -> list[str]:
    """The ``nucseg`` modules a Python file uses, directly or through each other.

    Follows every ``import nucseg.x`` / ``from nucseg.x import ...`` / ``from nucseg import x``
    of the file (at any depth, function bodies included) and then the module-level imports of
    those modules, to the closure. A package module imports what shapes its results at module
    level; a function-level import loads an optional library or code another task needs, and
    is not followed (so that, say, a QC colour does not retrain a model). Returns module names relative to the package (``"train"``,
    ``"tasks.semantic"``), sorted. The workflow hashes them (:func:`code_hash`) so that a rule
    reruns when any code its adapter script runs changes, without a hand-written list that can
    go stale.
    """
    package = Path(resources.files(__name__))
    seen: set[str] = set()
    todo = list(_nucseg_imports(Path(source).read_text(), package))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_nucseg_imports(_module_path(package, name).read_text(), package, name))
    return sorted(seen)


def _module_path(package: Path, name: str) -> Path:
    base = package.joinpath(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _nucseg_imports(text: str, package: Path, current: str | None = None) -> set[str]:
    """Modules of the package imported by source ``text`` (``current``: its own module name,
    for relative imports)."""
    found: set[str] = set()

    def add(dotted: str) -> None:
        # the longest prefix that is a module or subpackage of nucseg
        parts = dotted.split(".")
        for k in range(len(parts), 0, -1):
            name = ".".join(parts[:k])
            if _module_path(package, name).is_file():
                found.add(name)
                return

    tree = ast.parse(text)
    # a script: every import, at any depth; a module of the package: its module-level imports
    # (function-level imports load optional heavy libraries or another task's code on demand)
    nodes = ast.walk(tree) if current is None else _module_level(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(f"{__name__}."):
                    add(alias.name[len(__name__) + 1 :])
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                base = (current or "").split(".")[: -node.level] if current else []
                module = ".".join(base + ([node.module] if node.module else []))
            elif node.module == __name__:
                module = ""
            elif node.module and node.module.startswith(f"{__name__}."):
                module = node.module[len(__name__) + 1 :]
            else:
                continue
            for alias in node.names:
                candidate = f"{module}.{alias.name}" if module else alias.name
                if _module_path(package, candidate).is_file():
                    found.add(candidate)
                elif module:
                    add(module)
    return found


def _module_level(tree: ast.Module) -> Iterator[ast.AST]:
    """The statements of a module outside functions and classes (inside if/try blocks too)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            todo.extend(node.body + node.orelse + getattr(node, "finalbody", []) + [s for h in getattr(node, "handlers", []) for s in h.body])


def script_code_hash(script: str | os.PathLike) -> str:
    """:func:`code_hash` of every ``nucseg`` module ``script`` uses (:func:`imported_modules`)
    and of the script itself: the code that decides a rule's output."""
    digest = hashlib.sha256(code_hash(*imported_modules(script)).encode())
    digest.update(Path(script).read_bytes())
    return digest.hexdigest()[:12]


def code_hash(*modules: str) -> str:
    """Short hash of the source of the named ``nucseg`` modules.

    The workflow passes it to each rule as a ``param``, so that Snakemake reruns
    a stage when the code it calls changes, and only then.

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
    package = resources.files(__name__)
    for name in sorted(set(modules)):
        source = _module_path(Path(package), name.replace("/", "."))
        if not source.is_file():
            raise ValueError(f"nucseg has no module {name!r} (looked for {source})")
        digest.update(name.encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:12]
