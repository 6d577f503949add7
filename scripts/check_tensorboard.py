"""Reads a run's TensorBoard event files with TensorBoard's own reader and checks them against the
run's metrics.jsonl: every logged number is there under the Trainer's tag (train/loss, eval/accuracy,
...) at its step, and the run's arguments are there as text.

    python scripts/check_tensorboard.py LOG_DIR OUTPUT_DIR/metrics.jsonl

Needs `pip install tensorboard` (scripts/install_tensorboard.sh makes such a venv).
"""
import json
import math
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def trainer_tag(key):
    for prefix in ("eval_", "test_"):
        if key.startswith(prefix):
            return prefix[:-1] + "/" + key[len(prefix):]
    return "train/" + key


def main(log_dir, metrics_path):
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in tags["scalars"]}
    expected = 0
    with open(metrics_path) as f:
        for line in f:
            record = json.loads(line)
            step = record["step"]
            for key, value in record.items():
                if key == "step" or not isinstance(value, (int, float)):
                    continue
                tag = trainer_tag(key)
                got = scalars.get(tag, {}).get(step)
                if got is None:
                    sys.exit(f"{tag} at step {step}: missing from the event files (tags: {sorted(scalars)})")
                if not math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-12):
                    sys.exit(f"{tag} at step {step}: {got} in the events, {value} in {metrics_path}")
                expected += 1
    if "args/text_summary" not in tags["tensors"]:
        sys.exit(f"no args text summary (tensors: {tags['tensors']})")
    args = acc.Tensors("args/text_summary")[0].tensor_proto.string_val[0].decode()
    json.loads(args)
    print(f"tensorboard read {expected} scalars under {len(scalars)} tags, all matching {metrics_path}; args text ok")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
