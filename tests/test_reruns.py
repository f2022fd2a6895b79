"""Reruns follow exactly what changed: dry runs on the finished sample run, and the lint.

Every rule passes the settings it uses and a hash of the nucseg code it calls as ``params``,
so Snakemake's default rerun triggers (``params`` among them) schedule exactly the rules whose
settings changed, and everything downstream of them. These tests only dry-run (``-n``) on the
session's sample run: its results are never changed.
"""

from __future__ import annotations

import re

import pytest
import yaml

from .conftest import REPO, snakemake

UPSTREAM_OF_TRAIN = {"download", "preprocess_train", "preprocess_test"}


def scheduled_rules(output: str) -> dict[str, int]:
    """The "Job stats" table of a dry run as {rule: count}, without the target rule ``all``.

    Empty when Snakemake says there is nothing to be done.
    """
    if "Nothing to be done" in output:
        return {}
    table = re.search(r"^Job stats:\n.*?\n-+ +-+\n(.*?)^total +\d+", output, re.DOTALL | re.MULTILINE)
    assert table, f"no job table in the dry run's output:\n{output[-3000:]}"
    rows = (line.split() for line in table.group(1).splitlines() if line.strip())
    return {name: int(count) for name, count in rows if name != "all"}


def job_reasons(output: str) -> dict[str, str]:
    """{rule: reason} of the jobs a dry run lists."""
    return dict(re.findall(r"^\s*rule (\w+):\n(?:\s+\w+: .*\n)*?\s+reason: (.*)$", output, re.MULTILINE))


def rule_graph_edges(dot: str) -> set[tuple[str, str]]:
    """(rule, rule that reads its output) pairs of ``snakemake --rulegraph`` (dot)."""
    names = dict(re.findall(r"^\s*(\d+)\[label = \"(\w+)\"", dot, re.MULTILINE))
    return {(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.MULTILINE)}


@pytest.fixture(scope="module")
def downstream(sample_run):
    """``downstream(rule)``: the rule and every rule that reads its outputs, directly or not
    (from the workflow's rule graph, target rule ``all`` left out)."""
    result = snakemake(sample_run[0], "--rulegraph")
    assert result.returncode == 0, result.stderr[-3000:]
    edges = rule_graph_edges(result.stdout)
    assert edges, result.stdout

    def closure(rule: str) -> set[str]:
        found, todo = {rule}, [rule]
        while todo:
            current = todo.pop()
            for a, b in edges:
                if a == current and b not in found:
                    found.add(b)
                    todo.append(b)
        return found - {"all"}

    return closure


