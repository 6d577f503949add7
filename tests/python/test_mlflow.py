"""report_to = ["mlflow"] against a real MLflow tracking server (PyPI's mlflow), started on a
loopback port by the test and stopped by its PID: a 2-rank run's parameters and metrics read back
through MLflow's client equal metrics.jsonl, the model is logged as an artifact, and a server
killed mid-run leaves the training finishing with one warning."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import accel_binary, free_port, mrpc_config, wait_for

mlflow = pytest.importorskip("mlflow")


@pytest.fixture
def server(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db", "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )

    def up():
        try:
            return urllib.request.urlopen(f"{uri}/health", timeout=1).status == 200
        except OSError:
            return False

    wait_for(up, 120, "the MLflow server to answer")
    yield uri, proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def launch(config, uri, env, extra=(), **popen):
    env = dict(env, MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_NAME="accel-python-tests")
    args = [accel_binary(), "launch", "--nproc", "2", "--oversubscribe", "train", "--config", str(config), *extra]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def records(output_dir):
    return [json.loads(l) for l in (output_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]


def test_a_two_rank_run_reads_back_as_metrics_jsonl(tmp_path, server, accel_env):
    uri, _ = server
    out = tmp_path / "mrpc-mlflow"
    config = mrpc_config(tmp_path / "run.toml", out, extra='report_to = ["mlflow"]\nmlflow_log_model = true')
    proc = launch(config, uri, accel_env)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert "warning" not in stderr, stderr

    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("accel-python-tests")
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'mrpc-mlflow'")
    assert len(runs) == 1, runs
    run = runs[0]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["learning_rate"] == "5e-05" and params["max_steps"] == "20", params
    assert params["data.dataset"] == "glue/mrpc" and params["model.name_or_path"] == "all-MiniLM-L6-v2", params

    logged = {}
    for record in records(out):
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                logged.setdefault(key, []).append((record["step"], float(value)))
    served = {k: v for k, v in run.data.metrics.items() if not k.startswith("run_report/")}
    assert set(served) == set(logged), (sorted(served), sorted(logged))
    for key, history in logged.items():
        read = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert read == sorted(history), (key, read, history)
    assert run.data.metrics["run_report/samples_per_s"] > 0

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md"):
        assert f"model/{name}" in artifacts, artifacts
    local = client.download_artifacts(run.info.run_id, "model/config.json", str(tmp_path / "dl"))
    assert Path(local).read_bytes() == (out / "config.json").read_bytes()
    print(f"MLflow run {run.info.run_id}: {len(params)} parameters, {len(logged)} metrics equal to metrics.jsonl, "
          f"{len(artifacts)} model files")


def test_a_server_killed_mid_run_leaves_the_training_finishing_with_a_warning(tmp_path, server, accel_env):
    uri, server_proc = server
    out = tmp_path / "killed"
    config = mrpc_config(tmp_path / "run.toml", out, max_steps=60, logging_steps=2, extra='report_to = ["mlflow"]')
    proc = launch(config, uri, accel_env)
    # Once the first records are in, the server goes.
    started = lambda: proc.poll() is not None or ((out / "metrics.jsonl").exists() and records(out))
    wait_for(started, 300, "the first logged record")
    assert proc.poll() is None, proc.communicate()
    os.killpg(server_proc.pid, signal.SIGKILL)
    server_proc.wait()
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    warnings = [l for l in stderr.splitlines() if "warning: MLflow" in l]
    assert len(warnings) == 1, stderr
    assert "training goes on" in warnings[0], warnings
    assert "trained 60 steps" in stdout, stdout
    assert sum("loss" in r for r in records(out)) == 30
