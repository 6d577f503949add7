"""The question answering test data and its references from transformers and evaluate.

Writes `tests/fixtures/squad/`:
- `train.json`, `validation.json`: SQuAD v2.0-format files written for the tests (no licensed
  corpus): made-up towns, their founders, rivers, mayors and trades, in contexts long enough to
  need two windows of 384 tokens, with questions whose answers are spans of the context, and
  unanswerable questions (about towns a context does not mention). Some validation questions have
  a second gold answer. A fixed seed makes the files the same on every run.
- `validation.jsonl`: the validation examples as JSON lines, in the layout of Hugging Face's
  `squad_v2` dataset (`id`, `title`, `context`, `question`, `answers` {`text`, `answer_start`}).
- `reference.json`, from the files and the tiny models of `tests/fixtures/models/`:
  - `windows`: run_qa.py's pre-processing of the first 16 validation examples (the question first,
    `truncation="only_second"`, overflowing windows with a stride, the offset mapping) for the
    BERT tokenizer at max_length 384 / stride 128 and the RoBERTa one at 128 / 32 (the first 4):
    per window the example's index, `input_ids`, the context tokens' first position and character
    offsets (`context_start`, `context_offsets` flat; the other tokens' offsets are None, as
    `prepare_validation_features` leaves them) and the answer's `start_positions` /
    `end_positions` (`prepare_train_features`; the first token when the answer is not inside);
  - `logits`: the start and end logits of each BERT window from transformers'
    `AutoModelForQuestionAnswering` on the tiny BERT (its `qa_outputs` drawn with seed 0), as
    little-endian float32 in base64;
  - `answers_v2`, `answers_v1`: the answers that post-processing picks from those logits (n-best
    20, max_answer_length 30; with and without the null answer, threshold 0), the algorithm of
    run_qa's `utils_qa.postprocess_qa_predictions`, written out below; `null_score_diffs`, and
    `answers_v2_at_threshold` at `threshold` (their median: about half become the null answer);
  - `squad_v2`, `squad`: `evaluate`'s `squad_v2` on `answers_v2` and on `edited` (answers made from
    the gold ones by fixed edits: case, articles, punctuation, a word more or less, a wrong answer),
    and `squad` on the answerable questions' `edited` answers.

evaluate fetches its metric scripts from the hub; this script loads them from a checkout of
github.com/huggingface/evaluate instead (its `metrics/` folder), so it runs offline:

    ~/torch-venv/bin/python scripts/make_qa_fixtures.py EVALUATE_CHECKOUT/metrics
"""
import base64
import collections
import json
import os
import random
import sys

import evaluate
import numpy as np
import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "fixtures", "squad")
MODELS = os.path.join(REPO, "tests", "fixtures", "models")

TOWNS = ["Marlowe", "Ashgrove", "Kelberg", "Durnwick", "Saltmere", "Penhallow", "Brønby", "Vellis",
         "Oakhurst", "Tarrow", "Querin", "Lindvik", "Mossbank", "Corrith", "Elmsford", "Havlen",
         "Ristow", "Galloway Cross", "Fennick", "Zell am Brook", "Norwold", "Ambleton", "Krasny Dol", "Wrenfield"]
PEOPLE = ["Edith Crane", "Tomas Varga", "Ingrid Holm", "Kofi Mensah", "Mei Tanaka", "Rafael Ortiz",
          "Sunita Rao", "Olek Nowak", "Brigid Shea", "Hamid Karimi", "Yuki Mori", "Lars Berg", "Ada Finch",
          "José Álvarez", "Nora Quist", "Piet de Wit"]
RIVERS = ["Aln", "Tessel", "Greywater", "Marr", "Ouse", "Vinter", "Kell", "Sorrow", "Bright", "Lune"]
TRADES = [("the Crane Mill", "woollen cloth"), ("Harbour Glassworks", "bottles"), ("Veld Motors", "tractors"),
          ("Northgate Press", "atlases"), ("the Saltmere Cannery", "tinned herring"), ("Orrin Pharma", "cough syrup"),
          ("Tessaly Looms", "carpets"), ("Brightwork Ltd.", "clocks"), ("Kell Ceramics", "roof tiles")]
