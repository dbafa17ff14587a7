"""The PTransforms and DoFns of the preprocessing job (the recipe is in preprocessing/job.py).

Elements between steps:
- lines: `(split_index, path, line_no, raw)`; raw is the line's bytes without terminator (or a
  dict of numpy values for TFDS input); chunks of lines of one file are LineChunks (the same
  lines, stored column-wise),
- records: `(tokens, label)` per split, tokens in DatasetSpec field order; chunks of records
  are RecordChunks (columnar.RecordChunk: one token column per field and the labels),
- examples: serialized tf.train.Example bytes, made by ParseRecords in its encoding mode (the
  job's second pass parses and encodes in one step),
- chunks: LineChunks (or lists) of lines, RecordChunks of records, lists of examples. The
  readers emit chunks when given a `chunk_size`; parsing and counting map a chunk to chunks (per
  split) and a single line/record to single records, so the same transforms serve both; encoding
  gives a list of examples per split either way. The job uses chunks: the runner's per-element
  cost (coding, dispatch, output receivers) is then paid per thousand rows. Dead letters stay
  one element per bad line.
- counts: `(key, number)` pairs summed into DIR/_counts.json (exact on any runner: they are data,
  not metrics). Beam Metrics counters (namespace "preprocess") mirror them for progress.

Per-row work is kept in few DoFns with bundle-local counting because the job is CPU bound.
"""
from __future__ import annotations

import bz2
import collections
import gzip
import itertools
import json
import lzma
import posixpath
import zlib
from typing import Any, Callable, Sequence

import apache_beam as beam
from apache_beam import coders, pvalue
from apache_beam.io import fileio
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from configs.features import LABEL_KEY, MISSING_TOKEN, SPLITS, VOCAB_DIR
from preprocessing import columnar
from preprocessing.columnar import EMPTY_MISSING, RecordChunk
from preprocessing.example_codec import ExampleEncoder, TFRecordFramer
from preprocessing.formats import MalformedRecord, SplitAssigner

NAMESPACE = "preprocess"
DEADLETTER = "deadletter"
COUNTS = "counts"
_FLUSH_EVERY = 10_000


def _windowed(value) -> WindowedValue:
    return WindowedValue(value, MIN_TIMESTAMP, [GlobalWindow()])


class _BundleCounts:
    """Counts kept per bundle, mirrored to Metrics every _FLUSH_EVERY rows and emitted as
    `(key, n)` elements at the end of the bundle."""

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
            yield pvalue.TaggedOutput(COUNTS, _windowed((key, n)))


# ----------------------------------------------------------------------------- reading

def _chunked(items, size: int | None):
    """Items one by one (size None) or as lists of up to `size`."""
    if not size:
        yield from items
        return
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class LineChunk:
    """Up to `chunk_size` lines of one file, stored column-wise (no tuple per line): the job's
    element between reading and parsing. Iterating gives the `(split, path, line_no, raw)` of
    each line, as the one-by-one reader does."""

    __slots__ = ("path", "line_nos", "splits", "raws")

    def __init__(self, path: str, line_nos: list[int], splits: list[int], raws: list):
        self.path, self.line_nos, self.splits, self.raws = path, line_nos, splits, raws

    def __len__(self) -> int:
        return len(self.raws)

    def __iter__(self):
        return zip(self.splits, itertools.repeat(self.path), self.line_nos, self.raws)

    def __eq__(self, other) -> bool:
        return isinstance(other, LineChunk) and list(self) == list(other)

    def __reduce__(self):
        return LineChunk, (self.path, self.line_nos, self.splits, self.raws)


_READ_BYTES = 1 << 20
DAMAGED = "damaged input file"


class InputDamaged(IOError):
    """An input file that cannot be read to its end (a truncated or corrupt compressed stream,
    an I/O error): the job fails, the message names the file and the lines read before it."""


# Compressed inputs are decompressed by the standard library's readers, which raise at a
# truncated stream (EOFError) or corrupt data (BadGzipFile, zlib.error, ...). Beam's own
# CompressedFile stops silently at the end of a truncated stream (reading a truncated .gz gave
# the rows up to the break and no error). DEFLATE and ZSTD inputs are still read by Beam.
_STRICT_READERS = {CompressionTypes.GZIP: gzip.GzipFile, CompressionTypes.BZIP2: bz2.BZ2File,
                   CompressionTypes.LZMA: lzma.LZMAFile}


