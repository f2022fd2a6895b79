"""Time a no-op rerun of the finished sample workflow: ``snakemake --cores 2`` with nothing to do.

This is what every rerun pays before it starts a job (Python and Snakemake start-up, parsing
the workflow, the config validation, the input functions and the DAG of a finished run,
checking each output's params and code hash), and also what each cluster job pays again
inside its allocation.

Usage::

    python benchmarks/bench_noop_rerun.py [--workdir DIR] [--repeats 5]

Without ``--workdir`` the sample workflow first runs into a temporary folder (about 2.5
minutes on 2 cores); with it, ``DIR`` must hold a finished run of the default config.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2"]


def run(workdir: Path, *args: str) -> tuple[float, str]:
    """Run the workflow in ``workdir``; returns (wall seconds, stdout + stderr)."""
    start = time.perf_counter()
    result = subprocess.run(SNAKEMAKE + ["--directory", str(workdir), *args], check=False, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    if result.returncode != 0:
        sys.exit(f"snakemake failed in {workdir}:\n{output[-3000:]}")
    return seconds, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="a finished sample run (default: run one into a temporary folder)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="nucseg-noop-") as tmp:
        workdir = args.workdir or Path(tmp)
        if args.workdir is None:
            seconds, _ = run(workdir)
            print(f"sample workflow, first run: {seconds:.0f} s")
        _, output = run(workdir, "--dry-run")
        if "Nothing to be done" not in output:
            sys.exit(f"{workdir} is not a finished run of the sample workflow:\n{output[-3000:]}")
        times = []
        for _ in range(args.repeats):
            seconds, output = run(workdir)
            if "Nothing to be done" not in output:
                sys.exit(f"the rerun did something:\n{output[-3000:]}")
            times.append(seconds)

    # Python + Snakemake start-up alone, for scale
    startup = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "snakemake", "--version"], check=True, capture_output=True)
        startup.append(time.perf_counter() - start)

    import snakemake

    print(
        f"no-op rerun (snakemake --cores 2, nothing to do), {args.repeats} repeats: "
        f"median {statistics.median(times):.2f} s (min {min(times):.2f} s, max {max(times):.2f} s)"
    )
    print(f"of which starting Python and Snakemake (snakemake --version): median {statistics.median(startup):.2f} s")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"machine: processor={platform.machine()!r}, cpu_count={os.cpu_count()}, load average {load}, "
        f"python={platform.python_version()}, snakemake={snakemake.__version__}"
    )


if __name__ == "__main__":
    main()
