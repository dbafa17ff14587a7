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
import operator
from typing import Sequence

from configs.features import MISSING_TOKEN
from preprocessing.formats import LineParser

EMPTY_MISSING = ""  # in a RecordChunk token column: MISSING_TOKEN
_MISSING = {EMPTY_MISSING: MISSING_TOKEN}


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
        flags, columns, labels = self.read_columns(texts)
        return flags, list(zip(zip(*columns), labels)) if labels else []

    def read_columns(self, texts: Sequence[str], missing_as_empty: bool = False
                     ) -> tuple[list[bool] | None, list[list[str]], list[float]]:
        """Like calling the reader, with the records given column-wise: (flags, one token list
        per field, the labels). `missing_as_empty`: a missing categorical value stays "" (read
        as MISSING_TOKEN by RecordChunk's consumers) instead of a map per column."""
        sep, width = self._sep, self._width
        flags = None
        counts = list(map(str.count, texts, itertools.repeat(sep)))
        if counts.count(width - 1) != len(counts):
            flags = [n == width - 1 for n in counts]
            texts = list(itertools.compress(texts, flags))
        if not texts:
            return flags, [], []
        values = sep.join(texts).split(sep)
        labels = list(map(self._labels.get, values[self._label_column::width]))
        columns, bad = self._encoder.column_tokens([values[c::width] for c in self._fields],
                                                   missing_as_empty)
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
        return flags, columns, labels


class RecordChunk:
    """Parsed records of one chunk stored column-wise: `columns` (one token sequence per field,
    in spec order) and `labels`. Counting and encoding work on columns, so the job never builds a
    tuple per record on its fast path; iterating gives the `(tokens, label)` records.

    A token column may hold "" (EMPTY_MISSING) for MISSING_TOKEN: "" is never a token (both
    token rules map it to MISSING_TOKEN), and leaving it saves the chunk reader a map per
    column. Iterating, counting (transforms) and encoding (ExampleEncoder.encode_columns) read
    it as MISSING_TOKEN."""

    __slots__ = ("columns", "labels")

    def __init__(self, columns: list, labels: list):
        self.columns, self.labels = columns, labels

    @classmethod
    def from_records(cls, records: Sequence[tuple]) -> "RecordChunk":
        return cls([list(c) for c in zip(*[tokens for tokens, _ in records])],
                   [label for _, label in records])

    def select(self, indices: Sequence[int]) -> "RecordChunk":
        """The records at `indices`, in that order."""
        pick = operator.itemgetter(*indices) if len(indices) > 1 else (
            lambda seq: (seq[indices[0]],))
        return RecordChunk(list(map(pick, self.columns)), list(pick(self.labels)))

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self):
        columns = [list(map(_MISSING.get, c, c)) if EMPTY_MISSING in c else c
                   for c in self.columns]
        rows = zip(*columns) if columns else itertools.repeat(())
        return zip(rows, self.labels)

    def __eq__(self, other) -> bool:
        return isinstance(other, RecordChunk) and list(self) == list(other)

    def __reduce__(self):
        return RecordChunk, (self.columns, self.labels)
