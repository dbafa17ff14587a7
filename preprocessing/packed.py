"""Plain delimited lines as numpy arrays of packed values: no Python object per value (pure
Python and numpy, no Beam).

A value of at most 8 bytes, all printable ASCII other than space (0x21..0x7E), is packed into a
uint64 key: its bytes left-aligned, big-endian, zero-padded (so a key's bytes are the value's with
NULs after it; the empty value is key 0). Such a value is its own categorical token (or
MISSING_TOKEN when empty), and no two of them share a key. A chunk whose lines all have exactly
the format's column count and only such values (Criteo's are: integers and 8-digit hex) is read
by a handful of numpy operations on its bytes (`pack_lines`) instead of a Python string per value,
and both passes of the job work on the keys, looking them up in KeyIndex, a hash table in numpy
arrays that takes a whole chunk's keys of every field at once:
- the vocabulary pass (PackedReader -> KeyChunk): categorical columns stay keys, counted per
  (field, key) by preprocessing.vocabulary; numeric columns become token codes through a
  bounded cache `(field, key) -> code` (numeric_token_ids applies the numeric rule to new
  integers as arrays; other numbers go through numeric_token one by one);
- the encoding pass (PackedEncoder): every field's keys -> the positions of their tf.Example
  entries in a pool of all the entries (from the vocabularies, and for numeric fields the same
  bounded cache), then one join for the chunk's examples.
Any other chunk (a line with another column count, a blank line, a longer or non-ASCII value, a
label that is not one of the format's as written, a non-number in a numeric field) gives None:
the caller reads it as before (columnar.PlainChunkReader and the row parser), so the records are
the same either way (tests compare them, and the golden test the job's output).
"""
from __future__ import annotations

import codecs
import math
from typing import Sequence

import numpy as np

from configs.features import MISSING_TOKEN
from preprocessing.formats import _numeric

MAX_BYTES = 8
VALUE_BYTES = bytes(range(0x21, 0x7F))  # printable ASCII without space: the bytes a value may hold
_MASKS = np.array([0] + [(1 << 64) - (1 << (64 - 8 * n)) for n in range(1, MAX_BYTES + 1)],
                  dtype=np.uint64)
_NULS = bytes(MAX_BYTES)  # after the last line's break: room for 8-byte loads at every value
_ASCII_COMPATIBLE = {"utf-8", "ascii", "latin-1", "iso8859-1", "cp1252"}
CACHE_ENTRIES = 1 << 15  # per numeric field: raw key -> token (or entry)


def ascii_compatible(encoding: str | None) -> bool:
    """Whether ASCII bytes decode to the same characters in `encoding` (the keys' assumption)."""
    if encoding is None:
        return False
    try:
        return codecs.lookup(encoding).name in _ASCII_COMPATIBLE
    except LookupError:
        return False


def pack_lines(raws: Sequence[bytes], width: int, sep: bytes) -> np.ndarray | None:
    """The (len(raws), width) uint64 keys of the lines' values, or None unless every line holds
    exactly `width` values separated by the one byte `sep`, each of at most MAX_BYTES bytes of
    VALUE_BYTES (other than `sep`)."""
    n = len(raws)
    if not n or len(sep) != 1 or sep in b"\n\0":
        return None
    data = b"\n".join([*raws, _NULS])  # the lines, each with its line break, then NULs
    if len(data.translate(None, VALUE_BYTES + sep + b"\n")) != MAX_BYTES:
        return None
    buf = np.frombuffer(data, dtype=np.uint8)
    if sep[0] < VALUE_BYTES[0]:  # separators and line breaks are the only bytes below values'
        ends = np.flatnonzero(buf[:-MAX_BYTES] < VALUE_BYTES[0])
    else:
        ends = np.flatnonzero((buf == sep[0]) | (buf == 10))
    # n * width value ends, every width-th a line break and no other: width values per line
    if (len(ends) != n * width or not (buf[ends[width - 1::width]] == 10).all()
            or np.count_nonzero(buf[ends] == 10) != n):
        return None
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts
    if lengths.max() > MAX_BYTES:
        return None
    words = np.ndarray((len(buf) - MAX_BYTES + 1,), dtype=">u8", buffer=buf, strides=(1,))
    return (words[starts] & _MASKS[lengths]).reshape(n, width)


def pack_values(values: Sequence[str]) -> tuple[np.ndarray, list[int]]:
    """(keys, positions) of the values that have a key (1 to MAX_BYTES characters of
    VALUE_BYTES), in order; the others are left out."""
    positions = [i for i, v in enumerate(values)
                 if 0 < len(v) <= MAX_BYTES and v.isascii() and v.isprintable() and " " not in v]
    if not positions:
        return np.zeros(0, np.uint64), []
    packed = np.array([values[i].encode("ascii") for i in positions], dtype=f"S{MAX_BYTES}")
    return packed.view(">u8").astype(np.uint64), positions


def unpack(keys: np.ndarray) -> list[str]:
    """The values of `keys` ("" for key 0)."""
    if not len(keys):
        return []
    values = np.asarray(keys, dtype=">u8").view(f"S{MAX_BYTES}").tolist()
    return b"\n".join(values).decode("ascii").split("\n")


def unpack_one(key: int) -> str:
    return key.to_bytes(MAX_BYTES, "big").rstrip(b"\0").decode("ascii")


def tokens_of(keys: np.ndarray) -> list[str]:
    """The categorical tokens of `keys`: the values, MISSING_TOKEN for key 0."""
    tokens = unpack(keys)
    if "" in tokens:
        tokens = [t or MISSING_TOKEN for t in tokens]
    return tokens


def _bucket(value: int) -> int:
    """numeric_token's log bucket of an integer value > 2."""
    return int(math.floor(math.log(float(value)) ** 2))


def _bucket_starts() -> np.ndarray:
    """starts[b]: the least integer v > 2 whose log bucket is >= b, for every bucket of a value
    of at most MAX_BYTES digits (the bucket is non-decreasing in v, so a value's bucket is the
    number of starts <= v, less one)."""
    largest = 10 ** MAX_BYTES - 1
    starts = []
    for b in range(_bucket(largest) + 1):
        low, high = 3, largest  # the least v in [low, high] with bucket >= b
        while low < high:
            middle = (low + high) // 2
            if _bucket(middle) >= b:
                high = middle
            else:
                low = middle + 1
        starts.append(low)
    return np.asarray(starts, dtype=np.int64)


_BUCKET_STARTS: list[np.ndarray] = []
_SMALL_IDS = 1 << 20  # token ids: 0 MISSING_TOKEN, 1 + bucket for v > 2, _SMALL_IDS + 2 - v else
_DIGITS = np.arange(MAX_BYTES)


def numeric_token_ids(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, ok) of packed raw numeric values: where `ok` (the value is empty, or an integer:
    an optional "-" and digits), the id of its numeric_token (token_of_id gives the token,
    the same as numeric_token's); the other values (fractions, exponents, "+", "_", anything
    else) are left to numeric_token."""
    if not _BUCKET_STARTS:
        _BUCKET_STARTS.append(_bucket_starts())
    chars = np.asarray(keys, dtype=">u8").view(np.uint8).reshape(-1, MAX_BYTES).astype(np.int64)
    length = np.count_nonzero(chars, axis=1)
    negative = chars[:, 0] == ord("-")
    digit = (chars >= ord("0")) & (chars <= ord("9"))
    inside = _DIGITS < length[:, None]
    is_digit = inside.copy()
    is_digit[:, 0] &= ~negative
    ok = (digit | ~is_digit).all(axis=1) & ~(negative & (length < 2))
    power = np.where(is_digit, 10 ** np.clip(length[:, None] - 1 - _DIGITS, 0, None), 0)
    value = ((chars - ord("0")) * power).sum(axis=1)
    value = np.where(negative, -value, value)
    big = value > 2
    ids = np.where(big, np.searchsorted(_BUCKET_STARTS[0], value, side="right"),
                   _SMALL_IDS + 2 - value)
    return np.where(length == 0, 0, ids), ok


def token_of_id(token_id: int) -> str:
    """The numeric token of an id of numeric_token_ids."""
    if token_id == 0:
        return MISSING_TOKEN
    if token_id < _SMALL_IDS:
        return f"L{token_id - 1}"
    return str(2 - (token_id - _SMALL_IDS))


_DENSE_IDS = 1024  # token ids below this, and small values down to 2 - this, in TokenValues


class TokenValues:
    """value_of(column, numeric_token(raw value)) of (column, packed raw value) pairs, as arrays:
    integers through numeric_token_ids and a dense table of the values found per (column, token
    id) (common tokens: log buckets, small and slightly negative values), so value_of runs once
    per column and token; other raw values through numeric_token one by one. ValueError (not a
    number) passes through."""

    def __init__(self, columns: int, value_of):
        self._value_of = value_of
        self._table = np.full((columns, 2 * _DENSE_IDS), -1, dtype=np.int64)

    def __call__(self, columns: np.ndarray, keys: np.ndarray) -> np.ndarray:
        ids, ok = numeric_token_ids(keys)
        values = np.empty(len(keys), dtype=np.int64)
        for i in np.flatnonzero(~ok).tolist():
            values[i] = self._value_of(int(columns[i]), _numeric(unpack_one(int(keys[i]))))
        small = ids - _SMALL_IDS
        dense = np.where(ids < _DENSE_IDS, ids, np.where(
            (small >= 0) & (small < _DENSE_IDS), _DENSE_IDS + small, -1))
        dense[~ok] = -1
        known = np.full(len(keys), -1, dtype=np.int64)
        in_table = dense >= 0
        known[in_table] = self._table[columns[in_table], dense[in_table]]
        values[ok] = known[ok]
        todo = np.flatnonzero(ok & (known < 0))
        if len(todo):
            distinct_columns, distinct_ids, inverse = _pairs(columns[todo], ids[todo])
            found = np.asarray([self._value_of(c, token_of_id(i)) for c, i in
                                zip(distinct_columns.tolist(), distinct_ids.tolist())],
                               dtype=np.int64)
            values[todo] = found[inverse]
            first = np.zeros(len(found), dtype=np.int64)
            first[inverse] = todo  # a pair's position among the keys (any of them)
            kept = dense[first] >= 0
            self._table[distinct_columns[kept], dense[first][kept]] = found[kept]
        return values


_EMPTY = np.uint64((1 << 64) - 1)  # no key: a key's bytes are at most 0x7E
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing
MAX_GROUPS = 256
# A key's bytes are at most 0x7E, so the top bit of each byte is free: group g sets bit 7 of byte
# i to bit i of g, and (group, key) pairs are single uint64s.
_GROUP_BITS = np.array([sum(((g >> i) & 1) << (8 * i + 7) for i in range(8))
                        for g in range(MAX_GROUPS)], dtype=np.uint64)
_TOP_SHIFTS = np.array([8 * i + 7 for i in range(8)], dtype=np.uint64)
_KEY_BITS = np.uint64(0x7F7F7F7F7F7F7F7F)


class KeyIndex:
    """`(group, key) -> value` (0 <= value < 2**31) for many pairs at once: an open-addressing hash
    table (linear probing, at most half full) in numpy arrays (keys with their group's bits,
    values); `group` (a field's number, < MAX_GROUPS) lets one table serve every field. Lookups
    and insertions take whole arrays."""

    def __init__(self, capacity: int = 1024):
        bits = max(10, int(capacity * 2 - 1).bit_length())
        self._shift = np.uint64(64 - bits)
        self._mask = (1 << bits) - 1
        self._keys = np.full(1 << bits, _EMPTY, dtype=np.uint64)
        self._values = np.zeros(1 << bits, dtype=np.int32)
        self.size = 0

    def _slots(self, pairs: np.ndarray) -> np.ndarray:
        hashed = pairs * _MULTIPLIER
        hashed >>= self._shift
        return hashed.view(np.int64)  # < 2**bits

    def get(self, groups: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """The values of the pairs (-1 for pairs not in the table)."""
        return self.get_pairs(keys | _GROUP_BITS[groups])

    def get_pairs(self, pairs: np.ndarray) -> np.ndarray:
        """get() of pairs given as `key | group_bits(group)`."""
        slots = self._slots(pairs)
        found = self._keys[slots]
        missed = found != pairs
        out = self._values[slots].astype(np.int64)
        if not missed.any():
            return out
        out[missed] = -1
        todo = np.flatnonzero(missed & (found != _EMPTY))  # probe on
        slots, pairs = slots[todo], pairs[todo]
        while len(todo):
            slots = (slots + 1) & self._mask
            found = self._keys[slots]
            hit = found == pairs
            out[todo[hit]] = self._values[slots[hit]]
            more = ~hit & (found != _EMPTY)
            todo, slots, pairs = todo[more], slots[more], pairs[more]
        return out

    def put(self, groups: np.ndarray, keys: np.ndarray, values: np.ndarray) -> None:
        """Adds pairs that are not in the table yet (distinct), growing it to stay half
        empty."""
        self.put_pairs(keys | _GROUP_BITS[groups], values)

    def put_pairs(self, pairs: np.ndarray, values: np.ndarray) -> None:
        """put() of pairs given as `key | group_bits(group)`."""
        values = np.asarray(values, dtype=np.int32)
        if 2 * (self.size + len(pairs)) > len(self._keys):
            used = self._keys != _EMPTY
            old = self._keys[used], self._values[used]
            self.__init__(self.size + len(pairs))
            self._put(*old)
        self._put(pairs, values)

    def _put(self, pairs: np.ndarray, values: np.ndarray) -> None:
        slots = self._slots(pairs)
        while len(slots):
            free = np.flatnonzero(self._keys[slots] == _EMPTY)
            # pairs aiming at the same free slot: one of them lands, the others probe on
            self._keys[slots[free]] = pairs[free]
            won = free[self._keys[slots[free]] == pairs[free]]
            self._values[slots[won]] = values[won]
            self.size += len(won)
            rest = np.ones(len(slots), dtype=bool)
            rest[won] = False
            slots, pairs, values = (slots[rest] + 1) & self._mask, pairs[rest], values[rest]


def group_bits(groups) -> np.ndarray:
    """The bits of groups 0, 1, ..., groups - 1 (an int), or of the given groups (an array), to
    `|` into keys (KeyIndex.get_pairs)."""
    return _GROUP_BITS[:groups] if isinstance(groups, int) else _GROUP_BITS[groups]


def split_pairs(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(groups, keys) of pairs made with group_bits."""
    tops = (pairs >> _TOP_SHIFTS[:, None]) & np.uint64(1)  # bit i of the group, per row i
    groups = (tops.astype(np.int64) << np.arange(MAX_BYTES)[:, None]).sum(axis=0)
    return groups, pairs & _KEY_BITS


def _pairs(groups: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (group, key) pairs, in order of group then key, and the position of each
    given pair among them: (groups, keys, inverse)."""
    order = np.lexsort((keys, groups))
    g, k = groups[order], keys[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (g[1:] != g[:-1]) | (k[1:] != k[:-1])
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return g[first], k[first], inverse


class CachedIndex:
    """`(column, key) -> value` for (rows, columns) key matrices: a KeyIndex holding given pairs
    (`put`) and, for the `computed` columns, the values `compute(columns, keys)` (arrays of
    distinct pairs) gave keys seen for the first time (at most CACHE_ENTRIES per column are
    kept; later new keys are computed every time). Keys of other columns that are not in the
    table give `default[column]`."""

    def __init__(self, columns: int, compute, computed: Sequence[bool] | None = None,
                 default: Sequence[int] | None = None, capacity: int = 1024):
        self._index, self._compute = KeyIndex(capacity), compute
        self._computed = np.ones(columns, dtype=bool) if computed is None else np.asarray(
            computed, dtype=bool)
        self._default = np.zeros(columns, dtype=np.int64) if default is None else np.asarray(
            default, dtype=np.int64)
        self._kept = [0] * columns

    def put(self, columns: np.ndarray, keys: np.ndarray, values: np.ndarray) -> None:
        self._index.put(columns, keys, values)

    def __call__(self, keys: np.ndarray) -> np.ndarray:
        """(n, columns) keys -> (n, columns) values; ValueError from `compute` passes
        through."""
        n, m = keys.shape
        values = self._index.get_pairs((keys | group_bits(m)).ravel())
        missing = np.flatnonzero(values < 0)
        if not len(missing):
            return values.reshape(n, m)
        flat = keys.ravel()
        missing_columns = missing % m
        computed = self._computed[missing_columns]
        if not computed.all():
            values[missing[~computed]] = self._default[missing_columns[~computed]]
            missing, missing_columns = missing[computed], missing_columns[computed]
            if not len(missing):
                return values.reshape(n, m)
        new_columns, new_keys, inverse = _pairs(missing_columns, flat[missing])
        new_values = self._compute(new_columns, new_keys)
        values[missing] = new_values[inverse]
        keep = np.zeros(len(new_keys), dtype=bool)
        for i, c in enumerate(new_columns.tolist()):
            if self._kept[c] < CACHE_ENTRIES:
                self._kept[c] += 1
                keep[i] = True
        self._index.put(new_columns[keep], new_keys[keep], new_values[keep])
        return values.reshape(n, m)


class KeyChunk:
    """Training records of one chunk as packed columns (what PackedReader reads): `keys`, the
    categorical fields' uint64 keys (rows, categorical fields; tokens_of gives the tokens);
    `codes`, the numeric fields' token codes (rows, numeric fields; row r's token of numeric
    field j is tokens[j][codes[r, j]]); `numeric`, per field in spec order whether it is
    numeric (the columns of `keys` and `codes` are the categorical and numeric fields in spec
    order); and the labels. Counting (preprocessing.vocabulary) reads the arrays as they are;
    iterating gives the `(tokens, label)` records, as RecordChunk's."""

    __slots__ = ("numeric", "keys", "codes", "tokens", "labels")

    def __init__(self, numeric: Sequence[bool], keys: np.ndarray, codes: np.ndarray,
                 tokens: list[list[str]], labels: list[float]):
        self.numeric, self.keys, self.codes = tuple(numeric), keys, codes
        self.tokens, self.labels = tokens, labels

    def select(self, indices: Sequence[int]) -> "KeyChunk":
        """The records at `indices`, in that order."""
        at = np.asarray(indices, dtype=np.intp)
        return KeyChunk(self.numeric, self.keys[at], self.codes[at], self.tokens,
                        [self.labels[i] for i in indices])

    @property
    def columns(self) -> list[list[str]]:
        """One token list per field (spec order)."""
        categorical = iter(self.keys.T)
        numeric = iter(zip(self.tokens, self.codes.T))
        columns = []
        for is_numeric in self.numeric:
            if is_numeric:
                tokens, codes = next(numeric)
                columns.append([tokens[c] for c in codes.tolist()])
            else:
                columns.append(tokens_of(next(categorical)))
        return columns

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self):
        return zip(zip(*self.columns), self.labels)

    def __eq__(self, other) -> bool:
        return isinstance(other, KeyChunk) and list(self) == list(other)

    def __reduce__(self):
        return KeyChunk, (self.numeric, self.keys, self.codes, self.tokens, self.labels)


class PackedReader:
    """Raw lines of a plain delimited format -> KeyChunk (or None: see the module docstring).
    Made from the format's columnar.PlainChunkReader, on the worker (holds caches)."""

    def __init__(self, reader, encoding: str):
        self._width, self._label_column = reader._width, reader._label_column
        self._sep = reader._sep.encode(encoding)
        self._labels = reader._labels
        names = list(self._labels)
        keys, at = pack_values(names)
        self._label_keys = list(keys)  # the labels as written that have a key
        self._label_values = [self._labels[names[i]] for i in at]
        self._label_array = np.asarray(self._label_values, dtype=np.float64)
        fields = reader._encoder
        self.columns = fields.field_columns  # spec order
        self.numeric = fields.numeric_fields
        self._numeric_columns = [c for c, num in zip(self.columns, self.numeric) if num]
        self._categorical_columns = [c for c, num in zip(self.columns, self.numeric) if not num]
        self._codes: list[dict] = [{} for _ in self._numeric_columns]  # token -> code
        self._tokens: list[list[str]] = [[] for _ in self._numeric_columns]  # code -> token
        self._cache = CachedIndex(len(self._numeric_columns),
                                  TokenValues(len(self._numeric_columns), self._code))

    @classmethod
    def of(cls, reader, encoding: str | None) -> "PackedReader | None":
        """The packed reader for a PlainChunkReader, or None (no reader, or an encoding in which
        ASCII bytes are not ASCII characters)."""
        if reader is None or not ascii_compatible(encoding):
            return None
        sep = reader._sep.encode(encoding)
        if len(sep) != 1 or sep in b"\n\0" or reader._width > MAX_GROUPS:
            return None
        return cls(reader, encoding)

    def pack(self, raws: Sequence[bytes]) -> np.ndarray | None:
        return pack_lines(raws, self._width, self._sep)

    def pack_labelled(self, raws: Sequence[bytes]):
        """(keys, labels(keys)) of the lines, or None when `pack` or `labels` gives None."""
        keys = self.pack(raws)
        if keys is None:
            return None
        labels = self.labels(keys)
        return None if labels is None else (keys, labels)

    def labels(self, keys: np.ndarray) -> tuple[list[float], np.ndarray, list[float]] | None:
        """(the rows' labels, the position of each row's label in `label_values`, which is
        returned third), or None when one is not a label as written."""
        column = keys[:, self._label_column]
        position = np.full(len(column), -1, dtype=np.int64)
        for i, key in enumerate(self._label_keys):
            position[column == key] = i
        if position.min() < 0:
            return None
        return self._label_array[position].tolist(), position, self._label_values

    def _code(self, field: int, token: str) -> int:
        """The code of numeric field `field`'s token."""
        codes = self._codes[field]
        code = codes.get(token)
        if code is None:
            code = codes[token] = len(codes)
            self._tokens[field].append(token)
        return code

    def __call__(self, raws: Sequence[bytes]) -> KeyChunk | None:
        packed = self.pack_labelled(raws)
        if packed is None:
            return None
        keys, labels = packed
        try:
            codes = self._cache(keys[:, self._numeric_columns])
        except ValueError:  # not a number
            return None
        return KeyChunk(self.numeric, keys[:, self._categorical_columns], codes,
                        [list(tokens) for tokens in self._tokens], labels[0])


class PackedEncoder:
    """Raw lines of a plain delimited format -> (examples, labels): the tf.Example bytes that
    columnar.PlainChunkEncoder gives for them, or None (see the module docstring).

    Every entry an example can hold (the vocabularies' and out-of-vocabulary ids of each field,
    the labels, the length prefixes) sits once in `pool`, an object array; a KeyIndex maps
    (field, packed value) to its entry's position: filled from the vocabularies for categorical
    fields (the empty value: MISSING_TOKEN's entry), and as a bounded cache of raw values seen
    for numeric fields. A chunk's examples are then the pool gathered at a (rows, 1 + entries)
    position matrix (rows grouped by split), joined at once and cut into rows."""

    def __init__(self, reader: PackedReader, encoder):
        self._reader = reader
        pool = list(encoder.length_prefixes)  # position = body length
        self._labels = {}  # label value -> position of its entry
        for value in sorted(set(reader._labels.values())):
            self._labels[value] = len(pool)
            pool.append(encoder.label_entry(value))
        self._oov = np.zeros(len(reader.columns), dtype=np.int64)
        self._token_entries = {}  # numeric field -> {token: position}
        columns, keys, positions = [], [], []
        for field, (table, numeric) in enumerate(zip(encoder.field_tables, reader.numeric)):
            self._oov[field] = len(pool)
            pool.append(table.oov)
            tokens = [t for t in table if t]
            if numeric:
                self._token_entries[field] = dict(zip(tokens, range(len(pool),
                                                                    len(pool) + len(tokens))))
                pool += [table[t] for t in tokens]
                continue
            packed, at = pack_values(tokens)
            columns.append(np.full(len(at) + 1, field, dtype=np.int64))
            keys += [np.zeros(1, np.uint64), packed]  # key 0: the empty value
            positions.append(np.arange(len(pool), len(pool) + len(at) + 1))
            pool.append(table[""])
            pool += [table[tokens[i]] for i in at]
        self._index = CachedIndex(len(reader.columns),
                                  TokenValues(len(reader.columns), self._entry),
                                  computed=reader.numeric,
                                  default=self._oov, capacity=sum(map(len, keys)) + 1)
        if keys:
            self._index.put(np.concatenate(columns), np.concatenate(keys),
                            np.concatenate(positions))
        self._pool = np.empty(len(pool), dtype=object)
        self._pool[:] = pool
        self._lengths = np.fromiter(map(len, pool), dtype=np.int64, count=len(pool))
        self._columns = list(reader.columns)
        self._order = np.asarray(encoder.order, dtype=np.int64)  # key order of [fields, label]
        self._prefixes = len(encoder.length_prefixes)

    def _entry(self, field: int, token: str) -> int:
        """The position of numeric field `field`'s entry of a token."""
        return self._token_entries[field].get(token, int(self._oov[field]))

    def __call__(self, raws: Sequence[bytes]) -> tuple[list[bytes], list[float]] | None:
        """(examples, labels) of the lines, or None."""
        encoded = self.encode(raws, [0] * len(raws))
        return None if encoded is None else encoded.get(0, ([], []))

    def encode(self, raws: Sequence[bytes], splits: Sequence[int]
               ) -> dict[int, tuple[list[bytes], list[float]]] | None:
        """{split: (its lines' examples, their labels)} for the splits present (`splits`: each
        line's), or None."""
        packed = self._reader.pack_labelled(raws)
        if packed is None:
            return None
        keys, (labels, label_of_row, distinct_labels) = packed
        n, m = len(labels), len(self._columns)
        at = np.empty((n, m + 1), dtype=np.int64)  # entry positions: fields (spec order), label
        try:
            at[:, :m] = self._index(keys[:, self._columns])
        except ValueError:  # not a number
            return None
        at[:, m] = np.asarray([self._labels[v] for v in distinct_labels])[label_of_row]
        of_row = np.asarray(splits)
        order = None
        if (of_row[1:] != of_row[:-1]).any():  # rows grouped by split, in line order
            order = np.argsort(of_row, kind="stable")
            at, of_row = at[order], of_row[order]
            labels = [labels[i] for i in order.tolist()]
        grid = np.empty((n, m + 2), dtype=np.int64)  # per row: tag and length, entries
        grid[:, 1:] = at[:, self._order]
        body = self._lengths[grid[:, 1:]].sum(axis=1)
        if body.max() >= self._prefixes:  # no length prefix in the pool: the row path's
            return None
        grid[:, 0] = body
        # one join for the chunk, then each example a slice of it
        blob = b"".join(self._pool[grid.ravel()].tolist())
        ends = np.cumsum(body + self._lengths[body])
        starts = np.concatenate([[0], ends[:-1]])
        examples = list(map(blob.__getitem__, map(slice, starts.tolist(), ends.tolist())))
        bounds = np.flatnonzero(np.concatenate([[True], of_row[1:] != of_row[:-1], [True]]))
        return {int(of_row[first]): (examples[first:stop], labels[first:stop])
                for first, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist())}
