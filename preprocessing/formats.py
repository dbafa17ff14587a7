"""Per-dataset record parsers: pure Python, no Beam.

A parser turns one decoded line (without its line terminator) into `(tokens, label)`:
`tokens` is a tuple with one vocabulary token per field of the DatasetSpec (in spec order), `label`
is 0.0 or 1.0. A header line gives None (skipped, not an error). Anything else that cannot be
read raises `MalformedRecord` with a reason naming the column/field; the Beam job sends such lines
to the dead-letter output.

Token rules are those of configs.features (`numeric_token`, `categorical_token`); this module only
finds the raw value of each field. Both token functions are pure, so they are memoised here.
"""
from __future__ import annotations

import csv
import datetime
import functools
import hashlib
import operator
import re
from bisect import bisect_right
from typing import Any, Callable, Sequence

import numpy as np

from configs.features import (
    AVAZU_COLUMNS,
    FRAPPE_FIELDS,
    MISSING_TOKEN,
    MOVIELENS_FIELDS,
    DatasetSpec,
    categorical_token,
    numeric_token,
)
from configs.loader import ConfigError

Parsed = tuple[tuple[str, ...], float]



@functools.lru_cache(maxsize=1 << 16)
def _numeric(raw: str) -> str:
    return numeric_token(raw)


@functools.lru_cache(maxsize=1 << 16)
def _categorical(raw: str) -> str:
    return categorical_token(raw)


CRITEO_COLUMNS = ("label",) + tuple(f"I{i}" for i in range(1, 14)) + tuple(
    f"C{i}" for i in range(1, 27))
MOVIELENS_100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western")
_YEAR = re.compile(r"\((\d{4})\)\s*$")


class MalformedRecord(ValueError):
    """A record that cannot be read; the message is the dead-letter reason."""


_CACHE_ENTRIES = 1 << 17
_CLEAN_CATEGORICAL = {"": MISSING_TOKEN}  # categorical_token of whitespace-free values


def _bounds(fractions: Sequence[float]) -> list[float]:
    bounds, cumulative = [], 0.0
    for fraction in fractions[:-1]:
        cumulative += fraction
        bounds.append(cumulative)
    return bounds


def split_index(source: str, line_no: int, fractions: Sequence[float], seed: int) -> int:
    """Deterministic split of line `line_no` of file `source` (0 train, 1 valid, 2 test): a
    64-bit blake2b of (seed, source, line_no) as u in [0, 1), then the first split whose
    cumulative fraction exceeds u. hashlib, not hash(): the same on every run, process and
    machine."""
    digest = hashlib.blake2b(f"{seed}\x00{source}\x00{line_no}".encode(), digest_size=8).digest()
    return bisect_right(_bounds(fractions), int.from_bytes(digest, "big") / 2.0 ** 64)


class SplitAssigner:
    """`split_index` of many consecutive lines of one file at once: the constant part of the
    hashed key (`seed\0source\0`) hashed once and its state copied per line (30% faster than
    hashing the whole key), one C-level digest per line, and the rest (bytes -> u -> split) in
    numpy. The same result bit for bit (tests compare them): the uint64 -> float64 conversion
    rounds to nearest like Python's int / float division, and the scaling by 2^-64 is exact."""

    def __init__(self, source: str, fractions: Sequence[float], seed: int):
        self._prefix = f"{seed}\x00{source}\x00".encode()
        self._bounds = np.asarray(_bounds(fractions), np.float64)

    def many(self, first: int, n: int) -> np.ndarray:
        """Splits (int64) of lines first, first + 1, ..., first + n - 1."""
        start = hashlib.blake2b(self._prefix, digest_size=8)  # copied: no set-up per line
        digests = []
        for i in range(first, first + n):
            h = start.copy()
            h.update(b"%d" % i)
            digests.append(h.digest())
        digests = b"".join(digests)
        u = np.frombuffer(digests, dtype=">u8").astype(np.float64) * 2.0 ** -64
        return np.searchsorted(self._bounds, u, side="right")

    def __call__(self, line_no: int) -> int:
        return int(self.many(line_no, 1)[0])


