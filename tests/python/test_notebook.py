"""A notebook that calls accel.train, executed by a Jupyter kernel (nbclient): the progress bar
renders as HTML in the cell's output, the log streams into it, and the metrics come back."""

import json

import nbformat
from nbclient import NotebookClient

from conftest import mrpc_config


def test_a_notebook_trains_and_shows_its_progress(tmp_path, accel_env):
    out = tmp_path / "mrpc-nb"
    config = mrpc_config(tmp_path / "run.toml", out, max_steps=6, logging_steps=2)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import accel"),
        nbformat.v4.new_code_cell(f"metrics = accel.train({str(config)!r})\nprint(metrics['global_step'])"),
    ]
    for k in ("ACCEL_DATA_DIR", "ACCEL_MODEL_DIR", "HF_HUB_OFFLINE"):
        nb.cells[0].source = f"import os; os.environ[{k!r}] = {accel_env[k]!r}\n" + nb.cells[0].source
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[1].outputs
    html = [o for o in outputs if o.output_type in ("display_data", "update_display_data") and "text/html" in o.get("data", {})]
    assert html, outputs
    bar = html[-1]["data"]["text/html"]
    assert '<progress value="6" max="6"' in bar and "6/6 steps" in bar, bar
    streamed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert '"loss"' in streamed and "trained 6 steps" in streamed, streamed
    assert streamed.strip().splitlines()[-1] == "6"
    nbformat.write(nb, str(tmp_path / "executed.ipynb"))
    print(json.dumps(bar))