def open_input(readable: fileio.ReadableFile):
    """The decompressed binary stream of one input file; GZIP, BZIP2 and LZMA (by suffix, as
    Beam detects them) fail at a truncated or corrupt stream instead of ending early."""
    strict = _STRICT_READERS.get(
        CompressionTypes.detect_compression_type(readable.metadata.path))
    if strict is None:
        return readable.open()
    raw = readable.open(compression_type=CompressionTypes.UNCOMPRESSED)
    return _Closing(strict(fileobj=raw, mode="rb"), raw)


class _Closing:
    """A decompressing reader that also closes the raw file under it."""

    def __init__(self, reader, raw):
        self._reader, self._raw = reader, raw
        self._error = None

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (fewer only at the end). A read error is raised after the data
        decompressed before it has been returned (so the lines before a break are counted)."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        parts, have = [], 0
        while size < 0 or have < size:
            try:
                part = self._reader.read1(size - have if size >= 0 else 1 << 20)
            except Exception as exc:
                if not parts:
                    raise
                self._error = exc
                break
            if not part:
                break
            parts.append(part)
            have += len(part)
        return b"".join(parts)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self._reader.close()
        finally:
            self._raw.close()


def _line_blocks(fh, size: int = _READ_BYTES):
    """A binary file's lines without terminators (the lines `for line in fh` gives, each
    `.rstrip(b"\r\n")`), one list per block of about `size` bytes: one C-level split per block
    instead of a Python step per line."""
    tail = b""
    while True:
        data = fh.read(size)
        if not data:
            break
        if tail:
            data = tail + data
        cut = data.rfind(b"\n")
        if cut < 0:
            tail = data
            continue
        tail, data = data[cut + 1:], data[:cut]
        lines = data.split(b"\n")
        yield [line.rstrip(b"\r") for line in lines] if b"\r" in data else lines
    if tail:
        yield [tail.rstrip(b"\r")]


def _checked_blocks(fh, path: str, lines_read: Callable[[], int]):
    """_line_blocks(fh), with a read error raised as InputDamaged naming `path` and how many
    lines were read before it (`lines_read()`)."""
    blocks = _line_blocks(fh)
    while True:
        try:
            lines = next(blocks)
        except StopIteration:
            return
        except (EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as exc:
            kind = ("truncated (the compressed stream ends early)" if isinstance(exc, EOFError)
                    else f"unreadable ({type(exc).__name__}: {exc})")
            raise InputDamaged(f"{DAMAGED} {path}: {kind} after {lines_read():,} complete lines "
                               f"were read") from None
        yield lines


class _ReadLinesFn(beam.DoFn):
    """One input file -> its lines with 1-based line numbers and split index: one by one as
    `(split, path, line_no, raw)`, or as LineChunks of `chunk_size` lines. The file is read in
    blocks and the splits of a block's lines computed at once (SplitAssigner.many); `only_split`
    keeps the lines of one split."""

    def __init__(self, fractions: Sequence[float], seed: int, only_split: int | None,
                 chunk_size: int | None = None):
        self._fractions, self._seed, self._only = tuple(fractions), seed, only_split
        self._chunk = chunk_size

    def _chunks(self, readable: fileio.ReadableFile):
        path = readable.metadata.path
        split_of = SplitAssigner(posixpath.basename(path), self._fractions, self._seed)
        size, only = self._chunk or 1000, self._only
        first, nos, splits, raws = 1, [], [], []
        with open_input(readable) as fh:
            for lines in _checked_blocks(fh, path, lambda: first - 1):
                n = len(lines)
                block = split_of.many(first, n)
                if only is None:
                    nos += range(first, first + n)
                    splits += block.tolist()
                    raws += lines
                else:
                    keep = (block == only).tolist()
                    nos += itertools.compress(range(first, first + n), keep)
                    splits += itertools.repeat(only, sum(keep))
                    raws += itertools.compress(lines, keep)
                first += n
                while len(raws) >= size:
                    yield LineChunk(path, nos[:size], splits[:size], raws[:size])
                    del nos[:size], splits[:size], raws[:size]
        if raws:
            yield LineChunk(path, nos, splits, raws)

    def process(self, readable: fileio.ReadableFile):
        if self._chunk:
            yield from self._chunks(readable)
        else:
            for chunk in self._chunks(readable):
                yield from chunk


class ReadWithLineNumbers(beam.PTransform):
    """Files matching `patterns` -> (split, path, line_no, bytes).

    Line numbers need a sequential read, so each file is read by one worker: parallelism is per
    input file (shard big inputs into many files). `only_split` keeps one split (read-time
    filter for the vocabulary pass). With `chunk_size`, elements are LineChunks of up to that
    many lines of one file."""

    def __init__(self, patterns: Sequence[str], fractions: Sequence[float], seed: int,
                 only_split: int | None = None, chunk_size: int | None = None):
        super().__init__()
        self._patterns, self._fractions, self._seed = list(patterns), fractions, seed
        self._only, self._chunk = only_split, chunk_size

    def expand(self, pbegin):
        return (pbegin
                | "Patterns" >> beam.Create(self._patterns)
                | "Match" >> fileio.MatchAll()
                | "SpreadFiles" >> beam.Reshuffle()
                | "Open" >> fileio.ReadMatches()
                | "Lines" >> beam.ParDo(_ReadLinesFn(self._fractions, self._seed, self._only,
                                                     self._chunk)))


class _ReadTfdsFn(beam.DoFn):
    """A TFDS dataset name -> its examples as numpy dicts, numbered within the TFDS split."""

    def __init__(self, fractions, seed, only_split, data_dir: str | None,
                 chunk_size: int | None = None):
        self._fractions, self._seed, self._only = tuple(fractions), seed, only_split
        self._data_dir, self._chunk = data_dir, chunk_size

    def _examples(self, name: str):
        import tensorflow_datasets as tfds

        source = f"tfds:{name}:train"
        split_of = SplitAssigner(source, self._fractions, self._seed)
        ds = tfds.load(name, split="train", data_dir=self._data_dir)
        for index, example in enumerate(tfds.as_numpy(ds), 1):
            split = split_of(index)
            if self._only is None or split == self._only:
                yield split, source, index, example

    def process(self, name: str):
        yield from _chunked(self._examples(name), self._chunk)


class ReadTfds(beam.PTransform):
    """TFDS `name` (e.g. movielens/1m-ratings) -> (split, source, index, example dict)."""

    def __init__(self, name, fractions, seed, only_split=None, data_dir=None, chunk_size=None):
        super().__init__()
        self._fn = _ReadTfdsFn(fractions, seed, only_split, data_dir, chunk_size)
        self._name = name

    def expand(self, pbegin):
        return (pbegin | "Name" >> beam.Create([self._name])
                | "Examples" >> beam.ParDo(self._fn))


# ----------------------------------------------------------------------------- parsing

def dead_letter(path: str, line_no: int, reason: str, raw: Any) -> dict:
    """The JSON object written to DIR/deadletter/ for one bad record."""
    if isinstance(raw, bytes):
        text = raw.decode("utf-8", errors="replace")
    else:
        text = repr(raw)
    return {"file": path, "line": line_no, "reason": reason, "raw": text}


class _ParseFn(beam.DoFn):
    """(split, path, line_no, raw) -> TaggedOutput(split name, parsed) or dead letter; a chunk
    (LineChunk or list) of lines -> one RecordChunk per split present (dead letters one by one;
    keyed side-table records always one by one, for AsDict).

    With `encode_fields` (the encoding pass) the vocabularies come as the side input
    `vocabularies` and each split's output is a list of tf.Example bytes instead of a
    RecordChunk; chunks the chunk reader reads whole go from the split values straight to the
    examples (columnar.PlainChunkEncoder), and the examples are split by split, not the records.

    `parse(text_or_raw, line_no, **side_inputs)` returns a parsed value, None for a header line,
    or raises MalformedRecord. Empty lines are skipped and counted as `blank`."""

    def __init__(self, parse: Callable, encoding: str | None, count_prefix: str,
                 report_counts: bool, keyed: bool = False,
                 chunk_reader: Callable | None = None,
                 encode_fields: Sequence[str] | None = None):
        self._parse, self._encoding = parse, encoding
        self._prefix, self._report, self._keyed = count_prefix, report_counts, keyed
        self._reader = chunk_reader
        self._fields = tuple(encode_fields) if encode_fields is not None else None
        self._source = self._encoder = self._chunk_encoder = None

    def start_bundle(self):
        self._counts = _BundleCounts(NAMESPACE if self._report else NAMESPACE + "_vocab_pass",
                                     self._report)

    def _one(self, split, path, line_no, raw, side):
        """-> (tag, value): tag a split name (or "main"), DEADLETTER, "header" or "blank"."""
        if self._encoding is not None:
            if not raw.strip():
                return "blank", None
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
            return "header", None
        return ("main" if self._keyed else SPLITS[split]), parsed

    def _use_vocabularies(self, vocabs) -> None:
        if vocabs is self._source:
            return
        self._source, encoder = vocabs, _shared_encoder(self._fields, vocabs)
        if encoder is not self._encoder:  # (the chunk encoder's caches survive new bundles)
            self._encoder = encoder
            self._chunk_encoder = (columnar.PlainChunkEncoder(self._reader, encoder)
                                   if isinstance(self._reader, columnar.PlainChunkReader)
                                   else None)

    def _chunk_read(self, lines, side: dict):
        """(flags, columns or examples, labels) of the chunk reader (the chunk encoder when
        encoding) for a chunk's lines, or None when there is no reader for these lines."""
        if self._reader is None or self._encoding is None or self._keyed or side:
            return None
        encode = self._fields is not None
        if encode and self._chunk_encoder is None:
            return None
        raws = lines.raws if isinstance(lines, LineChunk) else [line[3] for line in lines]
        texts = _decode_lines(raws, self._encoding)
        if encode:
            return self._chunk_encoder(texts)
        return self._reader.read_columns(texts, missing_as_empty=True)

    def _tagged(self, lines, side: dict, read=None):
        """(tag, value) per line of a chunk: the lines the chunk reader read (`read`: its
        flags, columns or examples, and labels; some lines flagged), the others (and all lines
        without a reader) through `_one`. With a reader and `encode_fields`, a split's value is
        (example, label) for every line."""
        if read is None:
            for split, path, line_no, raw in lines:
                yield self._one(split, path, line_no, raw, side)
            return
        flags, items, labels = read
        if self._fields is None:
            values = iter(RecordChunk(items, labels))
        else:
            values = zip(items, labels)
        encode = self._encoder.encode if self._fields is not None else None
        for (split, path, line_no, raw), was_read in zip(lines, flags):
            if was_read:
                yield SPLITS[split], next(values)
                continue
            tag, value = self._one(split, path, line_no, raw, side)
            if encode is not None and tag in SPLITS:
                value = (encode(*value), value[1])
            yield tag, value

    def process(self, element, **side):
        if self._fields is not None:
            self._use_vocabularies(side.pop("vocabularies"))
        chunked = isinstance(element, (list, LineChunk))
        read = self._chunk_read(element, side) if chunked else None
        if read is not None and read[0] is None:
            # every line read by the chunk reader: one output per split, no step per line
            splits = (element.splits if isinstance(element, LineChunk)
                      else [line[0] for line in element])
            if self._fields is None:
                yield from self._by_split(splits, RecordChunk(read[1], read[2]))
            else:
                yield from self._examples_by_split(splits, read[1], read[2])
            if read[2]:
                self._counts.add(self._prefix + "read", len(read[2]))
            return
        groups: dict[str, list] = {}
        tally = dict.fromkeys(("blank", "header", DEADLETTER), 0)
        for tag, value in self._tagged(element if chunked else [element], side, read):
            if tag in tally:
                tally[tag] += 1
                if tag == DEADLETTER:
                    yield pvalue.TaggedOutput(DEADLETTER, value)
            elif chunked and not self._keyed:
                group = groups.get(tag)
                if group is None:
                    group = groups[tag] = []
                group.append(value)
            else:
                groups[tag] = groups.get(tag, 0) + 1
                if self._fields is not None:  # a single line: a list of one example
                    yield from self._examples(tag, [self._encoder.encode(*value)], [value[1]])
                else:
                    yield pvalue.TaggedOutput(tag, value)
        read_rows = tally[DEADLETTER]
        for tag, values in groups.items():
            if not isinstance(values, list):
                read_rows += values
                continue
            read_rows += len(values)
            if self._fields is None:
                yield pvalue.TaggedOutput(tag, RecordChunk.from_records(values))
            elif read is not None:  # (example, label) pairs
                yield from self._examples(tag, [e for e, _ in values], [y for _, y in values])
            else:
                records = RecordChunk.from_records(values)
                yield from self._examples(
                    tag, self._encoder.encode_columns(records.columns, records.labels),
                    records.labels)
        counts, prefix = self._counts, self._prefix
        if read_rows:
            counts.add(prefix + "read", read_rows)
        for key, n in tally.items():
            if n:
                counts.add(prefix + key, n)

    @staticmethod
    def _by_split(splits: list[int], records: RecordChunk):
        """One TaggedOutput per split present: the RecordChunk of its lines, in line order."""
        if not records.labels:
            return
        first = splits[0]
        if splits.count(first) == len(splits):
            yield pvalue.TaggedOutput(SPLITS[first], records)
            return
        for index, name in enumerate(SPLITS):
            indices = [i for i, split in enumerate(splits) if split == index]
            if indices:
                yield pvalue.TaggedOutput(name, records.select(indices))

    def _examples_by_split(self, splits: list[int], examples: list[bytes], labels: list):
        """`_examples` per split present, each with its lines' examples in line order."""
        if not labels:
            return
        first = splits[0]
        if splits.count(first) == len(splits):
            yield from self._examples(SPLITS[first], examples, labels)
            return
        for index, name in enumerate(SPLITS):
            keep = [split == index for split in splits]
            if any(keep):
                yield from self._examples(name, list(itertools.compress(examples, keep)),
                                          list(itertools.compress(labels, keep)))

    def _examples(self, split: str, examples: list[bytes], labels: Sequence[float]):
        """One split's examples as one output element, counted as written (and label sum)."""
        self._counts.add(f"written/{split}", len(examples))
        positives = sum(labels)
        if positives:
            self._counts.add(f"label_sum/{split}", positives)
        yield pvalue.TaggedOutput(split, examples)

    def finish_bundle(self):
        yield from self._counts.finish()


def _decode_lines(raws: list[bytes], encoding: str) -> list[str]:
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


class ParseRecords(beam.PTransform):
    """Lines -> tagged outputs: one per split ("train", "valid", "test"; or "main" when `keyed`,
    for side tables), "deadletter" (dicts) and "counts". `chunk_reader` (optional, e.g.
    columnar.PlainChunkReader): reads the decoded lines of a chunk at once, giving the records
    `parse` gives; the lines it flags go through `parse`.

    `encode=(field_names, vocabularies)` (a PCollection of the vocabularies dict, one element):
    each split's output holds lists of serialized tf.Example bytes (one id per field and the
    label), and "counts" also has `written/<split>` and `label_sum/<split>`."""

    def __init__(self, parse: Callable, encoding: str | None, count_prefix: str = "",
                 report_counts: bool = True, keyed: bool = False,
                 chunk_reader: Callable | None = None, encode: tuple | None = None,
                 **side_inputs):
        super().__init__()
        if encode is not None and keyed:
            raise ValueError("keyed (side-table) records are not encoded")
        fields, self._vocabs = encode if encode is not None else (None, None)
        self._fn = _ParseFn(parse, encoding, count_prefix, report_counts, keyed, chunk_reader,
                            fields)
        self._keyed, self._side = keyed, side_inputs

    def expand(self, lines):
        tags = ["main"] if self._keyed else list(SPLITS)
        side = dict(self._side)
        if self._vocabs is not None:
            side["vocabularies"] = beam.pvalue.AsSingleton(self._vocabs)
        return lines | "Parse" >> beam.ParDo(self._fn, **side).with_outputs(
            DEADLETTER, COUNTS, *tags)


# ----------------------------------------------------------------------------- vocabularies

def token_shard(token: str, shards: int) -> int:
    """Deterministic in every process (unlike hash()): the same token always meets itself."""
    return zlib.crc32(token.encode("utf-8", "surrogatepass")) % shards


class _CountTokensFn(beam.DoFn):
    """(tokens, label) or a RecordChunk of them -> ((field index, shard), {token: count}),
    pre-summed per bundle; flushed when the bundle has seen `max_entries` distinct tokens so
    memory stays bounded. One dict per field and token shard instead of one element per token:
    the shuffle carries a few hundred elements per bundle, and no single key holds a whole
    field before the min-count filter."""

    def __init__(self, num_fields: int, max_entries: int = 200_000, shards: int = 16):
        self._n, self._max, self._shards = num_fields, max_entries, shards

    def start_bundle(self):
        self._counts = [collections.Counter() for _ in range(self._n)]
        self._rows = self._checked = 0

    def _drain(self):
        counts, self._counts = self._counts, [collections.Counter() for _ in range(self._n)]
        shards = self._shards
        for field, table in enumerate(counts):
            if EMPTY_MISSING in table:  # RecordChunk's "" is MISSING_TOKEN
                table[MISSING_TOKEN] += table.pop(EMPTY_MISSING)
            parts = [{} for _ in range(shards)]
            for token, n in table.items():
                parts[token_shard(token, shards)][token] = n
            for shard, part in enumerate(parts):
                if part:
                    yield (field, shard), part

    def process(self, element):
        if isinstance(element, RecordChunk):
            # one C-level Counter.update per field over the chunk's column
            for table, column in zip(self._counts, element.columns):
                table.update(column)
            self._rows += len(element)
        else:
            for table, token in zip(self._counts, element[0]):
                table[token] += 1
            self._rows += 1
        if self._rows - self._checked >= 1000:
            self._checked = self._rows
            if sum(map(len, self._counts)) >= self._max:
                yield from self._drain()

    def finish_bundle(self):
        for item in self._drain():
            yield _windowed(item)


class _SumCountsFn(beam.CombineFn):
    """{token: count} dicts -> their sum per token."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, counts):
        if not acc:
            acc.update(counts)
            return acc
        get = acc.get
        for token, n in counts.items():
            acc[token] = get(token, 0) + n
        return acc

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        first = next(accumulators)  # Beam allows modifying the first one
        for acc in accumulators:
            first = self.add_input(first, acc)
        return first

    def extract_output(self, acc):
        return acc


def order_vocabulary(token_counts) -> list[tuple[str, int]]:
    """Descending count, ties by the token's UTF-8 bytes ascending (id i+1 = position i)."""
    return sorted(token_counts, key=lambda tc: (-tc[1], tc[0].encode("utf-8")))


def _complete(vocabs: dict, names: Sequence[str]) -> dict[str, list]:
    return {name: vocabs.get(i, []) for i, name in enumerate(names)}


class ComputeVocabularies(beam.PTransform):
    """Training records -> one dict {field name: [(token, count), ...] in id order}; tokens
    with count < the field's min count are left out (they map to OOV_ID)."""

    def __init__(self, field_names: Sequence[str], min_counts: Sequence[int]):
        super().__init__()
        self._names, self._min = tuple(field_names), tuple(min_counts)

    def expand(self, records):
        min_counts, names = self._min, self._names
        return (records
                | "CountInBundles" >> beam.ParDo(_CountTokensFn(len(names)))
                | "SumCounts" >> beam.CombinePerKey(_SumCountsFn())
                | "MinCount" >> beam.MapTuple(lambda key, counts: (key[0], [
                    (t, n) for t, n in counts.items() if n >= min_counts[key[0]]]))
                | "GroupByField" >> beam.GroupByKey()
                | "Order" >> beam.MapTuple(lambda field, parts: (
                    field, order_vocabulary(itertools.chain.from_iterable(parts))))
                | "ToDict" >> beam.combiners.ToDict()
                | "AllFields" >> beam.Map(_complete, names))


class _WriteVocabFn(beam.DoFn):
    def __init__(self, directory: str):
        self._dir = directory

    def process(self, vocabs: dict):
        for name, token_counts in vocabs.items():
            path = FileSystems.join(self._dir, VOCAB_DIR, f"{name}.txt")
            with FileSystems.create(path, mime_type="text/plain") as fh:
                fh.write("".join(f"{t}\t{c}\n" for t, c in token_counts).encode("utf-8"))
            yield f"vocab_size/{name}", len(token_counts) + 1


class WriteVocabularies(beam.PTransform):
    """The vocabulary dict -> DIR/vocab/<field>.txt (`token\\tcount`, id order); emits
    ("vocab_size/<field>", V + 1) counts."""

    def __init__(self, directory: str):
        super().__init__()
        self._dir = directory

    def expand(self, vocabs):
        return vocabs | "WriteFiles" >> beam.ParDo(_WriteVocabFn(self._dir))


# ----------------------------------------------------------------------------- encoding

_ENCODERS: dict = {}


def _shared_encoder(names: tuple[str, ...], vocabs: dict) -> ExampleEncoder:
    """One ExampleEncoder per worker process for the splits' encoders (and per bundle, when
    the runner hands over an equal but new side-input object)."""
    cached = _ENCODERS.get(names)
    if cached is None or (cached[0] is not vocabs and cached[0] != vocabs):
        cached = _ENCODERS[names] = (vocabs, ExampleEncoder(names, LABEL_KEY, vocabs))
    return cached[1]


# ----------------------------------------------------------------------------- writing

def gzip_class(level: int) -> type:
    """The GZIP writer for `level`: ISA-L's (`isal.igzip`, levels 0-3) when installed
    (requirements.txt pins it), else the standard library's zlib. On the job's records ISA-L at
    level 3 took 1.92 us per row against zlib's 6.09 at level 2, for files 8% larger (see
    configs/preprocess.py). Both write standard GZIP; TensorFlow reads either."""
    if level <= _ISAL_MAX_LEVEL:
        try:
            from isal import igzip

            return igzip.IGzipFile
        except ImportError:
            pass
    return gzip.GzipFile


_ISAL_MAX_LEVEL = 3


class _GzipFile:
    """A GZIP stream at a chosen level over a Beam filesystem file (closes both). mtime 0 and an
    empty file name in the header (by default gzip writes the temporary file's random name) keep
    the bytes identical between runs (with the same compressor: see gzip_class)."""

    def __init__(self, raw, level: int):
        self._raw = raw
        self._gz = gzip_class(level)(filename="", fileobj=raw, mode="wb", compresslevel=level,
                                     mtime=0)

    def write(self, data: bytes) -> None:
        self._gz.write(data)

    def close(self) -> None:
        self._gz.close()
        self._raw.close()


class _TFRecordChunkSink(FileBasedSink):
    """FileBasedSink whose elements are lists of serialized records (one TFRecord each);
    `gzip_level` set: GZIP at that level instead of Beam's fixed default."""

    def __init__(self, file_path_prefix, file_name_suffix, num_shards, compression_type,
                 gzip_level: int | None = None):
        super().__init__(file_path_prefix, coder=coders.BytesCoder(),
                         file_name_suffix=file_name_suffix, num_shards=num_shards,
                         mime_type="application/octet-stream",
                         compression_type=CompressionTypes.UNCOMPRESSED if gzip_level else compression_type)
        self._gzip_level = gzip_level
        self._framer = None

    def open(self, temp_path):
        handle = super().open(temp_path)
        return _GzipFile(handle, self._gzip_level) if self._gzip_level else handle

    def write_record(self, file_handle, value):
        if self._framer is None:
            self._framer = TFRecordFramer()
        file_handle.write(self._framer.frame(value))


def _deal(chunk: list, n: int) -> list[list]:
    """A chunk as n round-robin sub-chunks (so fixed shard counts get records evenly)."""
    return [part for part in (chunk[i::n] for i in range(n)) if part]


class WriteTFRecordChunks(beam.PTransform):
    """Chunks (lists) of serialized records -> TFRecord files `prefix-SSSSS-of-NNNNN+suffix`,
    like beam.io.WriteToTFRecord on the flattened records (num_shards 0: the runner decides)."""

    def __init__(self, file_path_prefix: str, file_name_suffix: str = "", num_shards: int = 0,
                 compression_type: str = CompressionTypes.AUTO, gzip_level: int | None = None):
        super().__init__()
        self._sink = _TFRecordChunkSink(file_path_prefix, file_name_suffix, num_shards,
                                        compression_type, gzip_level)
        self._shards = num_shards

    def expand(self, chunks):
        if self._shards > 1:
            shards = self._shards
            chunks = chunks | "DealToShards" >> beam.FlatMap(_deal, shards)
        return chunks | "Write" >> beam.io.Write(self._sink)


class WriteDeadLetters(beam.PTransform):
    """Dead-letter dicts -> DIR/deadletter/part-*.jsonl (one JSON object per line)."""

    def __init__(self, directory: str):
        super().__init__()
        self._prefix = FileSystems.join(directory, DEADLETTER, "part")

    def expand(self, letters):
        return (letters
                | "ToJson" >> beam.Map(lambda d: json.dumps(d, sort_keys=True, ensure_ascii=False))
                | "Write" >> beam.io.WriteToText(self._prefix, file_name_suffix=".jsonl"))


class WriteCounts(beam.PTransform):
    """All (key, n) counts -> summed -> DIR/_counts.json (read by the driver)."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, counts):
        path = self._path

        def write(totals):
            with FileSystems.create(path, mime_type="application/json") as fh:
                fh.write(json.dumps(totals, sort_keys=True).encode())
            return path

        return (counts
                | "Sum" >> beam.CombinePerKey(sum)
                | "ToDict" >> beam.combiners.ToDict()
                | "WriteJson" >> beam.Map(write))
