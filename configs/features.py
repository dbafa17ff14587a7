"""The one feature schema shared by preprocessing (Beam), training and serving.

Two halves:
- `DatasetSpec`: what a raw dataset looks like (its fields, which are categorical or numeric,
  minimum vocabulary counts, the label). Presets per dataset live in `DATASETS`.
- `DataSchema`: what the Beam job wrote (`DIR/schema.json`): fields with vocabulary sizes,
  split sizes, the label rate, the resolved preprocessing config and hashes. Training reads it to
  build the input reader and the embedding tables; export reads it (with the vocabulary files) to
  put the same token rules and lookups inside the SavedModel.

Token rules (the same in Beam, here in pure Python, and in the TF graph at serving time):
- A missing value (empty string after stripping) becomes `MISSING_TOKEN`.
- Categorical values are the stripped string; tabs, newlines and carriage returns are replaced by
  a space so a token always fits on one line of a vocabulary file.
- Numeric values are log-bucketed as the Criteo winners did (see `numeric_token`).
- Ids: 0 is the out-of-vocabulary id (`OOV_ID`); vocabulary tokens (those with count >= the
  field's min count on the training split) take ids 1..V in order of descending count, ties broken
  by the token's UTF-8 bytes ascending. A field's vocabulary size is V + 1. A field with a
  `max_vocab_size` K keeps the first K tokens of that order (V <= K); the others map to OOV_ID.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from configs import fileio
from configs.loader import ConfigError, from_dict, to_dict

MISSING_TOKEN = "__missing__"
OOV_ID = 0
LABEL_KEY = "label"
SCHEMA_FILE = "schema.json"
VOCAB_DIR = "vocab"
SPLITS = ("train", "valid", "test")

FieldKind = Literal["categorical", "numeric"]

# The one number grammar of a numeric field (after stripping), used verbatim here and, as an RE2
# pattern, in the SavedModel's graph (pipeline.serving.tf_numeric_token): Python's float() syntax
# restricted to ASCII decimal digits: optional sign, digits with single underscores between
# digits, optional fraction, optional exponent. No `inf`/`nan`/`infinity`, no hex, no non-ASCII
# digits (Arabic-Indic, full-width, ... which float() would accept), no inner whitespace.
NUMBER_DIGITS = r"[0-9]+(?:_[0-9]+)*"
NUMBER_RE = (rf"[+-]?(?:{NUMBER_DIGITS}(?:\.(?:{NUMBER_DIGITS})?)?|\.{NUMBER_DIGITS})"
             rf"(?:[eE][+-]?{NUMBER_DIGITS})?")
_NUMBER = re.compile(NUMBER_RE)


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One input field. `min_count` / `max_vocab_size` None mean the dataset's default."""

    name: str
    kind: FieldKind = "categorical"
    min_count: int | None = None
    max_vocab_size: int | None = None

    def __post_init__(self):
        if not self.name or not all(c.isalnum() or c in "_-" for c in self.name):
            raise ConfigError(f"field name {self.name!r} must be non-empty [A-Za-z0-9_-]")
        if self.name == LABEL_KEY:
            raise ConfigError(f"field name {self.name!r} is reserved for the label")
        if self.kind not in ("categorical", "numeric"):
            raise ConfigError(
                f"field {self.name}: kind must be categorical or numeric, got {self.kind!r}"
            )
        if self.min_count is not None and self.min_count < 1:
            raise ConfigError(f"field {self.name}: min_count must be >= 1, got {self.min_count}")
        if self.max_vocab_size is not None and self.max_vocab_size < 1:
            raise ConfigError(f"field {self.name}: max_vocab_size must be >= 1 (or null: no cap), "
                              f"got {self.max_vocab_size}")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A raw dataset's format and fields.

    format: which reader parses it (criteo, avazu, movielens-1m, movielens-100k, frappe, csv).
    fields: the model's input fields, in order.
    default_min_count: the vocabulary min count for fields that do not set their own.
    default_max_vocab_size: the most tokens a field's vocabulary keeps (the most frequent, in id
    order) for fields that do not set their own `max_vocab_size`; None: no cap.
    For `csv`: `delimiter`, `header` (first line is a header to skip), `columns` (the names of the
    file's columns in order; fields are picked from them by name) and `label_column`.
    `positive_labels`: raw label strings that mean 1 (others listed in `negative_labels` mean 0).
    """

    name: str
    format: str
    fields: tuple[FieldSpec, ...]
    default_min_count: int = 1
    default_max_vocab_size: int | None = None
    delimiter: str = ","
    header: bool = False
    columns: tuple[str, ...] = ()
    label_column: str = ""
    positive_labels: tuple[str, ...] = ("1",)
    negative_labels: tuple[str, ...] = ("0",)

    def __post_init__(self):
        if not self.fields:
            raise ConfigError(f"dataset {self.name}: no fields")
        names = [f.name for f in self.fields]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"dataset {self.name}: duplicate field names {dupes}")
        if self.default_min_count < 1:
            raise ConfigError(f"dataset {self.name}: default_min_count must be >= 1")
        if self.default_max_vocab_size is not None and self.default_max_vocab_size < 1:
            raise ConfigError(f"dataset {self.name}: default_max_vocab_size must be >= 1 (or "
                              f"null: no cap), got {self.default_max_vocab_size}")
        if self.format == "csv":
            if not self.columns or not self.label_column:
                raise ConfigError(f"dataset {self.name}: csv needs `columns` and `label_column`")
            missing = [n for n in names + [self.label_column] if n not in self.columns]
            if missing:
                raise ConfigError(f"dataset {self.name}: fields not among columns: {missing}")

    def min_count(self, field: FieldSpec) -> int:
        return field.min_count if field.min_count is not None else self.default_min_count

    def max_vocab_size(self, field: FieldSpec) -> int | None:
        """The field's cap on its vocabulary (tokens, without the OOV id); None: no cap."""
        if field.max_vocab_size is not None:
            return field.max_vocab_size
        return self.default_max_vocab_size

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)


def _criteo_fields() -> tuple[FieldSpec, ...]:
    return tuple([FieldSpec(f"I{i}", "numeric") for i in range(1, 14)]
                 + [FieldSpec(f"C{i}", "categorical") for i in range(1, 27)])


AVAZU_COLUMNS = ("id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain",
                 "site_category", "app_id", "app_domain", "app_category", "device_id",
                 "device_ip", "device_model", "device_type", "device_conn_type", "C14", "C15",
                 "C16", "C17", "C18", "C19", "C20", "C21")
MOVIELENS_FIELDS = ("userId", "movieId", "year", "genres", "gender", "age", "occupation", "zip")
FRAPPE_FIELDS = ("user", "item", "daytime", "weekday", "isweekend", "homework", "cost",
                 "weather", "country", "city")

DATASETS: dict[str, DatasetSpec] = {
    "criteo": DatasetSpec("criteo", "criteo", _criteo_fields(), default_min_count=10),
    "avazu": DatasetSpec(
        "avazu", "avazu",
        tuple(FieldSpec(n) for n in ("hour_of_day", "weekday") + AVAZU_COLUMNS[3:]),
        default_min_count=2),
    "movielens-1m": DatasetSpec("movielens-1m", "movielens-1m",
                                tuple(FieldSpec(n) for n in MOVIELENS_FIELDS)),
    "movielens-100k": DatasetSpec("movielens-100k", "movielens-100k",
                                  tuple(FieldSpec(n) for n in MOVIELENS_FIELDS)),
    "frappe": DatasetSpec("frappe", "frappe", tuple(FieldSpec(n) for n in FRAPPE_FIELDS)),
}


def dataset_spec(name: str, overrides: dict[str, Any] | None = None) -> DatasetSpec:
    """The preset for `name`, or (for `csv`) a spec built entirely from `overrides`."""
    if name == "csv":
        if not overrides:
            raise ConfigError("dataset csv needs a `dataset:` section in --config "
                              "(fields, columns, label_column, delimiter)")
        data = dict(overrides)
        data.setdefault("name", "csv")
        data.setdefault("format", "csv")
        return from_dict(DatasetSpec, data, "dataset")
    if name not in DATASETS:
        raise ConfigError(
            f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS) + ['csv'])}"
        )
    if not overrides:
        return DATASETS[name]
    data = to_dict(DATASETS[name])
    unknown = sorted(set(overrides) - set(data))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join('dataset.' + k for k in unknown)}")
    data.update(overrides)
    return from_dict(DatasetSpec, data, "dataset")


# ----------------------------------------------------------------------------- token rules

def categorical_token(raw: str | None) -> str:
    """The vocabulary token of a raw categorical value."""
    if raw is None:
        return MISSING_TOKEN
    value = raw.strip()
    if value == "":
        return MISSING_TOKEN
    return value.replace("\t", " ").replace("\n", " ").replace("\r", " ")


def numeric_token(raw: str | None) -> str:
    """The vocabulary token of a raw numeric value (Criteo winners' log bucketing).

    - empty or absent: MISSING_TOKEN
    - v > 2: "L" + str(floor(ln(v)^2))   (e.g. 3 -> "L1", 100 -> "L21"); non-integers too
    - v <= 2 (zero, negatives, small values): str(floor(v)) (e.g. 2 -> "2", 0 -> "0",
      -1 -> "-1", 1.5 -> "1", -0.5 -> "-1"). The "L" prefix keeps the two ranges apart (the
      original recipe let ln-bucket 1 collide with the value 1).
    Raises ValueError for text that is not a finite ASCII number (`NUMBER_RE`: so also for
    `inf`, `nan`, `0x10`, non-ASCII digits such as U+0663 or U+FF13, and values that overflow
    to infinity such as `1e999`); callers decide whether that is a malformed record
    (preprocessing: dead letter) or a missing value (serving).
    """
    if raw is None:
        return MISSING_TOKEN
    text = raw.strip()
    if text == "":
        return MISSING_TOKEN
    if _NUMBER.fullmatch(text) is None:
        raise ValueError(f"not an ASCII number: {text!r}")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    if value > 2:
        return "L" + str(int(math.floor(math.log(value) ** 2)))
    return str(int(math.floor(value)))


def field_token(kind: str, raw: str | None) -> str:
    return numeric_token(raw) if kind == "numeric" else categorical_token(raw)


# ----------------------------------------------------------------------------- written schema

@dataclasses.dataclass(frozen=True)
class FieldSchema:
    """A field as the Beam job wrote it."""

    name: str
    kind: FieldKind
    vocab_size: int  # including the OOV id 0
    min_count: int = 1
    max_vocab_size: int | None = None  # the cap the job applied; None: none

    @property
    def vocab_file(self) -> str:
        return f"{VOCAB_DIR}/{self.name}.txt"


@dataclasses.dataclass(frozen=True)
class DataSchema:
    """The contents of DIR/schema.json."""

    dataset: str
    fields: tuple[FieldSchema, ...]
    splits: dict[str, int]
    label_rate: float
    config: dict[str, Any]
    config_hash: str
    label: str = LABEL_KEY
    version: int = 1

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def vocab_sizes(self) -> dict[str, int]:
        return {f.name: f.vocab_size for f in self.fields}

    @property
    def schema_hash(self) -> str:
        """Identifies the feature space: fields, kinds, vocabulary sizes and the config that made
        them. A dims.json or a checkpoint from another schema must be refused."""
        fields = [to_dict(f) for f in self.fields]
        for f in fields:  # no cap: hashed as before max_vocab_size existed
            if f["max_vocab_size"] is None:
                del f["max_vocab_size"]
        blob = json.dumps({"dataset": self.dataset, "fields": fields,
                           "config_hash": self.config_hash}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_json(self) -> str:
        data = to_dict(self)
        data["schema_hash"] = self.schema_hash
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def save(self, directory: str | Path) -> Path | fileio.RemotePath:
        path = fileio.path(directory) / SCHEMA_FILE
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "DataSchema":
        """Reads DIR/schema.json; a missing or malformed file is an error naming it."""
        path = fileio.path(directory) / SCHEMA_FILE
        if not path.is_file():
            raise ConfigError(
                f"{path} does not exist: {directory} is not the output of `python -m "
                f"preprocessing.run` (or the job has not finished)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: invalid JSON: {exc}") from None
        stored_hash = data.pop("schema_hash", None)
        schema = from_dict(cls, data, "schema")
        if stored_hash is not None and stored_hash != schema.schema_hash:
            raise ConfigError(f"{path}: schema_hash {stored_hash} does not match its contents "
                              f"({schema.schema_hash}); the file was edited by hand")
        return schema

    def read_vocab(self, directory: str | Path, field: str) -> list[str]:
        """Tokens of `field` in id order (id = index + 1)."""
        path = fileio.path(directory) / VOCAB_DIR / f"{field}.txt"
        tokens = []
        with path.open("r", encoding="utf-8") as fh:
            for line in fh:
                tokens.append(line.rstrip("\n").split("\t", 1)[0])
        return tokens
