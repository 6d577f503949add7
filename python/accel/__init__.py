"""accel from Python: fine-tune, evaluate and predict with the accel binary, from a script or a
notebook.

    import accel
    metrics = accel.train("configs/mrpc.toml", learning_rate=2e-5, data={"max_length": 128})
    metrics = accel.launch(2, "configs/mrpc.toml")            # 2 ranks, as `accel launch --nproc 2`
    accel.evaluate("runs/mrpc", "glue/mrpc")                   # {"eval_accuracy": ..., ...}
    accel.predict("runs/mrpc", [("He said so .", "So he said .")])

Each call runs the job that the same `accel` command line runs, in a process of its own, with the
GIL released while it runs. Its log streams into the notebook or terminal as it comes, under a
progress bar; an error raises `AccelError` (`ConfigError` for a wrong config or data) with accel's
one-line message; Ctrl-C (or a notebook's interrupt) stops the job as SIGINT stops the CLI and
raises KeyboardInterrupt once every process of it has ended.
"""

from ._api import AccelError, ConfigError, binary, evaluate, launch, predict, train

__all__ = ["AccelError", "ConfigError", "binary", "evaluate", "launch", "predict", "train"]
__version__ = "0.1.0"
