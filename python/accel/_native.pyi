from typing import Callable, Dict, List

def run(
    program: str,
    args: List[str],
    env: Dict[str, str],
    on_line: Callable[[bool, str], None],
    grace_seconds: float = ...,
) -> int: ...
