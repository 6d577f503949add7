#!/usr/bin/env bash
# Training throughput of each model family on the CPU: `accel bench --model FAMILY` (f32) beside
# PyTorch eager f32 (scripts/bench_families.py) on the same batches (MRPC's training pairs in file
# order, all-MiniLM-L6-v2's tokenizer, padded per batch), the same random-init shape, 2 threads
# each, one after the other. Prints the CPU, every JSON line, and per family the median step's
# samples/s and the ratio accel / PyTorch (above 1: accel is faster).
#   scripts/bench_families.sh [FAMILY...]   (default: every family at its base size)
# BENCH_PYTHON: a Python with torch + transformers (default ~/torch-venv/bin/python).
# BATCH / WARMUP / STEPS: per measurement (default 8 / 3 / 10).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_toolchain
cd "$repo_root"
py="${BENCH_PYTHON:-$HOME/torch-venv/bin/python}"
batch="${BATCH:-8}"; warm="${WARMUP:-3}"; steps="${STEPS:-10}"
if [ ! -x "$py" ]; then
  echo "set BENCH_PYTHON to a Python with torch + transformers" >&2
  exit 1
fi
families=("$@")
if [ ${#families[@]} -eq 0 ]; then
  families=(bert-base roberta-base xlm-roberta-base distilbert-base electra-base deberta-v3-base modernbert-base)
fi
cargo build --release --quiet --bin accel
./target/release/accel env | grep -a -E '^(cpu|simd|RAYON)' || true
results=()
for family in "${families[@]}"; do
  ours=$(RAYON_NUM_THREADS=2 ./target/release/accel bench --model "$family" --device cpu --data mrpc \
    --batch "$batch" --warmup "$warm" --steps "$steps" 2>/dev/null | tail -n 1)
  theirs=$(MODEL_DIR="$ACCEL_MODEL_DIR/all-MiniLM-L6-v2" MRPC_DIR="$ACCEL_DATA_DIR/glue/MRPC" THREADS=2 \
    "$py" scripts/bench_families.py "$family" "$batch" "$warm" "$steps" 2>/dev/null | tail -n 1)
  echo "$family accel: $ours"
  echo "$family torch: $theirs"
  results+=("$family" "$ours" "$theirs")
done
python3 - "${results[@]}" <<'PY'
import json, sys
args = sys.argv[1:]
print()
print(f"{'family':<18}{'accel samples/s':>17}{'torch eager f32':>17}{'accel / torch':>15}")
for i in range(0, len(args), 3):
    family, ours, theirs = args[i], json.loads(args[i + 1]), json.loads(args[i + 2])
    a = ours["batch"] * 1000 / ours["ms_step_median"]
    t = theirs["samples_per_s"]
    print(f"{family:<18}{a:>17.2f}{t:>17.2f}{a / t:>15.2f}")
print(f"(batch {json.loads(args[1])['batch']}, median step of {json.loads(args[1])['steps']} after warm-up, f32, 2 threads each)")
PY
