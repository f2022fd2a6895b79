"""Rerun triggers follow every import: an edit of any nucseg module reruns exactly the rules that
run it (nucseg.imported_modules, nucseg.EXCLUDED_BEFORE).

Regression tests for issue 21: the code hash followed module-level imports only, so editing
the losses (imported inside a task's method) retrained nothing, the task adapters hashed only
``logs`` and ``tasks``, segment missed ``outputs``, predict ``nets``, preprocess ``rle``; the
report's rules reran on every metrics edit (a column list), and the checkpoint identity was a
second hand-written list without ``preprocess``.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

import nucseg
from nucseg.training import training_code

from .conftest import REPO
from .test_reruns import job_reasons

ADAPTERS = sorted((REPO / "workflow_scripts").glob("*.py"))
PACKAGE = REPO / "nucseg"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}  # "" is the package itself


def imports(path: Path, module_level_only: bool = False) -> set[str]:
    """The package modules a file imports, read here independently of nucseg's own walk: every
    import statement (or those outside functions and classes), with the packages above each."""
    current = module_name(path) if path.is_relative_to(PACKAGE) else None
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if not module_level_only else _outside_functions(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            own = current.split(".") if path.name == "__init__.py" else current.split(".")[:-1]
            base = ".".join(own[: len(own) - node.level + 1] + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{alias.name}".strip(".") for alias in node.names]
            names = [f"nucseg.{name}" if name else "nucseg" for name in names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "nucseg":
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != "nucseg":
                continue
            found.update(".".join(parts[1:k]) for k in range(2, len(parts) + 1) if ".".join(parts[1:k]) in MODULES)
    return found


def _outside_functions(tree: ast.Module):
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def reach(script: Path, cut: set[str] = frozenset(), module_level_only: bool = False) -> set[str]:
    """The modules a script reaches, not passing through those in ``cut``."""
    seen: set[str] = set()
    todo = [name for name in imports(script, module_level_only) if name not in cut]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(other for other in imports(MODULES[name], module_level_only) if other not in cut)
    return seen


@pytest.mark.parametrize("script", ADAPTERS, ids=lambda path: path.stem)
def test_every_reachable_module_is_hashed_or_excluded(script):
    """A rule hashes every module its adapter's imports reach (function-level ones included),
    except the modules the exclusion table names for its stage and those reached only through
    them; it hashes nothing else."""
    stage = nucseg.rule_stage(script)
    excluded = nucseg.excluded_modules(stage)
    hashed = set(nucseg.imported_modules(script))
    assert set(nucseg.reachable_modules(script)) == reach(script)
    assert hashed == reach(script, cut=excluded)
    neither = reach(script) - hashed - excluded
    assert not neither & reach(script, cut=excluded), f"{script.name}: reached, neither hashed nor excluded: {sorted(neither)}"


@pytest.mark.parametrize("script", ADAPTERS, ids=lambda path: path.stem)
def test_what_a_rule_imports_at_module_level_is_never_excluded(script):
    """The exclusions only cut imports made inside functions (the task's methods for other
    stages, train's curves picture): what the adapter loads, it hashes (the logging set-up aside)."""
    never = {name for name, stage in nucseg.EXCLUDED_BEFORE.items() if stage is None}
    assert reach(script, module_level_only=True) - never <= set(nucseg.imported_modules(script))


def test_the_exclusion_table_has_no_stale_entry():
    """Every entry leaves out a module some rule reaches, for a stage of the workflow; every rule
    of the workflow has its stage and an adapter."""
    assert set(nucseg.RULE_STAGES.values()) <= set(nucseg.STAGES)
    for module, stage in nucseg.EXCLUDED_BEFORE.items():
        assert module in MODULES and (stage is None or stage in nucseg.STAGES), module
        assert any(module in reach(s) and module not in nucseg.imported_modules(s) for s in ADAPTERS), f"{module}: excluded from no rule"
    rules = {name for path in (REPO / "rules").glob("*.smk") for name in re.findall(r"(?m)^(?:rule|checkpoint) (\w+):", path.read_text())} - {"all"}
    assert rules == set(nucseg.RULE_STAGES)
    assert {path.stem for path in ADAPTERS} == rules


@pytest.mark.parametrize(
    "script, hashed, not_hashed",
    [
        # a loss, a task, the networks of the semantic task retrain; a plot or a QC colour does not
        ("train", {"losses", "tasks", "tasks.instance", "tasks.semantic", "nets", "preprocess", "augment"}, {"plots", "qc", "postprocess", "metrics", "logs"}),
        # the task adapters run the task's method (and what the task imports for their stage)
        ("segment", {"tasks", "tasks.instance", "tasks.semantic", "postprocess", "measure", "outputs", "merge"}, {"metrics", "evaluate", "plots", "training"}),
        ("predict", {"infer", "model", "modelfolder", "nets", "tiling", "bigimage"}, {"training", "losses"}),
        # the class maps (a leaf since the semantic task's module moved out of preprocess's reach)
        ("preprocess_test", {"preprocess", "datasets", "rle", "classmaps"}, {"model", "nets", "evaluate", "plots", "tasks.semantic"}),
        ("download", {"datasets", "download", "rle"}, {"preprocess", "model"}),
        ("evaluate", {"tasks.instance", "tasks.semantic", "evaluate", "metrics"}, {"report", "plots", "qc"}),
        ("qc", {"tasks.instance", "tasks.semantic", "qc", "plots"}, set()),
        ("plots", {"tasks.instance", "tasks.semantic", "plots", "report"}, set()),
        # the report's rules read a column list, not the metrics
        ("training_curves", {"plots", "report", "columns"}, {"metrics", "evaluate"}),
        ("image_tables", {"report", "columns"}, {"metrics", "evaluate"}),
        ("aggregate", {"report", "columns"}, {"metrics", "evaluate"}),
    ],
)
def test_the_triggers_that_were_missed_or_extra(script, hashed, not_hashed):
    modules = set(nucseg.imported_modules(REPO / "workflow_scripts" / f"{script}.py"))
    assert hashed <= modules and not modules & not_hashed, sorted(modules)


def test_the_checkpoint_identity_hashes_the_train_rules_modules():
    """A checkpoint is resumed only by the code the train rule would rerun for: one derivation."""
    assert training_code() == nucseg.imported_modules(REPO / "workflow_scripts/train.py")
    assert "preprocess" in training_code()


def test_a_module_is_read_once_however_many_rules_reach_it(monkeypatch):
    """The workflow derives a dozen rules' triggers at every start (the no-op rerun's time): each
    file is parsed once and hashed once per process, not once per rule."""
    reads = []
    real = Path.read_bytes

    def counting(path):
        reads.append(str(path))
        return real(path)

    nucseg._cached_imports.cache_clear()
    nucseg._file_digest.cache_clear()
    monkeypatch.setattr(Path, "read_bytes", counting)
    for script in ADAPTERS:
        nucseg.script_code_hash(script)
    package_reads = [path for path in reads if Path(path).is_relative_to(PACKAGE)]
    assert package_reads.count(str(PACKAGE / "imageio.py")) == 2  # parsed once, hashed once
    assert max(package_reads.count(path) for path in package_reads) == 2


# -- the same, through Snakemake: dry runs against recorded params, on a copy of the workflow ---


def workflow_copy(root: Path) -> Path:
    """The workflow and the package, copied to ``root`` (to be edited)."""
    root.mkdir()
    for name in ("Snakefile", "rules", "workflow_scripts", "config", "nucseg", "resources", "report", "envs"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, root / name)
    return root


def run_copy(copy: Path, workdir: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(copy)}
    command = [sys.executable, "-m", "snakemake", "-s", str(copy / "Snakefile"), "--directory", str(workdir), "--cores", "1", *args]
    # run in the copy: `python -m` puts the working directory first on the path, before PYTHONPATH
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=copy, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


def recorded_run(copy: Path, workdir: Path, config: list[str]) -> None:
    """A finished run without running anything: each output made empty (a CSV with a header
    only: the end of a run prints the summary), then ``--touch --forceall``, which records every
    job's params as a real run would."""
    summary = run_copy(copy, workdir, "--summary", *config)
    for line in summary.splitlines()[1:]:
        if "\t" not in line:
            continue
        path = workdir / line.split("\t")[0]
        if path.suffix in ("", ".zarr"):  # the directory() outputs: datasets, models, stores, folders
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("model,dataset\n" if path.suffix == ".csv" else "")
    run_copy(copy, workdir, "--touch", "--forceall", *config)
    assert "Nothing to be done" in run_copy(copy, workdir, "--dry-run", *config)


def semantic_config(root: Path) -> list[str]:
    archive = root / "semantic.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images/001.png", b"")  # never read: the dry runs only compare params
    config = {
        "task": "semantic",
        "classes": {"background": 0, "nucleus": 1},
        "datasets": {
            "sem_train": {"source": str(archive), "layout": "semantic", "role": "train"},
            "sem_test": {"source": str(archive), "layout": "semantic", "role": "test"},
        },
        "models": {"unet": {"train": {"model": "unet"}}},
    }
    path = root / "semantic.yaml"
    path.write_text(yaml.safe_dump(config))
    return ["--configfile", str(path), "--replace-workflow-config"]


