"""The sample workflow submitted to a real Slurm through profiles/slurm, compared with a local run.

tests/slurm/start.sh starts a one-node cluster on this machine (munged, slurmctld, slurmd;
configuration, state and logs in a temporary folder) and tests/slurm/stop.sh stops exactly the
daemons it started. The workflow runs with the real profile and the test-only keys of
tests/slurm/profile layered on top (a later ``--profile`` wins key by key)::

    snakemake --workflow-profile none --profile profiles/slurm --profile tests/slurm/profile

Needs root, Debian's slurmctld, slurmd, slurm-client and munge (tests/slurm/install.sh), and
snakemake-executor-plugin-slurm (``pip install -e ".[slurm]"``); skipped with the reason
otherwise, failed instead where ``NUCSEG_REQUIRE_SLURM=1`` (CI sets it, so that a broken
install cannot pass as a skip).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from .conftest import REPO, SNAKEMAKE

pytestmark = pytest.mark.slow

SLURM_DIR = REPO / "tests" / "slurm"
COMMANDS = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client", "squeue": "slurm-client", "srun": "slurm-client"}
ETC_CONF = Path("/etc/slurm/slurm.conf")
# TOLERANCE: none. Both runs train on this machine's CPU with the same code, data, seed and
# torch thread count (2: `--cores 2` locally, `cores: 2` in tests/slurm/profile), so the
# floating-point operations run in the same order and the weights are bit-identical (checked
# below by their sha256); the tables computed from them are then equal to the last bit. A
# different thread count changes the summation order and the weights in the last bits, and
# after 15 epochs and a watershed that is no longer a last-bit difference in the tables (object
# counts change), so a tolerance would not make the comparison robust, only hide real changes.


def skip_or_fail(reason: str) -> None:
    if os.environ.get("NUCSEG_REQUIRE_SLURM") == "1":
        pytest.fail(f"NUCSEG_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on localhost right now (a cluster of another test run or
    another user may hold Slurm's default ports)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A one-node Slurm started for this module; yields the environment that reaches it."""
    if os.geteuid() != 0:
        skip_or_fail("the Slurm test needs root (slurmd launches jobs as the submitting user)")
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = sorted({package for command, package in COMMANDS.items() if shutil.which(command, path=path) is None})
    if missing:
        skip_or_fail(f"Slurm/munge not installed (Debian packages {', '.join(missing)}): run tests/slurm/install.sh")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        skip_or_fail('snakemake-executor-plugin-slurm not installed: pip install -e ".[slurm]"')
    if ETC_CONF.exists() or ETC_CONF.is_symlink():
        # the jobstep plugin (0.6.1) drops SLURM_CONF inside jobs, so the jobs read this file
        skip_or_fail(f"{ETC_CONF} exists: jobs would reach that cluster, not the test one (remove it if an interrupted test run left it)")

    state = tmp_path_factory.mktemp("slurm_state")
    ctld_port, slurmd_port = free_ports(2)
    env = {
        **os.environ,
        # jobs inherit PATH (sbatch --export=ALL): this interpreter's snakemake and nucseg first
        "PATH": f"{Path(sys.executable).parent}:{path}",
        "SLURM_TEST_CTLD_PORT": str(ctld_port),
        "SLURM_TEST_SLURMD_PORT": str(slurmd_port),
        # start.sh links /etc/slurm/slurm.conf to the test cluster's file and stop.sh removes it
        # (see tests/slurm/README.md: snakemake-executor-plugin-slurm-jobstep 0.6.1 drops
        # SLURM_CONF from the environment of the srun inside each job)
        "SLURM_TEST_ETC_LINK": "1",
    }
    try:
        started = subprocess.run(["bash", str(SLURM_DIR / "start.sh"), str(state)], env=env, check=False, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, f"tests/slurm/start.sh failed:\n{started.stderr[-5000:]}"
        assert ETC_CONF.resolve() == (state / "slurm.conf").resolve(), started.stderr[-3000:]
        yield {**env, "SLURM_CONF": str(state / "slurm.conf")}, state
    finally:
        # stop.sh signals only the PIDs start.sh recorded, and fails if one of them survives
        stopped = subprocess.run(["bash", str(SLURM_DIR / "stop.sh"), str(state)], env=env, check=False, capture_output=True, text=True, timeout=120)
        assert stopped.returncode == 0, f"tests/slurm/stop.sh failed:\n{stopped.stderr}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def job_ids(output: str) -> dict[str, str]:
    """{SLURM job id: group or rule} from the plugin's submission messages in ``output``:
    ``Job 3 has been submitted with SLURM jobid 7 (log: .../slurm_logs/<group_or_rule>/.../7.log).``

    Read from Snakemake's output, not from the log files: the plugin deletes the log of a
    successful job unless `slurm-keep-successful-logs` is set (tests/slurm/profile sets it, but
    the job ids do not depend on it)."""
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (.+?\.log)\)", output)
    return {job_id: Path(log).parts[Path(log).parts.index("slurm_logs") + 1] for job_id, log in submitted}


