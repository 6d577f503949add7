"""The token classification test data and its references from transformers and seqeval.

Writes `tests/fixtures/ner/`:
- `train.conll`, `validation.conll`: sentences written for the tests (no licensed corpus): made-up
  people, organisations, places and events in a few sentence patterns, in CoNLL-2003's layout
  (`word POS chunk tag` per line, `-DOCSTART-` lines, blank lines between sentences; the tags in
  IOB2, with some IOB1-style runs that start with I-, as conlleval reads them). A fixed seed makes
  the files the same on every run.
- `validation.parquet`: the validation sentences as the hub's `conll2003` parquet files hold them,
  written by `datasets` (`tokens`, and `ner_tags` as ids of a ClassLabel whose names, in
  CoNLL-2003's order, are in the file's `huggingface` metadata);
- `reference.json`, from the files and the tiny models of `tests/fixtures/models/`:
  - `labels`: the sorted tag names (run_ner's `get_label_list`);
  - `aligned`: for each model folder and `label_all_tokens` false and true, the course's
    `tokenize_and_align_labels` on the validation sentences (input_ids and labels);
  - `seqeval`: what `evaluate.load("seqeval")` computes (seqeval's default, conlleval mode; its
    `compute`, written out in `seqeval_scores` as evaluate's metric script has it, since evaluate
    fetches that script from the hub) on the validation tags against predictions made from them by
    fixed edits, overall and per type.

Run from a venv with transformers, datasets, seqeval and evaluate from PyPI (outside the repository):

    ~/torch-venv/bin/python scripts/make_task_fixtures.py
"""
import json
import os
import random

from datasets import ClassLabel, Dataset, Features, Sequence, Value
from seqeval.metrics import accuracy_score, classification_report
from transformers import AutoTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "fixtures", "ner")
MODELS = os.path.join(REPO, "tests", "fixtures", "models")

FIRST = ["Anna", "Tomas", "Ingrid", "Kofi", "Mei", "Rafael", "Sunita", "Olek", "Brigid", "Hamid", "Yuki", "Lars"]
LAST = ["Varga", "Okafor", "Lindqvist", "Moreau", "Tanaka", "Castellano", "Iyer", "Novak", "Whitcombe", "Adeyemi"]
ORGS = [["Northwind", "Analytics"], ["Bellhaven", "Bank"], ["Quarry", "Labs"], ["Tessaly", "Motors"],
        ["the", "Harbour", "Trust"], ["Crestline", "Media", "Group"], ["Orrin", "Pharma"], ["Vexa"]]
PLACES = [["Lisbon"], ["Nairobi"], ["Osaka"], ["Valparaiso"], ["Tromso"], ["New", "Carthage"], ["Port", "Elbe"],
          ["Montreal"], ["the", "Upper", "Valley"]]
EVENTS = [["Spring", "Expo"], ["Open", "Data", "Week"], ["Harvest", "Cup"], ["Euro", "Summit"], ["Nordic", "Games"]]
VERBS = ["joined", "left", "visited", "sued", "praised", "criticised", "advised", "hired"]
PATTERNS = [
    "{per} {verb} {org} in {loc} .",
    "{org} said on Tuesday that {per} would attend the {misc} .",
    "In {loc} , {per} and {per2} {verb} {org} .",
    "The {misc} opened in {loc} with {per} as host .",
    "Shares of {org} rose 3.5 percent after {per} {verb} the board .",
    "{per} , a spokesman for {org} , declined to comment .",
    "Officials in {loc} expect the {misc} to draw 20,000 visitors .",
    "{org} and {org2} agreed to merge , {per} told reporters in {loc} .",
]


def entity(kind, words, rng):
    # Mostly IOB2; now and then an IOB1-style entity that opens with I-, which conlleval accepts.
    first = "I" if rng.random() < 0.08 else "B"
    return [(w, "NNP", f"{'I' if i else first}-{kind}") for i, w in enumerate(words)]


def sentence(rng):
    pattern = rng.choice(PATTERNS)
    person = lambda: [rng.choice(FIRST)] + ([rng.choice(LAST)] if rng.random() < 0.7 else [])
    fills = {
        "per": entity("PER", person(), rng),
        "per2": entity("PER", person(), rng),
        "org": entity("ORG", rng.choice(ORGS), rng),
        "org2": entity("ORG", rng.choice(ORGS), rng),
        "loc": entity("LOC", rng.choice(PLACES), rng),
        "misc": entity("MISC", rng.choice(EVENTS), rng),
        "verb": [(rng.choice(VERBS), "VBD", "O")],
    }
    out = []
    for piece in pattern.split():
        if piece.startswith("{"):
            out += fills[piece[1:-1]]
        else:
            out.append((piece, "NN", "O"))
    return out