FILLER = [
    "Visitors often remark on the quiet streets and the old stone bridges.",
    "The weekly market fills the square with stalls selling cheese, bread and apples.",
    "In winter the roads over the hills are sometimes closed for days at a time.",
    "A small museum keeps maps, letters and tools from the early settlers.",
    "The railway arrived late, and for decades the post came by coach.",
    "Local schools teach the history of the valley in their first years.",
    "Several festivals mark the change of the seasons with music and food.",
    "The surrounding farms grow barley, potatoes and some hardy vines.",
]


def town_facts(rng, town):
    founder = rng.choice(PEOPLE)
    year = str(rng.randint(1620, 1910))
    river = rng.choice(RIVERS)
    mayor = rng.choice([p for p in PEOPLE if p != founder])
    employer, product = rng.choice(TRADES)
    sentences = [
        ("The town of {town} lies on the {river} river.", {"river": river}),
        ("{town} was founded in {year} by {founder}.", {"year": year, "founder": founder}),
        ("Its largest employer is {employer}, which makes {product}.", {"employer": employer, "product": product}),
        ("The current mayor of {town} is {mayor}.", {"mayor": mayor}),
    ]
    questions = [
        ("Who founded {town}?", "founder", founder),
        ("In which year was {town} founded?", "year", year),
        ("On which river does {town} lie?", "river", river),
        ("Who is the mayor of {town}?", "mayor", mayor),
        ("What does the largest employer of {town} make?", "product", product),
    ]
    text = []
    for template, fills in sentences:
        text.append(template.format(town=town, **fills))
    return text, [(q.format(town=town), kind, answer) for q, kind, answer in questions]


def article(rng, towns, index, split):
    """A context about several towns, with filler between them, and its questions."""
    parts, qas = [], []
    for town in towns:
        facts, questions = town_facts(rng, town)
        parts += facts + rng.sample(FILLER, 4)
        qas += rng.sample(questions, 2)
    context = " ".join(parts)
    out = []
    for n, (question, kind, answer) in enumerate(qas):
        # The answer's first mention after the sentence that names its town.
        town = next(t for t in towns if t in question)
        after = context.index(town)
        start = context.index(answer, after)
        answers = {"text": [answer], "answer_start": [start]}
        if split == "validation" and kind == "year" and n % 2 == 0:
            answers["text"].append("in " + answer)
            answers["answer_start"].append(start - 3)
        out.append({"id": f"{split}-{index}-{n}", "question": question, "answers": answers})
    absent = [t for t in TOWNS if t not in towns]
    for n in range(2):
        town = rng.choice(absent)
        question = rng.choice(["Who founded {t}?", "Who is the mayor of {t}?", "On which river does {t} lie?"])
        # Now and then a question with spaces before it, which run_qa strips.
        lead = "  " if n == 1 and index % 2 == 0 else ""
        out.append({"id": f"{split}-{index}-x{n}", "question": lead + question.format(t=town),
                    "answers": {"text": [], "answer_start": []}})
    return {"title": f"Towns {index}", "context": context, "qas": out}


def squad_json(articles):
    data = []
    for a in articles:
        qas = []
        for q in a["qas"]:
            answers = [{"text": t, "answer_start": s} for t, s in zip(q["answers"]["text"], q["answers"]["answer_start"])]
            qas.append({"id": q["id"], "question": q["question"], "answers": answers, "is_impossible": not answers})
        data.append({"title": a["title"], "paragraphs": [{"context": a["context"], "qas": qas}]})
    return {"version": "v2.0", "data": data}


def flat(articles):
    return [{"id": q["id"], "title": a["title"], "context": a["context"], "question": q["question"], "answers": q["answers"]}
            for a in articles for q in a["qas"]]


