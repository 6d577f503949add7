#!/usr/bin/env bash
# The GPU checks, on a machine with an NVIDIA GPU, no network and no Rust toolchain. Build the bundle
# on any machine with `bash scripts/build_cuda.sh --bundle gpu-bundle` (the GPU binary and the test
# binaries that have GPU tests, stripped and xz-compressed: about 35 MiB, under the 64 MiB a device
# call carries), bring the folder over with the repository, then:
#
#   bash scripts/gpu-check.sh [BUNDLE]        # default: gpu-bundle
#
# It puts the host's CUDA 13 and NCCL libraries on LD_LIBRARY_PATH (a Python install's nvidia/*/lib
# folders, e.g. PyTorch's), prints `accel env`, runs `accel test` (whose GPU check trains the tiny
# model on the GPU in f32 and bf16 against the CPU's losses) and the GPU tests (each says when it did
# not run and why; every model family's logits and training trace against transformers' among them), then prints a table: accel's training throughput for MiniLM- and bert-base-sized models in
# fp32 and bf16 (samples/s, padded tokens/s, MFU against the GPU's dense bf16 peak) beside PyTorch
# eager and Accelerate on the same batches (../shared/bench/gpu_bench.py), and, when the machine has
# 2 GPUs or more, NCCL's all-reduce of the gradients' size, the ZeRO test (stages 1 and 2 against
# DDP, resumes across stages) on the GPUs, and each stage's speed and per-rank memory.
# PEAK_TFLOPS (default 989: H100/H200 SXM), BATCH (32), STEPS (30), BENCH_PYTHON (python3),
# ACCEL_BENCH_DIR (../shared/bench).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/common.sh"
bundle="$(cd "${1:-$root/gpu-bundle}" && pwd)"
py="${BENCH_PYTHON:-python3}"
peak="${PEAK_TFLOPS:-989}"; batch="${BATCH:-32}"; steps="${STEPS:-30}"
bench_dir="${ACCEL_BENCH_DIR:-$shared/bench}"
# The model families' fixtures travel with the repository; the bundle's test binaries read them here.
export ACCEL_FIXTURES_DIR="$root/tests/fixtures/models"

# Unpack (xz through Python's lzma: no xz tool needed).
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$py" - "$bundle" "$work" <<'PY'
import lzma, os, pathlib, shutil, sys
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for f in src.rglob("*"):
    if f.is_file():
        out = dst / f.relative_to(src)
        out = out.with_suffix("") if f.suffix == ".xz" else out
        out.parent.mkdir(parents=True, exist_ok=True)
        with (lzma.open(f) if f.suffix == ".xz" else open(f, "rb")) as i, open(out, "wb") as o:
            shutil.copyfileobj(i, o)
        os.chmod(out, 0o755)
PY
accel="$work/accel"

# The CUDA 13 and NCCL libraries the binary links against, from the host's Python packages.
libs="$("$py" - <<'PY'
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "*", "lib", "lib*.so*"))})
print(":".join(dirs))
PY
)"
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ! "$accel" env >/dev/null 2>"$work/start.txt"; then
  echo "the GPU binary does not start here:" >&2
  cat "$work/start.txt" >&2
  echo "(it needs the NVIDIA driver and CUDA 13's runtime, cuBLAS, cuRAND and NCCL: pip's nvidia-* packages or a CUDA install on LD_LIBRARY_PATH)" >&2
  exit 1
fi
"$accel" env | grep -E '^(accel|features|cpu|cuda|gpus|nccl)' || true
gpus="$("$accel" env | awk '/^gpus:/ { print $2 }')"
case "$gpus" in ''|none*|0) echo "no GPU is usable here: nothing to check" >&2; exit 1 ;; esac

echo
echo "== accel test (the tiny end-to-end checks, the GPU's among them)"
failed=0
"$accel" test || failed=1

