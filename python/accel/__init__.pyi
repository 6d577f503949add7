"""Type stubs of accel's Python module (see accel/__init__.py)."""

import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

_Path = Union[str, "os.PathLike[str]"]
_Value = Union[bool, int, float, str, "os.PathLike[str]", Sequence[Any], Mapping[str, Any], None]
Record = Dict[str, Any]

__version__: str

class AccelError(RuntimeError):
    """A job that failed: accel's one-line message, its exit code and its last lines of output."""

    message: str
    exit_code: Optional[int]
    stderr: str
    def __init__(self, message: str, exit_code: Optional[int] = ..., stderr: str = ...) -> None: ...

class ConfigError(AccelError, ValueError):
    """A job refused for its config, its data or its model (accel's exit code 2)."""

def binary() -> str:
    """The accel executable the calls run: ACCEL_BIN, the wheel's, or `accel` on PATH."""

def train(
    config: Optional[_Path] = ...,
    *,
    progress: bool = ...,
    on_log: Optional[Callable[[Record], None]] = ...,
    env: Optional[Mapping[str, str]] = ...,
    **overrides: _Value,
) -> Dict[str, float]:
    """Fine-tunes as `accel train --config CONFIG --set KEY=VALUE ...` does; returns global_step,
    train_loss, train_runtime, train_samples_per_second and the final eval_* metrics."""

def launch(
    nproc: int,
    config: Optional[_Path] = ...,
    *,
    hostfile: Optional[_Path] = ...,
    threads_per_rank: Optional[int] = ...,
    oversubscribe: bool = ...,
    max_restarts: Optional[int] = ...,
    mpirun_args: Optional[Union[str, Sequence[str]]] = ...,
    progress: bool = ...,
    on_log: Optional[Callable[[Record], None]] = ...,
    env: Optional[Mapping[str, str]] = ...,
    **overrides: _Value,
) -> Dict[str, float]:
    """Fine-tunes on `nproc` ranks as `accel launch --nproc N train` does; returns what `train` does."""

def evaluate(
    model_dir: _Path,
    data: Optional[str] = ...,
    *,
    split: Optional[str] = ...,
    config: Optional[_Path] = ...,
    batch_size: Optional[int] = ...,
    mixed_precision: Optional[str] = ...,
    device: Optional[str] = ...,
    env: Optional[Mapping[str, str]] = ...,
    **overrides: _Value,
) -> Dict[str, float]:
    """Evaluates as `accel eval` does; returns eval_loss, eval_<metric>..., eval_runtime, eval_samples."""

def predict(
    model_dir: _Path,
    inputs: Union[_Path, Sequence[Union[str, Tuple[str, str], Sequence[str], Mapping[str, str]]]],
    *,
    text_pair: Optional[str] = ...,
    batch_size: Optional[int] = ...,
    mixed_precision: Optional[str] = ...,
    device: Optional[str] = ...,
    version_2_with_negative: bool = ...,
    null_score_diff_threshold: Optional[float] = ...,
    max_length: Optional[int] = ...,
    doc_stride: Optional[int] = ...,
    env: Optional[Mapping[str, str]] = ...,
) -> Union[List[Record], Dict[str, str]]:
    """Predictions as `accel predict` gives them: one dict per input, or id -> answer for QA."""
