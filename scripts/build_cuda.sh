#!/usr/bin/env bash
# Builds accel with the `cuda` and `nccl` features on any Linux machine, GPU or not: the CUDA 13 wheels
# come from PyPI (scripts/install_cuda.sh), the build goes to a target folder outside the repository
# (${XDG_CACHE_HOME:-~/.cache}/accel/target-cuda, or CARGO_TARGET_DIR) that later runs reuse. Then the
# binary is started once against the driver stub, as on a machine without a GPU: it must run its CPU
# path and say that no driver is there.
#
#   bash scripts/build_cuda.sh [--bundle DIR]
# --bundle DIR: also build the test binaries that have GPU tests, and write them with the binary,
# stripped and xz-compressed, into DIR: what scripts/gpu-check.sh runs on a GPU host.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$repo_root"
bundle=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) bundle="$2"; shift 2 ;;
    *) echo "usage: $0 [--bundle DIR]" >&2; exit 2 ;;
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
if [ -n "$bundle" ]; then
  mkdir -p "$bundle/tests"
  strip -o "$bundle/accel" "$bin"
  tests="$(cargo test --release --locked --features cuda,nccl --no-run --test train --test optim_parity --test distributed --test families \
    --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])')"
  while read -r name exe; do
    strip -o "$bundle/tests/$name" "$exe"
  done <<<"$tests"
  find "$bundle" -type f ! -name '*.xz' -exec xz -f -T0 -6 {} +
  echo "wrote $bundle ($(du -sh "$bundle" | cut -f1)): bash scripts/gpu-check.sh $bundle on a GPU host" >&2
fi