def dry_run(workdir, *config: str) -> tuple[dict[str, int], str]:
    args = ["--cores", "2", "--dry-run"] + (["--config", *config] if config else [])
    result = snakemake(workdir, *args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return scheduled_rules(output), output


def test_job_table_is_parsed():
    output = "Job stats:\njob          count\n---------  -------\nsegment          1\nevaluate         2\nall              1\ntotal            4\n\nReasons:"
    assert scheduled_rules(output) == {"segment": 1, "evaluate": 2}
    assert scheduled_rules("Nothing to be done (all requested files are present and up to date).") == {}
    dot = 'digraph {\n\t0[label = "all", color = "0.1"];\n\t1[label = "segment", color = "0.2"];\n\t2[label = "evaluate"];\n\t1 -> 2\n\t2 -> 0\n}'
    assert rule_graph_edges(dot) == {("segment", "evaluate"), ("evaluate", "all")}
    jobs = "rule segment:\n    input: a\n    output: b\n    reason: Params have changed since last execution: x\n    wildcards: m=1\n\nrule evaluate:\n    reason: Input files updated by another job: b\n"  # noqa: E501 (Snakemake's output, verbatim)
    assert job_reasons(jobs) == {"segment": "Params have changed since last execution: x", "evaluate": "Input files updated by another job: b"}


@pytest.mark.parametrize(
    "override, changed, named",
    [
        pytest.param(None, None, set(), id="nothing-changed"),
        pytest.param("segment={min_size: 20}", "segment", {"segment", "evaluate", "aggregate"}, id="segment-setting"),
        pytest.param("segment={threshold: 0.5}", "segment", {"segment", "evaluate", "aggregate"}, id="segment-threshold"),
        pytest.param("predict={tta: true}", "predict", {"predict", "segment", "evaluate", "aggregate"}, id="predict-setting"),
        pytest.param("train={epochs: 14}", "train", {"train", "predict", "segment", "evaluate", "aggregate"}, id="train-setting"),
        pytest.param("train={learning_rate: 0.002}", "train", {"train", "predict", "segment", "evaluate", "aggregate"}, id="train-learning-rate"),
        pytest.param(
            "preprocess={val_fraction: 0.2}",
            "preprocess_train",
            {"preprocess_train", "train", "predict", "segment", "evaluate", "aggregate"},
            id="preprocess-setting",
        ),
    ],
)
def test_a_changed_setting_schedules_its_stage_and_what_follows_only(sample_run, downstream, override, changed, named):
    """Exactly the changed stage and the rules downstream of it in the rule graph (the
    issue's stages by name; report rules after them come along, nothing before them)."""
    scheduled, output = dry_run(sample_run[0], *([override] if override else []))
    expected = downstream(changed) if changed else set()
    assert named <= expected
    assert set(scheduled) == expected, output[-3000:]
    if changed in ("train", "segment", "predict"):
        assert not UPSTREAM_OF_TRAIN & set(scheduled)
    # one model and one test dataset: one job per scheduled rule
    assert all(count == 1 for count in scheduled.values()), scheduled
    # the stage whose setting changed reruns because of its params; the ones after it because
    # their input is recomputed, not because a setting of theirs changed
    for rule, reason in job_reasons(output).items():
        assert reason.startswith("Params have changed since last execution") == (rule == changed), (rule, reason)


def test_restating_a_setting_at_its_current_value_schedules_nothing(sample_run):
    min_size = yaml.safe_load((REPO / "config/config.yaml").read_text())["segment"]["min_size"]
    scheduled, output = dry_run(sample_run[0], f"segment={{min_size: {min_size}}}")
    assert scheduled == {}, output[-3000:]


@pytest.mark.parametrize("override", ["download={retries: 1}", "download={timeout: 5, backoff: 0.5}"])
def test_a_download_setting_schedules_nothing(sample_run, override):
    """Retries, back-off and timeout cannot change the files: no stage reruns for them."""
    scheduled, output = dry_run(sample_run[0], override)
    assert scheduled == {}, output[-3000:]


def test_leaving_out_keys_at_their_defaults_schedules_nothing(sample_run, tmp_path):
    """A config of its own (--replace-workflow-config) that leaves out keys, or whole settings
    sections, means their documented defaults: the same params as the shipped config."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for section in ("download", "predict"):
        del config[section]
    del config["segment"]["min_size"], config["train"]["epochs"]
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(sample_run[0], "--cores", "2", "--dry-run", "--configfile", str(path), "--replace-workflow-config")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert scheduled_rules(output) == {}, output[-3000:]


def test_a_noop_rerun_does_nothing(sample_run):
    """A real rerun of the finished workflow runs no job (its time is a benchmark figure:
    benchmarks/bench_noop_rerun.py, BENCHMARKS.md; never timed in a test)."""
    workdir = sample_run[0]
    scheduled, output = dry_run(workdir)
    assert scheduled == {}, output[-3000:]  # else the real run below would change the session's results
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr


def test_lint_reports_nothing(tmp_path):
    result = snakemake(tmp_path, "--lint")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Congratulations, your workflow is in a good condition!" in output
    assert "Lints for" not in output, output


@pytest.mark.parametrize(
    "override, named",
    [
        ("segment={min_sise: 20}", "segment.min_sise"),
        ("predict={tta: true, tiles: 512}", "predict.tiles"),
        ("download={retry: 1}", "download.retry"),
        ("models={resunet: {segment: {min_sise: 20}}}", "models.resunet.segment.min_sise"),
        ("reports=1", "reports"),
    ],
)
def test_the_schema_rejects_unknown_keys(tmp_path, override, named):
    result = snakemake(tmp_path, "--cores", "1", "--dry-run", "--config", override)
    output = result.stdout + result.stderr  # a dry run reports the error on stdout
    assert result.returncode != 0
    assert f"  {named}: unknown key (" in output, output[-3000:]
