"""The calls: each builds the accel command line, runs it through the native module, and turns its
events and output into Python values, a progress display and exceptions."""

import json
import math
import numbers
import os
import re
import shutil
import sys
import sysconfig
import tempfile
from collections import deque
from pathlib import Path

from . import _native
from ._progress import Progress

# accel's exit code for a config, data or model at fault (another try would fail the same way).
_NOT_RETRYABLE_EXIT_CODE = 2
_EVENT = "@accel-event "
_RANK_PREFIX = re.compile(r"^\[rank \d+\] ")
_ERROR_LINE = re.compile(r"^(?:\[rank \d+\] )?error: (.*)$")


class AccelError(RuntimeError):
    """A job that failed: `message` is accel's one-line message, `exit_code` its exit code, and
    `stderr` the last lines it wrote."""

    def __init__(self, message, exit_code=None, stderr=""):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.stderr = stderr


class ConfigError(AccelError, ValueError):
    """A job refused for its config, its data or its model (accel's exit code 2)."""


def binary():
    """The accel executable the calls run: ACCEL_BIN, else the one this package installed beside
    the interpreter, else `accel` on PATH."""
    if os.environ.get("ACCEL_BIN"):
        return os.environ["ACCEL_BIN"]
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(folder, "accel")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("accel")
    if found:
        return found
    raise AccelError("the accel executable was not found: install the accel-train wheel, or set ACCEL_BIN to its path")


def _toml_string(text):
    """A TOML basic string: backslash, quote and control characters escaped, the rest as it is."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, f"\\u{ord(ch):04x}"))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml(value):
    """A Python value (NumPy's numbers too) as a TOML literal for --set."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return float.__repr__(value)
    if isinstance(value, (str, os.PathLike)):
        return _toml_string(os.fspath(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as a config value")


def _set_args(overrides):
    """`--set key=value` for each override: keyword names at the top level, dicts as sections
    (`data={"max_length": 128}` is `data.max_length`), and dotted names as they are."""
    args = []

    def add(key, value):
        if isinstance(value, dict):
            for k, v in value.items():
                add(f"{key}.{k}", v)
        elif value is not None:
            args.extend(["--set", f"{key}={_toml(value)}"])

    for key, value in overrides.items():
        add(key, value)
    return args


class _Job:
    """One run of the binary: lines to the display, events to the progress bar and callbacks."""

    def __init__(self, progress=True, on_log=None, echo=True):
        self.progress = Progress(progress)
        self.on_log = on_log
        self.echo = echo
        self.results = None
        self.stdout = []
        self.stderr = deque(maxlen=200)

    def line(self, is_stderr, text):
        if is_stderr:
            self.stderr.append(text)
        bare = _RANK_PREFIX.sub("", text, count=1)
        if not is_stderr and bare.startswith(_EVENT):
            self.event(json.loads(bare[len(_EVENT):]))
            return
        if not is_stderr:
            self.stdout.append(text)
        if self.echo:
            self.progress.clear_line()
            stream = sys.stderr if is_stderr else sys.stdout
            print(text, file=stream, flush=True)

    def event(self, event):
        kind = event.get("event")
        if kind == "start":
            self.progress.start(event["total"], event["done"])
        elif kind == "step":
            self.progress.step(event)
        elif kind == "log" and self.on_log is not None:
            self.on_log(event["record"])
        elif kind == "results":
            self.results = event["metrics"]

    def run(self, args, env=None):
        extra = {"ACCEL_EVENTS": "1"}
        extra.update({k: str(v) for k, v in (env or {}).items()})
        try:
            code = _native.run(binary(), [str(a) for a in args], extra, self.line)
        finally:
            self.progress.close()
        if code != 0:
            raise self.error(code)
        return self

    def error(self, code):
        lines = list(self.stderr)
        message = None
        for text in reversed(lines):
            m = _ERROR_LINE.match(text)
            if m:
                message = m.group(1)
                break
        if message is None:
            reports = [l for l in lines if l.startswith("accel launch: ")]
            message = reports[-1] if reports else next((l for l in reversed(lines) if l.strip()), f"accel exited with code {code}")
        kind = ConfigError if code == _NOT_RETRYABLE_EXIT_CODE else AccelError
        return kind(message, code, "\n".join(lines))


def _training(args, progress, on_log, env):
    job = _Job(progress, on_log).run(args, env)
    if job.results is None:
        raise AccelError("the job ended without its results (rank 0 printed no results event)", 0, "\n".join(job.stderr))
    return job.results


def train(config=None, *, progress=True, on_log=None, env=None, **overrides):
    """Fine-tunes as `accel train --config CONFIG --set KEY=VALUE ...` does, in one process, and
    returns the final metrics: `global_step`, `train_loss`, `train_runtime`,
    `train_samples_per_second` and the final evaluation's `eval_*`.

    Overrides are config keys: `learning_rate=2e-5`, `data={"max_length": 128}` (a section), or
    `**{"data.max_length": 128}`. `on_log(record)` is called with each logged record (the lines of
    metrics.jsonl); `progress=False` leaves out the bar; `env` adds variables for the job.
    """
    args = ["train"]
    if config is not None:
        args += ["--config", os.fspath(config)]
    return _training(args + _set_args(overrides), progress, on_log, env)


def launch(
    nproc,
    config=None,
    *,
    hostfile=None,
    threads_per_rank=None,
    oversubscribe=False,
    max_restarts=None,
    mpirun_args=None,
    progress=True,
    on_log=None,
    env=None,
    **overrides,
):
    """Fine-tunes on `nproc` ranks as `accel launch --nproc N train --config CONFIG` does (through
    mpirun; with `hostfile`, across machines), and returns the final metrics as `train` does."""
    args = ["launch", "--nproc", str(int(nproc))]
    if hostfile is not None:
        args += ["--hostfile", os.fspath(hostfile)]
    if threads_per_rank is not None:
        args += ["--threads-per-rank", str(int(threads_per_rank))]
    if oversubscribe:
        args.append("--oversubscribe")
    if max_restarts is not None:
        args += ["--max-restarts", str(int(max_restarts))]
    if mpirun_args:
        args += ["--mpirun-args", " ".join(mpirun_args) if not isinstance(mpirun_args, str) else mpirun_args]
    args.append("train")
    if config is not None:
        args += ["--config", os.fspath(config)]
    return _training(args + _set_args(overrides), progress, on_log, env)


def evaluate(model_dir, data=None, *, split=None, config=None, batch_size=None, mixed_precision=None, device=None,
             env=None, **overrides):
    """Evaluates a fine-tuned model as `accel eval` does, on a built-in dataset (`"glue/mrpc"`) or on
    the data a config's [data] section (and the overrides, `data={...}`) describes. Returns the
    metrics as the Trainer's `evaluate` names them: `eval_loss`, `eval_accuracy`, ...,
    `eval_runtime` and `eval_samples`."""
    args = ["eval", "--model", os.fspath(model_dir), "--json"]
    if data is not None:
        args.append(str(data))
    if config is not None:
        args += ["--config", os.fspath(config)]
    for flag, value in (("--split", split), ("--batch-size", batch_size), ("--mixed-precision", mixed_precision),
                        ("--device", device)):
        if value is not None:
            args += [flag, str(value)]
    job = _Job(progress=False, echo=False).run(args + _set_args(overrides), env)
    found = [json.loads(l) for l in job.stdout if l.startswith("{")]
    if not found:
        raise AccelError("accel eval printed no result", 0, "\n".join(job.stderr))
    result = found[-1]
    metrics = {f"eval_{k}": v for k, v in result["metrics"].items()}
    metrics["eval_runtime"] = result["seconds"]
    metrics["eval_samples"] = result["rows"]
    return metrics


def _task_of(model_dir):
    config = Path(model_dir) / "config.json"
    try:
        architectures = json.loads(config.read_text()).get("architectures") or [""]
    except OSError as e:
        raise AccelError(f"{config}: {e}") from None
    name = architectures[0]
    if name.endswith("ForTokenClassification"):
        return "token-classification"
    if name.endswith("ForQuestionAnswering"):
        return "question-answering"
    return "sequence-classification"


def _inputs_file(task, inputs, folder):
    """Writes in-memory inputs as a JSON-lines file accel predict reads; returns its path and the
    extra arguments it needs."""
    path = Path(folder) / "inputs.jsonl"
    rows, extra = [], []
    if task == "sequence-classification":
        pairs = [tuple(x) if isinstance(x, (tuple, list)) else (x,) for x in inputs]
        widths = {len(p) for p in pairs}
        if widths - {1, 2} or len(widths) > 1:
            raise ValueError("inputs must all be sentences, or all (sentence, sentence) pairs")
        columns = ["sentence1", "sentence2"] if widths == {2} else ["sentence"]
        rows = [dict(zip(columns, p)) for p in pairs]
        extra = ["--text-columns", ",".join(columns)]
    elif task == "token-classification":
        rows = [{"tokens": x.split() if isinstance(x, str) else list(x)} for x in inputs]
    else:
        for i, x in enumerate(inputs):
            if not isinstance(x, dict) or "question" not in x or "context" not in x:
                raise ValueError("question answering inputs are dicts with 'question' and 'context' (and 'id')")
            rows.append({"id": str(x.get("id", i)), "question": x["question"], "context": x["context"]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, extra


def predict(model_dir, inputs, *, text_pair=None, batch_size=None, mixed_precision=None, device=None,
            version_2_with_negative=False, null_score_diff_threshold=None, max_length=None, doc_stride=None,
            env=None):
    """Predictions of a fine-tuned model as `accel predict` gives them. `inputs` is a file path, one
    sentence (with `text_pair`), or a list: of sentences or (sentence, sentence) pairs for a
    classifier (one dict each: label, probabilities), of sentences or word lists for a token
    classifier (one dict each: its words and tags), of {"id", "question", "context"} dicts for
    question answering (a dict: id -> answer text; `max_length` and `doc_stride` shape its windows
    as they were in training)."""
    task = _task_of(model_dir)
    args = ["predict", "--model", os.fspath(model_dir)]
    for flag, value in (("--batch-size", batch_size), ("--mixed-precision", mixed_precision), ("--device", device),
                        ("--null-score-diff-threshold", null_score_diff_threshold), ("--max-length", max_length),
                        ("--doc-stride", doc_stride)):
        if value is not None:
            args += [flag, str(value)]
    if version_2_with_negative:
        args.append("--version-2-with-negative")
    with tempfile.TemporaryDirectory(prefix="accel-predict-") as folder:
        # os.path.isfile, unlike Path.is_file, is False for a sentence too long to be a file name.
        if isinstance(inputs, (str, os.PathLike)) and (text_pair is not None or not os.path.isfile(inputs)):
            args += ["--text", os.fspath(inputs)]
            if text_pair is not None:
                args += ["--text-pair", text_pair]
        elif isinstance(inputs, (str, os.PathLike)):
            args += ["--input", os.fspath(inputs)]
        else:
            path, extra = _inputs_file(task, list(inputs), folder)
            args += ["--input", str(path)] + extra
        job = _Job(progress=False, echo=False).run(args, env)
    if task == "question-answering":
        # One JSON object, written over several lines.
        text = "\n".join(job.stdout).strip()
        return json.loads(text) if text else {}
    return [json.loads(l) for l in job.stdout if l.strip()]