def _getter(indices: Sequence[int]) -> Callable[[Sequence], tuple]:
    """values -> tuple(values[i] for i in indices), at C speed (itemgetter)."""
    if len(indices) > 1:
        return operator.itemgetter(*indices)
    if indices:
        index = indices[0]
        return lambda values: (values[index],)
    return lambda values: ()


class FieldEncoder:
    """Picks the spec's fields out of a format's raw columns and applies the token rules.

    Hot path (the rules are pure, only the speed differs): numeric values are looked up in a
    bounded `raw -> token` cache (one C-level dict lookup per field; misses apply the rule and
    fill the cache while it has room); when a row's categorical values hold no whitespace at
    all, `categorical_token` is the identity (or MISSING_TOKEN for ""), applied with one C-level
    map over the row, else the rule runs per value."""

    def __init__(self, spec: DatasetSpec, columns: Sequence[str]):
        unknown = [f.name for f in spec.fields if f.name not in columns]
        if unknown:
            raise ConfigError(f"dataset {spec.name}: field(s) {unknown} are not columns of the "
                              f"{spec.format} format; available: {list(columns)}")
        self._plan = [(columns.index(f.name), f.name,
                       _numeric if f.kind == "numeric" else _categorical) for f in spec.fields]
        numeric = [i for i, (_, _, rule) in enumerate(self._plan) if rule is _numeric]
        categorical = [i for i, (_, _, rule) in enumerate(self._plan) if rule is not _numeric]
        self._numeric = [self._plan[i] for i in numeric]
        self._num_pick = _getter([self._plan[i][0] for i in numeric])
        self._cat_pick = _getter([self._plan[i][0] for i in categorical])
        self._num_cache: dict[str, str] = {}  # per encoder: a pickled copy gets its own
        self._num_caches = [self._num_cache] * len(numeric)
        self._cat_tables = [_CLEAN_CATEGORICAL] * len(categorical)
        # tokens are computed numeric first, then categorical: back to field order
        grouped = numeric + categorical
        self._order = (None if grouped == sorted(grouped)
                       else _getter([grouped.index(i) for i in range(len(grouped))]))
        self.field_columns = tuple(index for index, _, _ in self._plan)  # spec order
        self.numeric_fields = tuple(rule is _numeric for _, _, rule in self._plan)  # spec order

    def tokens(self, values: Sequence[str | None]) -> tuple[str, ...]:
        raw = self._num_pick(values)
        out = list(map(dict.get, self._num_caches, raw))
        if None in out:
            self._fill_numeric(raw, out)
        raw = self._cat_pick(values)
        try:
            joined = "".join(raw)
        except TypeError:  # None (absent) values
            joined = " "
        if " " not in joined and joined.isprintable():  # no whitespace of any kind
            out += map(dict.get, self._cat_tables, raw, raw)
        else:
            out += map(_categorical, raw)
        return tuple(out) if self._order is None else self._order(out)

    def column_tokens(self, columns: Sequence[Sequence[str]], missing_as_empty: bool = False
                      ) -> tuple[list[list], set[int]]:
        """Raw values column by column (one sequence per field, spec order, all of the same
        length) -> the token columns and the row positions holding a non-number in a numeric
        field (left as None in that column). Tokens are those of `tokens`, row for row, with
        C-level maps per column: numeric columns through the same bounded cache, categorical
        columns without any whitespace as they are (or MISSING_TOKEN for ""; left as "" with
        `missing_as_empty`, which RecordChunk's consumers read as MISSING_TOKEN)."""
        out, bad = [], set()
        for (_, _, rule), column in zip(self._plan, columns):
            if rule is _numeric:
                tokens = list(map(self._num_cache.get, column))
                if None in tokens:
                    self._fill_numeric_column(column, tokens, bad)
            else:
                joined = "".join(column)
                if " " not in joined and joined.isprintable():
                    # whitespace-free values are their own tokens, "" is MISSING_TOKEN
                    tokens = (list(map(_CLEAN_CATEGORICAL.get, column, column))
                              if not missing_as_empty and "" in column else list(column))
                else:
                    tokens = list(map(_categorical, column))
            out.append(tokens)
        return out, bad

    def _fill_numeric_column(self, column: Sequence[str], tokens: list, bad: set) -> None:
        cache = self._num_cache
        for i in [i for i, token in enumerate(tokens) if token is None]:
            value = column[i]
            try:
                tokens[i] = token = _numeric(value)
            except ValueError:
                bad.add(i)
                continue
            if len(cache) < _CACHE_ENTRIES:
                cache[value] = token

    def _fill_numeric(self, raw: Sequence[str | None], out: list) -> None:
        for i, token in enumerate(out):
            if token is None:
                name, value = self._numeric[i][1], raw[i]
                try:
                    out[i] = token = _numeric(value)
                except ValueError:
                    raise MalformedRecord(f"field {name}: non-numeric value {value!r}") from None
                if value is not None and len(self._num_cache) < _CACHE_ENTRIES:
                    self._num_cache[value] = token