echo
echo "== GPU tests"
have_shared=0
[ -d "${ACCEL_GOLDEN_DIR:-/nonexistent}" ] && [ -d "${ACCEL_MODEL_DIR:-/nonexistent}/all-MiniLM-L6-v2" ] && have_shared=1
for t in "$work"/tests/*; do
  name="$(basename "$t")"
  case "$name" in
    distributed) continue ;; # ZeRO on 2+ GPUs, below
    train) filter="every_tensor_of_a_step training_on_the_gpu" ;;
    optim_parity) filter=trace_on_the_gpu ;;
    families) filter=every_family_on_the_gpu ;;
    *) filter="" ;;
  esac
  if [ "$name" = families ] && [ ! -d "${ACCEL_DATA_DIR:-/nonexistent}/glue/MRPC" ]; then
    echo "$name: did not run: MRPC (../shared/data) is not on this machine"
    continue
  fi
  if [ "$name" = optim_parity ] && [ "$have_shared" = 0 ]; then
    echo "$name: did not run: the golden traces and MiniLM (../shared/golden, ../shared/models) are not on this machine"
    continue
  fi
  if "$t" --test-threads 1 --nocapture $filter >"$work/$name.log" 2>&1; then
    echo "$name $filter: $(grep -E '^test result' "$work/$name.log" | tail -n1)"
  else
    failed=1
    echo "$name $filter: FAILED"
    tail -n 40 "$work/$name.log"
  fi
  grep -E 'did not run|not on a GPU|^GPU step|^cuda:0: losses' "$work/$name.log" || true
done

echo
data=(--data mrpc)
if [ ! -d "${ACCEL_DATA_DIR:-/nonexistent}/glue/MRPC" ] || [ ! -d "${ACCEL_MODEL_DIR:-/nonexistent}/all-MiniLM-L6-v2" ]; then
  data=(--data random --seq-len 128)
  echo "== training throughput, batch $batch: MRPC is not here, so accel runs random rows of 128 tokens (PyTorch's rows differ)"
else
  echo "== training throughput, batch $batch, MRPC's training pairs in file order, padded per batch"
fi
rows=()
for size in minilm bert-base; do
  for dtype in fp32 bf16; do
    mp=no; [ "$dtype" = bf16 ] && mp=bf16
    line="$("$accel" bench --device cuda --model "$size" "${data[@]}" --batch "$batch" --steps "$steps" --warmup 10 \
      --mixed-precision "$mp" --peak-tflops "$peak" 2>"$work/bench.err")" || { cat "$work/bench.err" >&2; failed=1; line='{}'; }
    # The run report of the same steps, as `accel train` prints it at its end.
    grep -E '^(run report|  )' "$work/bench.err" >"$work/report-$size-$dtype.txt" || true
    rows+=("accel|$size|$dtype|$line")
    for mode in eager accelerate; do
      flag=""; [ "$mode" = accelerate ] && flag="--accelerate"
      if [ -f "$bench_dir/gpu_bench.py" ]; then
        ref="$(cd "$bench_dir" && "$py" gpu_bench.py --size "$size" --dtype "$dtype" --batch "$batch" --steps "$steps" \
          --peak-tflops "$peak" $flag 2>/dev/null | tail -n1)" || ref='{}'
      else
        ref='{}'
      fi
      rows+=("torch $mode|$size|$dtype|$ref")
    done
  done
done
"$py" - "${rows[@]}" <<'PY'
import json, sys
rows = [(w, s, d, json.loads(l or "{}")) for w, s, d, l in (r.split("|", 3) for r in sys.argv[1:])]
print(f"{'':<18}{'model':<11}{'dtype':<6}{'samples/s':>11}{'tokens/s':>11}{'MFU':>8}{'ms/step':>9}")
for who, size, dtype, r in rows:
    if not r:
        print(f"{who:<18}{size:<11}{dtype:<6}{'did not run':>11}")
        continue
    tok = r.get("tokens_per_s", r.get("padded_tokens_per_s", 0))
    print(f"{who:<18}{size:<11}{dtype:<6}{r['samples_per_s']:>11.1f}{tok:>11.0f}{r['mfu_vs_peak']:>8.1%}{r['ms_step_median']:>9.1f}")
by = {(w, s, d): r for w, s, d, r in rows if r}
print()
for (who, size, dtype), r in by.items():
    if who != "accel":
        continue
    for ref in ("torch eager", "torch accelerate"):
        if (ref, size, dtype) in by:
            print(f"accel / {ref}, {size} {dtype}: {r['samples_per_s'] / by[(ref, size, dtype)]['samples_per_s']:.2f}")
PY

echo
echo "== run reports of accel's runs above"
cat "$work"/report-*.txt 2>/dev/null || echo "(none)"

echo
if [ "${gpus:-0}" -ge 2 ] 2>/dev/null && command -v mpirun >/dev/null; then
  echo "== NCCL all-reduce of the gradients, 2 ranks"
  "$accel" launch --nproc 2 bench --device cuda --model bert-base --data random --steps 3 --warmup 1 |
    "$py" -c 'import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(f"bert-base gradients: {r[\"allreduce_ms_median\"]:.2f} ms, bus bandwidth {r[\"allreduce_bus_gb_per_s\"]:.1f} GB/s")'
  echo
  echo "== ZeRO stages 1 and 2 against DDP on the GPUs (NCCL reduce-scatter and all-gather), tiny model"
  nprocs="2"; [ "$gpus" -ge 3 ] && nprocs="2 3"
  if ACCEL_BIN="$accel" ACCEL_TEST_DEVICE=cuda ACCEL_TEST_NPROCS="$nprocs" "$work/tests/distributed" \
      --test-threads 1 --nocapture zero_stages >"$work/zero.log" 2>&1; then
    echo "distributed zero_stages ($nprocs ranks): $(grep -E '^test result' "$work/zero.log" | tail -n1)"
  else
    failed=1
    echo "distributed zero_stages: FAILED"
    tail -n 40 "$work/zero.log"
  fi
  grep -E '^ZeRO-' "$work/zero.log" || true
  echo
  echo "== ZeRO stages at 2 ranks, bert-base random rows: speed and memory"
  for stage in 0 1 2; do
    "$accel" launch --nproc 2 bench --device cuda --model bert-base --data random --steps 5 --warmup 2 \
      --zero-stage "$stage" 2>"$work/zero-bench.err" |
      "$py" -c 'import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(f"stage {r[\"zero_stage\"]}: {r[\"samples_per_s\"]:.1f} samples/s, {r[\"ms_step_median\"]:.1f} ms/step")' ||
      { failed=1; tail -n 20 "$work/zero-bench.err"; }
    grep -E 'rank [0-9]+ +median step' "$work/zero-bench.err" || true
  done
else
  echo "== NCCL all-reduce and ZeRO on GPUs: not run (they need 2 GPUs and mpirun; this machine has ${gpus:-0} GPU(s))"
fi
exit "$failed"
