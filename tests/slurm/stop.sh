#!/usr/bin/env bash
# Stop the daemons that tests/slurm/start.sh started: only the PIDs recorded in
# STATE_DIR/pids (lines "PID NAME"), and only while that PID still runs a process of
# that name (so a recycled PID is never signalled). TERM, wait up to 10 s, then KILL.
set -uo pipefail

[ $# -eq 1 ] || { echo "usage: $0 STATE_DIR" >&2; exit 2; }
PIDS="$1/pids"
[ -f "$PIDS" ] || [ -f "$1/etc-link" ] || { echo "stop.sh: no $PIDS, nothing to stop" >&2; exit 0; }
touch "$PIDS" 2>/dev/null || true

ours() { # ours PID NAME: is PID still a process called NAME?
  [ -r "/proc/$1/comm" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]
}

# First cancel the jobs still in *this* cluster (its own slurm.conf), so that their
# slurmstepd processes do not outlive slurmd.
CONF="$1/slurm.conf"
if [ -f "$CONF" ] && grep -q ' slurmctld$' "$PIDS" 2>/dev/null; then
  jobs="$(SLURM_CONF="$CONF" timeout 10 squeue -h -t PD,R,CG,S -o %i 2>/dev/null || true)"
  if [ -n "$jobs" ]; then
    echo "stop.sh: cancelling jobs $(echo $jobs)" >&2
    # shellcheck disable=SC2086
    SLURM_CONF="$CONF" timeout 10 scancel $jobs 2>/dev/null || true
    for _ in $(seq 20); do
      [ -z "$(SLURM_CONF="$CONF" timeout 5 squeue -h -t PD,R,CG,S -o %i 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
fi

# stop in reverse start order: slurmd, slurmctld, then munged
mapfile -t lines < <(tac "$PIDS")
for line in "${lines[@]}"; do
  read -r pid name <<<"$line"
  [ -n "${pid:-}" ] && [ -n "${name:-}" ] || continue
  if ! ours "$pid" "$name"; then
    echo "stop.sh: $name (pid $pid) not running" >&2
    continue
  fi
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do ours "$pid" "$name" || break; sleep 0.1; done
  if ours "$pid" "$name"; then
    echo "stop.sh: $name (pid $pid) ignored TERM, sending KILL" >&2
    kill -KILL "$pid" 2>/dev/null
    sleep 0.2
  fi
  if ours "$pid" "$name"; then
    echo "stop.sh: ERROR: could not stop $name (pid $pid)" >&2
    rc=1
  else
    echo "stop.sh: stopped $name (pid $pid)" >&2
  fi
done
[ "${rc:-0}" -eq 0 ] && : >"$PIDS"

# remove the /etc/slurm/slurm.conf symlink start.sh made (SLURM_TEST_ETC_LINK=1), if still ours
if [ -f "$1/etc-link" ]; then
  link="$(cat "$1/etc-link")"
  conf="$(cd "$1" && pwd)/slurm.conf"
  if [ -L "$link" ] && [ "$(readlink "$link")" = "$conf" ]; then
    rm -f "$link" && echo "stop.sh: removed symlink $link" >&2
  fi
  rm -f "$1/etc-link"
fi
exit "${rc:-0}"
