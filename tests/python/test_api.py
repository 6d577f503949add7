"""The Python module from the installed wheel: accel.train, accel.launch, evaluate and predict
return what the CLI computes, errors raise with accel's message, the GIL is free while a job runs,
and a KeyboardInterrupt stops a 2-rank job leaving no process behind."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import accel
from conftest import REPO, mrpc_config, no_accel_process_left


@pytest.fixture(scope="module")
def trained(tmp_path_factory, accel_env):
    """20 steps of MRPC on one process through accel.train, with the records on_log saw and how
    far a Python thread counted meanwhile."""
    os.environ.update({k: accel_env[k] for k in ("ACCEL_DATA_DIR", "ACCEL_MODEL_DIR", "HF_HUB_OFFLINE")})
    root = tmp_path_factory.mktemp("trained")
    out = root / "mrpc-py"
    config = mrpc_config(root / "run.toml", out, max_steps=40)
    seen, count, done = [], [0], threading.Event()

    def counter():
        while not done.is_set():
            count[0] += 1

    thread = threading.Thread(target=counter)
    thread.start()
    started = time.monotonic()
    try:
        metrics = accel.train(config, on_log=seen.append, max_steps=20, data={"max_length": 128})
    finally:
        done.set()
        thread.join()
    return out, metrics, seen, count[0], time.monotonic() - started


def records(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]


def test_train_returns_the_runs_final_metrics(trained):
    out, metrics, seen, _, _ = trained
    assert metrics["global_step"] == 20, "the override max_steps=20 wins over the file's 40"
    last_eval = [r for r in records(out) if "eval_loss" in r][-1]
    for key, value in last_eval.items():
        if key.startswith("eval_") and key != "eval_runtime":
            assert metrics[key] == value, (key, metrics[key], value)
    summary = [r for r in records(out) if "train_loss" in r][-1]
    assert metrics["train_loss"] == summary["train_loss"]
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and metrics["train_samples_per_second"] > 0
    assert seen == records(out), "on_log sees every record of metrics.jsonl, in order"
    resolved = subprocess.run([accel.binary(), "config", "--print", "--config", str(out.parent / "run.toml"),
                               "--set", "data.max_length=128"], capture_output=True, text=True, check=True).stdout
    assert "max_length = 128" in resolved


def test_the_gil_is_free_while_a_job_runs(trained):
    _, _, _, counted, seconds = trained
    # A thread that could only run between the job's lines would count a few thousand at most.
    assert counted > 1_000_000, f"a Python thread counted to {counted} in {seconds:.1f} s"


def test_evaluate_and_predict_give_what_the_cli_gives(trained):
    out, metrics, _, _, _ = trained
    evaluated = accel.evaluate(out, "glue/mrpc")
    assert evaluated["eval_samples"] == 408
    assert abs(evaluated["eval_accuracy"] - metrics["eval_accuracy"]) < 1e-9
    assert abs(evaluated["eval_loss"] - metrics["eval_loss"]) < 1e-4
    pairs = [("He said so .", "So he said ."), ("The cat sat .", "Stocks fell sharply on Monday .")]
    predicted = accel.predict(out, pairs)
    assert len(predicted) == 2
    for p in predicted:
        assert p["label"] in ("equivalent", "not_equivalent") and abs(sum(p["probabilities"].values()) - 1) < 1e-5
    one = accel.predict(out, pairs[0][0], text_pair=pairs[0][1])
    assert one[0]["probabilities"] == predicted[0]["probabilities"]


def test_a_bad_config_raises_with_accels_message(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('learning_rat = 1e-5\n[data]\ndataset = "glue/mrpc"\n')
    with pytest.raises(accel.ConfigError) as raised:
        accel.train(config, progress=False)
    message = str(raised.value)
    assert message.startswith("config learning_rat: unknown key") and "did you mean `learning_rate`" in message
    assert raised.value.exit_code == 2 and "\n" not in message
    with pytest.raises(accel.AccelError, match="could not be found|not found"):
        accel.evaluate(tmp_path / "no-such-model", "glue/mrpc")


def test_launch_runs_two_ranks(tmp_path):
    out = tmp_path / "mrpc-2"
    config = mrpc_config(tmp_path / "run.toml", out, max_steps=10)
    metrics = accel.launch(2, config, oversubscribe=True, progress=False)
    assert metrics["global_step"] == 10
    assert "eval_accuracy" in metrics
    report = json.loads((out / "run_report.json").read_text())
    assert report["world_size"] == 2


def test_keyboard_interrupt_stops_every_rank(tmp_path, accel_env):
    out = tmp_path / "interrupted"
    config = mrpc_config(tmp_path / "run.toml", out, max_steps=400)
    script = textwrap.dedent(f"""
        import sys, accel
        def logged(record):
            print("logged", record.get("step"), flush=True)
        try:
            accel.launch(2, {str(config)!r}, oversubscribe=True, progress=False, on_log=logged, logging_steps=1)
        except KeyboardInterrupt:
            print("KeyboardInterrupt raised", flush=True)
            sys.exit(0)
        print("ended without an interrupt", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=accel_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("logged"):
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert "KeyboardInterrupt raised" in stdout, stdout + stderr
    assert no_accel_process_left(), "a rank outlived the interrupt"


def test_the_model_card_holds_the_trainers_fields(trained):
    out, _, _, _, _ = trained
    script = REPO / "scripts" / "check_model_card.py"
    result = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    print(result.stdout.strip())


def test_question_answering_predicts_and_evaluates(tmp_path):
    squad = REPO / "tests" / "fixtures" / "squad"
    out = tmp_path / "qa"
    config = tmp_path / "qa.toml"
    config.write_text(
        f'task = "question-answering"\noutput_dir = "{out}"\nmax_steps = 2\nsave_strategy = "no"\n'
        f'[data]\ntrain_file = "{squad / "train.json"}"\nvalidation_file = "{squad / "validation.json"}"\n'
        f'max_length = 128\ndoc_stride = 32\n'
        f'[model]\nname_or_path = "{REPO / "tests" / "fixtures" / "models" / "bert"}"\nignore_mismatched_sizes = true\n'
    )
    metrics = accel.train(config, progress=False)
    assert metrics["global_step"] == 2 and "eval_f1" in metrics
    questions = json.loads((squad / "validation.json").read_text())["data"][0]["paragraphs"][0]
    inputs = [{"id": q["id"], "question": q["question"], "context": questions["context"]} for q in questions["qas"]]
    answers = accel.predict(out, inputs, max_length=128, doc_stride=32)
    assert set(answers) == {q["id"] for q in inputs}, answers
    for answer in answers.values():
        assert answer == "" or answer in questions["context"], answer
