"""Vocabularies: training records -> per-field token counts, summed, filtered, ordered, written.

No step holds a field's raw counts in one place, however many distinct values it has (most of a
big field's values are seen once and fall under its minimum count):
1. count: each bundle sums its tokens into one dict per field, about `max_entries` entries in
   all; when full, the lowest counts leave as partial counts keyed (field, token shard) until
   half stay: the long tail streams out, frequent tokens keep being summed in the bundle;
2. sum per key: a GroupByKey per (field, token shard), not a combiner (a combiner's bundle-level
   accumulators would hold every distinct token the bundle saw); one key holds 1/SHARDS of a
   field's raw tokens, summed and filtered by the field's minimum count right there;
3. gather per field: only the survivors meet, in a combiner that holds at most 2 x the field's
   `max_vocab_size` of them when it is capped (each shard sends at most its top max_vocab_size).
(The DirectRunner's GroupByKey itself holds what it shuffles in memory, in the runner process
and in the worker it hands each share to; distributed runners shuffle through disk.)
Order: descending count, ties by the token's UTF-8 bytes ascending; id i+1 is the token at
position i, 0 is out of vocabulary. The cap keeps the first max_vocab_size of that order.
"""
from __future__ import annotations

import collections
import heapq
import zlib
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from configs.features import MISSING_TOKEN, VOCAB_DIR
from preprocessing.columnar import EMPTY_MISSING, RecordChunk
from preprocessing.counts import windowed

SHARDS = 64  # token shards per field: a (field, shard) key holds 1/SHARDS of the field's tokens


def token_shard(token: str, shards: int) -> int:
    """Deterministic in every process (unlike hash()): the same token always meets itself."""
    return zlib.crc32(token.encode("utf-8", "surrogatepass")) % shards


def _order_key(token_count: tuple[str, int]) -> tuple[int, bytes]:
    return -token_count[1], token_count[0].encode("utf-8")


def order_vocabulary(token_counts) -> list[tuple[str, int]]:
    """Descending count, ties by the token's UTF-8 bytes ascending (id i+1 = position i)."""
    return sorted(token_counts, key=_order_key)


def top_tokens(token_counts, k: int | None) -> list[tuple[str, int]]:
    """The first `k` (all for None) of order_vocabulary(token_counts), in that order."""
    if k is None:
        return order_vocabulary(token_counts)
    return heapq.nsmallest(k, token_counts, key=_order_key)


class _CountTokensFn(beam.DoFn):
    """(tokens, label) or a RecordChunk of them -> ((field index, shard), {token: count}), partial
    counts. A bundle sums into one Counter per field; when they hold `max_entries`
    entries in all (checked every 1000 rows), entries leave, the lowest counts first (the long
    tail of tokens seen once or twice), until at most half of max_entries stay to be summed on;
    everything leaves at the end of the bundle.
    Elements are one dict per field and token shard, not one per token: the shuffle carries
    few elements, and no key holds more than 1/shards of a field."""

    def __init__(self, num_fields: int, max_entries: int = 200_000, shards: int = SHARDS):
        self._n, self._max, self._shards = num_fields, max_entries, shards

    def start_bundle(self):
        self._counts = [collections.Counter() for _ in range(self._n)]
        self._rows = self._checked = 0

    def _evict(self, everything: bool):
        tables = self._counts
        for table in tables:
            if EMPTY_MISSING in table:  # RecordChunk's "" is MISSING_TOKEN
                table[MISSING_TOKEN] += table.pop(EMPTY_MISSING)
        if everything:
            leaving, self._counts = tables, [collections.Counter() for _ in range(self._n)]
        else:
            sizes = collections.Counter()  # count -> entries with that count
            for table in tables:
                sizes.update(table.values())
            # the lowest counts leave until at most half of max_entries stay
            target, freed = sum(sizes.values()) - self._max // 2, 0
            for limit in sorted(sizes):
                freed += sizes[limit]
                if freed >= target:
                    break
            leaving = []
            for i, table in enumerate(tables):
                leaving.append({t: n for t, n in table.items() if n <= limit})
                tables[i] = collections.Counter({t: n for t, n in table.items() if n > limit})
        shards = self._shards
        for field, table in enumerate(leaving):
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
                yield from self._evict(everything=False)

    def finish_bundle(self):
        for item in self._evict(everything=True):
            yield windowed(item)


