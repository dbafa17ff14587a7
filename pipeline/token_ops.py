"""The preprocessing token rules (`configs.features`) as TensorFlow graph ops, for the export.

`tf_categorical_token` / `tf_numeric_token` re-implement `configs.features.categorical_token` and
`numeric_token` with TensorFlow string/math ops only (no tf.py_function), so the exported graph
runs in TF Serving. They agree with the Python rules on every input the Python rules accept; where
the Python rule raises (text that is not a finite number in a numeric field), the graph returns
`MISSING_TOKEN` instead of failing the request. The pure-Python helpers here prepare the tables
the graph ops read (`log_bucket_thresholds`, `huge_negative_tokens`) and invert the numeric rule
for warm-up rows (`synthetic_numeric_raw`).

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
import struct
from typing import Iterable

import tensorflow as tf

from configs.features import MISSING_TOKEN, NUMBER_RE

# The characters Python's str.strip() removes (str.isspace()), as an RE2 character class.
WHITESPACE = (r"[\t\n\x0b\x0c\r\x1c-\x1f \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}"
              r"\x{202f}\x{205f}\x{3000}]")
# Sentinel token of a value whose token cannot be in any vocabulary (looked up -> OOV id 0).
UNSEEN_TOKEN = "\x00unseen"
INT64_MIN_FLOAT = -(2.0 ** 63)
# Log buckets below this are always compared exactly (see log_bucket_thresholds).
MIN_EXACT_BUCKETS = 512


def tf_strip(text):
    """`str.strip()` on a string tensor."""
    return tf.strings.regex_replace(text, f"^{WHITESPACE}+|{WHITESPACE}+$", "")


def tf_categorical_token(raw):
    """Graph version of configs.features.categorical_token on a string tensor."""
    value = tf.strings.regex_replace(tf_strip(raw), r"[\t\n\r]", " ")
    return tf.where(tf.equal(value, ""), tf.constant(MISSING_TOKEN), value)


def huge_negative_tokens(tokens: Iterable[str]) -> dict[int, str]:
    """Numeric vocabulary tokens that are integers below -2**63, keyed by the int64 bit pattern
    of their float value (what `tf_numeric_token` computes for them)."""
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
    text = tf_strip(raw)
    ok = tf.strings.regex_full_match(text, NUMBER_RE)
    clean = tf.strings.regex_replace(text, "_", "")
    value = tf.strings.to_number(tf.where(ok, clean, tf.constant("0")), tf.float64)
    ok = ok & tf.math.is_finite(value)
    value = tf.where(ok, value, tf.zeros_like(value))
    big = value > 2.0
    safe = tf.where(big, value, tf.fill(tf.shape(value), tf.constant(3.0, tf.float64)))
    bucket = tf.cast(tf.floor(tf.square(tf.math.log(safe))), tf.int64)
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


def synthetic_numeric_raw(token: str) -> str:
    """A raw number whose `numeric_token` is `token` (for warm-up requests built from vocabs)."""
    if token == MISSING_TOKEN:
        return ""
    if token.startswith("L"):
        k = int(token[1:])
        return repr(math.exp(math.sqrt(k + 0.5)))
    return token
