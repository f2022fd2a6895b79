"""The workflow against a hostile machine (issue 24, held): killed outright, a full disk, two runs at once.

Real runs of the workflow with the shipped model on the embedded sample's 12 test images
(config/sample_pretrained.yaml: nothing trains), compared with one clean run of the same
config. The workflow's outputs are deterministic on one machine: a clean run and a rerun after
an interruption agree byte for byte, so any file under a final name that differs from the
clean run's would be a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

from .conftest import REPO, SNAKEMAKE, WORKFLOW_TIMEOUT, snakemake
from .test_safety import tmpfs

pytestmark = pytest.mark.slow

RUN = ("--cores", "2", "--configfile", str(REPO / "config/sample_pretrained.yaml"), "--replace-workflow-config")

SEGMENTATION = Path("results/segmentation/pretrained/sample_test")
PREDICTION = Path("results/predictions/pretrained/sample_test.zarr")
LABELS = SEGMENTATION / "labels"
METRICS = Path("results/metrics/pretrained/sample_test/per_image.csv")
SUMMARY = Path("results/summary.csv")

#: Each target job's outputs, and the hidden temporary folder (nucseg.files.atomic_dir) whose
#: first file shows the job is running and half-way through writing them.
JOBS = {
    "predict": {"outputs": [PREDICTION], "temporary": (PREDICTION.parent, ".sample_test.zarr.*.part")},
    "segment": {
        "outputs": [LABELS, SEGMENTATION / "ome_zarr", SEGMENTATION / "geojson", SEGMENTATION / "objects.csv", SEGMENTATION / "images.csv"],
        "temporary": (SEGMENTATION, ".labels.*.part"),
    },
}

#: Snakemake's message when another run holds the working directory (and after a kill -9).
LOCKED = "Directory cannot be locked"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The workdir of one clean run of the config."""
    workdir = tmp_path_factory.mktemp("reference")
    result = snakemake(workdir, *RUN)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


