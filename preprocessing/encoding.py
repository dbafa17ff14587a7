"""Encoding: lines parsed and turned into tf.Example bytes per split in one step (the job's
second pass), the vocabularies a side input.

Each split's output holds lists of serialized tf.Example bytes (one int64 id per field and a
float label): a list of one for a single line, of the chunk's lines of that split for a chunk.
Chunks of plain values only go from their bytes to the examples without a Python object per
value (packed.PackedEncoder); other chunks that the chunk reader reads whole go from the split
values straight to the examples (columnar.PlainChunkEncoder); other lines are parsed as in
preprocessing.parsing and encoded by the ExampleEncoder. Dead letters and counts as in parsing,
plus `written/<split>` and `label_sum/<split>`.
"""
from __future__ import annotations

import operator
import pickle
from typing import Callable, Sequence

import apache_beam as beam
from apache_beam import pvalue

from configs.features import LABEL_KEY, SPLITS
from preprocessing.columnar import PlainChunkEncoder, PlainChunkReader, RecordChunk
from preprocessing.counts import COUNTS, NAMESPACE, BundleCounts
from preprocessing.example_codec import ExampleEncoder
from preprocessing.packed import PackedEncoder, PackedReader
from preprocessing.parsing import (
    DEADLETTER,
    LineTagger,
    chunk_raws,
    chunk_splits,
    chunk_texts,
    count_lines,
    is_chunk,
    sort_lines,
    split_positions,
)


class VocabularyTokens:
    """The vocabularies' tokens in id order as one pickled list per field: the encoding pass's
    side input. A worker loads it, sizes it (Beam's state cache measures every object of the
    values it caches) and compares it with the one it holds in a few steps, however many tokens
    there are; `tokens()` gives {field name: [token, ...]}."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, bytes]):
        self.fields = fields

    @classmethod
    def of(cls, vocabularies: dict) -> "VocabularyTokens":
        """From {field name: [(token, count), ...] or [token, ...] in id order}."""
        return cls({name: pickle.dumps([item[0] if isinstance(item, tuple) else item
                                        for item in items], protocol=pickle.HIGHEST_PROTOCOL)
                    for name, items in vocabularies.items()})

    def tokens(self) -> dict[str, list[str]]:
        return {name: pickle.loads(blob) for name, blob in self.fields.items()}

    def __eq__(self, other) -> bool:
        return isinstance(other, VocabularyTokens) and self.fields == other.fields

    def __reduce__(self):
        return VocabularyTokens, (self.fields,)


class _Encoders:
    """The ExampleEncoder, chunk encoder (columnar.PlainChunkEncoder, with a chunk reader) and
    packed encoder (packed.PackedEncoder, with a chunk reader of plain values) of the
    `vocabularies` side input. A DoFn only sees a side input in process(), so they are built
    from its first value and kept, rebuilt only if a later value differs (a runner may hand over
    an equal copy per bundle): the chunk encoders' caches survive bundles."""

    def __init__(self, field_names: Sequence[str], chunk_reader: PlainChunkReader | None,
                 encoding: str | None = None):
        self._fields, self._reader = tuple(field_names), chunk_reader
        self._packed = PackedReader.of(chunk_reader, encoding)
        self._vocabs = self.encoder = self.chunk_encoder = self.packed_encoder = None

    def use(self, vocabs: VocabularyTokens | dict) -> None:
        if vocabs is self._vocabs:
            return
        if self._vocabs is None or vocabs != self._vocabs:
            tokens = vocabs.tokens() if isinstance(vocabs, VocabularyTokens) else vocabs
            self.encoder = ExampleEncoder(self._fields, LABEL_KEY, tokens)
            self.chunk_encoder = (None if self._reader is None
                                  else PlainChunkEncoder(self._reader, self.encoder))
            self.packed_encoder = (None if self._packed is None
                                   else PackedEncoder(self._packed, self.encoder))
        self._vocabs = vocabs


