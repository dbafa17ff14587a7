"""Parsing: lines -> parsed records per split (or a side table's keyed records), bad lines as
dead letters.

A line is `(split, path, line_no, raw)` (preprocessing.reading); a chunk is a LineChunk or a list
of lines. ParseRecords gives a single line's record as `(tokens, label)` and a chunk's records as
one columnar.RecordChunk per split present; ParseSideTable gives a side table's `(key, value)`
records one by one (for AsDict). Every line that does not parse becomes one dead-letter dict
(file, line, reason, raw text) on the "deadletter" output; blank and header lines are skipped and
counted. The helpers here (LineTagger, sort_lines, ...) also serve the encoding pass
(preprocessing.encoding), so both passes parse a line the same way.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam import pvalue

from configs.features import SPLITS, DatasetSpec
from preprocessing import formats
from preprocessing.columnar import PlainChunkReader, RecordChunk
from preprocessing.counts import COUNTS, NAMESPACE, BundleCounts
from preprocessing.formats import MalformedRecord
from preprocessing.packed import PackedReader
from preprocessing.reading import LineChunk

DEADLETTER = "deadletter"
HEADER, BLANK = "header", "blank"


def dead_letter(path: str, line_no: int, reason: str, raw: Any) -> dict:
    """The JSON object written to DIR/deadletter/ for one bad record."""
    if isinstance(raw, bytes):
        text = raw.decode("utf-8", errors="replace")
    else:
        text = repr(raw)
    return {"file": path, "line": line_no, "reason": reason, "raw": text}


# ----------------------------------------------------------------------------- parse functions

class LineParse:
    """`parse` for a line format: a formats.LineParser on the decoded line."""

    def __init__(self, parser):
        self._parser = parser

    def __call__(self, text, line_no):
        return self._parser(text, line_no)


class TableParse:
    """`parse` for a MovieLens side table: one of MovieLensTables' parse_user/parse_movie."""

    def __init__(self, method):
        self._method = method

    def __call__(self, text, line_no):
        return self._method(text)


class RatingParse:
    """`parse` for MovieLens ratings, joined with the users and movies side inputs."""

    def __init__(self, tables: formats.MovieLensTables):
        self._tables = tables

    def __call__(self, text, line_no, users, movies):
        return self._tables.parse_rating(text, users, movies)


class TfdsParse:
    """`parse` for TFDS MovieLens examples; `setup()` (on the worker) loads the dataset's genre
    names."""

    def __init__(self, spec: DatasetSpec, name: str, data_dir: str | None):
        self._spec, self._name, self._data_dir = spec, name, data_dir
        self._parser = None

    def setup(self) -> None:
        import tensorflow_datasets as tfds

        info = tfds.builder(self._name, data_dir=self._data_dir).info
        genres = info.features["movie_genres"].feature
        self._parser = formats.TfdsMovieLensParser(self._spec, genres.int2str)

    def __call__(self, example, line_no):
        return self._parser(example)


# ----------------------------------------------------------------------------- one line

class LineTagger:
    """One line -> `(tag, value)` through the format's `parse(text_or_raw, line_no, **side)`
    (which returns the parsed value, None for a header line, or raises MalformedRecord): tag the
    line's split name with the parsed value, DEADLETTER with its dead letter, or HEADER / BLANK
    with None. With `encoding` None the raw value (a TFDS dict) goes to `parse` as it is.
    Made in a DoFn's setup(): it calls `parse.setup()` when `parse` has one (TfdsParse)."""

    def __init__(self, parse: Callable, encoding: str | None):
        self._parse, self._encoding = parse, encoding
        setup = getattr(parse, "setup", None)
        if setup is not None:
            setup()

    def __call__(self, split: int, path: str, line_no: int, raw, side: dict) -> tuple[str, Any]:
        if self._encoding is not None:
            if not raw.strip():
                return BLANK, None
            try:
                value = raw.decode(self._encoding)
            except UnicodeDecodeError as exc:
                reason = (f"undecodable bytes ({self._encoding}): {exc.reason} at byte "
                          f"{exc.start}")
                return DEADLETTER, dead_letter(path, line_no, reason, raw)
        else:
            value = raw
        try:
            parsed = self._parse(value, line_no, **side)
        except MalformedRecord as exc:
            return DEADLETTER, dead_letter(path, line_no, str(exc), raw)
        if parsed is None:
            return HEADER, None
        return SPLITS[split], parsed


