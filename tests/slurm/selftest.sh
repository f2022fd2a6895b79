#!/usr/bin/env bash
# End-to-end check of the local Slurm test cluster with Snakemake's slurm executor:
# start.sh in a temp dir, run example/ with example/profile, check outputs, stop.sh.
# Needs root, the apt packages (install.sh), and snakemake + snakemake-executor-plugin-slurm
# on PATH (activate the venv first: its bin/ must be on PATH inside the jobs too).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# jobstep plugin 0.6.1 drops SLURM_CONF in jobs: fall back to /etc/slurm/slurm.conf (see README)
export SLURM_TEST_ETC_LINK="${SLURM_TEST_ETC_LINK:-1}"
STATE="$(mktemp -d "${TMPDIR:-/tmp}/slurm-state.XXXXXX")"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/slurm-work.XXXXXX")"
cleanup() { "$HERE/stop.sh" "$STATE" || true; }
trap cleanup EXIT

eval "$("$HERE/start.sh" "$STATE" | tail -n1)"
echo "selftest: SLURM_CONF=$SLURM_CONF"
cp -r "$HERE/example/." "$WORK/"
cd "$WORK"
start=$(date +%s)
if ! timeout 300 snakemake --profile profile >run.log 2>&1; then
  tail -n 60 run.log >&2
  for f in .snakemake/slurm_logs/*/*.log; do [ -f "$f" ] && { echo "== $f" >&2; tail -n 20 "$f" >&2; }; done
  echo "selftest: FAILED (workdir $WORK, state $STATE)" >&2
  exit 1
fi
echo "selftest: workflow finished in $(( $(date +%s) - start )) s"
grep -q '^CUDA_VISIBLE_DEVICES=0$' gpu.txt || { echo "selftest: gpu=1 job saw no GPU" >&2; exit 1; }
grep -q '^CUDA_VISIBLE_DEVICES=0$' gres.txt || { echo "selftest: gres job saw no GPU" >&2; exit 1; }
grep -q '^SLURM_JOB_ID=[0-9]' a.txt || { echo "selftest: rule a did not run in a Slurm job" >&2; exit 1; }
n=$(find .snakemake/slurm_logs -name '*.log' | wc -l)
[ "$n" -eq 4 ] || { echo "selftest: expected 4 logs in .snakemake/slurm_logs, found $n" >&2; exit 1; }
echo "selftest: OK ($n Slurm jobs; logs in $WORK/.snakemake/slurm_logs)"