class _SumShardFn(beam.DoFn):
    """((field, shard), partial {token: count} dicts) -> (field, (cap, the number of
    tokens >= the field's min count, [(token, count)] of them: all, or the top `cap` when
    capped)). Only this key's share of the field's raw tokens is ever held."""

    def __init__(self, min_counts: Sequence[int], caps: Sequence[int | None]):
        self._min, self._caps = tuple(min_counts), tuple(caps)

    def process(self, element):
        (field, _), parts = element
        total: dict[str, int] = {}
        get = total.get
        for part in parts:
            if not total:
                total = part
                get = total.get
                continue
            for token, n in part.items():
                total[token] = get(token, 0) + n
        least, cap = self._min[field], self._caps[field]
        survivors = [(t, n) for t, n in total.items() if n >= least]
        del total
        found = len(survivors)
        if cap is not None and found > cap:
            survivors = top_tokens(survivors, cap)
        yield field, (cap, found, survivors)


class _FieldVocabularyFn(beam.CombineFn):
    """A field's shards' (cap, found, survivors) -> (its vocabulary in id order, tokens cut by
    the cap). Capped, the accumulator holds at most 2 x cap survivors."""

    def create_accumulator(self):
        return [None, 0, []]

    def add_input(self, acc, value):
        cap, found, survivors = value
        acc[0] = cap
        acc[1] += found
        acc[2].extend(survivors)
        if cap is not None and len(acc[2]) > 2 * cap:
            acc[2] = top_tokens(acc[2], cap)
        return acc

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        first = next(accumulators)  # Beam allows modifying the first one
        for acc in accumulators:
            first = self.add_input(first, (acc[0] if acc[0] is not None else first[0],
                                           acc[1], acc[2]))
        return first

    def extract_output(self, acc):
        vocab = top_tokens(acc[2], acc[0])
        return vocab, acc[1] - len(vocab)


def _complete(vocabs: dict, names: Sequence[str]) -> dict[str, list]:
    return {name: vocabs.get(i, []) for i, name in enumerate(names)}


class ComputeVocabularies(beam.PTransform):
    """Training records -> one dict {field name: [(token, count), ...] in id order}; tokens
    with count < the field's min count are left out (they map to OOV_ID), and so are those
    after the first `max_sizes[i]` of field i (None: no cap).

    With `report_counts`, the output is a pair: that dict and ("vocab_cut/<field>", tokens cut
    by the cap) per capped field (tokens that reached the min count but got no id)."""

    def __init__(self, field_names: Sequence[str], min_counts: Sequence[int],
                 max_sizes: Sequence[int | None] | None = None, report_counts: bool = False):
        super().__init__()
        self._names, self._min = tuple(field_names), tuple(min_counts)
        self._caps = tuple(max_sizes) if max_sizes is not None else (None,) * len(self._names)
        if len(self._min) != len(self._names) or len(self._caps) != len(self._names):
            raise ValueError("one min count and one max size per field")
        self._report = report_counts

    def expand(self, records):
        names, caps = self._names, self._caps
        per_field = (records
                     | "CountInBundles" >> beam.ParDo(_CountTokensFn(len(names)))
                     | "GroupByShard" >> beam.GroupByKey()
                     | "SumAndMinCount" >> beam.ParDo(_SumShardFn(self._min, caps))
                     | "Vocabulary" >> beam.CombinePerKey(_FieldVocabularyFn()))
        vocabs = (per_field
                  | "Tokens" >> beam.MapTuple(lambda field, result: (field, result[0]))
                  | "ToDict" >> beam.combiners.ToDict()
                  | "AllFields" >> beam.Map(_complete, names))
        if not self._report:
            return vocabs
        cut = per_field | "CutCounts" >> beam.FlatMapTuple(
            lambda field, result: [(f"vocab_cut/{names[field]}", result[1])]
            if caps[field] is not None else [])
        return vocabs, cut


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