def adapter(rule: str) -> Path:
    """The adapter a rule runs (one per rule, whatever the task)."""
    return REPO / "workflow_scripts" / f"{rule}.py"


def params_changed(summary: str) -> set[str]:
    """The rules of ``snakemake --summary`` whose outputs have changed params. (A dry run's job
    reasons would not do: Snakemake compares the params only of the jobs whose inputs are not
    rerun anyway, so the rules after the first one that reruns would not show theirs.)"""
    rows = [line.split("\t") for line in summary.splitlines() if line.count("\t") >= 4]
    return {row[2] for row in rows[1:] if row[4] == "params changed"}


@pytest.mark.slow
@pytest.mark.parametrize("task", ["instance", "semantic"])
def test_editing_a_module_reruns_exactly_the_rules_that_run_it(tmp_path, task):
    """For every module of the package: append a comment in a copy and compare the rules whose
    params changed (the code hash) with those whose adapter reaches the module and hashes it."""
    copy = workflow_copy(tmp_path / "copy")
    config = semantic_config(tmp_path) if task == "semantic" else []
    workdir = tmp_path / "run"
    recorded_run(copy, workdir, config)
    summary = run_copy(copy, workdir, "--summary", *config)
    assert params_changed(summary) == set()
    # the rules this config runs (the split rules run only with split.region: tests/test_workflow_split.py)
    in_dag = {line.split("\t")[2] for line in summary.splitlines()[1:] if line.count("\t") >= 4}
    assert {"predict", "segment"} <= in_dag
    failures = []
    for module, path in MODULES.items():
        edited = copy / path.relative_to(REPO)
        original = edited.read_text()
        edited.write_text(original + "\n# an edit\n")
        try:
            rerun = params_changed(run_copy(copy, workdir, "--summary", *config))
        finally:
            edited.write_text(original)
        expected = {rule for rule in nucseg.RULE_STAGES if rule in in_dag and module in nucseg.imported_modules(adapter(rule))}
        if rerun != expected:
            failures.append(f"{module or 'nucseg'}: reran {sorted(rerun)}, expected {sorted(expected)}")
    assert not failures, "\n".join(failures)
    # and the dry run agrees for one: a loss edit retrains (and reruns what follows), a plot edit does not
    for module, first in (("losses", "train"), ("plots", "plots")):
        edited = copy / "nucseg" / f"{module}.py"
        original = edited.read_text()
        edited.write_text(original + "\n# an edit\n")
        try:
            reasons = job_reasons(run_copy(copy, workdir, "--dry-run", *config))
        finally:
            edited.write_text(original)
        assert "Params have changed since last execution" in reasons[first], reasons
        if module == "plots":
            assert "train" not in reasons, reasons
    assert "Nothing to be done" in run_copy(copy, workdir, "--dry-run", *config)


