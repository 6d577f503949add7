#!/usr/bin/env bash
# Training/eval throughput: accel (f32 and bf16) vs the PyTorch reference
# (../shared/bench/train_throughput.py: eager f32, eager bf16 autocast, torch.compile + bf16), in
# one run, same data and model, 2 threads each, one after the other. Prints every JSON line and the
# ratios (accel / reference: above 1 means accel is faster; memory: reference / accel), then accel's
# time op by op (each fused op's forward and backward pass, the products inside it, and "other":
# candle's own ops, autograd's bookkeeping, the loss) per training step and per evaluation pass.
# BENCH_PYTHON: a Python with torch + transformers + datasets (default ~/torch-venv/bin/python).
# WARMUP / STEPS: steps per measurement (default 5 / 40); REF_BF16_WARMUP / REF_BF16_STEPS for
# PyTorch's bf16 modes (default the same: lower them on CPUs without AMX or AVX512-BF16, where
# PyTorch's bf16 runs at about 1 sample/s). bf16 needs its library (scripts/install_onednn.sh; oneMKL
# on AMX): on a CPU without AVX512-BF16 or AMX accel's bf16 keeps f32 products, as its runs do.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_toolchain
cd "$repo_root"
py="${BENCH_PYTHON:-$HOME/torch-venv/bin/python}"
bench="${ACCEL_BENCH_DIR:-$shared/bench}"
warm="${WARMUP:-5}"; steps="${STEPS:-40}"
ref_bf16_warm="${REF_BF16_WARMUP:-$warm}"; ref_bf16_steps="${REF_BF16_STEPS:-$steps}"
if [ ! -x "$py" ] || [ ! -f "$bench/train_throughput.py" ]; then
  echo "set BENCH_PYTHON to a Python with torch + transformers + datasets, and ACCEL_BENCH_DIR to ../shared/bench" >&2
  exit 1
fi
install_bf16_libraries
cargo build --release --quiet --bin accel --example bench_train
accel() { RAYON_NUM_THREADS=2 MIXED_PRECISION="$1" ./target/release/examples/bench_train "$2" "$warm" "$steps"; }
ref() {
  local w="$warm" s="$steps"
  case "$*" in *AUTOCAST=bf16*) w="$ref_bf16_warm"; s="$ref_bf16_steps" ;; esac
  (cd "$bench" && MODEL_DIR="$ACCEL_MODEL_DIR/all-MiniLM-L6-v2" MRPC_DIR="$ACCEL_DATA_DIR/glue/MRPC" THREADS=2 \
    env "$@" "$py" train_throughput.py "$batch" "$w" "$s" 2>/dev/null | tail -n 1)
}
./target/release/accel env | grep -a -E '^(cpu|simd|bf16|RAYON)' || true
results=()
for batch in 8 32; do
  for run in "accel no" "accel bf16" "ref AUTOCAST=fp32" "ref AUTOCAST=bf16" "ref COMPILE=1 AUTOCAST=bf16"; do
    set -- $run
    if [ "$1" = accel ]; then line=$(accel "$2" "$batch"); else shift; line=$(ref "$@"); fi
    echo "b$batch $run: $line"
    results+=("$line")
  done
done
python3 - "${results[@]}" <<'PY'
import json, sys
rows = [json.loads(x) for x in sys.argv[1:]]
names = ["accel f32", "accel bf16", "torch eager f32", "torch eager bf16", "torch compile bf16"]
by = {(names[i % 5], r["batch"]): r for i, r in enumerate(rows)}
print()
print(f"{'samples/s':<20}" + "".join(f"{n:>20}" for n in names))
for b in (8, 32):
    print(f"{'train, batch ' + str(b):<20}" + "".join(f"{by[(n, b)]['samples_per_s']:>20.1f}" for n in names))
print(f"{'eval, batch 64':<20}" + "".join(f"{by[(n, 8)]['eval_samples_per_s']:>20.1f}" for n in names))
print()
torch_modes = names[2:]
for b in (8, 32):
    ours = by[("accel bf16", b)]["samples_per_s"]
    best = max(torch_modes, key=lambda n: by[(n, b)]["samples_per_s"])
    print(f"train b{b}: accel bf16 / {best} (best torch) = {ours / by[(best, b)]['samples_per_s']:.2f}"
          f"; accel bf16 / accel f32 = {ours / by[('accel f32', b)]['samples_per_s']:.2f}")
for name in ("accel f32", "accel bf16"):
    for b, kind, key in ((8, "train step", "step_ops"), (32, "train step", "step_ops"), (8, "eval pass (batch 64)", "eval_ops")):
        rows = by[(name, b)].get(key, [])
        unit = "ms/step" if key == "step_ops" else "ms/pass"
        print(f"\n{name}, {kind}{', batch ' + str(b) if key == 'step_ops' else ''}: op by op")
        print(f"{'op':<32}{unit:>10}{'share':>8}{'products ms':>13}")
        for r in rows:
            print(f"{r['op']:<32}{r['ms']:>10.2f}{100 * r['share']:>7.1f}%{r['products_ms']:>13.2f}")
print()
ev = by[("accel bf16", 8)]["eval_samples_per_s"]
print(f"eval b64: accel bf16 / torch compile bf16 = {ev / by[('torch compile bf16', 8)]['eval_samples_per_s']:.2f}"
      f"; / torch eager bf16 = {ev / by[('torch eager bf16', 8)]['eval_samples_per_s']:.2f}")
for n in ("accel f32", "accel bf16"):
    r = by[(n, 8)]
    print(f"{n}, b8 step {r['ms_step_median']:.0f} ms: forward {r['ms_forward_median']:.0f}, backward {r['ms_backward_median']:.0f},"
          f" optimizer {r['ms_optimizer_median']:.0f}; layer products {100 * r['gemm_share_of_step']:.0f}% of the step at"
          f" {r['gemm_tflops_in_step']:.3f} TFLOP/s (alone at the same shapes: {r['gemm_tflops_alone']:.3f})")
print(f"{'peak RSS MiB, batch 8':<22} accel f32 {by[('accel f32', 8)]['peak_rss_mib']:.0f}, accel bf16 {by[('accel bf16', 8)]['peak_rss_mib']:.0f}, torch eager f32 {by[('torch eager f32', 8)]['peak_rss_mib']:.0f}")
PY
