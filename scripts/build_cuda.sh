#!/usr/bin/env bash
# Builds accel with the `cuda` and `nccl` features on any Linux machine, GPU or not: the CUDA 13 wheels
# come from PyPI (scripts/install_cuda.sh), the build goes to a target folder outside the repository
# (${XDG_CACHE_HOME:-~/.cache}/accel/target-cuda, or CARGO_TARGET_DIR) that later runs reuse. Then the
# binary is started once against the driver stub, as on a machine without a GPU: it must run its CPU
# path and say that no driver is there.
#
#   bash scripts/build_cuda.sh [--out FILE]   # FILE: a stripped copy of the binary (for a GPU host)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$repo_root"
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--out FILE]" >&2; exit 2 ;;
  esac
done
ensure_toolchain
eval "$(bash scripts/install_cuda.sh)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/accel/target-cuda}"
started=$SECONDS
cargo build --release --locked --features cuda,nccl --bin accel
bin="$CARGO_TARGET_DIR/release/accel"
echo "built $bin in $((SECONDS - started)) s" >&2
# The GPU-only code is linted here: the default build never compiles it.
cargo clippy --release --locked --features cuda,nccl --lib --bins --quiet -- -D warnings

# The stub stands in for libcuda.so.1, as a machine without an NVIDIA driver would leave it missing.
stub_env=(env LD_LIBRARY_PATH="$CUDA_HOME/lib:$CUDA_HOME/lib/stubs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
report="$("${stub_env[@]}" "$bin" env)"
echo "$report" | grep -E '^(cuda|gpus|nccl)' >&2 || true
if ! echo "$report" | grep -q 'no NVIDIA driver'; then
  echo "accel env did not report the missing driver:" >&2
  echo "$report" >&2
  exit 1
fi
refusal="$(mktemp)"
trap 'rm -f "$refusal"' EXIT
if "${stub_env[@]}" "$bin" train --device cuda --max-steps 1 2>"$refusal" >/dev/null; then
  echo "accel train --device cuda ran without a GPU" >&2
  exit 1
fi
if ! grep -q 'no NVIDIA driver' "$refusal"; then
  echo "accel train --device cuda failed without naming the missing driver:" >&2
  cat "$refusal" >&2
  exit 1
fi
echo "without a driver: $(tail -n1 "$refusal")" >&2
if [ -n "$out" ]; then
  strip -o "$out" "$bin"
  echo "wrote $out ($(du -h "$out" | cut -f1))" >&2
fi
