#!/usr/bin/env bash
# Runs the whole test suite in release mode (numeric code is far too slow in debug), then prints
# one closing line with the totals of every test binary. Where bf16 runs keep f32 products (a CPU
# without bf16 instructions, or whose bf16 products measured slower than f32's: `accel env` says)
# and the bf16 tests skip, the tests named bf16 run a second time with the library forced
# (ACCEL_BF16_LIBRARY: oneDNN on a CPU with bf16 instructions, else emulated bf16 products), so
# their numerics are checked on every CPU.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_toolchain
# The bf16 libraries (outside the repository); without them the bf16 tests say they were skipped.
install_bf16_libraries || echo "the bf16 tests that need the missing library will be skipped" >&2
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
if [ "$status" -eq 0 ] && [ $# -eq 0 ] && [ -z "${ACCEL_BF16_LIBRARY:-}" ]; then
  products=$(./target/release/accel env | grep -a '^bf16 products:' || true)
  # "bf16, through ..." or "f32 (mixed_precision = ... keeps f32 products here): why".
  if [[ "$(echo "${products#bf16 products:}" | awk '{ print $1 }')" == f32* ]]; then
    if cpu_has_bf16; then forced=onednn; else forced=emulated; fi
    echo "== ${products#bf16 products: }"
    echo "== so the bf16 tests again, with ACCEL_BF16_LIBRARY=$forced"
    ACCEL_BF16_LIBRARY=$forced cargo test --release --workspace bf16 2>&1 | tee -a "$log"
    status=${PIPESTATUS[0]}
  fi
fi
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
