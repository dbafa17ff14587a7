"""Progress of the training loops and batch prediction, on tqdm: a live bar on a terminal, plain
periodic lines (no carriage returns) when stderr is redirected to a log, nothing but log lines in
quiet mode."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

# Plain-line layout for logs: the same fields as the bar, without the bar.
_LINE_FORMAT = ("{desc} {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) [{elapsed}<{remaining}, "
                "{rate_fmt}{postfix}]")


class Progress:
    """`update(n, phase, **values)` reports the position `n` of `total` units (steps by default;
    `unit="B", unit_scale=True` for bytes) in phase `phase`, with values such as the loss.

    On a terminal it draws a tqdm bar; when the stream is not a terminal it writes one plain line
    every `log_every` seconds and one at the end. `log(message)` prints a line in either mode
    without breaking the bar (also after `close()`)."""

    def __init__(self, total: int, quiet: bool = False, stream=None, *, unit: str = "step",
                 unit_scale: bool = False, log_every: float = 30.0, tty: bool | None = None):
        self.total = max(int(total), 1)
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.unit, self.unit_scale = unit, unit_scale
        self.log_every = log_every
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.tty = isatty() if tty is None else tty
        self._bar: tqdm | None = None
        self._phase = ""
        self._start: tuple[float, int] | None = None
        self._last_line = 0.0
        self._last_n = None

    def update(self, n: int, phase: str, **values: float) -> None:
        if self.quiet:
            return
        postfix = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v:.4f}"
                            for k, v in values.items())
        if self.tty:
            self._update_bar(n, phase, postfix)
        else:
            self._update_lines(n, phase, postfix)

    def _update_bar(self, n: int, phase: str, postfix: str) -> None:
        if self._bar is None:  # created at the first position: a resumed run's rate starts there
            self._bar = tqdm(total=self.total, initial=n, desc=phase, unit=self.unit,
                             unit_scale=self.unit_scale, file=self.stream, dynamic_ncols=True,
                             mininterval=0.5, leave=True)
        if phase != self._phase:
            self._bar.set_description_str(phase, refresh=False)
        self._phase = phase
        self._bar.set_postfix_str(postfix, refresh=False)
        self._bar.update(n - self._bar.n)

    def _update_lines(self, n: int, phase: str, postfix: str) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start, self._last_line = (now, n), now
            self._phase = phase
            return
        done = n >= self.total
        if not done and now - self._last_line < self.log_every and phase == self._phase:
            return
        if done and self._last_n == n:
            return
        self._phase, self._last_line, self._last_n = phase, now, n
        t0, n0 = self._start
        elapsed = now - t0
        rate = (n - n0) / elapsed if elapsed > 0 and n > n0 else None
        line = tqdm.format_meter(n, self.total, elapsed, prefix=phase, unit=self.unit,
                                 unit_scale=self.unit_scale, rate=rate,
                                 postfix=postfix or None, bar_format=_LINE_FORMAT)
        self.stream.write(line + "\n")
        self.stream.flush()

    def log(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            self.stream.write(message + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
