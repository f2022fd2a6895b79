#!/usr/bin/env bash
# Install the Debian packages needed for a local one-node Slurm test cluster.
# Idempotent: does nothing when everything is already installed. Needs root (or sudo).
set -euo pipefail

PKGS=(slurmctld slurmd slurm-client munge)

"$(dirname "$0")/../apt_install.sh" "${PKGS[@]}"