def test_sample_workflow_on_slurm_equals_the_local_run(slurm_cluster, sample_run, tmp_path):
    env, state = slurm_cluster
    workdir = tmp_path / "work"
    workdir.mkdir()
    # --verbose: the plugin then logs each sbatch call, which shows what every job asked for
    command = SNAKEMAKE + [
        "--directory",
        str(workdir),
        "--workflow-profile",
        "none",
        "--profile",
        str(REPO / "profiles" / "slurm"),
        "--profile",
        str(SLURM_DIR / "profile"),
        "--verbose",
    ]
    result = subprocess.run(command, cwd=workdir, env=env, check=False, capture_output=True, text=True, timeout=3600)
    output = result.stdout + result.stderr
    (tmp_path / "snakemake_output.txt").write_text(output)  # kept with pytest's temporary folders
    if result.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-2000:]}" for p in sorted((workdir / ".snakemake").glob("slurm_logs/**/*.log")))
        pytest.fail(f"workflow on Slurm failed:\n{output[-6000:]}\n{logs}")

    # Both profiles were read (Snakemake names them), in this order.
    tail = output[-8000:]
    assert f"Using profiles {REPO / 'profiles' / 'slurm'} and {SLURM_DIR / 'profile'}" in output, tail
    # Every job went through Slurm: one submission per job group or ungrouped job, each with
    # its job id, and the controller saw each one finish with exit code 0.
    ids = job_ids(output)
    # (groups of profiles/slurm: download + preprocess per dataset; everything after predict)
    assert sorted(ids.values()) == [
        "group_prepare_download_preprocess_test",
        "group_prepare_download_preprocess_train",
        "group_score_aggregate_evaluate_plots_qc_segment",
        "rule_image_tables",
        "rule_predict",
        "rule_train",
        "rule_training_curves",
    ], f"{ids}\n{tail}"
    controller_log = (state / "log" / "slurmctld.log").read_text()
    for job_id, name in ids.items():
        assert f"_job_complete: JobId={job_id} WEXITSTATUS 0" in controller_log, f"{name}: job {job_id} did not complete in slurmctld.log"

    # The GPU stages asked Slurm for a GPU (the test node has one fake GPU), the others did not;
    # every job asked for memory (profiles/slurm) and at most 2 CPUs (`cores` of tests/slurm/profile).
    calls = dict(re.findall(r"sbatch call: sbatch .*?--comment (rule_\w+) (.*)", output))
    assert len(calls) == len(ids), calls.keys()
    for comment, call in calls.items():
        assert ("--gpus=1" in call) == bool(re.match(r"rule_(train|predict)_wildcards_", comment)), call[:400]
        assert re.search(r"--mem [1-9]\d* ", call) and re.search(r"--cpus-per-task=[12] ", call), call[:400]
    assert "using CPU (2 threads)" in (workdir / "results/logs/train/resunet.log").read_text()

    # The same results as the local run on this machine (conftest's sample_run, --cores 2),
    # exactly: see TOLERANCE.
    local, remote = sample_run[0] / "results", workdir / "results"
    assert sha256(remote / "models/resunet/weights.pt") == sha256(local / "models/resunet/weights.pt")
    for table in ["metrics/resunet/sample_test/per_image.csv", "summary.csv", "segmentation/resunet/sample_test/objects.csv"]:
        pd.testing.assert_frame_equal(pd.read_csv(remote / table), pd.read_csv(local / table), check_exact=True, obj=table)