def windows(tok, examples, max_length, stride):
    """run_qa.py's prepare_train_features and prepare_validation_features, together."""
    pad_on_right = tok.padding_side == "right"
    questions = [e["question"].lstrip() for e in examples]
    contexts = [e["context"] for e in examples]
    enc = tok(questions if pad_on_right else contexts, contexts if pad_on_right else questions,
              truncation="only_second" if pad_on_right else "only_first", max_length=max_length, stride=stride,
              return_overflowing_tokens=True, return_offsets_mapping=True)
    context_index = 1 if pad_on_right else 0
    out = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        ids = enc["input_ids"][i]
        cls_index = ids.index(tok.cls_token_id) if tok.cls_token_id in ids else 0
        sequence_ids = enc.sequence_ids(i)
        example = enc["overflow_to_sample_mapping"][i]
        answers = examples[example]["answers"]
        if not answers["answer_start"]:
            start = end = cls_index
        else:
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            first = sequence_ids.index(context_index)
            last = len(ids) - 1 - sequence_ids[::-1].index(context_index)
            if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
                start = end = cls_index
            else:
                s = first
                while s <= last and offsets[s][0] <= start_char:
                    s += 1
                start = s - 1
                e = last
                while e >= first and offsets[e][1] >= end_char:
                    e -= 1
                end = e + 1
        out.append({
            "example": example,
            "input_ids": ids,
            "token_type_ids": enc["token_type_ids"][i] if "token_type_ids" in enc else [0] * len(ids),
            "offsets": [list(o) if sequence_ids[k] == context_index else None for k, o in enumerate(offsets)],
            "start_positions": start,
            "end_positions": end,
        })
    return out


def postprocess(examples, features, starts, ends, version_2, n_best=20, max_answer_length=30, threshold=0.0):
    """The algorithm of utils_qa.postprocess_qa_predictions (run_qa.py), on float32 logits."""
    per_example = collections.defaultdict(list)
    for i, f in enumerate(features):
        per_example[f["example"]].append(i)
    answers, diffs = {}, {}
    for index, example in enumerate(examples):
        best_null, prelim = None, []
        for i in per_example[index]:
            s_logits, e_logits, offsets = starts[i], ends[i], features[i]["offsets"]
            null = s_logits[0] + e_logits[0]
            if best_null is None or best_null["score"] > null:
                best_null = {"offsets": (0, 0), "score": null, "start_logit": s_logits[0], "end_logit": e_logits[0]}
            for s in np.argsort(s_logits)[-1: -n_best - 1: -1].tolist():
                for e in np.argsort(e_logits)[-1: -n_best - 1: -1].tolist():
                    if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    prelim.append({"offsets": (offsets[s][0], offsets[e][1]), "score": s_logits[s] + e_logits[e],
                                   "start_logit": s_logits[s], "end_logit": e_logits[e]})
        if version_2:
            prelim.append(best_null)
        predictions = sorted(prelim, key=lambda p: p["score"], reverse=True)[:n_best]
        if version_2 and not any(p["offsets"] == (0, 0) for p in predictions):
            predictions.append(best_null)
        for p in predictions:
            o = p.pop("offsets")
            p["text"] = example["context"][o[0]:o[1]]
        if not predictions or (len(predictions) == 1 and predictions[0]["text"] == ""):
            predictions.insert(0, {"text": "empty", "start_logit": np.float32(0), "end_logit": np.float32(0), "score": np.float32(0)})
        if not version_2:
            answers[example["id"]] = predictions[0]["text"]
        else:
            i = 0
            while predictions[i]["text"] == "":
                i += 1
            best = predictions[i]
            diff = best_null["score"] - best["start_logit"] - best["end_logit"]
            diffs[example["id"]] = float(diff)
            answers[example["id"]] = "" if diff > threshold else best["text"]
    return answers, diffs


def edited(examples, rng):
    """Predictions made from the gold answers by fixed edits."""
    out = {}
    for e in examples:
        gold = e["answers"]["text"]
        if not gold:
            out[e["id"]] = rng.choice(["", "", "Edith Crane"])
            continue
        answer = gold[-1]
        r = rng.random()
        if r < 0.2:
            answer = answer.upper()
        elif r < 0.35:
            answer = "the " + answer + "."
        elif r < 0.5:
            answer = answer + " river"
        elif r < 0.6:
            answer = answer.split()[0]
        elif r < 0.7:
            answer = "Lars Berg"
        out[e["id"]] = answer
    return out


def f32_base64(values):
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


