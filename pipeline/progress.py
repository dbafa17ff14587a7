"""A terminal progress bar (steps/second, loss, ETA) for the training loops, with a quiet mode."""
from __future__ import annotations

import sys
import time


class Progress:
    """Prints `phase step/total steps/s loss ETA` in place; quiet mode prints only `log()` lines."""

    def __init__(self, total_steps: int, quiet: bool = False, stream=None, min_interval: float = 0.5):
        self.total = max(int(total_steps), 1)
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.min_interval = min_interval
        self._start_time = time.monotonic()
        self._start_step = None
        self._last_print = 0.0
        self._dirty = False

    def update(self, step: int, phase: str, **values: float) -> None:
        now = time.monotonic()
        if self._start_step is None:
            self._start_step, self._start_time = step, now
            return
        if self.quiet or (now - self._last_print < self.min_interval and step < self.total):
            return
        self._last_print = now
        elapsed = max(now - self._start_time, 1e-9)
        rate = (step - self._start_step) / elapsed
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        width = 24
        done = int(width * min(step, self.total) / self.total)
        bar = "=" * done + ">" + "." * (width - done - 1) if done < width else "=" * width
        extras = " ".join(f"{k}={v:.4f}" for k, v in values.items())
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "--:--:--"
        self.stream.write(f"\r{phase:<8} [{bar}] {step}/{self.total} {rate:6.1f} steps/s "
                          f"{extras} ETA {eta_text} ")
        self.stream.flush()
        self._dirty = True

    def log(self, message: str) -> None:
        if self._dirty:
            self.stream.write("\n")
            self._dirty = False
        self.stream.write(message + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._dirty:
            self.stream.write("\n")
            self.stream.flush()
            self._dirty = False
