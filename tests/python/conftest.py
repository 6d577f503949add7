"""Shared by the Python tests: the accel binary under test, the data and model folders, and a
small run config on the course's data (MRPC, the shipped MiniLM)."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def accel_binary():
    """ACCEL_BIN, else the accel of this venv (the wheel's), else the release build."""
    if os.environ.get("ACCEL_BIN"):
        return os.environ["ACCEL_BIN"]
    beside = Path(sys.executable).parent / "accel"
    if beside.exists():
        return str(beside)
    return shutil.which("accel") or str(REPO / "target" / "release" / "accel")


@pytest.fixture(scope="session")
def accel_env():
    """The environment accel runs in: the shared data and models, no downloads, one thread a rank."""
    shared = REPO.parent / "shared"
    env = dict(os.environ)
    env.setdefault("ACCEL_DATA_DIR", str(shared / "data"))
    env.setdefault("ACCEL_MODEL_DIR", str(shared / "models"))
    env["HF_HUB_OFFLINE"] = "1"
    return env


def mrpc_config(path, output_dir, max_steps=20, logging_steps=5, extra=""):
    """A short MRPC fine-tune of MiniLM: logs every 5 steps, evaluates every 10."""
    path.write_text(
        f'output_dir = "{output_dir}"\nmax_steps = {max_steps}\nper_device_train_batch_size = 8\n'
        f"per_device_eval_batch_size = 64\nlearning_rate = 5e-5\nlogging_steps = {logging_steps}\n"
        f'eval_strategy = "steps"\neval_steps = 10\nsave_strategy = "no"\n{extra}\n'
        f'[data]\ndataset = "glue/mrpc"\n[model]\nname_or_path = "all-MiniLM-L6-v2"\n'
    )
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} within {timeout} s")


def no_accel_process_left(timeout=20):
    """Whether every accel and mpirun process (other than zombies of ours) is gone."""
    def left():
        out = subprocess.run(["ps", "-eo", "pid,stat,comm"], capture_output=True, text=True).stdout
        return [l for l in out.splitlines()[1:] if l.split()[-1] in ("accel", "mpirun", "prterun") and "Z" not in l.split()[1]]
    try:
        wait_for(lambda: not left(), timeout, "the ranks to end")
        return True
    except TimeoutError:
        print("still running:", left())
        return False
