#!/usr/bin/env bash
# Install the Debian packages tests/test_napari.py needs for napari's Qt window without a screen:
# Xvfb (a virtual X display, run by xvfb-run), Mesa's software OpenGL (napari's canvas) and the
# X libraries Qt 6's xcb platform plugin loads (the PyQt6 wheels ship Qt, not these).
# Qt's offscreen platform needs none of them but gives the canvas no OpenGL: napari fails there.
# Idempotent: does nothing when everything is already installed. Needs root (or sudo).
set -euo pipefail

PKGS=(
  xvfb xauth
  libgl1 libegl1 libgl1-mesa-dri libglx-mesa0
  libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
  libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1 libfontconfig1 libdbus-1-3
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install.sh: already installed: ${PKGS[*]}"
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
if ! $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; then
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi
