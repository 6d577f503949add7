#!/usr/bin/env bash
# Makes a Python venv with TensorBoard outside the repository, for scripts/check_tensorboard.py
# (which reads accel's event files with TensorBoard's own reader). Prints the venv's python.
# ACCEL_TENSORBOARD_VENV overrides the place (default ~/.cache/accel/tensorboard-venv).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
venv="${ACCEL_TENSORBOARD_VENV:-$HOME/.cache/accel/tensorboard-venv}"
if ! "$venv/bin/python" -c 'import tensorboard' 2>/dev/null; then
    pip_venv "$venv" tensorboard
fi
echo "$venv/bin/python"
