#!/usr/bin/env bash
# Install the Debian packages named on the command line that are not installed yet (shared by
# tests/slurm/install.sh and tests/display/install.sh). Idempotent: does nothing when all are
# installed. Needs root (or sudo).
set -euo pipefail

missing=()
for p in "$@"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install.sh: already installed: $*"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install.sh: need root or sudo" >&2; exit 1; }
  SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
# Only refresh package lists when apt has none (fresh container) or the install fails.
if ! compgen -G "/var/lib/apt/lists/*_Packages" >/dev/null; then
  $SUDO apt-get update
fi
echo "install.sh: installing ${missing[*]}"
# (Slurm's postinst scripts print "could not determine runlevel" without systemd: harmless.)
if ! $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; then
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi
