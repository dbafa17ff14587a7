"""A chunk-at-a-time reader for plain delimited lines (pure Python, no Beam).

For a format whose lines are a fixed number of values separated by one character, with no
quoting and no header (`LineParser.plain_delimiter`, e.g. Criteo), a whole chunk of lines is
parsed with C-level operations instead of Python calls per line and field: one join and one
split for the chunk, each column a slice of the result, labels and tokens one map per column
(`FieldEncoder.column_tokens`). Rows it cannot vouch for (a wrong column count, a label that
needs stripping or is bad, a non-number in a numeric field) are left out and flagged: the
caller gives them to the row parser, which decides (record, header or MalformedRecord with
its reason). Every row it does read gets exactly the row parser's `(tokens, label)` (tests
compare them).
"""
from __future__ import annotations

import itertools
from typing import Sequence

from preprocessing.formats import LineParser


class PlainChunkReader:
    """Decoded lines -> (flags, records): `flags` None when every line was read, else one bool
    per line (False: left to the row parser); `records` the `(tokens, label)` of the lines
    read, in order."""

    def __init__(self, parser: LineParser):
        if not parser.plain_delimiter:
            raise ValueError(f"{type(parser).__name__} is not a plain delimited format")
        self._sep, self._width = parser.plain_delimiter, len(parser.columns)
        self._label_column = parser.label_column
        # The row parser strips the label first: labels are taken as written only when that
        # changes nothing (other lines go to the row parser).
        self._labels = {k: v for k, v in parser.labels.items() if k and k == k.strip()}
        self._encoder = parser.encoder
        self._fields = parser.encoder.field_columns

    @classmethod
    def of(cls, parser) -> "PlainChunkReader | None":
        """The reader for `parser`, or None when its format is not plain delimited."""
        return cls(parser) if getattr(parser, "plain_delimiter", None) else None

    def __call__(self, texts: Sequence[str]) -> tuple[list[bool] | None, list[tuple]]:
        sep, width = self._sep, self._width
        flags = None
        counts = list(map(str.count, texts, itertools.repeat(sep)))
        if counts.count(width - 1) != len(counts):
            flags = [n == width - 1 for n in counts]
            texts = list(itertools.compress(texts, flags))
        if not texts:
            return flags, []
        values = sep.join(texts).split(sep)
        labels = list(map(self._labels.get, values[self._label_column::width]))
        columns, bad = self._encoder.column_tokens([values[c::width] for c in self._fields])
        if None in labels:
            bad.update(i for i, label in enumerate(labels) if label is None)
        if bad:
            keep = [i not in bad for i in range(len(labels))]
            labels = list(itertools.compress(labels, keep))
            columns = [list(itertools.compress(column, keep)) for column in columns]
            if flags is None:
                flags = keep
            else:
                kept = iter(keep)
                flags = [flag and next(kept) for flag in flags]
        return flags, list(zip(zip(*columns), labels))
