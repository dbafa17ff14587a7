"""Reading: input files (or a TFDS dataset) -> numbered lines with their split, in LineChunks.

Elements: `(split_index, path, line_no, raw)` per line, raw the line's bytes without terminator
(or a dict of numpy values for TFDS input); with a `chunk_size`, LineChunks of up to that many
lines of one file (the same lines, stored column-wise), so the runner's per-element cost is paid
per chunk. Line numbers need a sequential read, so each file is read by one worker.
"""
from __future__ import annotations

import bz2
import gzip
import itertools
import lzma
import posixpath
import zlib
from typing import Sequence

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes

from preprocessing.formats import SplitAssigner

_READ_BYTES = 1 << 20
DAMAGED = "damaged input file"


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


class InputDamaged(IOError):
    """An input file that cannot be read to its end (a truncated or corrupt compressed stream,
    an I/O error): the job fails, the message names the file and the lines read before it."""


# Compressed inputs are decompressed by the standard library's readers, which raise at a
# truncated stream (EOFError) or corrupt data (BadGzipFile, zlib.error, ...). Beam's own
# CompressedFile stops silently at the end of a truncated stream (reading a truncated .gz gave
# the rows up to the break and no error). DEFLATE and ZSTD inputs are still read by Beam.
_STRICT_READERS = {CompressionTypes.GZIP: lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
                   CompressionTypes.BZIP2: lambda raw: bz2.BZ2File(raw, mode="rb"),
                   CompressionTypes.LZMA: lambda raw: lzma.LZMAFile(raw, mode="rb")}


def open_input(readable: fileio.ReadableFile):
    """The decompressed binary stream of one input file; GZIP, BZIP2 and LZMA (by suffix, as
    Beam detects them) fail at a truncated or corrupt stream instead of ending early."""
    strict = _STRICT_READERS.get(
        CompressionTypes.detect_compression_type(readable.metadata.path))
    if strict is None:
        return readable.open()
    raw = readable.open(compression_type=CompressionTypes.UNCOMPRESSED)
    return _Closing(strict(raw), raw)


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


def line_blocks(fh, size: int = _READ_BYTES):
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


def _checked_blocks(fh, path: str):
    """line_blocks(fh), with a read error raised as InputDamaged naming `path` and how many
    lines were read before it."""
    blocks, lines_read = line_blocks(fh), 0
    while True:
        try:
            lines = next(blocks)
        except StopIteration:
            return
        except (EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as exc:
            kind = ("truncated (the compressed stream ends early)" if isinstance(exc, EOFError)
                    else f"unreadable ({type(exc).__name__}: {exc})")
            raise InputDamaged(f"{DAMAGED} {path}: {kind} after {lines_read:,} complete lines "
                               f"were read") from None
        yield lines
        lines_read += len(lines)


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
            for lines in _checked_blocks(fh, path):
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
    """TFDS `name` (e.g. movielens/1m-ratings) -> (split, source, index, example dict); lists
    of up to `chunk_size` of them with a `chunk_size`."""

    def __init__(self, name, fractions, seed, only_split=None, data_dir=None, chunk_size=None):
        super().__init__()
        self._fn = _ReadTfdsFn(fractions, seed, only_split, data_dir, chunk_size)
        self._name = name

    def expand(self, pbegin):
        return (pbegin | "Name" >> beam.Create([self._name])
                | "Examples" >> beam.ParDo(self._fn))
