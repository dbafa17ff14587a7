"""Serving helpers: the token rules as TF ops, the exported tf.Module, and request building.

Three parts:

- `tf_categorical_token` / `tf_numeric_token`: `configs.features.categorical_token` and
  `numeric_token` re-implemented with TensorFlow string/math ops only (no tf.py_function), so the
  exported graph runs in TF Serving. They agree with the Python rules on every input the Python
  rules accept; where the Python rule raises (text that is not a finite number in a numeric field),
  the graph returns `MISSING_TOKEN` instead of failing the request.
- `ServingModule`: the tf.Module `pipeline.export` saves: vocabularies as `tf.saved_model.Asset`s
  loaded into StaticHashTables, the Keras model, and the signatures `serving_default`,
  `serving_tf_example` and `transform`.
- Client side (no TensorFlow runtime needed, only the protos): `check_request`,
  `build_predict_request`, `rest_payload`, `parse_predict_response`.

Python/graph agreement, the details:
- Stripping removes exactly the characters Python's `str.strip()` removes (`WHITESPACE`).
- Numbers are `configs.features.NUMBER_RE`, the same pattern on both sides: Python's `float()`
  grammar restricted to ASCII (optional sign, digits with single underscores between digits,
  optional fraction, optional exponent). Anything else (`inf`/`nan` spellings, hex, non-ASCII
  digits such as Arabic-Indic or full-width ones, inner whitespace) is not a number: a dead letter
  in preprocessing, missing here; so are overflowing values (`1e400` is inf on both sides).
- `floor(v)` of a value below -2**63 cannot be cast to int64; such tokens (exact decimal strings)
  are looked up by the float's bit pattern in a small table built at export from the numeric
  vocabularies, so they still get their id when they are in the vocabulary (and 0 otherwise).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

from configs.features import MISSING_TOKEN, NUMBER_RE, OOV_ID

PROBABILITY = "probability"
LOGIT = "logit"
IDS = "ids"
TOKENS = "tokens"
EXAMPLES = "examples"
SIGNATURES = ("serving_default", "serving_tf_example", "transform")

# The characters Python's str.strip() removes (str.isspace()), as an RE2 character class.
WHITESPACE = (r"[\t\n\x0b\x0c\r\x1c-\x1f \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}"
              r"\x{202f}\x{205f}\x{3000}]")
# NUMBER_RE (configs.features): the one ASCII number grammar, the same pattern here (RE2) and in
# Python's numeric_token (re); both then need the value to be finite.
# Sentinel token of a value whose token cannot be in any vocabulary (looked up -> OOV id 0).
UNSEEN_TOKEN = "\x00unseen"
INT64_MIN_FLOAT = -(2.0 ** 63)
# Log buckets below this are always compared exactly (see log_bucket_thresholds).
MIN_EXACT_BUCKETS = 512


class RequestError(ValueError):
    """A request that does not match the model's inputs; the message names the field."""


# ----------------------------------------------------------------------------- token rules (TF)

def tf_strip(text):
    import tensorflow as tf

    return tf.strings.regex_replace(text, f"^{WHITESPACE}+|{WHITESPACE}+$", "")


def tf_categorical_token(raw):
    """Graph version of configs.features.categorical_token on a string tensor."""
    import tensorflow as tf

    value = tf.strings.regex_replace(tf_strip(raw), r"[\t\n\r]", " ")
    return tf.where(tf.equal(value, ""), tf.constant(MISSING_TOKEN), value)


def huge_negative_tokens(tokens: Iterable[str]) -> dict[int, str]:
    """Numeric vocabulary tokens that are integers below -2**63, keyed by the int64 bit pattern
    of their float value (what `tf_numeric_token` computes for them)."""
    import struct

    out = {}
    for token in tokens:
        try:
            value = int(token)
        except ValueError:
            continue
        if value < INT64_MIN_FLOAT and str(value) == token and float(value) == value:
            out[struct.unpack("<q", struct.pack("<d", float(value)))[0]] = token
    return out


def _log_bucket(value: float) -> int:
    return int(math.floor(math.log(value) ** 2))  # exactly as configs.features.numeric_token


def log_bucket_thresholds(max_bucket: int) -> list[float]:
    """t[k-1] = the smallest float v > 2 whose Python log bucket floor(ln(v)^2) is >= k, for
    k = 1..max_bucket. TF's log may differ from the C library's by an ulp, which moves values
    next to a bucket boundary into the neighbouring bucket; comparing against these thresholds
    instead makes the graph agree with Python exactly."""
    out = []
    for k in range(1, max_bucket + 1):
        v = max(math.exp(math.sqrt(k)), math.nextafter(2.0, math.inf))
        while _log_bucket(v) >= k and v > 2.0:
            v = math.nextafter(v, 0.0)
        while _log_bucket(v) < k:
            v = math.nextafter(v, math.inf)
        out.append(v)
    return out


def max_log_bucket(tokens: Iterable[str]) -> int:
    """The largest k of the "L<k>" tokens (0 if none)."""
    return max((int(t[1:]) for t in tokens if t[:1] == "L" and t[1:].isdigit()), default=0)


def tf_numeric_token(raw, huge_table=None, thresholds=None):
    """Graph version of configs.features.numeric_token (log bucketing) on a string tensor.

    Never fails: text that is not a finite number gives MISSING_TOKEN. `huge_table` maps the
    int64 bit pattern of floor(v) for v < -2**63 to its token (see `huge_negative_tokens`).
    `thresholds` (`log_bucket_thresholds(K)`) makes the buckets below K exact; at or above K the
    bucket is computed with TF's log and clamped to >= K (give K > every vocabulary bucket so the
    id is exact: those tokens are all out of vocabulary). Without thresholds a value within an
    ulp of a bucket boundary may land in the neighbouring bucket."""
    import tensorflow as tf

    text = tf_strip(raw)
    ok = tf.strings.regex_full_match(text, NUMBER_RE)
    clean = tf.strings.regex_replace(text, "_", "")
    value = tf.strings.to_number(tf.where(ok, clean, tf.constant("0")), tf.float64)
    ok = ok & tf.math.is_finite(value)
    value = tf.where(ok, value, tf.zeros_like(value))
    big = value > 2.0
    log_sq = tf.square(tf.math.log(tf.where(big, value, tf.fill(tf.shape(value), tf.constant(3.0, tf.float64)))))
    bucket = tf.cast(tf.floor(log_sq), tf.int64)
    if thresholds is not None:
        limit = tf.cast(tf.shape(thresholds)[0], tf.int64)
        exact = tf.cast(tf.reshape(tf.searchsorted(
            tf.reshape(thresholds, [1, -1]), tf.reshape(value, [1, -1]), side="right",
            out_type=tf.int64), [-1]), tf.int64)
        bucket = tf.where(exact < limit, exact, tf.maximum(bucket, limit))
    log_token = tf.strings.join(["L", tf.strings.as_string(bucket)])
    fits = value >= INT64_MIN_FLOAT
    small = tf.floor(tf.where(fits, value, tf.zeros_like(value)))
    small_token = tf.strings.as_string(tf.cast(small, tf.int64))
    if huge_table is not None:
        huge_token = huge_table.lookup(tf.bitcast(tf.floor(value), tf.int64))
    else:
        huge_token = tf.fill(tf.shape(text), UNSEEN_TOKEN)
    token = tf.where(big, log_token, tf.where(fits, small_token, huge_token))
    return tf.where(ok, token, tf.fill(tf.shape(text), MISSING_TOKEN))


# ----------------------------------------------------------------------------- the module

def _module_class():
    import tensorflow as tf

    class ServingModule(tf.Module):
        """Raw string fields -> vocabulary ids -> the Keras model's logit and probability.

        `fields`: [(name, kind, vocab_file or None, huge-negative tokens dict)] in model order;
        `extra_assets`: more files to ship in assets/ (schema.json, model_spec.json)."""

        def __init__(self, model, fields, extra_assets: Sequence[str] = (),
                     max_bucket: int = MIN_EXACT_BUCKETS):
            super().__init__(name="autodim_serving")
            self._thresholds = tf.constant(log_bucket_thresholds(max_bucket), tf.float64)
            # The underlying tf.Variables are tracked explicitly; the Keras model object is kept
            # out of the SavedModel's object graph. Tracking the keras.Variable wrappers instead
            # breaks TF1-style loading (TF Serving, saved_model_cli run): their export makes a
            # second tf.Variable, which the checkpoint restores, while the signatures read the
            # original one ("Resource .../embedding/embeddings does not exist").
            self.model_variables = [getattr(v, "value", v) for v in model.variables]
            self._call_model = lambda ids: model(ids, training=False)
            self.field_names = [f[0] for f in fields]
            self._kinds = [f[1] for f in fields]
            self.vocab_assets, self.tables, self.huge_tables = [], [], []
            for name, kind, vocab_file, huge in fields:
                asset = tf.saved_model.Asset(vocab_file) if vocab_file else None
                table = None
                if asset is not None:
                    table = tf.lookup.StaticHashTable(
                        tf.lookup.TextFileInitializer(
                            asset, tf.string, 0, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                            delimiter="\t"),
                        default_value=-1, name=f"vocab_{name}")
                huge_table = None
                if huge:
                    huge_table = tf.lookup.StaticHashTable(
                        tf.lookup.KeyValueTensorInitializer(
                            tf.constant(list(huge), tf.int64), tf.constant(list(huge.values()))),
                        default_value=UNSEEN_TOKEN, name=f"huge_{name}")
                self.vocab_assets.append(asset)
                self.tables.append(table)
                self.huge_tables.append(huge_table)
            self.extra_assets = [tf.saved_model.Asset(p) for p in extra_assets]
            spec = {n: tf.TensorSpec([None], tf.string, name=n) for n in self.field_names}
            self.serving_default = tf.function(self._predict, input_signature=[spec])
            self.transform = tf.function(self._transform, input_signature=[spec])
            self.serving_tf_example = tf.function(
                self._predict_examples,
                input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES)])

        def _check(self, fields):
            first = self.field_names[0]
            n = tf.shape(fields[first])[0]
            checks = [tf.debugging.assert_equal(
                tf.shape(fields[name])[0], n,
                message=f"field {name} has a different number of values than field {first}")
                for name in self.field_names[1:]]
            return checks

        def _tokens_ids(self, fields):
            with tf.control_dependencies(self._check(fields)):
                tokens, ids = [], []
                for i, name in enumerate(self.field_names):
                    raw = tf.identity(fields[name])
                    if self._kinds[i] == "numeric":
                        token = tf_numeric_token(raw, self.huge_tables[i], self._thresholds)
                    else:
                        token = tf_categorical_token(raw)
                    table = self.tables[i]
                    if table is None:  # empty vocabulary: everything is OOV
                        field_ids = tf.fill(tf.shape(token), tf.constant(OOV_ID, tf.int64))
                    else:
                        field_ids = table.lookup(token) + 1  # line i -> id i + 1; -1 -> 0
                    tokens.append(token)
                    ids.append(field_ids)
            return tf.stack(tokens, axis=1), tf.stack(ids, axis=1)

        def _transform(self, fields):
            tokens, ids = self._tokens_ids(fields)
            return {IDS: ids, TOKENS: tokens}

        def _score(self, ids):
            logit = tf.reshape(self._call_model(tf.cast(ids, tf.int32)), [-1])
            logit = tf.cast(logit, tf.float32)
            return {PROBABILITY: tf.sigmoid(logit), LOGIT: logit}

        def _predict(self, fields):
            return self._score(self._tokens_ids(fields)[1])

        def _predict_examples(self, examples):
            spec = {n: tf.io.RaggedFeature(tf.string) for n in self.field_names}
            parsed = tf.io.parse_example(examples, spec)
            fields, checks = {}, []
            for name in self.field_names:
                values = parsed[name]
                checks.append(tf.debugging.assert_less_equal(
                    tf.reduce_max(tf.concat([tf.cast(values.row_lengths(), tf.int64), [0]], 0)),
                    tf.constant(1, tf.int64),
                    message=f"feature {name}: a tf.Example has more than one value"))
                fields[name] = values.to_tensor(default_value="", shape=[None, 1])[:, 0]
            with tf.control_dependencies(checks):
                fields = {k: tf.identity(v) for k, v in fields.items()}
            return self.serving_default(fields)  # one function body in the graph, not two

    return ServingModule


def make_serving_module(model, fields, extra_assets: Sequence[str] = (), max_bucket: int = 0):
    """`max_bucket`: the largest "L<k>" bucket in the numeric vocabularies; thresholds are built
    up to max(max_bucket + 1, MIN_EXACT_BUCKETS)."""
    return _module_class()(model, fields, extra_assets, max(max_bucket + 1, MIN_EXACT_BUCKETS))


# ----------------------------------------------------------------------------- client side

def check_request(fields: Mapping[str, Any], field_names: Sequence[str]) -> int:
    """Checks a columnar request {field: [raw strings]} against the model's fields; returns the
    batch size. Raises RequestError naming the offending field."""
    if not isinstance(fields, Mapping):
        raise RequestError(f"request must be a mapping of field name -> list of strings, got "
                           f"{type(fields).__name__}")
    expected = list(field_names)
    unknown = sorted(set(fields) - set(expected))
    if unknown:
        raise RequestError(f"unknown field(s) {unknown}; the model's fields are {expected}")
    missing = [n for n in expected if n not in fields]
    if missing:
        raise RequestError(f"missing field(s) {missing} (send an empty string for a missing value)")
    size = None
    for name in expected:
        values = fields[name]
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise RequestError(f"field {name}: expected a list of strings (one per row), got "
                               f"{type(values).__name__}")
        shape = getattr(values, "shape", None)
        if shape is not None and len(shape) != 1:
            raise RequestError(f"field {name}: expected a 1-D list, got shape {tuple(shape)}")
        for i, v in enumerate(values):
            if not isinstance(v, (str, bytes)):
                raise RequestError(f"field {name}: row {i} is a {type(v).__name__} ({v!r}); "
                                   f"every value must be a string (numbers as their raw text)")
        if size is None:
            size = len(values)
        elif len(values) != size:
            raise RequestError(f"field {name} has {len(values)} values but field {expected[0]} "
                               f"has {size}")
    return int(size or 0)


def rows_to_columns(rows: Sequence[Mapping[str, Any]], field_names: Sequence[str]
                    ) -> dict[str, list[str]]:
    """Row dicts {field: raw} -> columns; an absent key or None is a missing value ("")."""
    for i, row in enumerate(rows):
        unknown = sorted(set(row) - set(field_names))
        if unknown:
            raise RequestError(f"row {i}: unknown field(s) {unknown}")
    return {n: ["" if row.get(n) is None else row[n] for row in rows] for n in field_names}


def _tensor_proto(values: Sequence[str | bytes]):
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    proto = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))]))
    proto.string_val.extend(v if isinstance(v, bytes) else v.encode("utf-8") for v in values)
    return proto


def build_predict_request(model_name: str, rows: Sequence[Mapping[str, Any]],
                          field_names: Sequence[str], signature_name: str = "serving_default",
                          version: int | None = None):
    """A tensorflow_serving PredictRequest for raw rows (dicts field -> raw string)."""
    from tensorflow_serving.apis import predict_pb2

    columns = rows_to_columns(rows, field_names)
    check_request(columns, field_names)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    for name in field_names:
        request.inputs[name].CopyFrom(_tensor_proto(columns[name]))
    return request


def build_example_request(model_name: str, rows: Sequence[Mapping[str, Any]],
                          field_names: Sequence[str]):
    """A PredictRequest for the `serving_tf_example` signature (absent/None values are left out
    of the tf.Example, which the model reads as missing)."""
    from tensorflow.core.example import example_pb2, feature_pb2
    from tensorflow_serving.apis import predict_pb2

    rows_to_columns(rows, field_names)  # field name check
    serialized = []
    for row in rows:
        feats = {n: feature_pb2.Feature(bytes_list=feature_pb2.BytesList(
                     value=[v if isinstance(v, bytes) else str(v).encode("utf-8")]))
                 for n, v in row.items() if v is not None}
        serialized.append(example_pb2.Example(
            features=feature_pb2.Features(feature=feats)).SerializeToString())
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = "serving_tf_example"
    request.inputs[EXAMPLES].CopyFrom(_tensor_proto(serialized))
    return request


def rest_payload(rows: Sequence[Mapping[str, Any]], field_names: Sequence[str],
                 signature_name: str = "serving_default") -> dict:
    """The JSON body of a TF Serving REST `:predict` call (columnar "inputs" format)."""
    columns = rows_to_columns(rows, field_names)
    check_request(columns, field_names)
    return {"signature_name": signature_name, "inputs": columns}


def parse_predict_response(response) -> dict[str, list[float]]:
    """A PredictResponse -> {"probability": [...], "logit": [...]} (float32 outputs, either in
    `float_val` as TF Serving writes them or packed in `tensor_content`)."""
    import numpy as np

    out = {}
    for key in (PROBABILITY, LOGIT):
        if key not in response.outputs:
            raise RequestError(f"response has no output {key!r} (outputs: {sorted(response.outputs)})")
        tensor = response.outputs[key]
        if tensor.tensor_content:
            out[key] = np.frombuffer(tensor.tensor_content, dtype="<f4").astype(float).tolist()
        else:
            out[key] = [float(v) for v in tensor.float_val]
    return out


def synthetic_numeric_raw(token: str) -> str:
    """A raw number whose `numeric_token` is `token` (for warm-up requests built from vocabs)."""
    if token == MISSING_TOKEN:
        return ""
    if token.startswith("L"):
        k = int(token[1:])
        return repr(math.exp(math.sqrt(k + 0.5)))
    return token
