#!/usr/bin/env bash
# Makes a Python venv with TensorBoard outside the repository, for scripts/check_tensorboard.py
# (which reads accel's event files with TensorBoard's own reader). Prints the venv's python.
# ACCEL_TENSORBOARD_VENV overrides the place (default ~/.cache/accel/tensorboard-venv).
set -euo pipefail
venv="${ACCEL_TENSORBOARD_VENV:-$HOME/.cache/accel/tensorboard-venv}"
if ! "$venv/bin/python" -c 'import tensorboard' 2>/dev/null; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check tensorboard >&2
fi
echo "$venv/bin/python"
