"""Writing: the job's sinks (per-split GZIP TFRecord shards, dead letters and the counts file).
"""
from __future__ import annotations

import gzip
import json

import apache_beam as beam
from apache_beam import coders
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from preprocessing.example_codec import TFRecordFramer
from preprocessing.parsing import DEADLETTER

_ISAL_MAX_LEVEL = 3


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


class GzipFile:
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
        if gzip_level:  # compressed by GzipFile, not by Beam
            compression_type = CompressionTypes.UNCOMPRESSED
        super().__init__(file_path_prefix, coder=coders.BytesCoder(),
                         file_name_suffix=file_name_suffix, num_shards=num_shards,
                         mime_type="application/octet-stream", compression_type=compression_type)
        self._gzip_level = gzip_level
        self._framer = None

    def open(self, temp_path):
        handle = super().open(temp_path)
        return GzipFile(handle, self._gzip_level) if self._gzip_level else handle

    def write_record(self, file_handle, value):
        if self._framer is None:  # built on the worker, once per sink
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


def _to_json(letter: dict) -> str:
    return json.dumps(letter, sort_keys=True, ensure_ascii=False)


class WriteDeadLetters(beam.PTransform):
    """Dead-letter dicts -> DIR/deadletter/part-*.jsonl (one JSON object per line)."""

    def __init__(self, directory: str):
        super().__init__()
        self._prefix = FileSystems.join(directory, DEADLETTER, "part")

    def expand(self, letters):
        return (letters
                | "ToJson" >> beam.Map(_to_json)
                | "Write" >> beam.io.WriteToText(self._prefix, file_name_suffix=".jsonl"))


class _WriteJson:
    """{key: n} -> the JSON file at `path` (returns the path)."""

    def __init__(self, path: str):
        self._path = path

    def __call__(self, totals: dict) -> str:
        with FileSystems.create(self._path, mime_type="application/json") as fh:
            fh.write(json.dumps(totals, sort_keys=True).encode())
        return self._path


class WriteCounts(beam.PTransform):
    """All (key, n) counts -> summed -> DIR/_counts.json (read by the driver)."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, counts):
        return (counts
                | "Sum" >> beam.CombinePerKey(sum)
                | "ToDict" >> beam.combiners.ToDict()
                | "WriteJson" >> beam.Map(_WriteJson(self._path)))