def _label_map(spec: DatasetSpec) -> dict[str, float]:
    labels = {v: 0.0 for v in spec.negative_labels}
    labels.update({v: 1.0 for v in spec.positive_labels})
    return labels


def _label(raw: str, labels: dict[str, float]) -> float:
    try:
        return labels[raw.strip()]
    except KeyError:
        raise MalformedRecord(f"bad label {raw!r} (expected one of {sorted(labels)})") from None


def _columns(text: str, sep: str, expected: int, what: str) -> list[str]:
    values = text.split(sep)
    if len(values) != expected:
        raise MalformedRecord(f"expected {expected} {sep!r}-separated columns in {what}, got "
                              f"{len(values)}")
    return values


class LineParser:
    """Base of the single-file formats: `split(text, line_no)` -> (values, label) or None.

    `plain_delimiter` set: every line is exactly len(columns) values separated by that
    character (no quoting, no header) and column `label_column` holds the label, one of
    `labels` (after strip); preprocessing.columnar then reads a chunk of lines at once."""

    encoding = "utf-8"
    columns: tuple[str, ...] = ()
    plain_delimiter: str | None = None
    label_column = 0
    labels: dict[str, float] = {}

    def __init__(self, spec: DatasetSpec):
        self.spec = spec
        self.encoder = FieldEncoder(spec, self.columns)

    def split(self, text: str, line_no: int) -> tuple[Sequence[str], float] | None:
        raise NotImplementedError

    def __call__(self, text: str, line_no: int = 0) -> Parsed | None:
        got = self.split(text, line_no)
        if got is None:
            return None
        values, label = got
        return self.encoder.tokens(values), label


class CriteoParser(LineParser):
    """Kaggle Criteo TSV: label, I1..I13, C1..C26; exactly 40 columns, empty = missing."""

    columns = CRITEO_COLUMNS
    plain_delimiter = "\t"

    def __init__(self, spec):
        super().__init__(spec)
        self._labels = self.labels = _label_map(spec)

    def split(self, text, line_no):
        values = _columns(text, "\t", 40, "a Criteo row")
        return values, _label(values[0], self._labels)

    def __call__(self, text, line_no=0):  # split() inlined: the hot path of the benchmark
        values = _columns(text, "\t", 40, "a Criteo row")
        label = _label(values[0], self._labels)
        return self.encoder.tokens(values), label


class AvazuParser(LineParser):
    """Kaggle Avazu CSV: 24 columns, `id` dropped, label `click`, `hour` (YYMMDDHH) gives
    hour_of_day and weekday. The header line is skipped wherever it occurs."""

    columns = AVAZU_COLUMNS + ("hour_of_day", "weekday")

    def __init__(self, spec):
        super().__init__(spec)
        self._labels = _label_map(spec)
        self._header = ",".join(AVAZU_COLUMNS)

    def split(self, text, line_no):
        if text.strip() == self._header:
            return None
        values = _columns(text, ",", len(AVAZU_COLUMNS), "an Avazu row")
        hour = values[2].strip()
        try:
            if len(hour) != 8 or not hour.isdigit():
                raise ValueError
            day = datetime.date(2000 + int(hour[:2]), int(hour[2:4]), int(hour[4:6]))
            hour_of_day = int(hour[6:8])
            if hour_of_day > 23:
                raise ValueError
        except ValueError:
            raise MalformedRecord(f"column hour: {hour!r} is not YYMMDDHH") from None
        values.append(str(hour_of_day))
        values.append(str(day.weekday()))
        return values, _label(values[1], self._labels)


class FrappeParser(LineParser):
    """libFM lines `label idx:1 ... idx:1`, labels -1/1, exactly 10 features; token = idx."""

    columns = FRAPPE_FIELDS
    _labels = {"1": 1.0, "+1": 1.0, "-1": 0.0, "0": 0.0}

    def split(self, text, line_no):
        parts = text.split()
        if len(parts) != len(FRAPPE_FIELDS) + 1:
            raise MalformedRecord(f"expected a label and {len(FRAPPE_FIELDS)} index:value "
                                  f"features, got {len(parts) - 1} features")
        values = []
        for i, feature in enumerate(parts[1:]):
            index, sep, _ = feature.partition(":")
            if not sep or not index.isdigit():
                raise MalformedRecord(f"feature {i + 1} ({FRAPPE_FIELDS[i]}): {feature!r} is "
                                      f"not index:value")
            values.append(index)
        return values, _label(parts[0], self._labels)


class CsvParser(LineParser):
    """Generic delimited file described by the config's `dataset:` section."""

    def __init__(self, spec):
        if len(spec.delimiter) != 1:
            raise ConfigError(f"dataset {spec.name}: delimiter must be one character, "
                              f"got {spec.delimiter!r}")
        self.columns = tuple(spec.columns)
        super().__init__(spec)
        self._labels = _label_map(spec)
        self._label_index = self.columns.index(spec.label_column)

    def split(self, text, line_no):
        if self.spec.header and line_no == 1:
            return None
        try:
            values = next(csv.reader([text], delimiter=self.spec.delimiter, strict=True))
        except (csv.Error, StopIteration) as exc:
            raise MalformedRecord(f"unreadable delimited line: {exc}") from None
        if len(values) != len(self.columns):
            raise MalformedRecord(f"expected {len(self.columns)} {self.spec.delimiter!r}-"
                                  f"separated columns, got {len(values)}")
        return values, _label(values[self._label_index], self._labels)


# ----------------------------------------------------------------------------- MovieLens

class MovieLensTables:
    """The three MovieLens tables (ratings, users, movies) of the 1M or 100K release.

    Users and movies are parsed into small dicts (`id -> raw values`) that the Beam job passes as
    side inputs; `parse_rating` joins a rating line with them. Fields (MOVIELENS_FIELDS):
    userId, movieId, year (from the title's "(1995)"), genres, gender, age, occupation, zip.
    """

    def __init__(self, spec: DatasetSpec, variant: str):
        if variant not in ("movielens-1m", "movielens-100k"):
            raise ConfigError(f"unknown MovieLens variant {variant!r}")
        self.variant = variant
        self.encoder = FieldEncoder(spec, MOVIELENS_FIELDS)
        one_m = variant == "movielens-1m"
        self.files = ({"ratings": "ratings.dat", "users": "users.dat", "movies": "movies.dat"}
                      if one_m else {"ratings": "u.data", "users": "u.user", "movies": "u.item"})
        self.encodings = {"ratings": "utf-8", "users": "utf-8", "movies": "latin-1"}
        self._sep = {"ratings": "::" if one_m else "\t", "users": "::" if one_m else "|",
                     "movies": "::" if one_m else "|"}

    def parse_user(self, text: str) -> tuple[str, tuple[str, str, str, str]]:
        values = _columns(text, self._sep["users"], 5, "a users row")
        if self.variant == "movielens-1m":  # UserID::Gender::Age::Occupation::Zip-code
            user, gender, age, occupation, zip_code = values
        else:  # id|age|gender|occupation|zip
            user, age, gender, occupation, zip_code = values
        if not user.strip():
            raise MalformedRecord("users row without a user id")
        return user.strip(), (gender, age, occupation, zip_code)

    def parse_movie(self, text: str) -> tuple[str, tuple[str, str]]:
        if self.variant == "movielens-1m":  # MovieID::Title::Genres
            movie, title, genres = _columns(text, "::", 3, "a movies row")
        else:  # id|title|release|video release|url|19 genre flags
            values = _columns(text, "|", 5 + len(MOVIELENS_100K_GENRES), "a u.item row")
            movie, title, flags = values[0], values[1], values[5:]
            if any(f not in ("0", "1") for f in flags):
                raise MalformedRecord(f"genre flags must be 0/1, got {flags}")
            genres = "|".join(g for g, f in zip(MOVIELENS_100K_GENRES, flags) if f == "1")
        if not movie.strip():
            raise MalformedRecord("movies row without a movie id")
        return movie.strip(), (title_year(title), genres)

    def parse_rating(self, text: str, users: dict, movies: dict) -> Parsed:
        user, movie, rating, _ = _columns(text, self._sep["ratings"], 4, "a ratings row")
        user, movie = user.strip(), movie.strip()
        label = rating_label(rating)
        if user not in users:
            raise MalformedRecord(f"userId {user!r} is not in the users table")
        if movie not in movies:
            raise MalformedRecord(f"movieId {movie!r} is not in the movies table")
        gender, age, occupation, zip_code = users[user]
        year, genres = movies[movie]
        raw = (user, movie, year, genres, gender, age, occupation, zip_code)
        return self.encoder.tokens(raw), label


def title_year(title: str) -> str:
    """"Toy Story (1995)" -> "1995"; "" (missing) when the title has no year."""
    match = _YEAR.search(title)
    return match.group(1) if match else ""


def rating_label(raw: Any) -> float:
    """Ratings 4 and 5 are positive; ratings must be numbers in [0.5, 5]."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise MalformedRecord(f"bad rating {raw!r}") from None
    if not 0.5 <= value <= 5.0:
        raise MalformedRecord(f"rating {raw!r} outside 0.5..5")
    return 1.0 if value >= 4.0 else 0.0


class TfdsMovieLensParser:
    """An example of TFDS `movielens/1m-ratings` (or 100k) as numpy values -> (tokens, label).

    The TFDS features differ slightly from the raw files: occupation is TFDS's occupation text
    (the raw 1M file has a numeric code), genres are TFDS's genre names joined with '|'."""

    def __init__(self, spec: DatasetSpec, genre_names: Callable[[int], str]):
        self.encoder = FieldEncoder(spec, MOVIELENS_FIELDS)
        self._genre = genre_names

    def __call__(self, ex: dict) -> Parsed:
        def text(value) -> str:
            return value.decode("utf-8") if isinstance(value, bytes) else str(value)

        try:
            age = float(ex["bucketized_user_age"])
            raw = (text(ex["user_id"]), text(ex["movie_id"]), title_year(text(ex["movie_title"])),
                   "|".join(self._genre(int(g)) for g in ex["movie_genres"]),
                   "M" if bool(ex["user_gender"]) else "F",
                   str(int(age)) if age == age else "",
                   text(ex["user_occupation_text"]), text(ex["user_zip_code"]))
        except KeyError as exc:
            raise MalformedRecord(f"TFDS example without feature {exc}") from None
        return self.encoder.tokens(raw), rating_label(ex["user_rating"])


LINE_PARSERS: dict[str, type[LineParser]] = {
    "criteo": CriteoParser, "avazu": AvazuParser, "frappe": FrappeParser, "csv": CsvParser}


def line_parser(spec: DatasetSpec) -> LineParser:
    if spec.format not in LINE_PARSERS:
        raise ConfigError(f"format {spec.format!r} is not a single-file line format; "
                          f"known: {sorted(LINE_PARSERS)}")
    return LINE_PARSERS[spec.format](spec)
