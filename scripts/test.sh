#!/usr/bin/env bash
# Runs the whole test suite in release mode (numeric code is far too slow in debug), then prints
# one closing line with the totals of every test binary.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_toolchain
# oneMKL for the bf16 tests (outside the repository); without it they say they were skipped.
bash "$repo_root/scripts/install_mkl.sh" >/dev/null || echo "oneMKL could not be installed: the bf16 tests will be skipped" >&2
# TensorBoard (a venv outside the repository) to read the event files back with its own reader.
if python=$(bash "$repo_root/scripts/install_tensorboard.sh"); then
    export ACCEL_TENSORBOARD_PYTHON="$python"
else
    echo "TensorBoard could not be installed: its reader check will be skipped" >&2
fi
cd "$repo_root"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