def main():
    metrics_dir = sys.argv[1]
    rng = random.Random(2026)
    articles = {}
    for split, count in [("train", 24), ("validation", 4)]:
        articles[split] = [article(rng, rng.sample(TOWNS, 3), i, split) for i in range(count)]
    os.makedirs(OUT, exist_ok=True)
    for split in articles:
        with open(os.path.join(OUT, f"{split}.json"), "w", encoding="utf-8") as f:
            json.dump(squad_json(articles[split]), f, ensure_ascii=False)
    examples = flat(articles["validation"])
    with open(os.path.join(OUT, "validation.jsonl"), "w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps(e, ensure_ascii=False) + "\n")

    bert = AutoTokenizer.from_pretrained(os.path.join(MODELS, "bert"))
    roberta = AutoTokenizer.from_pretrained(os.path.join(MODELS, "roberta"))
    # The references cover the first two articles' questions (16), to keep the file small.
    examples = examples[:16]
    features = {"bert": windows(bert, examples, 384, 128), "roberta": windows(roberta, examples[:4], 128, 32)}

    torch.manual_seed(0)
    model = AutoModelForQuestionAnswering.from_pretrained(os.path.join(MODELS, "bert"))
    model.eval()
    starts, ends = [], []
    with torch.no_grad():
        for f in features["bert"]:
            ids = torch.tensor([f["input_ids"]])
            out = model(input_ids=ids, token_type_ids=torch.tensor([f["token_type_ids"]]))
            starts.append(out.start_logits[0].numpy().astype(np.float32))
            ends.append(out.end_logits[0].numpy().astype(np.float32))
    answers_v2, diffs = postprocess(examples, features["bert"], starts, ends, version_2=True)
    answers_v1, _ = postprocess(examples, features["bert"], starts, ends, version_2=False)
    # A threshold that turns about half the answers into the null answer.
    threshold = float(np.median(list(diffs.values())))
    answers_at, _ = postprocess(examples, features["bert"], starts, ends, version_2=True, threshold=threshold)

    squad_v2 = evaluate.load(os.path.join(metrics_dir, "squad_v2", "squad_v2.py"))
    squad = evaluate.load(os.path.join(metrics_dir, "squad", "squad.py"))
    references = [{"id": e["id"], "answers": e["answers"]} for e in examples]
    v2 = lambda preds: squad_v2.compute(
        predictions=[{"id": k, "prediction_text": v, "no_answer_probability": 0.0} for k, v in preds.items()],
        references=references)
    edits = edited(examples, random.Random(7))
    answerable = [e for e in examples if e["answers"]["text"]]
    v1_edited = squad.compute(
        predictions=[{"id": e["id"], "prediction_text": edits[e["id"]]} for e in answerable],
        references=[{"id": e["id"], "answers": e["answers"]} for e in answerable])
    written = {}
    for name, fs in features.items():
        written[name] = []
        for f in fs:
            # The context's tokens are one run: its first position and their offsets, flat.
            first = next(k for k, o in enumerate(f["offsets"]) if o is not None)
            context = [x for o in f["offsets"] if o is not None for x in o]
            written[name].append({"example": f["example"], "input_ids": f["input_ids"], "context_start": first,
                                  "context_offsets": context, "start_positions": f["start_positions"],
                                  "end_positions": f["end_positions"]})
    reference = {
        "windows": written,
        "logits": [{"start": f32_base64(s), "end": f32_base64(e)} for s, e in zip(starts, ends)],
        "answers_v2": answers_v2,
        "null_score_diffs": diffs,
        "threshold": threshold,
        "answers_v2_at_threshold": answers_at,
        "answers_v1": answers_v1,
        "edited": edits,
        "squad_v2": {"answers_v2": v2(answers_v2), "answers_v2_at_threshold": v2(answers_at), "edited": v2(edits)},
        "squad": {"edited": v1_edited},
    }
    with open(os.path.join(OUT, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(reference, f, ensure_ascii=False)
    counts = {k: len(v) for k, v in features.items()}
    print(f"{sum(len(a['qas']) for a in articles['train'])} train and {len(flat(articles['validation']))} validation questions; "
          f"windows {counts}; squad_v2 on the edits {reference['squad_v2']['edited']}")


if __name__ == "__main__":
    main()
