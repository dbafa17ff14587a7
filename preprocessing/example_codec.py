"""tf.train.Example bytes and TFRecord framing without TensorFlow (pure Python, no Beam).

The job's examples have a fixed shape: one int64 id per field plus a float label. Their protobuf
encoding is assembled from bytes precomputed per (field, id), in the order of
`Example.SerializeToString(deterministic=True)` (map entries sorted by key), so the output is
byte-identical to TensorFlow's (tests/test_preprocessing_codec.py checks it against
`tf.train.Example`). Wire format (proto3, example.proto / feature.proto):

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }      entry: key = 1 (string), value = 2
    Feature  { oneof { BytesList bytes_list = 1; FloatList float_list = 2;
                       Int64List int64_list = 3; } }
    Int64List { repeated int64 value = 1 [packed]; }
    FloatList { repeated float value = 1 [packed]; }

Without TensorFlow the Beam workers start in seconds instead of ~25 s.
"""
from __future__ import annotations

import itertools
import operator
import struct
from typing import Iterable, Mapping, Sequence

import numpy as np

from configs.features import MISSING_TOKEN

_LEN_CACHE = 1 << 14  # body lengths below this have a precomputed varint prefix


def varint(n: int) -> bytes:
    """Unsigned LEB128 (protobuf varint) of n >= 0."""
    if n < 0:
        raise ValueError(f"varint of a negative number: {n}")
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len_delimited(field: int, payload: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def _map_entry(key: str, feature: bytes) -> bytes:
    """One `Features.feature` entry (field 1 of Features) holding `key -> feature`."""
    return _len_delimited(1, _len_delimited(1, key.encode("utf-8")) + _len_delimited(2, feature))


def int64_entry(key: str, value: int) -> bytes:
    """Serialized map entry `key -> Feature(int64_list=[value])`; value >= 0 (vocabulary ids)."""
    return _map_entry(key, _len_delimited(3, _len_delimited(1, varint(value))))


def int64_entries(key: str, values: Iterable[int]) -> list[bytes]:
    """`int64_entry(key, v)` for each v, the same bytes with one concatenation per value: an entry
    ends with varint(v), and everything before it depends only on the key and varint(v)'s length
    (the ExampleEncoder builds its tables from millions of tokens on full-size data)."""
    heads: dict[int, bytes] = {}
    out = []
    for value in values:
        tail = varint(value) if value >= len(_VARINTS) else _VARINTS[value]
        head = heads.get(len(tail))
        if head is None:
            head = heads[len(tail)] = int64_entry(key, value)[:-len(tail)]
        out.append(head + tail)
    return out


def _grow_varints(n: int) -> None:
    """Extends the shared varint table to ids < n (built once per process, reused by every
    field's table)."""
    _VARINTS.extend(varint(i) for i in range(len(_VARINTS), n))


_VARINTS: list[bytes] = []


def float_entry(key: str, value: float) -> bytes:
    """Serialized map entry `key -> Feature(float_list=[value])` (float32, little-endian)."""
    return _map_entry(key, _len_delimited(2, _len_delimited(1, struct.pack("<f", value))))


def _upb_key_order(key: str) -> list[int]:
    """Sort key of the map-entry order of protobuf's (upb) deterministic serialization: bytes
    ascending, but a key sorts before its own prefixes ("C10" < "C1"). Any order parses to the
    same message; this one makes the bytes identical to TensorFlow's."""
    return list(key.encode("utf-8")) + [256]


class _Ids(dict):
    """token -> serialized entry of its id; unknown tokens give the OOV entry (id 0)."""

    __slots__ = ("oov",)

    def __missing__(self, token):
        return self.oov


class _Floats(dict):
    """float value -> serialized entry (filled on first use)."""

    __slots__ = ("key",)

    def __missing__(self, value):
        entry = self[value] = float_entry(self.key, value)
        return entry


class ExampleEncoder:
    """(tokens, label) -> serialized tf.train.Example `{name: int64 id per field, float_key:
    label}`; the id of a token is its 1-based position in the field's vocabulary (0 = OOV).

    `vocabularies[name]` is the field's tokens in id order (or `(token, count)` pairs)."""

    def __init__(self, field_names: Sequence[str], float_key: str,
                 vocabularies: Mapping[str, Iterable]):
        names = list(field_names)
        if float_key in names or len(set(names)) != len(names):
            raise ValueError(f"feature keys must be distinct; got fields {names} and "
                             f"label key {float_key!r}")
        tables: list[dict] = []
        for name in names:
            tokens = [item[0] if isinstance(item, tuple) else item for item in vocabularies[name]]
            _grow_varints(len(tokens) + 1)
            table = _Ids(zip(tokens, int64_entries(name, range(1, len(tokens) + 1))))
            table.oov = int64_entry(name, 0)
            # "" is never a token; in a RecordChunk column it stands for MISSING_TOKEN
            table[""] = table[MISSING_TOKEN]
            tables.append(table)
        label = _Floats()
        label.key = float_key
        tables.append(label)
        keys = names + [float_key]
        order = sorted(range(len(keys)), key=lambda i: _upb_key_order(keys[i]))
        self._tables = [tables[i] for i in order]
        # in field order: token -> entry (`.oov` the OOV entry), for callers that look tokens
        # up themselves (columnar.PlainChunkEncoder) and hand the entries to `assemble`
        self.field_tables: tuple[dict, ...] = tuple(tables[:-1])
        self._label_table = label
        self._order = order
        self._pick = operator.itemgetter(*order)
        _grow_varints(_LEN_CACHE)
        self._prefix = [b"\x0a" + v for v in _VARINTS[:_LEN_CACHE]]

    def encode(self, tokens: Sequence[str], label: float) -> bytes:
        values = self._pick((*tokens, label))
        if len(self._tables) == 1:
            values = (values,)
        body = b"".join(map(operator.getitem, self._tables, values))
        n = len(body)
        return (self._prefix[n] if n < _LEN_CACHE else b"\x0a" + varint(n)) + body

    def encode_all(self, records: Sequence[tuple[Sequence[str], float]]) -> list[bytes]:
        """`encode` of each record (the same bytes, fewer Python calls: see encode_columns)."""
        if not records:
            return []
        return self.encode_columns(list(zip(*[tokens for tokens, _ in records])),
                                   [label for _, label in records])

    def encode_columns(self, columns: Sequence[Sequence[str]], labels: Sequence[float]
                       ) -> list[bytes]:
        """`encode` of records given column by column (one token sequence per field, in field
        order, and the labels): one C-level map per feature over its column, then `assemble`."""
        if not labels:
            return []
        return self.assemble([list(map(table.get, column, itertools.repeat(table.oov)))
                              for table, column in zip(self.field_tables, columns)], labels)

    def assemble(self, entries: Sequence[Sequence[bytes]], labels: Sequence[float]
                 ) -> list[bytes]:
        """The examples of records given as their entries column by column (per field, in field
        order, the entries of `field_tables`) and their labels: one join per record."""
        if not labels:
            return []
        for value in set(labels).difference(self._label_table):
            self._label_table[value]  # fills the entry, so .get finds it
        picked = self._pick([*entries, list(map(self._label_table.get, labels))])
        if len(self._tables) == 1:
            picked = (picked,)
        return self._examples(list(map(b"".join, zip(*picked))))

    def _examples(self, bodies: list[bytes]) -> list[bytes]:
        """Each Features body with the Example's field tag and length in front."""
        prefix = self._prefix
        if max(map(len, bodies)) >= _LEN_CACHE:  # no precomputed length prefix
            return [(prefix[len(b)] if len(b) < _LEN_CACHE else b"\x0a" + varint(len(b))) + b
                    for b in bodies]
        return list(map(operator.add, map(prefix.__getitem__, map(len, bodies)), bodies))

    @property
    def length_prefixes(self) -> list[bytes]:
        """The bytes in front of a Features body of length n < len(this list), at position n."""
        return self._prefix

    @property
    def order(self) -> list[int]:
        """The map-entry order of the example: positions in [fields in field order, label]."""
        return list(self._order)

    def label_entry(self, value: float) -> bytes:
        """The serialized entry of a label value."""
        return self._label_table[value]


# ----------------------------------------------------------------------------- TFRecord framing

def _crc32c_function():
    try:
        import google_crc32c  # installed with apache-beam; C implementation

        if getattr(google_crc32c, "value", None):
            return google_crc32c.value
    except ImportError:
        pass
    from apache_beam.io.tfrecordio import _default_crc32c_fn

    _default_crc32c_fn(b"")  # picks the fastest available implementation
    return _default_crc32c_fn.fn


_crc32c = None


def masked_crc32c(data: bytes) -> int:
    global _crc32c
    if _crc32c is None:
        _crc32c = _crc32c_function()
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class TFRecordFramer:
    """Records -> the bytes of a TFRecord file: per record `uint64 length, uint32 masked
    crc32c(length), data, uint32 masked crc32c(data)` (little-endian). The data's CRCs are
    masked and packed for all records at once (numpy), the pieces joined once."""

    def __init__(self):
        masked_crc32c(b"")
        self._crc = _crc32c
        self._heads: dict[int, bytes] = {}

    def _head(self, n: int) -> bytes:
        length = struct.pack("<Q", n)
        head = self._heads[n] = length + struct.pack("<I", masked_crc32c(length))
        return head

    def frame(self, records: Iterable[bytes]) -> bytes:
        records = records if isinstance(records, list) else list(records)
        if not records:
            return b""
        heads = self._heads
        lengths = list(map(len, records))
        for n in set(lengths).difference(heads):
            self._head(n)
        crcs = np.fromiter(map(self._crc, records), dtype=np.uint64, count=len(records))
        masked = (((crcs >> 15) | (crcs << 17)) + 0xA282EAD8) & 0xFFFFFFFF
        parts = [b""] * (3 * len(records))
        parts[0::3] = list(map(heads.__getitem__, lengths))
        parts[1::3] = records
        parts[2::3] = masked.astype("<u4").view("V4").tolist()  # 4 bytes each, as written
        return b"".join(parts)