def job_intervals(controller_log: str, ids: dict[str, str], rule: str) -> list[tuple[str, str]]:
    """(allocated, completed) times of the Slurm jobs of ``rule``, from slurmctld's log."""
    times = []
    for job_id, name in ids.items():
        if name != f"rule_{rule}":
            continue
        start = re.search(rf"^\[([^\]]+)\] sched.*(?:Allocate|Started) JobId={job_id} ", controller_log, re.MULTILINE)
        end = re.search(rf"^\[([^\]]+)\] _job_complete: JobId={job_id} ", controller_log, re.MULTILINE)
        assert start and end, f"job {job_id} ({name}) not found in slurmctld.log"
        times.append((start.group(1), end.group(1)))
    return times


def test_split_images_on_slurm_equal_the_local_run(slurm_cluster, sample_run, tmp_path):
    """split: {region: 768} on the one-node Slurm, from a copy of the finished local sample run:
    the sample's three test images larger than 768 pixels run as 10 region jobs of each kind,
    several at once (the region segments ask for 1 CPU each on the 2-CPU node), and the tables
    equal the local run's, where every image ran in one job.

    The split comes by ``--config``: Snakemake passes ``--config`` and ``--configfiles`` on to the
    jobs inside Slurm, not ``--replace-workflow-config`` (snakemake 9.27), so a config file that
    replaces config/config.yaml would be merged with it inside each job (README, Slurm)."""
    env, state = slurm_cluster
    workdir = tmp_path / "work"
    shutil.copytree(sample_run[0], workdir, symlinks=True)  # keeps times: training does not rerun
    profiles = ["--workflow-profile", "none", "--profile", str(REPO / "profiles" / "slurm"), "--profile", str(SLURM_DIR / "profile")]
    command = SNAKEMAKE + ["--directory", str(workdir), *profiles, "--config", "split={region: 768}", "--set-threads", "segment_region=1", "--verbose"]
    result = subprocess.run(command, cwd=workdir, env=env, check=False, capture_output=True, text=True, timeout=3600)
    output = result.stdout + result.stderr
    (tmp_path / "snakemake_output.txt").write_text(output)
    assert result.returncode == 0, output[-6000:]

    ids = job_ids(output)
    names = sorted(ids.values())
    assert "rule_train" not in names, names
    assert names.count("rule_predict_region") == 10 and names.count("rule_segment_region") == 10, names
    assert names.count("rule_plan_regions") == 1 and names.count("rule_merge_regions") == 3, names
    controller_log = (state / "log" / "slurmctld.log").read_text()
    for job_id, name in ids.items():
        assert f"_job_complete: JobId={job_id} WEXITSTATUS 0" in controller_log, f"{name}: job {job_id} did not complete"
    # two region segments ran at the same time on the node (ISO times compare as text)
    spans = sorted(job_intervals(controller_log, ids, "segment_region"))
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), spans

    local, remote = sample_run[0] / "results", workdir / "results"
    for table in ["segmentation/resunet/sample_test/objects.csv", "segmentation/resunet/sample_test/images.csv", "metrics/resunet/sample_test/per_image.csv"]:
        assert (remote / table).read_text() == (local / table).read_text(), table
    for path in sorted((local / "segmentation/resunet/sample_test/labels").glob("*.tif")):
        np.testing.assert_array_equal(tifffile.imread(remote / path.relative_to(local)), tifffile.imread(path), err_msg=path.name)
