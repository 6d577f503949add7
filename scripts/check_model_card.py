"""Checks a saved model's card (README.md) against the Trainer's card fields and the run's figures.

    python scripts/check_model_card.py MODEL_DIR [METRICS_JSONL]

- the YAML metadata parses, and holds what the Trainer's card holds (library_name, tags with
  generated_from_trainer, model-index; datasets, metrics and a result for a Hub dataset);
- huggingface_hub's ModelCard.load reads the file, and its data equals the YAML;
- the model-index values and the "results on the evaluation set" lines equal the run's last
  evaluation in metrics.jsonl (by default MODEL_DIR/metrics.jsonl), and the training results table
  has one row per evaluation logged.

Needs PyYAML and huggingface_hub (both come with transformers).
"""

import json
import math
import sys
from pathlib import Path

import yaml
from huggingface_hub import ModelCard


def title(key):
    return " ".join(part.capitalize() for part in key.split("_"))


def main():
    model_dir = Path(sys.argv[1])
    metrics_path = Path(sys.argv[2]) if len(sys.argv) > 2 else model_dir / "metrics.jsonl"
    text = (model_dir / "README.md").read_text()
    assert text.startswith("---\n"), "the card does not open with YAML metadata"
    meta = yaml.safe_load(text.split("---\n")[1])
    card = ModelCard.load(model_dir / "README.md")
    assert card.data.to_dict() == meta, (card.data.to_dict(), meta)

    assert meta["library_name"] == "transformers", meta
    assert "generated_from_trainer" in meta["tags"], meta
    assert meta["model-index"][0]["name"] == model_dir.name, meta

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    evaluations = [r for r in records if "eval_loss" in r]
    assert evaluations, f"{metrics_path} holds no evaluation"
    last = {k[len("eval_"):]: v for k, v in evaluations[-1].items() if k.startswith("eval_") and k != "eval_runtime"}

    results = meta["model-index"][0]["results"]
    if "datasets" in meta:
        assert len(results) == 1, results
        shown = {m["type"]: m["value"] for m in results[0]["metrics"]}
        assert set(shown) == set(meta["metrics"]), (shown, meta["metrics"])
        for key, value in shown.items():
            assert math.isclose(value, last[key], rel_tol=0, abs_tol=1e-12), (key, value, last[key])
        assert results[0]["task"]["type"] and results[0]["dataset"]["split"], results
    for key, value in last.items():
        line = f"- {title(key)}: "
        found = [l for l in text.splitlines() if l.startswith(line)]
        assert found, f"no {line!r} line in the card"
        assert abs(float(found[0][len(line):]) - value) <= 5e-5, (found[0], value)

    table = text.split("### Training results\n\n")[1].split("\n\n")[0].splitlines()
    assert len(table) == 2 + len(evaluations), (len(table), len(evaluations))
    print(f"model card of {model_dir}: YAML and ModelCard.load agree; {len(shown) if 'datasets' in meta else 0} "
          f"model-index metrics and {len(last)} result lines equal the last evaluation; "
          f"{len(evaluations)} rows in the results table")


if __name__ == "__main__":
    main()
