"""The preprocessing recipe: what the job reads and how its stages connect.

Two passes over the input, both streaming (nothing is materialised between steps):
1. vocabulary pass: read only the training lines -> parse -> count tokens -> vocabularies,
2. encoding pass: read all lines -> parse (+ dead letters) and encode, the vocabularies a side
   input -> per split: GZIP TFRecords.
Parsing twice costs CPU, but a single pass would make the runner hold every parsed record until
the vocabularies are known (on the DirectRunner: the whole dataset in memory).

The stages, one module each: reading (files -> numbered lines with their split), parsing
(lines -> records, dead letters), vocabulary (records -> vocabularies), encoding (lines ->
tf.Example bytes), writing (TFRecords, dead letters, counts); counts is the rows' bookkeeping.
Rows travel in chunks of CHUNK_ROWS lines of one file, so the runner's per-element cost is paid
per chunk; dead letters are still one element per bad line. Files are read in 1 MB blocks with
the splits of a block's lines hashed at once (LineChunk). In plain delimited formats (Criteo), a
chunk of plain values only (at most 8 printable ASCII bytes each: preprocessing.packed) is read
as numpy arrays of packed values, without a Python object per value: the vocabulary pass counts
them per (field, key) in a numpy hash table, the encoding pass looks every field's entries up in
one and joins the chunk's tf.Example bytes at once. Other chunks of those formats are parsed a
chunk at a time into column-wise RecordChunks (preprocessing.columnar) that counting reads
column by column, and encoded from a chunk's split values straight to tf.Example bytes
(columnar.PlainChunkEncoder). The lines that need a closer look go one by one through the same
row parser as the other formats.
"""
from __future__ import annotations

import dataclasses
import os
import posixpath
from typing import Callable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from configs.cli import UsageError
from configs.features import SPLITS, DatasetSpec
from configs.preprocess import PreprocessConfig
from preprocessing import formats, reading
from preprocessing.columnar import PlainChunkReader
from preprocessing.counts import COUNTS, COUNTS_FILE
from preprocessing.encoding import ParseAndEncode
from preprocessing.parsing import (
    DEADLETTER,
    LineParse,
    ParseRecords,
    ParseSideTable,
    RatingParse,
    TableParse,
    TfdsParse,
)
from preprocessing.vocabulary import ComputeVocabularies, WriteVocabularies
from preprocessing.writing import WriteCounts, WriteDeadLetters, WriteTFRecordChunks

MOVIELENS = ("movielens-1m", "movielens-100k")
CHUNK_ROWS = 1000


class InputError(UsageError):
    """The --input does not name readable input for the dataset (raised before the job runs)."""


@dataclasses.dataclass(frozen=True)
class JobInputs:
    """What the pipeline reads: line files (`patterns`), MovieLens tables, or a TFDS name."""

    patterns: tuple[str, ...] = ()
    tables: dict[str, str] | None = None
    tfds_name: str | None = None
    tfds_data_dir: str | None = None

    def describe(self) -> str:
        if self.tfds_name:
            return f"tfds:{self.tfds_name}"
        if self.tables:
            return ", ".join(f"{k}={v}" for k, v in sorted(self.tables.items()))
        return ", ".join(self.patterns)

    def paths(self) -> list[str]:
        """The files (and TFDS data_dir) this run reads: --overwrite must never remove them."""
        paths = list(self.patterns) + sorted((self.tables or {}).values())
        return paths + ([self.tfds_data_dir] if self.tfds_name and self.tfds_data_dir else [])


def _match(pattern: str) -> list[str]:
    """Files matching a glob; a directory means all files in it."""
    if os.path.isdir(pattern) or pattern.endswith("/"):
        pattern = FileSystems.join(pattern.rstrip("/"), "*")
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception as exc:  # BeamIOError for a missing directory or bucket
        raise InputError(f"--input {pattern}: cannot list: {exc}") from None
    local = "://" not in pattern
    return sorted(m.path for m in found if not local or os.path.isfile(m.path))


def resolve_inputs(spec: DatasetSpec, input_arg: str, tfds_data_dir: str | None = None
                   ) -> JobInputs:
    """Checks the input before anything starts; errors name what is missing."""
    if not input_arg:
        raise InputError("--input is empty")
    if input_arg.startswith("tfds:"):
        if spec.format != "movielens-1m" and spec.format != "movielens-100k":
            raise InputError(f"--input tfds:... is only supported for {MOVIELENS}")
        return JobInputs(tfds_name=input_arg[len("tfds:"):], tfds_data_dir=tfds_data_dir)
    paths = []
    for pattern in input_arg.split(","):
        if pattern.strip():
            paths += _match(pattern.strip())
    if spec.format in MOVIELENS:
        wanted = formats.MovieLensTables(spec, spec.format).files
        by_name = {posixpath.basename(p): p for p in paths}
        missing = [name for name in wanted.values() if name not in by_name]
        if missing:
            raise InputError(f"--input {input_arg}: {spec.format} needs {sorted(wanted.values())}; "
                             f"missing: {missing}")
        return JobInputs(tables={role: by_name[name] for role, name in wanted.items()})
    if not paths:
        raise InputError(f"--input {input_arg}: no files match")
    return JobInputs(patterns=tuple(paths))


