"""The PTransforms and DoFns of the preprocessing job (the recipe is in preprocessing/job.py).

Elements between steps:
- lines: `(split_index, path, line_no, raw)`; raw is the line's bytes without terminator (or a
  dict of numpy values for TFDS input),
- records: `(tokens, label)` per split, tokens in DatasetSpec field order,
- counts: `(key, number)` pairs summed into DIR/_counts.json (exact on any runner: they are data,
  not metrics). Beam Metrics counters (namespace "preprocess") mirror them for progress.

Per-row work is kept in few DoFns with bundle-local counting because the job is CPU bound.
"""
from __future__ import annotations

import json
import posixpath
from typing import Any, Callable, Sequence

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressedFile
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from configs.features import LABEL_KEY, SPLITS, VOCAB_DIR
from preprocessing.formats import MalformedRecord, split_index

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
        self._since_flush += 1
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

class _ReadLinesFn(beam.DoFn):
    """One input file -> its lines with 1-based line numbers and split index."""

    def __init__(self, fractions: Sequence[float], seed: int, only_split: int | None):
        self._fractions, self._seed, self._only = tuple(fractions), seed, only_split

    def process(self, readable: fileio.ReadableFile):
        path = readable.metadata.path
        source = posixpath.basename(path)
        with readable.open() as fh:
            lines = iter(fh.readline, b"") if isinstance(fh, CompressedFile) else fh
            for line_no, line in enumerate(lines, 1):
                split = split_index(source, line_no, self._fractions, self._seed)
                if self._only is None or split == self._only:
                    yield split, path, line_no, line.rstrip(b"\r\n")


class ReadWithLineNumbers(beam.PTransform):
    """Files matching `patterns` -> (split, path, line_no, bytes).

    Line numbers need a sequential read, so each file is read by one worker: parallelism is per
    input file (shard big inputs into many files). `only_split` keeps one split (read-time
    filter for the vocabulary pass)."""

    def __init__(self, patterns: Sequence[str], fractions: Sequence[float], seed: int,
                 only_split: int | None = None):
        super().__init__()
        self._patterns, self._fractions, self._seed = list(patterns), fractions, seed
        self._only = only_split

    def expand(self, pbegin):
        return (pbegin
                | "Patterns" >> beam.Create(self._patterns)
                | "Match" >> fileio.MatchAll()
                | "SpreadFiles" >> beam.Reshuffle()
                | "Open" >> fileio.ReadMatches()
                | "Lines" >> beam.ParDo(_ReadLinesFn(self._fractions, self._seed, self._only)))


class _ReadTfdsFn(beam.DoFn):
    """A TFDS dataset name -> its examples as numpy dicts, numbered within the TFDS split."""

    def __init__(self, fractions, seed, only_split, data_dir: str | None):
        self._fractions, self._seed, self._only = tuple(fractions), seed, only_split
        self._data_dir = data_dir

    def process(self, name: str):
        import tensorflow_datasets as tfds

        source = f"tfds:{name}:train"
        ds = tfds.load(name, split="train", data_dir=self._data_dir)
        for index, example in enumerate(tfds.as_numpy(ds), 1):
            split = split_index(source, index, self._fractions, self._seed)
            if self._only is None or split == self._only:
                yield split, source, index, example


class ReadTfds(beam.PTransform):
    """TFDS `name` (e.g. movielens/1m-ratings) -> (split, source, index, example dict)."""

    def __init__(self, name, fractions, seed, only_split=None, data_dir=None):
        super().__init__()
        self._fn = _ReadTfdsFn(fractions, seed, only_split, data_dir)
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
    """(split, path, line_no, raw) -> TaggedOutput(split name, parsed) or dead letter.

    `parse(text_or_raw, line_no, **side_inputs)` returns a parsed value, None for a header line,
    or raises MalformedRecord. Empty lines are skipped and counted as `blank`."""

    def __init__(self, parse: Callable, encoding: str | None, count_prefix: str,
                 report_counts: bool, keyed: bool = False):
        self._parse, self._encoding = parse, encoding
        self._prefix, self._report, self._keyed = count_prefix, report_counts, keyed

    def start_bundle(self):
        self._counts = _BundleCounts(NAMESPACE if self._report else NAMESPACE + "_vocab_pass",
                                     self._report)

    def process(self, element, **side):
        split, path, line_no, raw = element
        counts, prefix = self._counts, self._prefix
        if self._encoding is not None:
            if not raw.strip():
                counts.add(prefix + "blank")
                return
            try:
                value = raw.decode(self._encoding)
            except UnicodeDecodeError as exc:
                value, reason = None, f"undecodable bytes ({self._encoding}): {exc.reason} at byte {exc.start}"
        else:
            value = raw
        if value is not None:
            try:
                parsed = self._parse(value, line_no, **side)
                if parsed is None:
                    counts.add(prefix + "header")
                    return
                counts.add(prefix + "read")
                yield pvalue.TaggedOutput(SPLITS[split] if not self._keyed else "main", parsed)
                return
            except MalformedRecord as exc:
                reason = str(exc)
        counts.add(prefix + "read")
        counts.add(prefix + DEADLETTER)
        yield pvalue.TaggedOutput(DEADLETTER, dead_letter(path, line_no, reason, raw))

    def finish_bundle(self):
        yield from self._counts.finish()


