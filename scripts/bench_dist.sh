#!/usr/bin/env bash
# Data-parallel benchmark on this machine's cores, in one run, one measurement at a time:
#   1. scaling: 2 ranks x 1 thread against 1 rank x 2 threads, samples/s at per-rank batch 8 and 16
#      (efficiency = 2-rank samples/s / 1-rank samples/s; the same cores either way);
#   2. all-reduce of MiniLM's gradient (about 91 MB): MPI's own all-reduce of one buffer against
#      accel's bucketed gradient averaging, and what the all-reduce costs inside a training step;
#   3. time from `accel launch --nproc 2` to the end of the first optimizer step, next to
#      `accelerate launch --cpu --num_processes 2` on ../shared/bench/accelerate_train.py (which also
#      gives Accelerate's own 2-rank samples/s), when BENCH_PYTHON has torch + accelerate;
#   4. ZeRO stages 0 (DDP), 1 and 2 at 2 ranks x 1 thread through `accel launch --nproc 2 bench`:
#      MiniLM on MRPC at batch 8 (samples/s against stage 0's, and each rank's peak memory), and,
#      unless ZERO_LARGE=0, a random-init BERT of bert-large's shape at batch 1 x 32 tokens (each
#      rank's peak memory beside `accel estimate-memory --nproc 2 --zero-stage S`'s figure, which
#      the run report prints as its estimate).
# WARMUP / STEPS: steps per measurement (default 5 / 40). BENCH_PYTHON default ~/torch-venv/bin/python.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_toolchain
cd "$repo_root"
warm="${WARMUP:-5}"; steps="${STEPS:-40}"
py="${BENCH_PYTHON:-$HOME/torch-venv/bin/python}"
bench="${ACCEL_BENCH_DIR:-$shared/bench}"
cargo build --release --quiet --example bench_dist
cargo build --release --quiet
root_flag=(); [ "$(id -u)" -eq 0 ] && root_flag=(--allow-run-as-root)
one() { RAYON_NUM_THREADS=2 ./target/release/examples/bench_dist "$1" "$warm" "$steps"; }
two() { mpirun -np 2 "${root_flag[@]}" --bind-to core -x RAYON_NUM_THREADS=1 ./target/release/examples/bench_dist "$1" "$warm" "$steps"; }
one 8 >/dev/null  # fills the tokenization cache
results=()
for b in 8 16; do
  r1=$(one "$b"); echo "1 rank x 2 threads, batch $b:  $r1"
  r2=$(two "$b"); echo "2 ranks x 1 thread, batch $b:  $r2"
  results+=("$r1" "$r2")
done

out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
./target/release/accel launch --nproc 2 train --config configs/mrpc.toml --max-steps 3 --set eval_strategy='"no"' \
  --set save_strategy='"no"' --output-dir "$out/launch" > "$out/launch.log" 2>&1 || { cat "$out/launch.log"; exit 1; }
accel_first=$(sed -n 's/.*first optimizer step ended \([0-9.]*\) s after launch.*/\1/p' "$out/launch.log")
echo "accel launch --nproc 2: first step ended ${accel_first} s after launch"

ref="{}"
if [ -x "$py" ] && [ -f "$bench/accelerate_train.py" ]; then
  acc="$(dirname "$py")/accelerate"
  # On a machine without GPUs, accelerate 1.x runs `--cpu --num_processes 2` as ONE process; with
  # `--multi_gpu` it starts 2 through torchrun, and the script's Accelerator(cpu=True) makes them
  # MULTI_CPU ranks over gloo (checked below through the reported world size).
  ref_line=$(cd "$bench" && LAUNCH_T0=$(date +%s.%N) TRAIN_THREADS=1 MODEL_DIR="$ACCEL_MODEL_DIR/all-MiniLM-L6-v2" \
    MRPC_DIR="$ACCEL_DATA_DIR/glue/MRPC" "$acc" launch --multi_gpu --num_processes 2 accelerate_train.py 8 "$warm" "$steps" 2>/dev/null \
    | python3 -c '
import json, sys
text = sys.stdin.read()
# The two ranks print at once: their RESULT records may share a line.
decoder, at = json.JSONDecoder(), text.find("RESULT ")
while at >= 0:
    record, _ = decoder.raw_decode(text, at + len("RESULT "))
    if record["rank"] == 0:
        print(json.dumps(record))
    at = text.find("RESULT ", at + 1)
')
  echo "accelerate launch --num_processes 2 (rank 0): $ref_line"
  [ -n "$ref_line" ] && ref="$ref_line"
else
  echo "Accelerate reference skipped: set BENCH_PYTHON to a Python with torch + transformers + accelerate" >&2
fi

zero_runs="$out/zero.jsonl"
zero_models=(minilm); [ "${ZERO_LARGE:-1}" = 0 ] || zero_models+=(bert-large)
for model in "${zero_models[@]}"; do
  case $model in
    minilm) shape=(--data mrpc --batch 8 --warmup "$warm" --steps "$steps") ;;
    *) shape=(--data random --batch 1 --seq-len 32 --warmup 1 --steps 3) ;;
  esac
  for stage in 0 1 2; do
    log=$(./target/release/accel launch --nproc 2 bench --model "$model" "${shape[@]}" --device cpu \
      --zero-stage "$stage" 2>&1) || { echo "$log"; exit 1; }
    python3 - "$model" "$stage" "$log" >> "$zero_runs" <<'PY'
