"""Tiny random models of every family accel trains, with PyTorch + transformers reference outputs.

For each family this writes `tests/fixtures/models/<family>/`:
- a tokenizer trained on MRPC's training sentences with the family's own tokenizer model (WordPiece
  for BERT, DistilBERT and ELECTRA; byte-level BPE for RoBERTa and ModernBERT; Unigram for XLM-R and
  DeBERTa-v3), wrapped in the family's transformers tokenizer class and saved by `save_pretrained`;
- a randomly initialised `<Family>ForSequenceClassification` with 2 labels (a few layers, hidden 32,
  weights of std 0.25 so that attention is far from uniform), saved by `save_pretrained`
  (config.json + model.safetensors);
- `reference.json`: what transformers computes with that folder, loaded back by the Auto classes:
  - `pairs`: the ids (and token types, where the tokenizer returns them) of validation pairs 0-15,
    each encoded as `tokenizer(s1, s2, truncation=True)`;
  - `logits`: the eval-mode logits of those 16 pairs, as two batches of 8 padded by
    `DataCollatorWithPadding`;
  - `hidden_sums`: per pair, the float64 sum and sum of |h| of the encoder's last hidden states
    over the pair's tokens (padding left out), from the same batches;
  - `logits_left`: the eval-mode logits of pairs 0-7 padded on the left (`padding_side = "left"`);
  - `token_classification`, `question_answering`: the family's heads for those tasks (5 tags; a
    start and an end), drawn by transformers and saved as `token_head.safetensors` and
    `qa_head.safetensors`, with what they give on validation pairs 0-7 in eval mode: per row the
    sum of |score| over the row's tokens (every position for question answering) and the best
    tag of each token (best start and end), the loss against fixed labels (token: id % 5 for every
    token but the first and the padding; spans: start 1 + row % 3, end start + 2, row 0's start
    past the window), and the names of every parameter of the model;
  - `trace`: 4 training steps with every dropout off, on train rows 0-7, 8-15, 16-23, 24-31:
    `torch.optim.AdamW` over all parameters (lr 1e-3, weight decay 0.01), a linear schedule without
    warmup over the 4 steps, `clip_grad_norm_(1.0)`; per step the learning rate, the loss, the norm
    before clipping and the float64 sum of |p| over every parameter after the step.

Run from a venv with torch, transformers, tokenizers and safetensors from PyPI (outside the repository):

    MRPC_DIR=../shared/data/glue/MRPC ~/torch-venv/bin/python scripts/make_model_fixtures.py [OUT_DIR]

OUT_DIR defaults to tests/fixtures/models. The versions used are written to OUT_DIR/VERSIONS.json.
tokenizers' WordPiece and Unigram trainers break ties between equally frequent pieces in no fixed
order, so a regenerated folder has other vocabularies (and so other ids and numbers); each folder's
reference.json always describes its own files.
"""
import csv
import json
import os
import sys

import numpy as np
import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from safetensors.torch import save_file
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertTokenizer,
    DataCollatorWithPadding,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DebertaV2Tokenizer,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    DistilBertTokenizer,
    ElectraConfig,
    ElectraForSequenceClassification,
    ModernBertConfig,
    ModernBertForSequenceClassification,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaTokenizer,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
    XLMRobertaTokenizer,
    get_linear_schedule_with_warmup,
)

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MRPC = os.environ.get("MRPC_DIR", os.path.join(REPO, "..", "shared", "data", "glue", "MRPC"))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "tests", "fixtures", "models")
VOCAB = 1000
LABELS = {0: "not_equivalent", 1: "equivalent"}
SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
# Weights ten times the usual spread: with std 0.02 every attention score of so narrow a model is
# near zero, attention is uniform, and a wrong mask, position or relative term would go unseen.
INIT = 0.25


