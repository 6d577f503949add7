#!/usr/bin/env bash
# Data pipeline benchmark: accel vs the Python datasets + transformers reference, in one run.
# Prints both JSON lines and the ratios (reference time / accel time: above 1 means accel is faster).
# BENCH_PYTHON: a Python with datasets + transformers (default ~/torch-venv/bin/python).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_toolchain
cd "$repo_root"
py="${BENCH_PYTHON:-$HOME/torch-venv/bin/python}"
bench="${ACCEL_BENCH_DIR:-$shared/bench}"
cargo build --release --quiet --example bench_data
ours=$(./target/release/examples/bench_data "${REPEATS:-5}")
echo "accel:     $ours"
if [ ! -x "$py" ] || [ ! -f "$bench/tokenize_bench.py" ]; then
  echo "reference skipped: set BENCH_PYTHON to a Python with datasets + transformers and ACCEL_BENCH_DIR to ../shared/bench" >&2
  exit 1
fi
refs=()
for _ in $(seq "${REF_REPEATS:-3}"); do
  refs+=("$(cd "$bench" && MODEL_DIR="$ACCEL_MODEL_DIR/all-MiniLM-L6-v2" MRPC_DIR="$ACCEL_DATA_DIR/glue/MRPC" "$py" tokenize_bench.py 2>/dev/null | tail -n 1)")
done
printf 'reference: %s\n' "${refs[@]}"
python3 - "$ours" "${refs[@]}" <<'PY'
import json, statistics, sys
ours = json.loads(sys.argv[1])
refs = [json.loads(r) for r in sys.argv[2:]]
med = lambda k: statistics.median(r[k] for r in refs)
print(f"cold read+tokenize: accel {ours['read_plus_tokenize_s']:.3f} s, reference {med('read_plus_tokenize_s'):.3f} s (median of {len(refs)}), ratio {med('read_plus_tokenize_s') / ours['read_plus_tokenize_s']:.1f}x")
print(f"cold tokenize map:  accel {ours['tokenize_map_cold_s']:.3f} s, reference {med('tokenize_map_cold_s'):.3f} s, ratio {med('tokenize_map_cold_s') / ours['tokenize_map_cold_s']:.1f}x")
print(f"warm cache load:    accel {ours['warm_load_from_cache_s'] * 1000:.1f} ms, reference {med('warm_load_from_disk_s') * 1000:.1f} ms, ratio {med('warm_load_from_disk_s') / ours['warm_load_from_cache_s']:.1f}x")
print(f"warm second run (read raw + fingerprint + cache load): accel {ours['warm_second_run_s'] * 1000:.1f} ms")
PY
