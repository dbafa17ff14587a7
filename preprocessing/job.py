"""The preprocessing recipe: which inputs to read and how the PTransforms connect.

Two passes over the input, both streaming (nothing is materialised between steps):
1. vocabulary pass: read only the training lines -> parse -> count tokens -> vocabularies,
2. encoding pass: read all lines -> parse (+ dead letters) and encode, the vocabularies a side
   input -> per split: GZIP TFRecords.
Parsing twice costs CPU, but a single pass would make the runner hold every parsed record until
the vocabularies are known (on the DirectRunner: the whole dataset in memory).
Rows travel in chunks of CHUNK_ROWS lines of one file (see transforms), so the runner's
per-element cost is paid per chunk; dead letters are still one element per bad line. Files are
read in 1 MB blocks with the splits of a block's lines hashed at once (LineChunk). Plain
delimited formats (Criteo) are parsed a chunk at a time into column-wise RecordChunks
(preprocessing.columnar) that counting reads column by column; the encoding pass goes from a
chunk's split values straight to tf.Example bytes (columnar.PlainChunkEncoder). The lines that
need a closer look go one by one through the same row parser as the other formats.
"""
from __future__ import annotations

import dataclasses
import os
import posixpath
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from configs.cli import UsageError
from configs.features import SPLITS, DatasetSpec
from configs.preprocess import PreprocessConfig
from preprocessing import columnar, formats, transforms

MOVIELENS = ("movielens-1m", "movielens-100k")
CHUNK_ROWS = 1000
COUNTS_FILE = "_counts.json"


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


class _LineParse:
    def __init__(self, parser):
        self._parser = parser

    def __call__(self, text, line_no):
        return self._parser(text, line_no)


class _TableParse:
    def __init__(self, method):
        self._method = method

    def __call__(self, text, line_no):
        return self._method(text)


class _RatingParse:
    def __init__(self, tables: formats.MovieLensTables):
        self._tables = tables

    def __call__(self, text, line_no, users, movies):
        return self._tables.parse_rating(text, users, movies)


class _TfdsParse:
    def __init__(self, spec: DatasetSpec, name: str, data_dir: str | None):
        self._spec, self._name, self._data_dir = spec, name, data_dir
        self._parser = None

    def __call__(self, example, line_no):
        if self._parser is None:
            import tensorflow_datasets as tfds

            info = tfds.builder(self._name, data_dir=self._data_dir).info
            genres = info.features["movie_genres"].feature
            self._parser = formats.TfdsMovieLensParser(self._spec, genres.int2str)
        return self._parser(example)


def build(p: beam.Pipeline, spec: DatasetSpec, cfg: PreprocessConfig, inputs: JobInputs,
          out_dir: str) -> None:
    """Adds the whole job to pipeline `p`, writing into `out_dir`."""
    fractions = (cfg.split.train, cfg.split.valid, cfg.split.test)
    seed = cfg.split.seed
    names = spec.field_names
    min_counts = [spec.min_count(f) for f in spec.fields]
    dead, counts, side, reader = [], [], {}, None

    def read(label: str, only_split: int | None):
        if inputs.tfds_name:
            return p | label >> transforms.ReadTfds(inputs.tfds_name, fractions, seed,
                                                    only_split, inputs.tfds_data_dir, CHUNK_ROWS)
        return p | label >> transforms.ReadWithLineNumbers(patterns, fractions, seed, only_split,
                                                           CHUNK_ROWS)

    if inputs.tfds_name:
        parse, encoding, patterns = _TfdsParse(spec, inputs.tfds_name, inputs.tfds_data_dir), None, ()
    elif inputs.tables:
        tables = formats.MovieLensTables(spec, spec.format)
        for role, method in (("users", tables.parse_user), ("movies", tables.parse_movie)):
            parsed = (p | f"Read{role.title()}" >> transforms.ReadWithLineNumbers(
                          [inputs.tables[role]], fractions, seed)
                      | f"Parse{role.title()}" >> transforms.ParseRecords(
                          _TableParse(method), tables.encodings[role], count_prefix="side_",
                          keyed=True))
            side[role] = beam.pvalue.AsDict(parsed.main)
            dead.append(parsed[transforms.DEADLETTER])
            counts.append(parsed[transforms.COUNTS])
        parse, encoding = _RatingParse(tables), tables.encodings["ratings"]
        patterns = [inputs.tables["ratings"]]
    else:
        parser = formats.line_parser(spec)
        parse, encoding, patterns = _LineParse(parser), parser.encoding, list(inputs.patterns)
        reader = columnar.PlainChunkReader.of(parser)  # None unless plain delimited

    # Pass 1: vocabularies from the training split.
    vocabs = (read("ReadTrainingLines", 0)
              | "ParseTrainingLines" >> transforms.ParseRecords(
                  parse, encoding, report_counts=False, chunk_reader=reader, **side))["train"] \
        | "ComputeVocabularies" >> transforms.ComputeVocabularies(names, min_counts)
    counts.append(vocabs | "WriteVocabularies" >> transforms.WriteVocabularies(out_dir))

    # Pass 2: every record, encoded (the vocabularies a side input), written per split.
    encoded = (read("ReadLines", None)
               | "ParseAndEncode" >> transforms.ParseRecords(
                   parse, encoding, chunk_reader=reader, encode=(names, vocabs), **side))
    dead.append(encoded[transforms.DEADLETTER])
    counts.append(encoded[transforms.COUNTS])
    for split in SPLITS:
        _ = encoded[split] | f"Write{split.title()}" >> transforms.WriteTFRecordChunks(
            FileSystems.join(out_dir, split, "part"), file_name_suffix=".tfrecord.gz",
            num_shards=getattr(cfg.num_shards, split), gzip_level=cfg.compression_level)

    _ = (dead | "AllDeadLetters" >> beam.Flatten()
         | "WriteDeadLetters" >> transforms.WriteDeadLetters(out_dir))
    _ = (counts | "AllCounts" >> beam.Flatten()
         | "WriteCounts" >> transforms.WriteCounts(FileSystems.join(out_dir, COUNTS_FILE)))


def summarize_counts(totals: dict[str, float], names: Sequence[str]) -> dict:
    """The raw `_counts.json` totals -> the stats.json structure (without run metadata)."""
    def get(key):
        value = totals.get(key, 0)
        return int(value) if float(value).is_integer() else value

    written = {s: get(f"written/{s}") for s in SPLITS}
    stats = {
        "rows_read": get("read"),
        "rows_written": written,
        "rows_written_total": sum(written.values()),
        "rows_deadlettered": get("deadletter"),
        "lines_skipped": {"header": get("header"), "blank": get("blank")},
        "side_tables": {"rows_read": get("side_read"),
                        "rows_deadlettered": get("side_deadletter"),
                        "lines_skipped": {"header": get("side_header"),
                                          "blank": get("side_blank")}},
        "label_rate": {s: (get(f"label_sum/{s}") / written[s] if written[s] else 0.0)
                       for s in SPLITS},
        "vocab_sizes": {n: get(f"vocab_size/{n}") for n in names},
    }
    total_read = stats["rows_read"] + stats["side_tables"]["rows_read"]
    total_bad = stats["rows_deadlettered"] + stats["side_tables"]["rows_deadlettered"]
    stats["bad_fraction"] = total_bad / total_read if total_read else 0.0
    return stats
