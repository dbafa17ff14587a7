"""Row bookkeeping: the DoFns' counts, kept per bundle and summed by the job into stats.json.

Counts are data, not metrics: each DoFn emits its bundle's `(key, n)` pairs on the "counts"
output, the job sums them into DIR/_counts.json (exact on any runner) and the driver turns the
totals into stats.json (`summarize_counts`). Beam Metrics counters (namespace "preprocess")
mirror them for progress.
"""
from __future__ import annotations

from typing import Any, Sequence

from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from configs.features import SPLITS

NAMESPACE = "preprocess"
COUNTS = "counts"
COUNTS_FILE = "_counts.json"
_FLUSH_EVERY = 10_000


def windowed(value) -> WindowedValue:
    """`value` in the global window: what finish_bundle must emit."""
    return WindowedValue(value, MIN_TIMESTAMP, [GlobalWindow()])


class BundleCounts:
    """Counts kept per bundle, mirrored to Metrics every _FLUSH_EVERY rows and emitted as
    `(key, n)` elements on the COUNTS output at the end of the bundle (when `report`)."""

    def __init__(self, namespace: str, report: bool):
        self._namespace, self._report = namespace, report
        self.totals: dict[str, float] = {}
        self._pending: dict[str, float] = {}
        self._counters: dict[str, Any] = {}
        self._since_flush = 0

    def add(self, key: str, n: float = 1) -> None:
        self.totals[key] = self.totals.get(key, 0) + n
        self._pending[key] = self._pending.get(key, 0) + n
        self._since_flush += n if n > 1 else 1  # rows, for chunk-sized adds
        if self._since_flush >= _FLUSH_EVERY:
            self.flush_metrics()

    def flush_metrics(self) -> None:
        for key, n in self._pending.items():
            if key not in self._counters:
                self._counters[key] = Metrics.counter(self._namespace, key.replace("/", "_"))
            if n and float(n).is_integer():
                self._counters[key].inc(int(n))
        self._pending, self._since_flush = {}, 0

    def finish(self):
        self.flush_metrics()
        totals, self.totals = self.totals, {}
        if not self._report:
            return
        for key, n in sorted(totals.items()):
            yield pvalue.TaggedOutput(COUNTS, windowed((key, n)))


def summarize_counts(totals: dict[str, float], names: Sequence[str]) -> dict:
    """The raw `_counts.json` totals -> the stats.json structure (without run metadata)."""
    def get(key):
        value = totals.get(key, 0)
        return int(value) if float(value).is_integer() else value

    written = {s: get(f"written/{s}") for s in SPLITS}
    stats = {
        "rows_read": get("read"),
        "rows_written": written,
        "rows_written_total": sum(written.values()),
        "rows_deadlettered": get("deadletter"),
        "lines_skipped": {"header": get("header"), "blank": get("blank")},
        "side_tables": {"rows_read": get("side_read"),
                        "rows_deadlettered": get("side_deadletter"),
                        "lines_skipped": {"header": get("side_header"),
                                          "blank": get("side_blank")}},
        "label_rate": {s: (get(f"label_sum/{s}") / written[s] if written[s] else 0.0)
                       for s in SPLITS},
        "vocab_sizes": {n: get(f"vocab_size/{n}") for n in names},
    }
    total_read = stats["rows_read"] + stats["side_tables"]["rows_read"]
    total_bad = stats["rows_deadlettered"] + stats["side_tables"]["rows_deadlettered"]
    stats["bad_fraction"] = total_bad / total_read if total_read else 0.0
    return stats
