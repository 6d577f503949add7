"""PyTorch eager reference for `accel bench --model FAMILY`: the same random-init classifier shape
(transformers' classes, the sizes accel's named configs give), AdamW training steps on the same
batches (MRPC's training pairs in file order, tokenized by all-MiniLM-L6-v2's tokenizer, padded per
batch), fp32, on the CPU. Prints one JSON line.

usage: python bench_families.py FAMILY BATCH WARMUP STEPS
FAMILY: bert-base, roberta-base, xlm-roberta-base, distilbert-base, electra-base, deberta-v3-base,
modernbert-base. THREADS sets torch's threads (default 2); MODEL_DIR the tokenizer's folder; MRPC_DIR
the MRPC files. Needs torch and transformers.
"""
import csv
import json
import os
import statistics
import sys
import time

import torch
import transformers
from transformers import AutoTokenizer, DataCollatorWithPadding

FAMILIES = {
    "bert-base": ("BertConfig", "BertForSequenceClassification", {}),
    "roberta-base": (
        "RobertaConfig",
        "RobertaForSequenceClassification",
        dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5),
    ),
    "xlm-roberta-base": (
        "XLMRobertaConfig",
        "XLMRobertaForSequenceClassification",
        dict(vocab_size=250002, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5),
    ),
    "distilbert-base": ("DistilBertConfig", "DistilBertForSequenceClassification", {}),
    "electra-base": ("ElectraConfig", "ElectraForSequenceClassification", dict(
        embedding_size=768, hidden_size=768, num_attention_heads=12, intermediate_size=3072)),
    "deberta-v3-base": ("DebertaV2Config", "DebertaV2ForSequenceClassification", dict(
        vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        relative_attention=True, position_buckets=256, pos_att_type=["p2c", "c2p"], share_att_key=True,
        norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0, max_relative_positions=-1)),
    "modernbert-base": ("ModernBertConfig", "ModernBertForSequenceClassification", dict(classifier_pooling="mean")),
}
# The families whose models read token types (the others' transformers tokenizers return none).
TYPED = {"bert-base", "electra-base"}


def mrpc_train(root):
    with open(os.path.join(root, "dev_ids.tsv"), encoding="utf-8-sig", newline="") as f:
        dev = {(r[0], r[1]) for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)}
    with open(os.path.join(root, "msr_paraphrase_train.txt"), encoding="utf-8-sig", newline="") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [r for r in rows if (r["#1 ID"], r["#2 ID"]) not in dev]


def main():
    family, batch, warmup, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    config_class, model_class, sizes = FAMILIES[family]
    config = getattr(transformers, config_class)(num_labels=2, **sizes)
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(config).train()
    tok = AutoTokenizer.from_pretrained(os.environ["MODEL_DIR"])
    collate = DataCollatorWithPadding(tok)
    rows = mrpc_train(os.environ["MRPC_DIR"])
    feats = []
    for r in rows[: batch * (warmup + steps)]:
        x = dict(tok(r["#1 String"], r["#2 String"], truncation=True), labels=int(r["Quality"]))
        if family not in TYPED:
            x.pop("token_type_ids", None)
        feats.append(x)
    batches = [collate(feats[i : i + batch]) for i in range(0, len(feats) - batch + 1, batch)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    times = []
    for s in range(warmup + steps):
        b = batches[s % len(batches)]
        t = time.perf_counter()
        model(**b).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if s >= warmup:
            times.append(time.perf_counter() - t)
    median = statistics.median(times)
    print(json.dumps({
        "family": family,
        "batch": batch,
        "steps": steps,
        "ms_step_median": 1000 * median,
        "samples_per_s": batch / median,
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