@contextlib.contextmanager
def started(workdir: Path, output: Path) -> Iterator[subprocess.Popen]:
    """The workflow started in ``workdir`` in a process group of its own (stdout and stderr to
    ``output``: a pipe nobody reads would fill and stall it); killed with its group on leaving
    the block if it still runs."""
    with open(output, "w") as out:
        process = subprocess.Popen([*SNAKEMAKE, "--directory", str(workdir), *RUN], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield process
        finally:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, output: Path, what: str, timeout: float = WORKFLOW_TIMEOUT) -> None:
    """Poll until ``condition()`` holds; fail if the workflow ends first, or after ``timeout`` s
    (generous: a loaded machine is slow, never a reason to fail)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the workflow ended (exit {process.returncode}) before {what}:\n{output.read_text()[-5000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no sign of {what} after {timeout} s:\n{output.read_text()[-5000:]}")
        time.sleep(0.05)


def writing(workdir: Path, job: str) -> Callable[[], bool]:
    """Whether ``job`` is running and has written a first file under its temporary name."""
    folder, pattern = JOBS[job]["temporary"]

    def condition() -> bool:
        for temporary in (workdir / folder).glob(pattern):
            with contextlib.suppress(OSError):  # (renamed or removed meanwhile)
                if any(path.is_file() for path in temporary.rglob("*")):
                    return True
        return False

    return condition


def group_alive(pgid: int) -> bool:
    """Whether a process of the group ``pgid`` still runs (zombies waiting to be reaped do not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
            if int(group) == pgid and state != "Z":
                return True
    return False


def kill_group(process: subprocess.Popen) -> None:
    """``kill -9`` of Snakemake and its jobs (the whole process group); returns once none of them runs."""
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    deadline = time.monotonic() + 60
    while group_alive(process.pid):
        assert time.monotonic() < deadline, f"processes of the killed group {process.pid} still run"
        time.sleep(0.05)


def result_files(workdir: Path) -> dict[Path, Path]:
    """The workflow's files under their final names (not the logs, benchmarks, Snakemake's
    timestamps of folder outputs, nor hidden temporaries), by their path relative to ``workdir``."""
    files = {}
    for path in (workdir / "results").rglob("*"):
        relative = path.relative_to(workdir)
        if relative.parts[1] in ("logs", "benchmarks") or any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        files[relative] = path
    return files


def half_written(workdir: Path, reference: Path) -> list[str]:
    """The files of ``workdir`` under a final name that differ from the clean run's (or that it lacks)."""
    wrong = []
    for relative, path in sorted(result_files(workdir).items()):
        clean = reference / relative
        if not clean.is_file() or clean.read_bytes() != path.read_bytes():
            wrong.append(str(relative))
    return wrong


def temporaries(workdir: Path) -> list[str]:
    """Temporary names left under results/: ``*.part`` files and folders, scratch folders."""
    pattern = re.compile(r"\..*\.part|\.labels\.[a-z0-9_]{8}|\.nucseg-[a-z0-9_]{8}")
    return sorted(str(p.relative_to(workdir)) for p in (workdir / "results").rglob(".*") if pattern.fullmatch(p.name))


@pytest.mark.parametrize("job", ["predict", "segment"])
def test_kill_9_in_a_job_then_the_rerun_equals_a_clean_run(job, reference, tmp_path):
    workdir, output = tmp_path / "run", tmp_path / "killed.out"
    with started(workdir, output) as process:
        wait_for(writing(workdir, job), process, output, f"the {job} job writing its output")
        kill_group(process)
    # the killed job's outputs are absent (whatever temporaries it left): none half-written
    present = [str(path) for path in JOBS[job]["outputs"] if (workdir / path).exists()]
    assert present == [], f"the killed {job} job left {present}"
    assert half_written(workdir, reference) == []
    # Snakemake's lock stays behind after a kill -9 and a plain rerun stops on it (README):
    # --unlock once, then the same command. --rerun-incomplete is not needed: the killed job's
    # outputs never took their names, so Snakemake finds them missing and simply runs the job.
    locked = snakemake(workdir, *RUN)
    assert locked.returncode != 0 and LOCKED in locked.stderr, locked.stderr[-5000:]
    unlocked = snakemake(workdir, *RUN, "--unlock")
    assert unlocked.returncode == 0, unlocked.stderr[-5000:]
    rerun = snakemake(workdir, *RUN)
    assert rerun.returncode == 0, rerun.stderr[-5000:]
    # the rerun removed what the killed job left, and ends where the clean run ended
    assert temporaries(workdir) == []
    tiffs = sorted(path.name for path in (reference / LABELS).glob("*.tif"))
    assert len(tiffs) == 12 and sorted(path.name for path in (workdir / LABELS).glob("*.tif")) == tiffs
    for name in tiffs:
        clean, again = tifffile.imread(reference / LABELS / name), tifffile.imread(workdir / LABELS / name)
        assert clean.dtype == again.dtype and np.array_equal(clean, again), name
    assert (workdir / METRICS).read_bytes() == (reference / METRICS).read_bytes()
    assert half_written(workdir, reference) == []
    assert set(result_files(workdir)) == set(result_files(reference))


#: The size of a tmpfs holding results/ that the run fills in each job. Measured: the download
#: and preprocess jobs need about 9.2 MiB, predict 7.7 MiB, segment 5.8 MiB; each size leaves
#: about 3 MiB of room either way.
FULL_DISK_KIB = {"predict": 14 << 10, "segment": 20 << 10}

#: The file each job names when the disk is full: the prediction store; an image's output in
#: the segment job's temporary folders.
FULL_DISK_PATH = {"predict": re.escape(str(PREDICTION)) + r"(?!\S)", "segment": re.escape(str(SEGMENTATION)) + r"/\S+"}


@pytest.mark.parametrize("job", ["predict", "segment"])
def test_the_workflow_on_a_full_disk(job, reference, tmp_path):
    workdir = tmp_path / "run"
    (workdir / "results").mkdir(parents=True)
    with tmpfs(workdir / "results", FULL_DISK_KIB[job]):
        result = snakemake(workdir, *RUN)
        assert result.returncode != 0, result.stderr[-5000:]
        assert re.search(rf"Error in rule {job}:", result.stderr), result.stderr[-5000:]
        message = re.compile(r"no space left on device while writing " + FULL_DISK_PATH[job])
        assert message.search(result.stderr), result.stderr[-5000:]
        # the job's log says it too, though the disk it is written on is full
        assert message.search((workdir / "results/logs" / job / "pretrained/sample_test.log").read_text())
        present = [str(path) for path in JOBS[job]["outputs"] if (workdir / path).exists()]
        assert present == [], f"the {job} job left {present} on a full disk"
        assert temporaries(workdir) == []  # the failed write removed its temporaries
        # what the jobs before it wrote is whole: nothing half-written under a final name
        assert result_files(workdir), "nothing was written before the disk filled up"
        assert half_written(workdir, reference) == []


def test_a_second_run_in_the_same_folder_is_refused_while_the_first_runs(reference, tmp_path):
    workdir, output = tmp_path / "run", tmp_path / "first.out"
    with started(workdir, output) as first:
        # start the second run when the first is in its longest job (predict): the first still
        # has predict, segment and the tables ahead of it while the second starts and stops
        wait_for(writing(workdir, "predict"), first, output, "the first run's predict job")
        second = snakemake(workdir, *RUN)
        first_still_running = first.poll() is None
        assert first.wait(timeout=WORKFLOW_TIMEOUT) == 0, output.read_text()[-5000:]
    assert first_still_running, "the first run ended before the second stopped: nothing was tested (a machine too loaded?)"
    assert second.returncode != 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert LOCKED in second.stderr and str(workdir) in second.stderr, second.stderr[-5000:]
    # the first run ran to its end, untouched by the second: its outputs complete and whole
    assert (workdir / SUMMARY).is_file()
    assert set(result_files(workdir)) == set(result_files(reference))
    assert half_written(workdir, reference) == []
    assert temporaries(workdir) == []