# ----------------------------------------------------------------------------- chunks of lines

def is_chunk(element) -> bool:
    return isinstance(element, (list, LineChunk))


def chunk_splits(lines) -> list[int]:
    return lines.splits if isinstance(lines, LineChunk) else [line[0] for line in lines]


def chunk_raws(lines) -> list:
    """A chunk's raw lines (bytes)."""
    return lines.raws if isinstance(lines, LineChunk) else [line[3] for line in lines]


def chunk_texts(lines, encoding: str) -> list[str]:
    """A chunk's lines decoded (decode_lines), for a chunk reader."""
    return decode_lines(chunk_raws(lines), encoding)


def decode_lines(raws: list[bytes], encoding: str) -> list[str]:
    """Each line decoded; "" for a line that does not decode (left to the row parser). One
    decode for the whole chunk when it can (newline is one byte in the job's encodings, so
    the joined text splits back into the same lines)."""
    try:
        texts = b"\n".join(raws).decode(encoding).split("\n")
        if len(texts) == len(raws):
            return texts
    except UnicodeDecodeError:
        pass
    texts = []
    for raw in raws:
        try:
            texts.append(raw.decode(encoding))
        except UnicodeDecodeError:
            texts.append("")
    return texts


def split_positions(splits: Sequence[int]):
    """(split name, positions of its lines in the chunk) per split present, in SPLITS order;
    positions None when every line is of that split."""
    first = splits[0]
    if splits.count(first) == len(splits):
        yield SPLITS[first], None
        return
    of_line = np.asarray(splits)
    for index, name in enumerate(SPLITS):
        positions = np.flatnonzero(of_line == index).tolist()
        if positions:
            yield name, positions


def sort_lines(tagged: Iterable[tuple[str, Any]]):
    """`(tag, value)` per line -> (dead letters, {split: values in line order}, tally of
    blank, header and dead-lettered lines)."""
    letters, groups = [], {}
    tally = dict.fromkeys((BLANK, HEADER, DEADLETTER), 0)
    for tag, value in tagged:
        if tag in tally:
            tally[tag] += 1
            if tag == DEADLETTER:
                letters.append(value)
            continue
        group = groups.get(tag)
        if group is None:
            group = groups[tag] = []
        group.append(value)
    return letters, groups, tally


def count_lines(counts: BundleCounts, prefix: str, records: int, tally: dict) -> None:
    """Adds `prefix` + read (records and dead letters), blank, header and deadletter."""
    read = records + tally[DEADLETTER]
    if read:
        counts.add(prefix + "read", read)
    for key, n in tally.items():
        if n:
            counts.add(prefix + key, n)


# ----------------------------------------------------------------------------- the DoFns

