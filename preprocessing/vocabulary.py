"""Vocabularies: training records -> per-field token counts, summed, filtered, ordered, written.

No step holds a field's raw counts in one place, however many distinct values it has (most of a
big field's values are seen once and fall under its minimum count):
1. count: each bundle sums its tokens into one dict per field (the packed keys of
   packed.KeyChunks into one numpy hash table for all categorical fields), about `max_entries`
   entries in all; when full, the lowest counts leave as partial counts keyed (field, token
   shard) until half stay: the long tail streams out, frequent tokens keep being summed in the
   bundle;
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
import numpy as np
from apache_beam.io.filesystems import FileSystems

from configs.features import MISSING_TOKEN, VOCAB_DIR
from preprocessing.columnar import EMPTY_MISSING, RecordChunk
from preprocessing.counts import windowed
from preprocessing.packed import MAX_BYTES, KeyChunk, KeyIndex, group_bits, split_pairs

SHARDS = 64  # token shards per field: a (field, shard) key holds 1/SHARDS of the field's tokens
_MISSING_BYTES = MISSING_TOKEN.encode("ascii")


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


class _KeyCounts:
    """Counts of the packed keys (preprocessing.packed) of a bundle's categorical fields: a
    KeyIndex maps each (field, key) pair seen to a number, under which its pair and count are
    kept; a chunk's keys are looked up at once, new pairs numbered, and counted by one
    np.add.at."""

    def __init__(self):
        self._index = KeyIndex()
        self._pairs = np.zeros(1024, np.uint64)
        self._counts = np.zeros(1024, np.int64)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, keys: np.ndarray, fields: Sequence[int]) -> None:
        """Counts (rows, columns) keys of the fields `fields` (one per column)."""
        pairs = (keys | group_bits(np.asarray(fields, dtype=np.int64))).ravel()
        ids = self._index.get_pairs(pairs)
        missing = np.flatnonzero(ids < 0)
        if len(missing):
            new, inverse = np.unique(pairs[missing], return_inverse=True)
            new_ids = np.arange(self._n, self._n + len(new))
            self._index.put_pairs(new, new_ids)
            ids[missing] = new_ids[inverse]
            if self._n + len(new) > len(self._pairs):
                size = 2 * (self._n + len(new))
                self._pairs = np.resize(self._pairs, size)
                self._counts = np.concatenate([self._counts[:self._n],
                                               np.zeros(size - self._n, np.int64)])
            self._pairs[self._n:self._n + len(new)] = new
            self._n += len(new)
        np.add.at(self._counts, ids, 1)

    def counts(self) -> np.ndarray:
        return self._counts[:self._n]

    def take(self, limit: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Removes and returns (fields, keys, counts) of the pairs with count <= `limit` (all
        for None); the others stay, renumbered."""
        pairs, counts = self._pairs[:self._n], self._counts[:self._n]
        if limit is None:
            leaving = np.ones(self._n, dtype=bool)
        else:
            leaving = counts <= limit
        fields, keys = split_pairs(pairs[leaving])
        out = fields, keys, counts[leaving]
        stay_pairs, stay_counts = pairs[~leaving], counts[~leaving]
        self.__init__()
        if len(stay_pairs):
            self._index.put_pairs(stay_pairs, np.arange(len(stay_pairs)))
            self._pairs, self._counts = stay_pairs.copy(), stay_counts.copy()
            self._n = len(stay_pairs)
        return out


def _packed_parts(keys: np.ndarray, counts: np.ndarray, shards: int):
    """(shard, {token: count}) of one field's packed keys and their counts, the token of key 0
    being MISSING_TOKEN; a token's shard is token_shard's."""
    if not len(keys):
        return
    raw = np.asarray(keys, dtype=">u8").view(f"S{MAX_BYTES}").tolist()
    for i in np.flatnonzero(keys == 0).tolist():
        raw[i] = _MISSING_BYTES
    of_shard = np.fromiter(map(zlib.crc32, raw), dtype=np.int64, count=len(raw)) % shards
    tokens = b"\n".join(raw).decode("ascii").split("\n")
    order = np.argsort(of_shard, kind="stable")
    sorted_shards = of_shard[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_shards[1:] != sorted_shards[:-1]]))
    bounds = starts.tolist() + [len(order)]
    order, counts = order.tolist(), counts.tolist()
    for shard, start, stop in zip(sorted_shards[starts].tolist(), bounds, bounds[1:]):
        at = order[start:stop]
        yield shard, dict(zip([tokens[i] for i in at], [counts[i] for i in at]))


class _CountTokensFn(beam.DoFn):
    """(tokens, label), a RecordChunk or a packed.KeyChunk of them -> ((field index, shard),
    {token: count}), partial counts. A bundle sums into one Counter per field (and, for a
    KeyChunk's categorical columns, into one _KeyCounts of packed keys); when
    they hold `max_entries` entries in all (checked every 1000 rows), entries leave, the lowest
    counts first (the long tail of tokens seen once or twice), until at most half of max_entries
    stay to be summed on; everything leaves at the end of the bundle.
    Elements are one dict per field and token shard, not one per token: the shuffle carries
    few elements, and no key holds more than 1/shards of a field."""

    def __init__(self, num_fields: int, max_entries: int = 200_000, shards: int = SHARDS):
        self._n, self._max, self._shards = num_fields, max_entries, shards

    def start_bundle(self):
        self._counts = [collections.Counter() for _ in range(self._n)]
        self._keys = _KeyCounts()
        self._rows = self._checked = 0

    def _entries(self) -> int:
        return sum(map(len, self._counts)) + len(self._keys)

    def _evict(self, everything: bool):
        tables = self._counts
        for table in tables:
            if EMPTY_MISSING in table:  # RecordChunk's "" is MISSING_TOKEN
                table[MISSING_TOKEN] += table.pop(EMPTY_MISSING)
        if everything:
            leaving, self._counts = tables, [collections.Counter() for _ in range(self._n)]
            limit = None
        else:
            sizes = collections.Counter()  # count -> entries with that count
            for table in tables:
                sizes.update(table.values())
            values, entries = np.unique(self._keys.counts(), return_counts=True)
            for value, n in zip(values.tolist(), entries.tolist()):
                sizes[value] += n
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
        fields, keys, counts = self._keys.take(limit)
        if len(fields):
            order = np.argsort(fields, kind="stable")
            fields, keys, counts = fields[order], keys[order], counts[order]
            starts = np.flatnonzero(np.concatenate([[True], fields[1:] != fields[:-1]]))
            for field, start, stop in zip(fields[starts].tolist(), starts.tolist(),
                                          starts[1:].tolist() + [len(fields)]):
                for shard, part in _packed_parts(keys[start:stop], counts[start:stop], shards):
                    yield (field, shard), part

    def _count_keys(self, chunk: KeyChunk) -> None:
        numeric = [i for i, is_numeric in enumerate(chunk.numeric) if is_numeric]
        if len(numeric) < len(chunk.numeric):
            self._keys.add(chunk.keys, [i for i, is_numeric in enumerate(chunk.numeric)
                                        if not is_numeric])
        for field, tokens, codes in zip(numeric, chunk.tokens, chunk.codes.T):
            counts = np.bincount(codes, minlength=len(tokens))
            seen = np.flatnonzero(counts)
            table = self._counts[field]
            for token, n in zip([tokens[i] for i in seen.tolist()], counts[seen].tolist()):
                table[token] += n

    def process(self, element):
        if isinstance(element, KeyChunk):
            self._count_keys(element)
            self._rows += len(element)
        elif isinstance(element, RecordChunk):
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
            if self._entries() >= self._max:
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
