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

"$(dirname "$0")/../apt_install.sh" "${PKGS[@]}"