class _ParseAndEncodeFn(beam.DoFn):
    """A line or a chunk of lines -> per split present, TaggedOutput(split, [example bytes]);
    bad lines -> one dead letter each. Chunks the packed encoder reads (plain values only) or
    the chunk encoder reads whole go straight to examples; the lines the chunk encoder flags,
    and all lines without one, are parsed by the row parser."""

    def __init__(self, parse: Callable, encoding: str | None, field_names: Sequence[str],
                 chunk_reader: PlainChunkReader | None):
        self._parse, self._encoding = parse, encoding
        self._fields, self._reader = tuple(field_names), chunk_reader

    def setup(self):
        self._tag = LineTagger(self._parse, self._encoding)
        self._encoders = _Encoders(self._fields, self._reader, self._encoding)

    def start_bundle(self):
        self._counts = BundleCounts(NAMESPACE, True)

    def _read(self, lines, side: dict):
        """(flags, examples, labels) of the chunk encoder, or None (none for these lines)."""
        if self._encoders.chunk_encoder is None or self._encoding is None or side:
            return None
        return self._encoders.chunk_encoder(chunk_texts(lines, self._encoding))

    def _packed(self, lines, side: dict):
        """{split index: (examples, labels)} of the packed encoder, or None (none for these
        lines, or they are not plain values only)."""
        if self._encoders.packed_encoder is None or side or not len(lines):
            return None
        return self._encoders.packed_encoder.encode(chunk_raws(lines), chunk_splits(lines))

    def _tagged(self, lines, side: dict, read):
        """(tag, value) per line, without a chunk encoder (`read` None) as the row parser gives
        them; with one, a split's value is (example, label) for every line: the chunk
        encoder's, or the row parser's record encoded."""
        if read is None:
            for split, path, line_no, raw in lines:
                yield self._tag(split, path, line_no, raw, side)
            return
        flags, examples, labels = read
        pairs, encode = zip(examples, labels), self._encoders.encoder.encode
        for (split, path, line_no, raw), was_read in zip(lines, flags):
            if was_read:
                yield SPLITS[split], next(pairs)
                continue
            tag, value = self._tag(split, path, line_no, raw, side)
            yield tag, ((encode(*value), value[1]) if tag in SPLITS else value)

    def process(self, element, vocabularies, **side):
        self._encoders.use(vocabularies)
        chunked = is_chunk(element)
        packed = self._packed(element, side) if chunked else None
        if packed is not None:  # plain values only: examples per split, no step per line
            for index in sorted(packed):
                yield from self._examples(SPLITS[index], *packed[index])
            self._counts.add("read", len(element))
            return
        read = self._read(element, side) if chunked else None
        if read is not None and read[0] is None:  # every line read at once, no step per line
            _, examples, labels = read
            if labels:
                for split, positions in split_positions(chunk_splits(element)):
                    if positions is None:
                        yield from self._examples(split, examples, labels)
                    else:
                        pick = operator.itemgetter(*positions)
                        picked = (pick(examples), pick(labels)) if len(positions) > 1 else (
                            [examples[positions[0]]], [labels[positions[0]]])
                        yield from self._examples(split, list(picked[0]), list(picked[1]))
                self._counts.add("read", len(labels))
            return
        letters, groups, tally = sort_lines(
            self._tagged(element if chunked else [element], side, read))
        for letter in letters:
            yield pvalue.TaggedOutput(DEADLETTER, letter)
        for split, values in groups.items():
            yield from self._examples(split, *_encoded(
                self._encoders.encoder, values, read is not None, chunked))
        count_lines(self._counts, "", sum(map(len, groups.values())), tally)

    def _examples(self, split: str, examples: list[bytes], labels: Sequence[float]):
        """One split's examples as one output element, counted as written (and label sum)."""
        self._counts.add(f"written/{split}", len(examples))
        positives = sum(labels)
        if positives:
            self._counts.add(f"label_sum/{split}", positives)
        yield pvalue.TaggedOutput(split, examples)

    def finish_bundle(self):
        yield from self._counts.finish()


def _encoded(encoder: ExampleEncoder, values: list, pairs: bool, chunked: bool):
    """One split's values of a line or chunk -> (examples, labels): `pairs` (example, label)
    as they are; else the records of a single line encoded one by one, of a chunk column-wise."""
    if pairs:
        return [e for e, _ in values], [y for _, y in values]
    if not chunked:  # a single line: a list of one example
        return [encoder.encode(*values[0])], [values[0][1]]
    records = RecordChunk.from_records(values)
    return encoder.encode_columns(records.columns, records.labels), records.labels


class ParseAndEncode(beam.PTransform):
    """Lines -> tagged outputs: one per split (lists of serialized tf.Example bytes),
    "deadletter" (dicts) and "counts" (as ParseRecords', plus `written/<split>` and
    `label_sum/<split>`). `vocabularies`: a PCollection of one element, {field name:
    [(token, count), ...] in id order} (the side input is its VocabularyTokens);
    `field_names` in spec order; `chunk_reader` and `side_inputs` as ParseRecords'."""

    def __init__(self, parse: Callable, encoding: str | None, field_names: Sequence[str],
                 vocabularies, chunk_reader: PlainChunkReader | None = None, **side_inputs):
        super().__init__()
        self._fn = _ParseAndEncodeFn(parse, encoding, field_names, chunk_reader)
        self._vocabs, self._side = vocabularies, side_inputs

    def expand(self, lines):
        vocabs = beam.pvalue.AsSingleton(
            self._vocabs | "VocabularyTokens" >> beam.Map(VocabularyTokens.of))
        return lines | "Parse" >> beam.ParDo(self._fn, vocabularies=vocabs,
                                             **self._side).with_outputs(
            DEADLETTER, COUNTS, *SPLITS)