def read_mrpc():
    """Hugging Face's GLUE MRPC splits: train-file rows whose ID pair is in dev_ids.tsv are validation."""
    with open(os.path.join(MRPC, "dev_ids.tsv"), encoding="utf-8-sig", newline="") as f:
        dev = {(r[0], r[1]) for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)}
    train, val = [], []
    with open(os.path.join(MRPC, "msr_paraphrase_train.txt"), encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            ex = (row["#1 String"], row["#2 String"], int(row["Quality"]))
            (val if (row["#1 ID"], row["#2 ID"]) in dev else train).append(ex)
    return train, val


def corpus(train):
    for s1, s2, _ in train:
        yield s1
        yield s2


def wordpiece(train):
    """A lower-cased WordPiece vocabulary (BERT's normalizer and pre-tokenizer)."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(corpus(train), trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=special))
    return tok.get_vocab()


def byte_bpe(train, special):
    """Byte-level BPE vocabulary and merges (GPT-2's pre-tokenizer, as RoBERTa and ModernBERT use)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus(train), trainer)
    state = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return state["vocab"], merges


def unigram(train, special, unk):
    """A SentencePiece-style Unigram vocabulary (Metaspace pre-tokenizer), as (piece, score) pairs."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=VOCAB, special_tokens=special, unk_token=unk)
    tok.train_from_iterator(corpus(train), trainer)
    return [(piece, score) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]


def modernbert_tokenizer(train):
    special = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    vocab, merges = byte_bpe(train, special)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_max_length=512,
        model_input_names=["input_ids", "attention_mask"],
    )


def family_builders(train):
    """family -> (tokenizer, config, model class)."""
    wp = wordpiece(train)
    bert_tok = lambda cls: cls(vocab=wp, do_lower_case=True, model_max_length=512)
    rob_vocab, rob_merges = byte_bpe(train, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    xlmr_vocab = unigram(train, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<unk>")
    deb_vocab = unigram(train, ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"], "[UNK]")
    modern = modernbert_tokenizer(train)
    roberta_shape = dict(max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    return {
        "bert": (bert_tok(BertTokenizer), BertConfig(vocab_size=len(wp), **SHAPE), BertForSequenceClassification),
        "roberta": (
            RobertaTokenizer(vocab=rob_vocab, merges=rob_merges, model_max_length=512),
            RobertaConfig(vocab_size=len(rob_vocab), **SHAPE, **roberta_shape),
            RobertaForSequenceClassification,
        ),
        "xlm-roberta": (
            XLMRobertaTokenizer(vocab=xlmr_vocab, model_max_length=512),
            XLMRobertaConfig(vocab_size=len(xlmr_vocab), **SHAPE, **roberta_shape),
            XLMRobertaForSequenceClassification,
        ),
        "distilbert": (
            bert_tok(DistilBertTokenizer),
            DistilBertConfig(
                vocab_size=len(wp), dim=32, n_layers=2, n_heads=4, hidden_dim=64, activation="gelu", seq_classif_dropout=0.2
            ),
            DistilBertForSequenceClassification,
        ),
        "electra": (
            bert_tok(BertTokenizer),
            ElectraConfig(vocab_size=len(wp), embedding_size=16, **SHAPE),
            ElectraForSequenceClassification,
        ),
        "deberta-v2": (
            DebertaV2Tokenizer(vocab=deb_vocab, unk_id=3, model_max_length=512),
            DebertaV2Config(
                vocab_size=len(deb_vocab),
                **SHAPE,
                max_position_embeddings=512,
                relative_attention=True,
                position_buckets=32,
                max_relative_positions=-1,
                pos_att_type=["p2c", "c2p"],
                share_att_key=True,
                norm_rel_ebd="layer_norm",
                position_biased_input=False,
                type_vocab_size=0,
                layer_norm_eps=1e-7,
                pooler_hidden_size=32,
                pooler_dropout=0,
                pooler_hidden_act="gelu",
                pad_token_id=0,
            ),
            DebertaV2ForSequenceClassification,
        ),
        # DeBERTa-v2's other options: absolute positions and token types in the input, narrower
        # embeddings projected, exact relative positions clamped at 48, separate position
        # projections, no LayerNorm on the relative embeddings.
        "deberta-v2-options": (
            DebertaV2Tokenizer(vocab=deb_vocab, unk_id=3, model_max_length=512),
            DebertaV2Config(
                vocab_size=len(deb_vocab),
                **SHAPE,
                embedding_size=16,
                max_position_embeddings=512,
                relative_attention=True,
                position_buckets=-1,
                max_relative_positions=48,
                pos_att_type="c2p|p2c",
                share_att_key=False,
                norm_rel_ebd="none",
                position_biased_input=True,
                type_vocab_size=2,
                layer_norm_eps=1e-7,
                pooler_dropout=0.1,
                pooler_hidden_act="relu",
                pad_token_id=0,
            ),
            DebertaV2ForSequenceClassification,
        ),
        "modernbert": (
            modern,
            ModernBertConfig(
                vocab_size=len(modern),
                hidden_size=32,
                intermediate_size=48,
                num_hidden_layers=3,
                num_attention_heads=4,
                max_position_embeddings=512,
                local_attention=16,
                global_attn_every_n_layers=3,
                classifier_pooling="mean",
                pad_token_id=modern.pad_token_id,
                cls_token_id=modern.cls_token_id,
                sep_token_id=modern.sep_token_id,
                bos_token_id=modern.cls_token_id,
                eos_token_id=modern.sep_token_id,
            ),
            ModernBertForSequenceClassification,
        ),
    }


def encode(tok, rows):
    return [dict(tok(s1, s2, truncation=True)) for s1, s2, _ in rows]


def collate(tok, rows, labels=False):
    feats = encode(tok, rows)
    if labels:
        for f, (_, _, label) in zip(feats, rows):
            f["labels"] = label
    return DataCollatorWithPadding(tok)(feats)


def abs_sum(model):
    return float(sum(p.detach().double().abs().sum() for p in model.parameters()))


def task_heads(dir, tok, val):
    """The token classification and question answering heads (saved beside the model) and what
    they compute on validation pairs 0-7."""
    out = {}
    batch = collate(tok, val[:8])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    tags = torch.where(mask.bool(), ids % 5, torch.full_like(ids, -100))
    tags[:, 0] = -100
    starts = torch.tensor([1 + r % 3 for r in range(8)])
    ends = starts + 2
    starts[0] = 1000
    for name, cls, n, labels in [
        ("token_classification", AutoModelForTokenClassification, 5, {"labels": tags}),
        ("question_answering", AutoModelForQuestionAnswering, 2, {"start_positions": starts, "end_positions": ends}),
    ]:
        torch.manual_seed(1)
        model = cls.from_pretrained(dir, num_labels=n, ignore_mismatched_sizes=True, attn_implementation="eager").eval()
        prefix = model.base_model_prefix + "."
        head = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith(prefix)}
        save_file(head, os.path.join(dir, ("token" if n == 5 else "qa") + "_head.safetensors"), metadata={"format": "pt"})
        with torch.no_grad():
            result = model(**batch, **labels)
        if n == 5:
            scores = result.logits * mask.unsqueeze(-1)
            best = [row[m.bool()].argmax(-1).tolist() for row, m in zip(result.logits, mask)]
        else:
            scores = torch.stack([result.start_logits, result.end_logits], -1)
            best = [[int(s.argmax()), int(e.argmax())] for s, e in zip(result.start_logits, result.end_logits)]
        out[name] = {
            "abs_sums": [float(r.double().abs().sum()) for r in scores],
            "best": best,
            "loss": result.loss.item(),
            "parameters": sorted(k for k, _ in model.named_parameters()),
        }
    return out


def reference(dir, train, val):
    tok = AutoTokenizer.from_pretrained(dir)
    model = AutoModelForSequenceClassification.from_pretrained(dir, attn_implementation="eager").eval()
    pairs = encode(tok, val[:16])
    logits, hidden_sums = [], []
    with torch.no_grad():
        for i in (0, 8):
            batch = collate(tok, val[i : i + 8])
            out = model(**batch, output_hidden_states=True)
            logits.append(out.logits)
            last = out.hidden_states[-1].double() * batch["attention_mask"].unsqueeze(-1).double()
            hidden_sums += [[float(h.sum()), float(h.abs().sum())] for h in last]
    logits = torch.cat(logits).tolist()
    tok.padding_side = "left"
    with torch.no_grad():
        logits_left = model(**collate(tok, val[:8])).logits.tolist()
    tok.padding_side = "right"

    heads = task_heads(dir, tok, val)

    model = AutoModelForSequenceClassification.from_pretrained(dir, attn_implementation="eager")
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, 0, 4)
    steps = []
    for i in range(4):
        batch = collate(tok, train[8 * i : 8 * i + 8], labels=True)
        lr = sched.get_last_lr()[0]
        loss = model(**batch).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        steps.append({"lr": lr, "loss": loss.item(), "grad_norm_preclip": norm.item(), "param_abs_sum": abs_sum(model)})
    return {
        "model_input_names": tok.model_input_names,
        "padding_side": tok.padding_side,
        "pairs": [{k: v for k, v in p.items() if k != "attention_mask"} for p in pairs],
        "logits": logits,
        "hidden_sums": hidden_sums,
        "logits_left": logits_left,
        **heads,
        "trace": {"lr": 1e-3, "weight_decay": 0.01, "max_grad_norm": 1.0, "steps": steps},
    }


def main():
    train, val = read_mrpc()
    assert (len(train), len(val)) == (3668, 408), (len(train), len(val))
    os.makedirs(OUT, exist_ok=True)
    for family, (tok, config, cls) in family_builders(train).items():
        dir = os.path.join(OUT, family)
        os.makedirs(dir, exist_ok=True)
        torch.manual_seed(0)
        config.initializer_range = INIT
        config.num_labels = 2
        config.id2label = LABELS
        config.label2id = {v: k for k, v in LABELS.items()}
        model = cls(config)
        model.save_pretrained(dir)
        tok.save_pretrained(dir)
        ref = reference(dir, train, val)
        with open(os.path.join(dir, "reference.json"), "w") as f:
            json.dump(ref, f)
        losses = [round(s["loss"], 4) for s in ref["trace"]["steps"]]
        print(f"{family}: {sum(p.numel() for p in model.parameters())} parameters, ids of pair 0 {ref['pairs'][0]['input_ids'][:12]}..., losses {losses}")
    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }
    with open(os.path.join(OUT, "VERSIONS.json"), "w") as f:
        json.dump(versions, f, indent=1)
        f.write("\n")
    print(versions)


if __name__ == "__main__":
    main()
