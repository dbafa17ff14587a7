"""Vocabularies: training records -> per-field token counts, combined, ordered, written to vocab/.

Tokens are counted per bundle into one dict per field and token shard, summed by a combiner,
filtered by the field's minimum count and ordered by descending count (ties by the token's
UTF-8 bytes): id i+1 is the token at position i, 0 is out of vocabulary.
"""
from __future__ import annotations

import collections
import itertools
import zlib
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from configs.features import MISSING_TOKEN, VOCAB_DIR
from preprocessing.columnar import EMPTY_MISSING, RecordChunk
from preprocessing.counts import windowed


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
            yield windowed(item)


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
