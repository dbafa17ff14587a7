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

The encoding pass does not need the tokens, only the tf.Example bytes: PlainChunkEncoder goes
from the same split values straight to the examples (the bytes `ExampleEncoder.encode_columns`
gives for the reader's records; tests compare them).
"""
from __future__ import annotations

import itertools
import operator
from typing import Sequence

from configs.features import MISSING_TOKEN
from preprocessing.example_codec import ExampleEncoder
from preprocessing.formats import LineParser, _categorical, _numeric

EMPTY_MISSING = ""  # in a RecordChunk token column: MISSING_TOKEN
_MISSING = {EMPTY_MISSING: MISSING_TOKEN}
_ENTRY_CACHE = 1 << 15  # per numeric field: raw value -> entry (PlainChunkEncoder)


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
        flags, values, labels = self._split(texts)
        if not labels:
            return flags, [], []
        columns, bad = self._encoder.column_tokens([values[c::self._width] for c in self._fields],
                                                   missing_as_empty)
        return _drop(flags, columns, labels, bad)

    def _split(self, texts: Sequence[str]) -> tuple[list[bool] | None, list[str], list]:
        """(flags for a wrong column count or None, the values of the other lines row after row,
        their labels: None for a label that is not read as written)."""
        sep, width = self._sep, self._width
        flags = None
        counts = list(map(str.count, texts, itertools.repeat(sep)))
        if counts.count(width - 1) != len(counts):
            flags = [n == width - 1 for n in counts]
            texts = list(itertools.compress(texts, flags))
        if not texts:
            return flags, [], []
        values = sep.join(texts).split(sep)
        return flags, values, list(map(self._labels.get, values[self._label_column::width]))


def _drop(flags: list[bool] | None, columns: list[list], labels: list, bad: set[int]):
    """Leaves out of `columns` and `labels` the rows in `bad` or with a None label, and flags
    them: -> (flags, columns, labels)."""
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


class PlainChunkEncoder:
    """Decoded lines -> (flags, examples, labels): the tf.Example bytes of the records that
    PlainChunkReader reads, as its `read_columns` then `ExampleEncoder.encode_columns` give them,
    without the token columns in between. Each field's raw values go straight to their entries:
    a categorical column without whitespace through the field's table (whose "" is the missing
    token's entry), a numeric column through a bounded per-field `raw value -> entry` cache (a
    miss applies the numeric rule, then the table). Flags as the reader's: the flagged lines are
    the caller's, for the row parser."""

    def __init__(self, reader: PlainChunkReader, encoder: ExampleEncoder):
        fields = reader._encoder
        if len(encoder.field_tables) != len(fields.field_columns):
            raise ValueError(f"the encoder has {len(encoder.field_tables)} fields, the reader "
                             f"{len(fields.field_columns)}")
        self._reader, self._encoder = reader, encoder
        self._plan = [(column, table, {} if numeric else None)
                      for column, table, numeric in zip(fields.field_columns,
                                                        encoder.field_tables,
                                                        fields.numeric_fields)]

    def __call__(self, texts: Sequence[str]) -> tuple[list[bool] | None, list[bytes], list]:
        flags, values, labels = self._reader._split(texts)
        if not labels:
            return flags, [], []
        width, bad, entries = self._reader._width, set(), []
        for column_index, table, cache in self._plan:
            column = values[column_index::width]
            oov = itertools.repeat(table.oov)
            if cache is not None:
                column_entries = list(map(cache.get, column))
                if None in column_entries:
                    _fill_numeric_entries(column, column_entries, table, cache, bad)
            else:
                joined = "".join(column)
                if " " not in joined and joined.isprintable():  # values are their own tokens
                    column_entries = list(map(table.get, column, oov))
                else:
                    column_entries = list(map(table.get, map(_categorical, column), oov))
            entries.append(column_entries)
        flags, entries, labels = _drop(flags, entries, labels, bad)
        return flags, self._encoder.assemble(entries, labels), labels


def _fill_numeric_entries(column: Sequence[str], entries: list, table: dict, cache: dict,
                          bad: set[int]) -> None:
    """The entries of a numeric column's cache misses (rows holding a non-number go to `bad`)."""
    for i in [i for i, entry in enumerate(entries) if entry is None]:
        value = column[i]
        try:
            token = _numeric(value)
        except ValueError:
            bad.add(i)
            continue
        entries[i] = entry = table.get(token, table.oov)
        if len(cache) < _ENTRY_CACHE:
            cache[value] = entry


class RecordChunk:
    """Parsed records of one chunk stored column-wise: `columns` (one token sequence per field,
    in spec order) and `labels`. Counting and encoding work on columns, so the job never builds a
    tuple per record on its fast path; iterating gives the `(tokens, label)` records.

    A token column may hold "" (EMPTY_MISSING) for MISSING_TOKEN: "" is never a token (both
    token rules map it to MISSING_TOKEN), and leaving it saves the chunk reader a map per
    column. Iterating, counting (vocabulary) and encoding (ExampleEncoder.encode_columns) read
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