import json, re, sys
model, stage, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
result = json.loads(re.search(r'\{"size".*\}', log).group(0))
ranks = [[int(r), float(p), float(e)] for r, p, e in
         re.findall(r"rank (\d+) +median step [0-9.]+ ms, peak memory (\d+) MiB \(estimate (\d+) MiB\)", log)]
print(json.dumps({"model": model, "stage": stage, "samples_per_s": result["samples_per_s"], "ranks": ranks}))
PY
  done
done
python3 - "$zero_runs" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
for model in dict.fromkeys(r["model"] for r in runs):
    mine = {r["stage"]: r for r in runs if r["model"] == model}
    base = mine[0]
    print(f"ZeRO on {model}, 2 ranks x 1 thread:")
    for stage, r in sorted(mine.items()):
        peaks = ", ".join(f"rank {k} {p:.0f} MiB (estimate {e:.0f})" for k, p, e in r["ranks"])
        worst = max(p for _, p, _ in r["ranks"]) / max(p for _, p, _ in base["ranks"])
        print(f"  stage {stage}: {r['samples_per_s']:6.2f} samples/s ({r['samples_per_s'] / base['samples_per_s']:.2f}x stage 0); "
              f"peak memory {peaks}: {worst:.2f} of stage 0's")
PY

python3 - "$accel_first" "$ref" "${results[@]}" <<'PY'
import json, sys
first, ref = float(sys.argv[1]), json.loads(sys.argv[2])
r = [json.loads(x) for x in sys.argv[3:]]
for (one, two), b in zip([(r[0], r[1]), (r[2], r[3])], (8, 16)):
    print(f"batch {b:>2} per rank: 1x2 threads {one['samples_per_s']:6.1f} samples/s, 2x1 thread {two['samples_per_s']:6.1f}: "
          f"scaling efficiency {two['samples_per_s'] / one['samples_per_s']:.2f} "
          f"(padded tokens/s {two['padded_tokens_per_s'] / one['padded_tokens_per_s']:.2f}); "
          f"2-rank step {two['ms_step_median']:.0f} ms of which the optimizer step (all-reduce and AdamW) {two['ms_optimizer_step_median']:.0f} ms")
p = r[1]
print(f"all-reduce of {p['gradient_mb']:.1f} MB over 2 ranks (median of 15): MPI one buffer {p['probe_mpi_allreduce_ms']:.1f} ms "
      f"({p['probe_mpi_gb_per_s']:.2f} GB/s), accel bucketed {p['probe_accel_bucketed_ms']:.1f} ms ({p['probe_accel_gb_per_s']:.2f} GB/s): "
      f"ratio {p['probe_accel_gb_per_s'] / p['probe_mpi_gb_per_s']:.2f}")
if ref:
    assert ref["world"] == 2, f"the Accelerate reference ran {ref['world']} process(es), not 2: {ref}"
    t = ref["launch_to_first_step_end_s"]
    print(f"launch to end of first step: accel {first:.2f} s, accelerate {t:.2f} s: {t / first:.1f}x faster")
    print(f"2 ranks x 1 thread, batch 8: accel {r[1]['samples_per_s']:.1f} samples/s, accelerate {ref['samples_per_s_total']:.1f}: "
          f"ratio {r[1]['samples_per_s'] / ref['samples_per_s_total']:.2f}")
else:
    print(f"launch to end of first step: accel {first:.2f} s (no Accelerate reference)")
PY