@dataclasses.dataclass(frozen=True)
class _Source:
    """How the job reads and parses its input: the rows' reader, parse function, encoding and
    chunk reader, and for MovieLens the users and movies tables the ratings are joined with."""

    inputs: JobInputs
    fractions: tuple[float, float, float]
    seed: int
    parse: Callable
    encoding: str | None
    patterns: tuple[str, ...] = ()
    chunk_reader: PlainChunkReader | None = None
    tables: formats.MovieLensTables | None = None

    @classmethod
    def of(cls, spec: DatasetSpec, inputs: JobInputs, cfg: PreprocessConfig) -> "_Source":
        split = cfg.split
        common = dict(inputs=inputs, fractions=(split.train, split.valid, split.test),
                      seed=split.seed)
        if inputs.tfds_name:
            return cls(parse=TfdsParse(spec, inputs.tfds_name, inputs.tfds_data_dir),
                       encoding=None, **common)
        if inputs.tables:
            tables = formats.MovieLensTables(spec, spec.format)
            return cls(parse=RatingParse(tables), encoding=tables.encodings["ratings"],
                       patterns=(inputs.tables["ratings"],), tables=tables, **common)
        parser = formats.line_parser(spec)
        return cls(parse=LineParse(parser), encoding=parser.encoding,
                   patterns=tuple(inputs.patterns),
                   chunk_reader=PlainChunkReader.of(parser),  # None unless plain delimited
                   **common)

    def read(self, only_split: int | None) -> beam.PTransform:
        """The rows (of split `only_split`, or all), in chunks of CHUNK_ROWS."""
        if self.inputs.tfds_name:
            return reading.ReadTfds(self.inputs.tfds_name, self.fractions, self.seed,
                                    only_split, self.inputs.tfds_data_dir, CHUNK_ROWS)
        return reading.ReadWithLineNumbers(self.patterns, self.fractions, self.seed, only_split,
                                           CHUNK_ROWS)

    def side_tables(self, p: beam.Pipeline) -> tuple[dict, list, list]:
        """The MovieLens users and movies, parsed: (side inputs of `parse` by name, their dead
        letters, their counts); nothing for other inputs."""
        side, dead, counts = {}, [], []
        if self.tables is None:
            return side, dead, counts
        for role, method in (("users", self.tables.parse_user),
                             ("movies", self.tables.parse_movie)):
            parsed = (p | f"Read{role.title()}" >> reading.ReadWithLineNumbers(
                          [self.inputs.tables[role]], self.fractions, self.seed)
                      | f"Parse{role.title()}" >> ParseSideTable(
                          TableParse(method), self.tables.encodings[role]))
            side[role] = beam.pvalue.AsDict(parsed.main)
            dead.append(parsed[DEADLETTER])
            counts.append(parsed[COUNTS])
        return side, dead, counts


def build(p: beam.Pipeline, spec: DatasetSpec, cfg: PreprocessConfig, inputs: JobInputs,
          out_dir: str) -> None:
    """Adds the whole job to pipeline `p`, writing into `out_dir`."""
    names, min_counts = spec.field_names, [spec.min_count(f) for f in spec.fields]
    max_sizes = [spec.max_vocab_size(f) for f in spec.fields]
    source = _Source.of(spec, inputs, cfg)
    side, dead, counts = source.side_tables(p)  # MovieLens: users and movies, by id

    # Pass 1: vocabularies from the training split.
    training = (p | "ReadTrainingLines" >> source.read(only_split=0)
                | "ParseTrainingLines" >> ParseRecords(
                    source.parse, source.encoding, report_counts=False,
                    chunk_reader=source.chunk_reader, **side))
    vocabs, cut = training.train | "ComputeVocabularies" >> ComputeVocabularies(
        names, min_counts, max_sizes, report_counts=True)
    counts += [cut, vocabs | "WriteVocabularies" >> WriteVocabularies(out_dir)]

    # Pass 2: every record, encoded (the vocabularies a side input), written per split.
    encoded = (p | "ReadLines" >> source.read(only_split=None)
               | "ParseAndEncode" >> ParseAndEncode(
                   source.parse, source.encoding, names, vocabs,
                   chunk_reader=source.chunk_reader, **side))
    dead.append(encoded[DEADLETTER])
    counts.append(encoded[COUNTS])
    for split in SPLITS:
        _ = encoded[split] | f"Write{split.title()}" >> WriteTFRecordChunks(
            FileSystems.join(out_dir, split, "part"), file_name_suffix=".tfrecord.gz",
            num_shards=getattr(cfg.num_shards, split), gzip_level=cfg.compression_level)

    # Dead letters and counts of every step.
    _ = (dead | "AllDeadLetters" >> beam.Flatten()
         | "WriteDeadLetters" >> WriteDeadLetters(out_dir))
    _ = (counts | "AllCounts" >> beam.Flatten()
         | "WriteCounts" >> WriteCounts(FileSystems.join(out_dir, COUNTS_FILE)))
