#!/usr/bin/env bash
# Checks that a model folder written by `accel train` (any family) loads in transformers'
# AutoModelForSequenceClassification with no missing, unexpected or mismatched keys, and gives the
# same probabilities (or, for a regression head, scores) as `accel predict` on the first pairs of MRPC;
# a token classifier, in AutoModelForTokenClassification, the same tags on the NER sample; a
# question answering model, in AutoModelForQuestionAnswering, the same answers on the SQuAD sample.
# usage: scripts/check_transformers_load.sh [MODEL_DIR]   (default runs/mrpc)
# BENCH_PYTHON: a Python with torch + transformers (default ~/torch-venv/bin/python).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$repo_root"
model="${1:-runs/mrpc}"
py="${BENCH_PYTHON:-$HOME/torch-venv/bin/python}"
architecture=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["architectures"][0])' "$model/config.json")
if [[ "$architecture" == *ForTokenClassification ]]; then
  # A token classifier: the tags of the NER sample's validation sentences, a word's first piece's.
  sentences="tests/fixtures/ner/validation.conll"
  ours=$(./target/release/accel predict --model "$model" --input "$sentences")
  exec "$py" - "$model" "$sentences" "$ours" <<'PY'
import json, sys, torch
from transformers import AutoModelForTokenClassification, AutoTokenizer
model_dir, path, ours = sys.argv[1], sys.argv[2], [json.loads(l) for l in sys.argv[3].splitlines()]
# Byte-level BPEs tokenize split words with a space before each (transformers requires it).
byte_level = json.load(open(model_dir + "/config.json"))["model_type"] in ("roberta", "modernbert")
tok = AutoTokenizer.from_pretrained(model_dir, **({"add_prefix_space": True} if byte_level else {}))
model, info = AutoModelForTokenClassification.from_pretrained(model_dir, output_loading_info=True)
model.eval()
problems = {k: v for k, v in info.items() if v}
if problems:
    sys.exit(f"transformers reported load problems for {model_dir}: {problems}")
sentences, current = [], []
for line in open(path, encoding="utf-8"):
    f = line.split()
    if not f or f[0] == "-DOCSTART-":
        if current:
            sentences.append(current)
        current = []
    else:
        current.append(f[0])
if current:
    sentences.append(current)
differ = 0
for words, o in zip(sentences, ours):
    enc = tok(words, is_split_into_words=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        best = model(**enc).logits[0].argmax(-1).tolist()
    tags, seen = [], set()
    for i, w in enumerate(enc.word_ids()):
        if w is not None and w not in seen:
            seen.add(w)
            tags.append(model.config.id2label[best[i]])
    differ += tags != o["tags"]
print(f"transformers loaded {model_dir} with no missing or unexpected keys: {model.config.architectures}; "
      f"{len(sentences) - differ} of {len(sentences)} sentences tagged as accel tags them")
sys.exit(0 if differ == 0 and len(ours) == len(sentences) else 1)
PY
fi
if [[ "$architecture" == *ForQuestionAnswering ]]; then
  # A question answering model: the answers to the SQuAD sample's validation questions, windows of
  # 384 tokens sharing 128, post-processed as run_qa does (scripts/make_qa_fixtures.py's functions).
  questions="tests/fixtures/squad/validation.jsonl"
  ours=$(./target/release/accel predict --model "$model" --input "$questions")
  exec "$py" - "$model" "$questions" "$ours" <<'PY'
import json, sys, torch
sys.path.insert(0, "scripts")
from make_qa_fixtures import postprocess, windows
from transformers import AutoModelForQuestionAnswering, AutoTokenizer
model_dir, path, ours = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
tok = AutoTokenizer.from_pretrained(model_dir)
model, info = AutoModelForQuestionAnswering.from_pretrained(model_dir, output_loading_info=True)
model.eval()
problems = {k: v for k, v in info.items() if v}
if problems:
    sys.exit(f"transformers reported load problems for {model_dir}: {problems}")
examples = [json.loads(l) for l in open(path, encoding="utf-8")]
features = windows(tok, examples, 384, 128)
starts, ends = [], []
with torch.no_grad():
    for f in features:
        out = model(input_ids=torch.tensor([f["input_ids"]]), token_type_ids=torch.tensor([f["token_type_ids"]]))
        starts.append(out.start_logits[0].numpy())
        ends.append(out.end_logits[0].numpy())
theirs, _ = postprocess(examples, features, starts, ends, version_2=False)
same = sum(theirs[e["id"]] == ours.get(e["id"]) for e in examples)
print(f"transformers loaded {model_dir} with no missing or unexpected keys: {model.config.architectures}; "
      f"{same} of {len(examples)} questions answered as accel answers them")
sys.exit(0 if same == len(examples) else 1)
PY
fi
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