def test_the_region_predicts_rerun_on_no_segment_edit():
    """A split image's region jobs follow the stages: predict_region and the plan hash the predict
    stage's code, not the watershed's files and tables; the region segments and the merge hash both."""
    segment_side = {"postprocess", "measure", "outputs", "merge"}
    for rule in ("plan_regions", "predict_region"):
        hashed = set(nucseg.imported_modules(adapter(rule)))
        assert {"split", "infer", "tiling"} <= hashed and not hashed & segment_side, (rule, sorted(hashed))
    for rule in ("region_statistics", "segment_region", "merge_regions"):
        hashed = set(nucseg.imported_modules(adapter(rule)))
        assert {"merge", "split", "chunks", "watershed", "postprocess"} <= hashed and "evaluate" not in hashed, (rule, sorted(hashed))


def test_parsing_the_instance_workflow_imports_no_torch():
    """Every Snakemake start (a no-op rerun, each cluster job) parses the workflow: what
    rules/common.smk imports there stays light (torch took 2 s of a 4-7 s no-op rerun)."""
    code = (
        "import sys, nucseg, nucseg.tasks, nucseg.config\n"
        "nucseg.tasks.make_task('instance').plots\n"
        "[nucseg.script_code_hash(p) for p in sys.argv[1:]]\n"
        "heavy = sorted({'torch', 'zarr', 'skimage'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code, *map(str, ADAPTERS)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
