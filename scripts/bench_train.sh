#!/usr/bin/env bash
# Training/eval throughput: accel vs the PyTorch reference (../shared/bench/train_throughput.py), in
# one run, same data and model, 2 threads each, one after the other. Prints every JSON line and the
# ratios (accel / reference: above 1 means accel is faster; memory: reference / accel).
# BENCH_PYTHON: a Python with torch + transformers + datasets (default ~/torch-venv/bin/python).
# WARMUP / STEPS: steps per measurement (default 5 / 40).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_toolchain
cd "$repo_root"
py="${BENCH_PYTHON:-$HOME/torch-venv/bin/python}"
bench="${ACCEL_BENCH_DIR:-$shared/bench}"
warm="${WARMUP:-5}"; steps="${STEPS:-40}"
if [ ! -x "$py" ] || [ ! -f "$bench/train_throughput.py" ]; then
  echo "set BENCH_PYTHON to a Python with torch + transformers + datasets, and ACCEL_BENCH_DIR to ../shared/bench" >&2
  exit 1
fi
cargo build --release --quiet --example bench_train
ref() { (cd "$bench" && MODEL_DIR="$ACCEL_MODEL_DIR/all-MiniLM-L6-v2" MRPC_DIR="$ACCEL_DATA_DIR/glue/MRPC" THREADS=2 "$@" 2>/dev/null | tail -n 1); }
a8=$(RAYON_NUM_THREADS=2 ./target/release/examples/bench_train 8 "$warm" "$steps");  echo "accel b8:        $a8"
r8=$(ref "$py" train_throughput.py 8 "$warm" "$steps");                              echo "torch b8:        $r8"
a32=$(RAYON_NUM_THREADS=2 ./target/release/examples/bench_train 32 "$warm" "$steps"); echo "accel b32:       $a32"
r32=$(ref "$py" train_throughput.py 32 "$warm" "$steps");                            echo "torch b32:       $r32"
rbf=$(ref env AUTOCAST=bf16 "$py" train_throughput.py 8 "$warm" "$steps");          echo "torch b8 bf16:   $rbf"
python3 - "$a8" "$r8" "$a32" "$r32" "$rbf" <<'PY'
import json, sys
a8, r8, a32, r32, rbf = (json.loads(x) for x in sys.argv[1:])
def row(name, a, r):
    print(f"{name:<28} accel {a:8.1f}  torch {r:8.1f}  ratio {a / r:5.2f}")
row("train samples/s, batch 8", a8["samples_per_s"], r8["samples_per_s"])
row("train samples/s, batch 32", a32["samples_per_s"], r32["samples_per_s"])
row("padded tokens/s, batch 8", a8["padded_tokens_per_s"], r8["padded_tokens_per_s"])
print(f"{'ms/step (median), batch 8':<28} accel {a8['ms_step_median']:8.1f}  torch {r8['ms_step_median']:8.1f}  (shuffles differ: mean padded length {a8['mean_padded_len']:.1f} vs {r8['mean_padded_len']:.1f})")
row("eval samples/s, batch 64", a8["eval_samples_per_s"], r8["eval_samples_per_s"])
print(f"{'peak RSS MiB, batch 8':<28} accel {a8['peak_rss_mib']:8.0f}  torch {r8['peak_rss_mib']:8.0f}  ratio {r8['peak_rss_mib'] / a8['peak_rss_mib']:5.2f}")
print(f"{'torch bf16 autocast, b8':<28} {rbf['samples_per_s']:.1f} samples/s; accel fp32 / torch bf16 = {a8['samples_per_s'] / rbf['samples_per_s']:.2f}")
PY