def write(path, sentences):
    with open(path, "w") as f:
        f.write("-DOCSTART- -X- -X- O\n\n")
        for i, s in enumerate(sentences):
            if i and i % 50 == 0:
                f.write("-DOCSTART- -X- -X- O\n\n")
            for word, pos, tag in s:
                f.write(f"{word} {pos} I-NP {tag}\n")
            f.write("\n")


def align(tok, sentences, names, label_all_tokens):
    """The course's tokenize_and_align_labels."""
    words = [[w for w, _, _ in s] for s in sentences]
    tags = [[names.index(t) for _, _, t in s] for s in sentences]
    enc = tok(words, truncation=True, is_split_into_words=True)
    labels = []
    for i, tag_ids in enumerate(tags):
        previous, row = None, []
        for word in enc.word_ids(batch_index=i):
            if word is None:
                row.append(-100)
            elif word != previous:
                row.append(tag_ids[word])
            else:
                name = names[tag_ids[word]]
                inside = names.index("I-" + name[2:]) if name.startswith("B-") else tag_ids[word]
                row.append(inside if label_all_tokens else -100)
            previous = word
        labels.append(row)
    return {"input_ids": enc["input_ids"], "labels": labels}


def edited(tags, rng):
    """Predictions from the gold tags by fixed edits: a type swapped, a B- dropped, a spurious tag."""
    types = ["PER", "ORG", "LOC", "MISC"]
    out = []
    for row in tags:
        row = list(row)
        for i, t in enumerate(row):
            r = rng.random()
            if t != "O" and r < 0.1:
                row[i] = t[:2] + rng.choice(types)
            elif t.startswith("B-") and r < 0.15:
                row[i] = "I-" + t[2:]
            elif t == "O" and r < 0.04:
                row[i] = rng.choice(["B-", "I-"]) + rng.choice(types)
        out.append(row)
    return out


def seqeval_scores(predictions, references):
    """evaluate's `seqeval` metric: seqeval's classification report, per type and micro-averaged,
    and the token accuracy."""
    report = classification_report(y_true=references, y_pred=predictions, output_dict=True, zero_division="warn")
    report.pop("macro avg")
    report.pop("weighted avg")
    overall = report.pop("micro avg")
    scores = {
        kind: {"precision": float(s["precision"]), "recall": float(s["recall"]), "f1": float(s["f1-score"]), "number": int(s["support"])}
        for kind, s in report.items()
    }
    scores["overall_precision"] = float(overall["precision"])
    scores["overall_recall"] = float(overall["recall"])
    scores["overall_f1"] = float(overall["f1-score"])
    scores["overall_accuracy"] = float(accuracy_score(y_true=references, y_pred=predictions))
    return scores


def main():
    rng = random.Random(2026)
    train = [sentence(rng) for _ in range(300)]
    validation = [sentence(rng) for _ in range(60)]
    os.makedirs(OUT, exist_ok=True)
    write(os.path.join(OUT, "train.conll"), train)
    write(os.path.join(OUT, "validation.conll"), validation)
    names = sorted({t for s in train + validation for _, _, t in s})
    conll2003 = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    features = Features({"id": Value("string"), "tokens": Sequence(Value("string")),
                         "ner_tags": Sequence(ClassLabel(names=conll2003))})
    Dataset.from_dict({
        "id": [str(i) for i in range(len(validation))],
        "tokens": [[w for w, _, _ in s] for s in validation],
        "ner_tags": [[conll2003.index(t) for _, _, t in s] for s in validation],
    }, features=features).to_parquet(os.path.join(OUT, "validation.parquet"))
    aligned = {}
    for model in ["bert", "roberta"]:
        kwargs = {"add_prefix_space": True} if model == "roberta" else {}
        tok = AutoTokenizer.from_pretrained(os.path.join(MODELS, model), **kwargs)
        aligned[model] = {str(all_tokens).lower(): align(tok, validation, names, all_tokens) for all_tokens in (False, True)}
    gold = [[t for _, _, t in s] for s in validation]
    predictions = edited(gold, random.Random(7))
    scores = seqeval_scores(predictions, gold)
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"labels": names, "aligned": aligned, "predictions": predictions, "seqeval": scores}, f)
    print(f"{len(train)} + {len(validation)} sentences, tags {names}; seqeval overall f1 {scores['overall_f1']:.4f}")


if __name__ == "__main__":
    main()
