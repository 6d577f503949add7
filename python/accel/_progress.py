"""The progress bar of a running job: an HTML bar updated in place in a Jupyter notebook, a line
redrawn in place on a terminal, nothing elsewhere (the log lines say enough)."""

import sys
import time


def _in_notebook():
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _clock(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Shows `step` of `total` with the last loss, learning rate and throughput, and the ETA."""

    def __init__(self, enabled=True):
        self.mode = None
        if enabled:
            if _in_notebook():
                self.mode = "notebook"
            elif sys.stderr.isatty():
                self.mode = "terminal"
        self.handle = None
        self.started = None
        self.first_step = None
        self.last_draw = 0.0
        self.state = {}

    def start(self, total, done):
        self.started = time.monotonic()
        self.state = {"step": done, "total": total}
        self.first_step = done
        self._draw(force=True)

    def step(self, event):
        self.state.update(event)
        self._draw(force=event.get("step") == event.get("total"))

    def _text(self):
        s = self.state
        step, total = s.get("step", 0), max(s.get("total", 0), 1)
        elapsed = time.monotonic() - (self.started or time.monotonic())
        done = step - (self.first_step or 0)
        eta = elapsed / done * (total - step) if done > 0 else 0.0
        parts = [f"{step}/{total} steps [{_clock(elapsed)}<{_clock(eta)}]"]
        if s.get("loss") is not None:
            parts.append(f"loss {s['loss']:.4f}")
        if s.get("learning_rate") is not None:
            parts.append(f"lr {s['learning_rate']:.3e}")
        if s.get("samples_per_second"):
            parts.append(f"{s['samples_per_second']:.1f} samples/s")
        return step, total, " ".join(parts)

    def _draw(self, force=False):
        if self.mode is None:
            return
        now = time.monotonic()
        if not force and now - self.last_draw < 0.2:
            return
        self.last_draw = now
        step, total, text = self._text()
        if self.mode == "notebook":
            from IPython.display import HTML, display

            html = (
                f'<div class="accel-progress"><progress value="{step}" max="{total}" style="width: 40ex"></progress> '
                f"<code>{text}</code></div>"
            )
            if self.handle is None:
                self.handle = display(HTML(html), display_id=True)
            else:
                self.handle.update(HTML(html))
        else:
            width = 30
            filled = int(width * step / total)
            sys.stderr.write(f"\r{'#' * filled}{'-' * (width - filled)} {text}\x1b[K")
            sys.stderr.flush()

    def clear_line(self):
        """Makes room for a log line on a terminal (the bar is redrawn under it)."""
        if self.mode == "terminal":
            sys.stderr.write("\r\x1b[K")

    def close(self):
        if self.mode == "terminal" and self.started is not None:
            self._draw(force=True)
            sys.stderr.write("\n")
            sys.stderr.flush()
        self.mode = None