class _ParseLinesFn(beam.DoFn):
    """A line -> TaggedOutput(split, (tokens, label)); a chunk -> one RecordChunk (or
    packed.KeyChunk) per split present; bad lines -> one dead letter each. With a `chunk_reader`,
    a chunk that packed.PackedReader reads (plain values) becomes KeyChunks without a Python
    string per value; another chunk's decoded lines are read at once by the chunk reader
    (missing categoricals left as ""), and the lines it flags, and all lines when there are side
    inputs, go through the row parser one by one. `report_counts` False (the vocabulary pass):
    counts go to Metrics only, not to the "counts" output."""

    def __init__(self, parse: Callable, encoding: str | None, report_counts: bool,
                 chunk_reader: PlainChunkReader | None):
        self._parse, self._encoding, self._report = parse, encoding, report_counts
        self._reader = chunk_reader

    def setup(self):
        self._tag = LineTagger(self._parse, self._encoding)
        self._packed = PackedReader.of(self._reader, self._encoding)

    def start_bundle(self):
        self._counts = BundleCounts(NAMESPACE if self._report else NAMESPACE + "_vocab_pass",
                                    self._report)

    def _read(self, lines, side: dict):
        """(flags, columns, labels) of the chunk reader, or None (no reader for these lines)."""
        if self._reader is None or self._encoding is None or side:
            return None
        texts = chunk_texts(lines, self._encoding)
        return self._reader.read_columns(texts, missing_as_empty=True)

    def _tagged(self, lines, side: dict, read):
        """(tag, value) per line: the records the chunk reader read (`read`), the others
        through the row parser."""
        if read is None:
            for split, path, line_no, raw in lines:
                yield self._tag(split, path, line_no, raw, side)
            return
        flags, columns, labels = read
        records = iter(RecordChunk(columns, labels))
        for (split, path, line_no, raw), was_read in zip(lines, flags):
            yield (SPLITS[split], next(records)) if was_read else self._tag(
                split, path, line_no, raw, side)

    def process(self, element, **side):
        chunked = is_chunk(element)
        records = None
        if chunked and self._packed is not None and not side and len(element):
            records = self._packed(chunk_raws(element))  # None: not plain values only
        read = self._read(element, side) if chunked and records is None else None
        if read is not None and read[0] is None:  # every line read at once, no step per line
            records = RecordChunk(read[1], read[2])
        if records is not None:
            if records.labels:
                for split, positions in split_positions(chunk_splits(element)):
                    yield pvalue.TaggedOutput(
                        split, records if positions is None else records.select(positions))
                self._counts.add("read", len(records))
            return
        letters, groups, tally = sort_lines(
            self._tagged(element if chunked else [element], side, read))
        for letter in letters:
            yield pvalue.TaggedOutput(DEADLETTER, letter)
        for split, records in groups.items():
            yield pvalue.TaggedOutput(
                split, RecordChunk.from_records(records) if chunked else records[0])
        count_lines(self._counts, "", sum(map(len, groups.values())), tally)

    def finish_bundle(self):
        yield from self._counts.finish()


class ParseRecords(beam.PTransform):
    """Lines -> tagged outputs: one per split ("train", "valid", "test": records of single
    lines, RecordChunks of chunks), "deadletter" (dicts) and "counts" (`(key, n)`: read,
    blank, header, deadletter). `chunk_reader` (optional columnar.PlainChunkReader): reads
    the decoded lines of a chunk at once, giving the records `parse` gives; the lines it flags
    go through `parse`. `side_inputs` are passed to `parse` by name."""

    def __init__(self, parse: Callable, encoding: str | None, report_counts: bool = True,
                 chunk_reader: PlainChunkReader | None = None, **side_inputs):
        super().__init__()
        self._fn = _ParseLinesFn(parse, encoding, report_counts, chunk_reader)
        self._side = side_inputs

    def expand(self, lines):
        return lines | "Parse" >> beam.ParDo(self._fn, **self._side).with_outputs(
            DEADLETTER, COUNTS, *SPLITS)


class _ParseTableFn(beam.DoFn):
    """A side table's line (or chunk of lines) -> its `(key, value)` records one by one, in line
    order, on the main output; bad lines -> one dead letter each. Counts are prefixed "side_"."""

    def __init__(self, parse: Callable, encoding: str | None):
        self._parse, self._encoding = parse, encoding

    def setup(self):
        self._tag = LineTagger(self._parse, self._encoding)

    def start_bundle(self):
        self._counts = BundleCounts(NAMESPACE, True)

    def process(self, element):
        records, tally = 0, dict.fromkeys((BLANK, HEADER, DEADLETTER), 0)
        for split, path, line_no, raw in (element if is_chunk(element) else [element]):
            tag, value = self._tag(split, path, line_no, raw, {})
            if tag in tally:
                tally[tag] += 1
                if tag == DEADLETTER:
                    yield pvalue.TaggedOutput(DEADLETTER, value)
            else:
                records += 1
                yield value
        count_lines(self._counts, "side_", records, tally)

    def finish_bundle(self):
        yield from self._counts.finish()


class ParseSideTable(beam.PTransform):
    """A side table's lines -> outputs "main" (its `(key, value)` records, for AsDict),
    "deadletter" and "counts" (side_read, side_blank, side_header, side_deadletter)."""

    def __init__(self, parse: Callable, encoding: str | None):
        super().__init__()
        self._fn = _ParseTableFn(parse, encoding)

    def expand(self, lines):
        return lines | "Parse" >> beam.ParDo(self._fn).with_outputs(DEADLETTER, COUNTS,
                                                                    main="main")
