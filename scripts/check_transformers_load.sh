#!/usr/bin/env bash
# Checks that a model folder written by `accel train` (any family) loads in transformers'
# AutoModelForSequenceClassification with no missing, unexpected or mismatched keys, and gives the
# same probabilities (or, for a regression head, scores) as `accel predict` on the first pairs of MRPC.
# usage: scripts/check_transformers_load.sh [MODEL_DIR]   (default runs/mrpc)
# BENCH_PYTHON: a Python with torch + transformers (default ~/torch-venv/bin/python).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$repo_root"
model="${1:-runs/mrpc}"
py="${BENCH_PYTHON:-$HOME/torch-venv/bin/python}"
pairs=$(mktemp --suffix .jsonl)
trap 'rm -f "$pairs"' EXIT
# JSON lines, not TSV: MRPC sentences may start with a '"', which a quoting TSV reader would take
# for a quoted field.
python3 - "$ACCEL_DATA_DIR/glue/MRPC" > "$pairs" <<'PY'
import json, sys
rows = open(sys.argv[1] + "/msr_paraphrase_train.txt", encoding="utf-8-sig").read().splitlines()[1:17]
for r in rows:
    f = r.split("\t")
    print(json.dumps({"sentence1": f[3], "sentence2": f[4]}))
PY
ours=$(./target/release/accel predict --model "$model" --input "$pairs")
"$py" - "$model" "$pairs" "$ours" <<'PY'
import json, sys, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model_dir, pairs, ours = sys.argv[1], sys.argv[2], [json.loads(l) for l in sys.argv[3].splitlines()]
tok = AutoTokenizer.from_pretrained(model_dir)
model, info = AutoModelForSequenceClassification.from_pretrained(model_dir, output_loading_info=True)
model.eval()
problems = {k: v for k, v in info.items() if v}
if problems:
    sys.exit(f"transformers reported load problems for {model_dir}: {problems}")
rows = [json.loads(l) for l in open(pairs, encoding="utf-8")]
enc = tok([r["sentence1"] for r in rows], [r["sentence2"] for r in rows], truncation=True, max_length=512, padding=True, return_tensors="pt")
with torch.no_grad():
    logits = model(**enc).logits
if model.config.problem_type == "regression":
    diff = max(abs(logits[i, 0].item() - o["score"]) for i, o in enumerate(ours))
    what, labels = "score", "regression"
else:
    probs = logits.softmax(-1)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    diff = max(abs(probs[i, j].item() - o["probabilities"][labels[j]]) for i, o in enumerate(ours) for j in range(len(labels)))
    what = "p"
print(f"transformers loaded {model_dir} with no missing or unexpected keys: {model.config.architectures}, labels {labels}; max |{what}_accel - {what}_transformers| over {len(rows)} pairs = {diff:.2e}")
sys.exit(0 if diff < 1e-4 else 1)
PY