class ParseRecords(beam.PTransform):
    """Lines -> tagged outputs: one per split ("train", "valid", "test"; or "main" when `keyed`,
    for side tables), "deadletter" (dicts) and "counts"."""

    def __init__(self, parse: Callable, encoding: str | None, count_prefix: str = "",
                 report_counts: bool = True, keyed: bool = False, **side_inputs):
        super().__init__()
        self._fn = _ParseFn(parse, encoding, count_prefix, report_counts, keyed)
        self._keyed, self._side = keyed, side_inputs

    def expand(self, lines):
        tags = ["main"] if self._keyed else list(SPLITS)
        return lines | "Parse" >> beam.ParDo(self._fn, **self._side).with_outputs(
            DEADLETTER, COUNTS, *tags)


# ----------------------------------------------------------------------------- vocabularies

class _CountTokensFn(beam.DoFn):
    """(tokens, label) -> ((field index, token), count), pre-summed per bundle; flushed when
    the bundle has seen `max_entries` distinct tokens so memory stays bounded."""

    def __init__(self, num_fields: int, max_entries: int = 200_000):
        self._n, self._max = num_fields, max_entries

    def start_bundle(self):
        self._counts = [{} for _ in range(self._n)]
        self._rows = 0

    def _drain(self):
        counts, self._counts = self._counts, [{} for _ in range(self._n)]
        for field, table in enumerate(counts):
            for token, n in table.items():
                yield (field, token), n

    def process(self, element):
        for table, token in zip(self._counts, element[0]):
            table[token] = table.get(token, 0) + 1
        self._rows += 1
        if self._rows % 1000 == 0 and sum(map(len, self._counts)) >= self._max:
            yield from self._drain()

    def finish_bundle(self):
        for item in self._drain():
            yield _windowed(item)


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
                | "SumCounts" >> beam.CombinePerKey(sum)
                | "MinCount" >> beam.Filter(lambda kv: kv[1] >= min_counts[kv[0][0]])
                | "ByField" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1])))
                | "GroupByField" >> beam.GroupByKey()
                | "Order" >> beam.MapTuple(lambda field, tcs: (field, order_vocabulary(tcs)))
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

class _EncodeFn(beam.DoFn):
    """(tokens, label) -> serialized tf.train.Example with one int64 id per field and a float
    label; the vocabularies come as a side input."""

    def __init__(self, field_names: Sequence[str], split: str):
        self._names, self._split = tuple(field_names), split
        self._source = None

    def setup(self):
        from tensorflow.core.example import example_pb2  # heavy import: once per worker

        example = example_pb2.Example()
        feature = example.features.feature
        self._ids = [feature[name].int64_list.value for name in self._names]
        for ids in self._ids:
            ids.append(0)
        self._label = feature[LABEL_KEY].float_list.value
        self._label.append(0.0)
        self._example = example

    def start_bundle(self):
        self._counts = _BundleCounts(NAMESPACE, True)

    def process(self, record, vocabs):
        if vocabs is not self._source:
            self._tables = [{t: i for i, (t, _) in enumerate(vocabs[name], 1)}
                            for name in self._names]
            self._source = vocabs
        tokens, label = record
        for ids, table, token in zip(self._ids, self._tables, tokens):
            ids[0] = table.get(token, 0)
        self._label[0] = label
        self._counts.add(f"written/{self._split}")
        if label:
            self._counts.add(f"label_sum/{self._split}", label)
        yield self._example.SerializeToString(deterministic=True)

    def finish_bundle(self):
        yield from self._counts.finish()


class EncodeExamples(beam.PTransform):
    """Records of one split -> tf.Example bytes (main) and "counts"."""

    def __init__(self, field_names, split: str, vocabs):
        super().__init__()
        self._fn, self._vocabs = _EncodeFn(field_names, split), vocabs

    def expand(self, records):
        return records | "ToExample" >> beam.ParDo(
            self._fn, vocabs=beam.pvalue.AsSingleton(self._vocabs)).with_outputs(
            COUNTS, main="examples")


# ----------------------------------------------------------------------------- writing

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
