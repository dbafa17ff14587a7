"""The built-in synthetic dataset: Criteo-format TSV with a planted, documented label model.

`python -m preprocessing.synthetic --output FILE --rows N --seed S [--truth TRUTH.json]
[--profile default|criteo] [--shards K]`

Two profiles share the format, the label model and the ground truth: `default` (the demo's and
the tests': 2 .. 100,000 values per field) and `criteo` (Criteo Kaggle's cardinalities, up to 10M
values per field, with Zipf tails; below).

Format (what `preprocessing`'s criteo reader parses): one row per line, exactly 40 tab-separated
columns: the label (0/1), I1..I13 (integers, possibly negative in I2) and C1..C26 (8-digit
lower-case hex tokens); an empty column is a missing value.

The default profile's plan (fixed for a `GENERATOR_VERSION`; the seed draws the values, latents
and tokens):

- Cardinalities. The 26 categorical fields take the 26 rungs of a geometric ladder from 2 to
  100,000 (`ladder(i) = round(2 * 50000 ** (i / 25))`) in a fixed Criteo-like order. Within a
  field, value rank r (0-based) has probability proportional to (r + 1) ** -s (Zipf, s per field
  in 0.5..1.3; 1.3 for the high-cardinality informative fields, so that most of their mass is on
  values seen often enough to learn). The numeric fields are heavy-tailed integer counts (floor of
  lognormals, or geometric counts; I2 has ~8% negative values -1..-3, as in Criteo) clipped at a
  per-field maximum; after `configs.features.numeric_token`'s log bucketing they have 4..212
  distinct tokens.
- Missing values at Criteo-like per-field rates (0 to 82%). A missing value of an informative
  field is a value of its own (it has its own bias and latent vector).
- Labels.
  `P(y=1) = sigmoid(b0 + sum_f b_f[x_f] + alpha * sum_{(f,g) in PAIRS} <z_f[x_f], z_g[x_g]>)`
  over the 11 informative fields only (`INFORMATIVE`): C1, C3, C5, C6, C14, C15, C16, C23 and the
  numeric I1, I5, I7 (numeric fields act through their log-bucket token). Each value x of an
  informative field f has a first-order bias b_f[x] ~ N(0, beta^2) and a latent vector
  u_f[x] ~ N(0, (4 / k_f) I) of dimension k_f = `latent_dim` (16 for the "rich" fields C3 and C15,
  8 for C1, C5, C16, C23, I5, 4 for C6, C14, I1, I7), placed in a common 16-dimensional space by a
  random orthonormal map: z_f[x] = P_f u_f[x]. The interaction of a pair is the inner product of
  the two fields' vectors (an FM/AutoDim-style interaction, exactly representable by embeddings of
  dimension k_f projected to a common dimension, and not by smaller ones). The 28 noise fields,
  of every cardinality (2 .. 64,837), contribute nothing. The latent vectors are centred (their
  frequency-weighted mean is 0), so the interactions have no first-order marginal effect: a model
  with only per-value biases cannot capture them (at 100k training rows a first-order model reaches
  AUC ~0.60, an FM ~0.67, the true logit ~0.90). alpha and beta are calibrated so the
  interaction part of the logit has std `INTERACTION_STD` and the first-order part
  `FIRST_ORDER_STD`; b0 so the label rate is `TARGET_LABEL_RATE` (all on a calibration sample
  drawn from its own random stream, so the data do not depend on `rows`).
- Ground truth (`FILE.truth.json`): per field its kind, cardinality (distinct non-missing tokens
  possible), observed distinct tokens, planned and observed missing rate, Zipf exponent,
  `informative`, `latent_dim` (0 for noise) and `importance` = the variance over the generated rows
  of the field's contribution to the logit (its bias plus half of each of its pair interactions;
  exactly 0 for noise fields); the pairs with their variances; label rate, intercept, seed, version.

Rows are generated in blocks of `BLOCK_ROWS`, block i from its own random stream
(`SeedSequence([seed, i])`), so the output for a seed is deterministic, bounded in memory and a
prefix of the output with more rows.

The criteo profile (`CRITEO_PLAN`, `CriteoGenerator`) differs only in the categorical values:

- Cardinalities: Criteo Kaggle's published distinct-value counts of C1..C26 (3 .. 10,131,227;
  `CRITEO_CARDINALITIES`). Rank r (0-based) of a field has probability proportional to
  (r + 1 + q) ** -s (Zipf-Mandelbrot), (s, q) per field (`CRITEO_ZIPF`) fitted so that the first
  8,000 rows have the real sample's number of distinct values and top-value share (C3: ~4,550
  distinct values in 8,000 rows, 90% of them seen once, as in the real sample's 4,524). The big
  fields keep growing (C3: ~285k distinct values in 1M rows, ~850k in 4M). The numeric fields,
  missing rates, informative fields, pairs, latent dims and calibration are the default's.
- No per-value tables. Ranks are drawn by inversion (`ZipfSampler`): the first 1,024 ranks from
  their exact CDF, the rest from the analytic CDF of the continuous density (x + q) ** -s,
  rounded. A value's token, bias and latent vector are pure functions of (seed, field, rank): the
  token is `_mix32(rank ^ key)` in hex (a bijection: distinct ranks, distinct tokens), the bias
  and latent normals come from splitmix64 counters (`hashed_normals`: splitmix64(splitmix64(key ^
  rank) + j * gamma) -> uniform -> Box-Muller), computed vectorised for the values a block holds
  (fields under 65,536 values cache them). Latents are centred by their mean over the
  calibration sample. Memory is bounded by the block size (`CRITEO_BLOCK_ROWS`), whatever
  `--rows`: about 80 MB peak RSS, of which one bit per possible value (5 MB) records the values
  seen for the ground truth.
- Blocks of `CRITEO_BLOCK_ROWS` rows from `SeedSequence([seed, i, 1])`; the same prefix property.
  The ground truth adds `profile`, `shards`, `data_files` and per field `zipf_offset` (q).

`--shards K` (either profile) writes the rows to K files `STEM-00000-of-0000K.SUFFIX` ... (for
`--output data.tsv`: `data-00000-of-00004.tsv` ...; read them with `--input 'data-*-of-00004.tsv'`),
shard k holding rows k * N // K onwards, so the shards concatenated are the unsharded file. The
truth (`--truth`, default OUTPUT.truth.json) lists them in `data_files`. Every file appears
atomically and never replaces an existing one; the truth is written last; if the run fails, the
shards it wrote are removed.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from configs.cli import StrictArgumentParser, atomic_output, run_main

GENERATOR_VERSION = 1
BLOCK_ROWS = 65536
CRITEO_BLOCK_ROWS = 16384
COMMON_DIM = 16
TARGET_LABEL_RATE = 0.27
INTERACTION_STD = 2.5
FIRST_ORDER_STD = 0.8
CALIBRATION_ROWS = 100_000
_CALIBRATION_STREAM = 2**31 - 1  # block index of the calibration sample's random stream
_PARAM_STREAM = 2**31 - 2        # stream for latents, biases and token keys


def ladder(i: int) -> int:
    """Cardinality of rung i (0..25) of the categorical ladder, 2 .. 100,000."""
    return int(round(2 * 50000 ** (i / 25)))


@dataclasses.dataclass(frozen=True)
class FieldPlan:
    """How one field is generated. Categorical: `cardinality` values, rank r (0-based) with
    probability proportional to (r + 1 + `zipf_offset`) ** -`zipf`. Numeric:
    `dist` ("lognormal": floor(exp(N(mu, sigma))), "geometric": Geometric(p=mu) - 1) clipped at
    `vmax`, with probability `neg_rate` replaced by -1..-3."""

    name: str
    kind: str
    missing: float
    latent_dim: int = 0
    cardinality: int = 0
    zipf: float = 1.0
    zipf_offset: float = 0.0
    dist: str = ""
    mu: float = 0.0
    sigma: float = 0.0
    vmax: int = 0
    neg_rate: float = 0.0

    @property
    def informative(self) -> bool:
        return self.latent_dim > 0

    @property
    def vmin(self) -> int:
        return -3 if self.neg_rate > 0 else 0

    @property
    def num_tokens(self) -> int:
        """Distinct non-missing tokens the field can take (numeric: log buckets)."""
        if self.kind == "categorical":
            return self.cardinality
        return (3 - self.vmin) + int(np.floor(np.log(self.vmax) ** 2)) if self.vmax > 2 \
            else self.vmax - self.vmin + 1


def _num(name, missing, dist, mu, sigma, vmax, k=0, neg_rate=0.0):
    return FieldPlan(name, "numeric", missing, k, dist=dist, mu=mu, sigma=sigma, vmax=vmax,
                     neg_rate=neg_rate)


def _cat(name, rung, zipf, missing, k=0):
    return FieldPlan(name, "categorical", missing, k, cardinality=ladder(rung), zipf=zipf)


PLAN: tuple[FieldPlan, ...] = (
    _num("I1", 0.45, "lognormal", 0.3, 1.2, 5000, k=4),
    _num("I2", 0.0, "lognormal", 1.2, 1.8, 20000, neg_rate=0.08),
    _num("I3", 0.20, "lognormal", 2.0, 1.5, 65535),
    _num("I4", 0.20, "lognormal", 1.4, 1.0, 1000),
    _num("I5", 0.05, "lognormal", 7.5, 2.2, 2_000_000, k=8),
    _num("I6", 0.25, "lognormal", 3.7, 1.6, 100_000),
    _num("I7", 0.05, "lognormal", 1.2, 1.4, 5000, k=4),
    _num("I8", 0.001, "lognormal", 2.0, 0.9, 1000),
    _num("I9", 0.05, "lognormal", 3.7, 1.3, 10000),
    _num("I10", 0.45, "geometric", 0.65, 0.0, 4),
    _num("I11", 0.05, "geometric", 0.35, 0.0, 100),
    _num("I12", 0.78, "geometric", 0.5, 0.0, 100),
    _num("I13", 0.20, "lognormal", 1.6, 1.0, 1000),
    _cat("C1", 15, 1.3, 0.0, k=8),
    _cat("C2", 13, 1.0, 0.0),
    _cat("C3", 25, 1.3, 0.033, k=16),
    _cat("C4", 23, 1.0, 0.033),
    _cat("C5", 11, 1.1, 0.0, k=8),
    _cat("C6", 3, 0.8, 0.13, k=4),
    _cat("C7", 17, 1.0, 0.0),
    _cat("C8", 7, 1.0, 0.0),
    _cat("C9", 1, 0.7, 0.0),
    _cat("C10", 19, 1.0, 0.0),
    _cat("C11", 16, 1.0, 0.0),
    _cat("C12", 24, 1.0, 0.033),
    _cat("C13", 14, 1.0, 0.0),
    _cat("C14", 5, 0.9, 0.0, k=4),
    _cat("C15", 18, 1.3, 0.0, k=16),
    _cat("C16", 22, 1.3, 0.033, k=8),
    _cat("C17", 4, 0.8, 0.0),
    _cat("C18", 12, 1.0, 0.0),
    _cat("C19", 10, 1.0, 0.45),
    _cat("C20", 2, 0.6, 0.45),
    _cat("C21", 21, 1.0, 0.033),
    _cat("C22", 0, 0.5, 0.82),
    _cat("C23", 8, 0.9, 0.0, k=8),
    _cat("C24", 20, 1.0, 0.033),
    _cat("C25", 6, 1.0, 0.45),
    _cat("C26", 9, 1.0, 0.45),
)
FIELD_NAMES = tuple(p.name for p in PLAN)
INFORMATIVE = tuple(p.name for p in PLAN if p.informative)
PAIRS: tuple[tuple[str, str], ...] = (
    ("C3", "C15"), ("C3", "C23"), ("C3", "I5"), ("C3", "C16"), ("C16", "C1"), ("C16", "C5"),
    ("C15", "C5"), ("C15", "I1"), ("C1", "C14"), ("C23", "C6"), ("I5", "I7"),
)


# --------------------------------------------------------------------------- the criteo profile
# Criteo Kaggle's published distinct-value counts of C1..C26 (over its 45.8M training rows).
CRITEO_CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
# (s, q) of each field's Zipf-Mandelbrot law (r + 1 + q) ** -s, fitted so that the first 8,000
# rows have the real sample's distinct values and top-value frequency (C3: 4,524 distinct, top
# 5%); the tiny fields (C6, C14, C17, C20, C22, C23) cannot match both and are only Zipf-like.
CRITEO_ZIPF = (
    (1.96, 0.34), (1.82, 5.44), (1.035, 0.68), (1.10, 0.62), (2.58, 0.35), (8.0, 8.31),
    (1.16, 22.64), (2.32, 0.39), (0.56, -0.99), (1.04, -0.71), (1.26, 15.25), (1.04, 0.70),
    (1.26, 14.49), (8.0, 14.59), (1.42, 21.08), (1.08, 1.26), (0.5, -0.92), (1.54, 9.64),
    (1.12, -0.84), (0.5, 0.06), (1.06, 0.97), (8.0, 8.38), (8.0, 10.81), (1.22, 1.84),
    (5.58, 10.41), (1.14, 0.96),
)
CRITEO_PLAN: tuple[FieldPlan, ...] = tuple(
    p if p.kind == "numeric" else dataclasses.replace(
        p, cardinality=CRITEO_CARDINALITIES[i], zipf=CRITEO_ZIPF[i][0],
        zipf_offset=CRITEO_ZIPF[i][1])
    for i, p in enumerate(PLAN, start=-13)
)
PROFILES = ("default", "criteo")


def numeric_bucket(values: np.ndarray, vmin: int) -> np.ndarray:
    """Index of `configs.features.numeric_token(str(v))` among a field's tokens: values <= 2 map
    to v - vmin, values > 2 to the log bucket floor(ln(v)^2) after them."""
    v = values.astype(np.int64)
    big = v > 2
    logb = np.floor(np.log(np.where(big, v, 3).astype(np.float64)) ** 2).astype(np.int64)
    return np.where(big, (2 - vmin) + logb, v - vmin)


def bucket_tokens(plan: FieldPlan) -> list[str]:
    """The numeric token of each bucket index (inverse of `numeric_bucket`)."""
    small = [str(v) for v in range(plan.vmin, 3)]
    return small + [f"L{b}" for b in range(1, plan.num_tokens - len(small) + 1)]


def _mix32(x: np.ndarray) -> np.ndarray:
    """A bijection of uint32 (murmur3 finaliser): distinct inputs give distinct tokens."""
    x = x.astype(np.uint64) & 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & 0xFFFFFFFF
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def _sample_numeric(p: FieldPlan, rng: np.random.Generator, n: int):
    """A numeric field's raw integers and their bucket indices."""
    if p.dist == "lognormal":
        raw = np.floor(np.exp(rng.normal(p.mu, p.sigma, n)))
    else:
        raw = rng.geometric(p.mu, n).astype(np.float64) - 1
    raw = np.minimum(raw, p.vmax).astype(np.int64)
    if p.neg_rate > 0:
        neg = rng.random(n) < p.neg_rate
        raw = np.where(neg, -rng.integers(1, 4, n), raw)
    return numeric_bucket(raw, p.vmin), raw


@dataclasses.dataclass
class Block:
    """Generated rows: `idx[f]` the value index of field f (its categorical rank or numeric
    bucket; `num_tokens` = missing), `raw[f]` the raw integers of numeric fields, `missing[f]`,
    `labels` (int8), `contrib[f]` each informative field's logit contribution, `pair_terms`."""

    labels: np.ndarray
    idx: dict[str, np.ndarray]
    raw: dict[str, np.ndarray]
    missing: dict[str, np.ndarray]
    contrib: dict[str, np.ndarray]
    pair_terms: dict[tuple[str, str], np.ndarray]
    logits: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, start: int, stop: int) -> "Block":
        """Rows start .. stop - 1 (views)."""
        cut = slice(start, stop)
        return Block(self.labels[cut], {k: v[cut] for k, v in self.idx.items()},
                     {k: (v[cut] if v is not None else None) for k, v in self.raw.items()},
                     {k: v[cut] for k, v in self.missing.items()},
                     {k: v[cut] for k, v in self.contrib.items()},
                     {k: v[cut] for k, v in self.pair_terms.items()}, self.logits[cut])


class SyntheticGenerator:
    """Draws the seed's parameters (tokens, biases, latents), calibrates the logit, then makes
    blocks of rows on demand (the default profile)."""

    profile = "default"
    plan = PLAN
    block_rows = BLOCK_ROWS

    def __init__(self, seed: int):
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        prng = np.random.default_rng([self.seed, _PARAM_STREAM])
        self._cdf: dict[str, np.ndarray] = {}
        self._tokens: dict[str, np.ndarray] = {}
        self._bias: dict[str, np.ndarray] = {}
        self._latent: dict[str, np.ndarray] = {}
        for p in PLAN:
            n = p.num_tokens
            if p.kind == "categorical":
                w = (np.arange(1, n + 1, dtype=np.float64)) ** -p.zipf
                self._cdf[p.name] = np.cumsum(w) / w.sum()
                key = int(prng.integers(0, 2**32))
                hexes = _mix32(np.arange(n, dtype=np.uint64) ^ np.uint64(key))
                self._tokens[p.name] = np.array([f"{h:08x}" for h in hexes.tolist()] + [""],
                                                dtype=object)
            if p.informative:
                self._bias[p.name] = prng.normal(0.0, 1.0, n + 1)
                basis, _ = np.linalg.qr(prng.normal(size=(COMMON_DIM, COMMON_DIM)))
                u = prng.normal(0.0, np.sqrt(4.0 / p.latent_dim), (n + 1, p.latent_dim))
                self._latent[p.name] = u @ basis[:, :p.latent_dim].T  # z = P u, [n+1, D]
        self.alpha = 1.0
        self.beta = 1.0
        self.intercept = 0.0
        self._calibrate()

    # --------------------------------------------------------------------------- sampling
    def _sample_field(self, p: FieldPlan, rng: np.random.Generator, n: int):
        missing = rng.random(n) < p.missing
        raw = None
        if p.kind == "categorical":
            idx = np.searchsorted(self._cdf[p.name], rng.random(n), side="right")
            idx = np.minimum(idx, p.num_tokens - 1)
        else:
            idx, raw = _sample_numeric(p, rng, n)
        idx = np.where(missing, p.num_tokens, idx)
        return idx, raw, missing

    def block(self, index: int, n: int = BLOCK_ROWS) -> Block:
        """Block `index` (its own random stream), truncated to its first n rows."""
        rng = np.random.default_rng([self.seed, index])
        idx, raw, missing = {}, {}, {}
        for p in PLAN:
            idx[p.name], raw[p.name], missing[p.name] = self._sample_field(p, rng, BLOCK_ROWS)
        contrib = {f: self.beta * self._bias[f][idx[f]] for f in INFORMATIVE}
        pair_terms = {}
        for f, g in PAIRS:
            term = self.alpha * np.einsum("nd,nd->n", self._latent[f][idx[f]],
                                          self._latent[g][idx[g]])
            pair_terms[(f, g)] = term
            contrib[f] = contrib[f] + 0.5 * term
            contrib[g] = contrib[g] + 0.5 * term
        logits = self.intercept + sum(contrib.values())
        labels = (rng.random(BLOCK_ROWS) < 1.0 / (1.0 + np.exp(-logits))).astype(np.int8)
        cut = slice(0, n)
        return Block(labels[cut], {k: v[cut] for k, v in idx.items()},
                     {k: (v[cut] if v is not None else None) for k, v in raw.items()},
                     {k: v[cut] for k, v in missing.items()},
                     {k: v[cut] for k, v in contrib.items()},
                     {k: v[cut] for k, v in pair_terms.items()}, logits[cut])

    def _calibrate(self) -> None:
        """Centres the latent vectors (so interactions have no first-order marginal effect), then
        sets alpha, beta for the planned stds and the intercept for the planned label rate."""
        streams = [_CALIBRATION_STREAM - i for i in range(-(-CALIBRATION_ROWS // BLOCK_ROWS))]
        blocks = [self.block(i) for i in streams]
        idx = {f: np.concatenate([b.idx[f] for b in blocks]) for f in INFORMATIVE}
        for f, z in self._latent.items():
            counts = np.bincount(idx[f], minlength=len(z))
            z -= (counts / counts.sum()) @ z
        inter = sum(np.einsum("nd,nd->n", self._latent[f][idx[f]], self._latent[g][idx[g]])
                    for f, g in PAIRS)
        first = sum(self._bias[f][idx[f]] for f in INFORMATIVE)
        self.alpha = INTERACTION_STD / inter.std()
        self.beta = FIRST_ORDER_STD / first.std()
        self.intercept = _intercept_for(self.alpha * inter + self.beta * first)

    # --------------------------------------------------------------------------- rendering
    def to_tsv(self, block: Block) -> str:
        """The block's rows as Criteo TSV text (each line ends with a newline)."""
        cols = [np.where(block.labels > 0, "1", "0").astype(object).tolist()]
        for p in PLAN:
            if p.kind == "categorical":
                cols.append(self._tokens[p.name][block.idx[p.name]].tolist())
            else:
                cols.append(_numeric_strings(block.raw[p.name], block.missing[p.name]))
        if not cols[0]:
            return ""
        return "\n".join(map("\t".join, zip(*cols))) + "\n"


# --------------------------------------------------------------------------- counter-based hashing
_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's output function of uint64 counters (a bijection; wraps modulo 2**64)."""
    z = np.asarray(x, dtype=np.uint64) + np.uint64(_GAMMA)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _key(*parts: int) -> int:
    """A 64-bit key for a tuple of non-negative integers (seed, field, purpose)."""
    h = 0
    for part in parts:
        h = int(_splitmix64(np.array([(h ^ (part & _MASK64)) & _MASK64], np.uint64))[0])
    return h


def hashed_normals(key: int, values: np.ndarray, count: int) -> np.ndarray:
    """[len(values), count] standard normals, a pure function of (key, value, column): the
    uniforms of splitmix64(splitmix64(key ^ value) + j * gamma) (j = 0 .. 2 * count - 1), two per
    normal by Box-Muller. No table: the same value always gets the same numbers."""
    base = _splitmix64(values.astype(np.uint64) ^ np.uint64(key))
    steps = np.arange(2 * count, dtype=np.uint64) * np.uint64(_GAMMA)
    bits = _splitmix64(base[:, None] + steps[None, :])
    u = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53  # in (0, 1)
    return np.sqrt(-2.0 * np.log(u[:, 0::2])) * np.cos(2.0 * np.pi * u[:, 1::2])


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def hex_tokens(keys: np.ndarray) -> np.ndarray:
    """8-digit lower-case hex strings (dtype U8) of uint32 values."""
    shifts = np.arange(28, -1, -4, dtype=np.uint64)
    nibbles = (keys.astype(np.uint64)[:, None] >> shifts[None, :]) & np.uint64(0xF)
    return np.ascontiguousarray(_HEX[nibbles]).view("S8").ravel().astype("U8")


class ZipfSampler:
    """Ranks 0 .. n-1 of one field with P(r) proportional to (r + 1 + q) ** -s, by inversion
    without a per-value table: the first `HEAD_RANKS` ranks from their exact CDF, the rest from
    the continuous density (x + q) ** -s on [head + 0.5, n + 0.5] (midpoint rule: the tail's
    mass and CDF are analytic) rounded to the nearest rank. The rounding error is below
    s * (s + 1) / (24 * head ** 2) relative per rank (< 1e-6), invisible in any sample."""

    HEAD_RANKS = 1024

    def __init__(self, n: int, s: float, q: float):
        if n < 1 or q <= -1:
            raise ValueError(f"Zipf sampler needs n >= 1 and q > -1, got n={n}, q={q}")
        self.n, self.s, self.q = n, s, q
        head = min(n, self.HEAD_RANKS)
        w = (np.arange(1, head + 1, dtype=np.float64) + q) ** -s
        # tail: density t ** -s for t = x + q in [a, b]; with e = 1 - s and L = ln(b / a) its
        # mass is a ** e * expm1(e * L) / e and its inverse CDF ln t = ln a + log1p(v *
        # expm1(e * L)) / e (both stable as s -> 1, where they become L and ln a + v * L)
        self._a, self._e = head + 0.5 + q, 1.0 - s
        self._log_ratio = float(np.log((n + 0.5 + q) / self._a))
        tail = 0.0
        if n > head:
            tail = self._log_ratio if self._e == 0 else \
                self._a ** self._e * float(np.expm1(self._e * self._log_ratio)) / self._e
        total = w.sum() + tail
        self.head_cdf = np.cumsum(w) / total
        self.head = head
        self.head_mass = float(w.sum() / total)

    def ranks(self, u: np.ndarray) -> np.ndarray:
        """The ranks (int64) of uniforms u in [0, 1)."""
        r = np.searchsorted(self.head_cdf, u, side="right")
        tail = r >= self.head
        if self.n > self.head and tail.any():
            v = np.clip((u[tail] - self.head_mass) / (1.0 - self.head_mass), 0.0, 1.0)
            if self._e == 0:
                log_t = v * self._log_ratio
            else:
                log_t = np.log1p(v * np.expm1(self._e * self._log_ratio)) / self._e
            x = self._a * np.exp(log_t) - self.q  # the continuous rank, in [head + 0.5, n + 0.5]
            r[tail] = np.floor(x + 0.5).astype(np.int64) - 1  # rank = round(x) - 1 (0-based)
        return np.clip(r, 0, self.n - 1)


class CriteoGenerator:
    """The criteo profile: Criteo's cardinalities (up to 10M values per field) without per-value
    tables. Ranks come from `ZipfSampler`; a value's token, bias and latent vector are pure
    functions of (seed, field, rank) computed by `_mix32` / `hashed_normals` for the values a
    block contains. The label model is the default profile's (same fields, pairs, latent dims,
    calibration targets)."""

    profile = "criteo"
    plan = CRITEO_PLAN
    block_rows = CRITEO_BLOCK_ROWS
    TABLE_MAX = 1 << 16  # fields with fewer values cache their hashed tokens and parameters
    LOGIT_ROWS = 4096  # rows whose latent vectors are held at once
    _STREAM = 1  # block i draws from SeedSequence([seed, i, 1]) (default profile: [seed, i])

    def __init__(self, seed: int):
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        prng = np.random.default_rng([self.seed, _PARAM_STREAM, self._STREAM])
        self._sampler: dict[str, ZipfSampler] = {}
        self._token_key: dict[str, int] = {}
        self._param_key: dict[str, int] = {}
        self._basis: dict[str, np.ndarray] = {}
        self._centre: dict[str, np.ndarray] = {}
        self._param_table: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._token_table: dict[str, np.ndarray] = {}
        for i, p in enumerate(self.plan):
            if p.kind == "categorical":
                self._sampler[p.name] = ZipfSampler(p.num_tokens, p.zipf, p.zipf_offset)
                self._token_key[p.name] = _key(self.seed, i, 1) & 0xFFFFFFFF
                if p.num_tokens < self.TABLE_MAX:
                    self._token_table[p.name] = self._hashed_tokens(
                        p.name, np.arange(p.num_tokens + 1))
            if p.informative:
                self._param_key[p.name] = _key(self.seed, i, 2)
                basis, _ = np.linalg.qr(prng.normal(size=(COMMON_DIM, COMMON_DIM)))
                self._basis[p.name] = basis[:, :p.latent_dim]  # P_f, [D, k]
                self._centre[p.name] = np.zeros(COMMON_DIM)
                if p.num_tokens < self.TABLE_MAX:  # the same numbers, hashed once
                    self._param_table[p.name] = self._hashed_params(
                        p.name, np.arange(p.num_tokens + 1))
        self.alpha = 1.0
        self.beta = 1.0
        self.intercept = 0.0
        self._calibrate()

    def params(self, name: str, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bias b_f[x] ~ N(0, 1) and centred latent z_f[x] = P_f u_f[x] - centre_f ([n, D]) of
        the values idx (hashed once per distinct value; small fields from a cached table)."""
        if name in self._param_table:
            bias, z = self._param_table[name]
            return bias[idx], z[idx] - self._centre[name]
        values, inverse = np.unique(idx, return_inverse=True)
        bias, z = self._hashed_params(name, values)
        inverse = inverse.reshape(-1)
        return bias[inverse], z[inverse] - self._centre[name]

    def _hashed_params(self, name: str, values: np.ndarray):
        k = self.plan[FIELD_NAMES.index(name)].latent_dim
        normals = hashed_normals(self._param_key[name], values, k + 1)
        u = np.sqrt(4.0 / k) * normals[:, 1:]
        return normals[:, 0], np.einsum("nk,dk->nd", u, self._basis[name])  # (no BLAS threads)

    def _sample_idx(self, rng: np.random.Generator, n: int):
        """Every field's value indices (int32; `num_tokens` = missing), raw numeric values and
        missing masks for n rows."""
        idx, raw, missing = {}, {}, {}
        for p in self.plan:
            miss = rng.random(n) < p.missing
            if p.kind == "categorical":
                i, r = self._sampler[p.name].ranks(rng.random(n)), None
            else:
                i, r = _sample_numeric(p, rng, n)
            idx[p.name] = np.where(miss, p.num_tokens, i).astype(np.int32)
            raw[p.name], missing[p.name] = r, miss
        return idx, raw, missing

    def _logit_parts(self, idx: dict[str, np.ndarray], n: int):
        """Unscaled first-order terms b_f[x_f] and pair inner products <z_f, z_g> of n rows,
        computed LOGIT_ROWS rows at a time (bounds the [rows, D] latent arrays)."""
        bias = {f: np.empty(n) for f in INFORMATIVE}
        inner = {pair: np.empty(n) for pair in PAIRS}
        for start in range(0, n, self.LOGIT_ROWS):
            cut = slice(start, min(start + self.LOGIT_ROWS, n))
            z = {}
            for f in INFORMATIVE:
                bias[f][cut], z[f] = self.params(f, idx[f][cut])
            for f, g in PAIRS:
                inner[(f, g)][cut] = np.einsum("nd,nd->n", z[f], z[g])
        return bias, inner

    def block(self, index: int, n: int = CRITEO_BLOCK_ROWS) -> Block:
        """Block `index` (its own random stream), truncated to its first n rows."""
        rng = np.random.default_rng([self.seed, index, self._STREAM])
        idx, raw, missing = self._sample_idx(rng, self.block_rows)
        contrib, pair_terms = self._logit_parts(idx, self.block_rows)
        logits = np.full(self.block_rows, self.intercept)
        for f in INFORMATIVE:
            contrib[f] *= self.beta
        for (f, g), term in pair_terms.items():
            term *= self.alpha
            contrib[f] += 0.5 * term
            contrib[g] += 0.5 * term
        for term in contrib.values():
            logits += term
        labels = (rng.random(self.block_rows) < 1.0 / (1.0 + np.exp(-logits))).astype(np.int8)
        block = Block(labels, idx, raw, missing, contrib, pair_terms, logits)
        return block.rows(0, n)

    def _calibrate(self) -> None:
        """As the default profile's: centres each field's latents (their mean over the
        calibration sample, i.e. frequency-weighted over the values it holds), then alpha, beta
        and the intercept."""
        blocks = -(-CALIBRATION_ROWS // CRITEO_BLOCK_ROWS)
        streams = [_CALIBRATION_STREAM - i for i in range(blocks)]
        samples = []
        for stream in streams:
            rng = np.random.default_rng([self.seed, stream, self._STREAM])
            sample = self._sample_idx(rng, CRITEO_BLOCK_ROWS)[0]
            samples.append({f: sample[f] for f in INFORMATIVE})
            del sample
        idx = {f: np.concatenate([b[f] for b in samples]) for f in INFORMATIVE}
        del samples
        n = len(idx[INFORMATIVE[0]])
        for f in INFORMATIVE:
            total = np.zeros(COMMON_DIM)
            for start in range(0, n, self.LOGIT_ROWS):
                total += self.params(f, idx[f][start:start + self.LOGIT_ROWS])[1].sum(axis=0)
            self._centre[f] = total / n
        first, inter = np.zeros(n), np.zeros(n)
        for start in range(0, n, self.LOGIT_ROWS):
            cut = slice(start, start + self.LOGIT_ROWS)
            bias, inner = self._logit_parts({f: v[cut] for f, v in idx.items()}, len(first[cut]))
            first[cut] = sum(bias.values())
            inter[cut] = sum(inner.values())
        self.alpha = INTERACTION_STD / inter.std()
        self.beta = FIRST_ORDER_STD / first.std()
        self.intercept = _intercept_for(self.alpha * inter + self.beta * first)

    def tokens(self, name: str, idx: np.ndarray) -> np.ndarray:
        """The hex tokens (object array of str; "" for missing) of a categorical field's ranks."""
        if name in self._token_table:
            return self._token_table[name][idx]
        return self._hashed_tokens(name, idx)

    def _hashed_tokens(self, name: str, idx: np.ndarray) -> np.ndarray:
        """`_mix32(rank ^ key)` in hex: a bijection of 32-bit ints, so distinct ranks of a field
        never share a token."""
        keys = _mix32(idx.astype(np.uint64) ^ np.uint64(self._token_key[name]))
        tokens = hex_tokens(keys).astype(object)
        tokens[idx == self._sampler[name].n] = ""
        return tokens

    def to_tsv(self, block: Block) -> str:
        """The block's rows as Criteo TSV text (each line ends with a newline)."""
        if not len(block):
            return ""
        cols = [np.where(block.labels > 0, "1", "0").astype(object).tolist()]
        for p in self.plan:
            if p.kind == "categorical":
                cols.append(self.tokens(p.name, block.idx[p.name]).tolist())
            else:
                cols.append(_numeric_strings(block.raw[p.name], block.missing[p.name]))
        return "\n".join(map("\t".join, zip(*cols))) + "\n"


def _numeric_strings(raw: np.ndarray, missing: np.ndarray) -> list[str]:
    values, inverse = np.unique(raw, return_inverse=True)
    table = np.array([str(v) for v in values.tolist()], dtype=object)
    col = table[inverse.reshape(-1)]
    col[missing] = ""
    return col.tolist()


def _intercept_for(z: np.ndarray) -> float:
    """b0 with mean(sigmoid(b0 + z)) = TARGET_LABEL_RATE (bisection)."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 / (1.0 + np.exp(-(mid + z)))) < TARGET_LABEL_RATE:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def make_generator(seed: int, profile: str = "default"):
    """The generator of a profile ("default" or "criteo")."""
    if profile == "default":
        return SyntheticGenerator(seed)
    if profile == "criteo":
        return CriteoGenerator(seed)
    raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")


def iter_blocks(
    rows: int, seed: int, generator: SyntheticGenerator | CriteoGenerator | None = None,
    profile: str = "default",
) -> Iterator[Block]:
    """The blocks making up `rows` rows for `seed` (the last one truncated)."""
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    gen = generator or make_generator(seed, profile)
    size = gen.block_rows
    for i in range(-(-rows // size)):
        yield gen.block(i, min(size, rows - i * size))


def iter_chunks(rows: int, seed: int, profile: str = "default") -> Iterator[str]:
    """The dataset as TSV text chunks of up to `block_rows` lines (`BLOCK_ROWS` in the default
    profile, `CRITEO_BLOCK_ROWS` in the criteo profile; for streaming consumers)."""
    gen = make_generator(seed, profile)
    for block in iter_blocks(rows, seed, gen):
        yield gen.to_tsv(block)


class _Stats:
    """Streaming ground-truth statistics over the generated rows. The values seen are kept as one
    bit per possible value (1.3 MB for a 10M-value field), never per row."""

    def __init__(self, gen: SyntheticGenerator | CriteoGenerator):
        self.plan = gen.plan
        self.n = 0
        self.positives = 0
        self.seen = {p.name: np.zeros(p.num_tokens // 8 + 1, np.uint8) for p in self.plan}
        self.missing = {p.name: 0 for p in self.plan}
        self.moments = {k: [0.0, 0.0] for k in list(INFORMATIVE) + list(PAIRS) + ["logit"]}

    def add(self, b: Block) -> None:
        self.n += len(b)
        self.positives += int(b.labels.sum())
        for p in self.plan:
            values = b.idx[p.name]
            np.bitwise_or.at(self.seen[p.name], values >> 3,
                             np.left_shift(1, values & 7).astype(np.uint8))
            self.missing[p.name] += int(b.missing[p.name].sum())
        series = dict(b.contrib)
        series.update(b.pair_terms)
        series["logit"] = b.logits
        for k, v in series.items():
            self.moments[k][0] += float(v.sum())
            self.moments[k][1] += float(np.square(v).sum())

    def distinct(self, p: FieldPlan) -> int:
        """Distinct non-missing values seen (the missing value is index num_tokens)."""
        bits = self.seen[p.name]
        missing_seen = (int(bits[p.num_tokens >> 3]) >> (p.num_tokens & 7)) & 1
        return int(np.bitwise_count(bits).sum()) - missing_seen

    def var(self, key) -> float:
        if self.n == 0:
            return 0.0
        s, s2 = self.moments[key]
        return max(s2 / self.n - (s / self.n) ** 2, 0.0)


def _truth(gen: SyntheticGenerator | CriteoGenerator, stats: _Stats) -> dict:
    fields = []
    for p in gen.plan:
        field = {
            "name": p.name, "kind": p.kind, "cardinality": p.num_tokens,
            "observed_cardinality": stats.distinct(p),
            "missing_rate": p.missing,
            "observed_missing_rate": stats.missing[p.name] / stats.n if stats.n else 0.0,
            "zipf_exponent": p.zipf if p.kind == "categorical" else None,
            "numeric_max": p.vmax if p.kind == "numeric" else None,
            "informative": p.informative, "latent_dim": p.latent_dim,
            "importance": stats.var(p.name) if p.informative else 0.0,
        }
        if gen.profile != "default":
            field["zipf_offset"] = p.zipf_offset if p.kind == "categorical" else None
        fields.append(field)
    truth = {
        "generator": "preprocessing.synthetic", "version": GENERATOR_VERSION, "seed": gen.seed,
        "rows": stats.n, "label_rate": stats.positives / stats.n if stats.n else 0.0,
        "target_label_rate": TARGET_LABEL_RATE, "intercept": gen.intercept,
        "interaction_scale": gen.alpha, "first_order_scale": gen.beta, "common_dim": COMMON_DIM,
        "logit_variance": stats.var("logit"),
        "informative_fields": list(INFORMATIVE),
        "interactions": [{"fields": [f, g], "variance": stats.var((f, g))} for f, g in PAIRS],
        "fields": fields,
    }
    if gen.profile != "default":
        truth["profile"] = gen.profile
    return truth


def shard_paths(path: str | Path, shards: int) -> list[Path]:
    """The files of `shards` shards of `path`: path itself for 1, else
    STEM-00000-of-0000K.SUFFIX ... (data.tsv -> data-00000-of-00004.tsv, ...)."""
    path = Path(path)
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    if shards == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{k:05d}-of-{shards:05d}{path.suffix}")
            for k in range(shards)]


RENDER_ROWS = 8192  # rows rendered to text at a time (bounds the generator's string memory)


def generate(path: str | Path, rows: int, seed: int, truth_path: str | Path | None = None,
             profile: str = "default", shards: int = 1) -> dict:
    """Writes `rows` rows to `path` (`shards` > 1: to `shard_paths(path, shards)`, shard k
    holding rows k * rows // shards onwards, so that the shards concatenated are the unsharded
    file) and the ground truth to `truth_path` (default path + ".truth.json"); returns the ground
    truth."""
    path = Path(path)
    truth_path = Path(truth_path) if truth_path else Path(str(path) + ".truth.json")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if shards < 1 or (shards > 1 and shards > rows):
        raise ValueError(f"shards must be between 1 and rows ({rows}), got {shards}")
    paths = shard_paths(path, shards)
    for p in paths + [truth_path]:  # never overwrites: each file appears atomically, truth last
        if p.exists():
            raise FileExistsError(f"{p} exists; choose another --output (or remove it)")
    gen = make_generator(seed, profile)
    stats = _Stats(gen)
    bounds = [k * rows // shards for k in range(shards + 1)]
    size = gen.block_rows
    cached: list = [None, None]  # the last block made (a block may straddle two shards)

    def block(i: int) -> Block:
        if cached[0] != i:
            cached[:] = [None, None]  # never two blocks in memory
            cached[:] = [i, gen.block(i, min(size, rows - i * size))]
        return cached[1]

    written: list[Path] = []
    try:
        for k, shard in enumerate(paths):
            with atomic_output(shard, "w", encoding="ascii", newline="\n") as out:
                start, stop = bounds[k], bounds[k + 1]
                for i in range(start // size, -(-stop // size)):
                    b = block(i)
                    lo, hi = max(start - i * size, 0), min(stop - i * size, len(b))
                    piece = b if (lo, hi) == (0, len(b)) else b.rows(lo, hi)
                    stats.add(piece)
                    for r in range(0, len(piece), RENDER_ROWS):
                        out.write(gen.to_tsv(piece.rows(r, r + RENDER_ROWS)))
            written.append(shard)
        truth = _truth(gen, stats)
        if profile != "default" or shards > 1:
            truth["shards"] = shards
            truth["data_files"] = [p.name for p in paths]
        if shards == 1:
            truth["data_file"] = path.name
        with atomic_output(truth_path, "w", encoding="utf-8") as out:
            out.write(json.dumps(truth, indent=2) + "\n")
    except BaseException:
        for shard in written:  # all or nothing: the shards written by this call go too
            shard.unlink(missing_ok=True)
        raise
    return truth


def main(argv: list[str] | None = None) -> int:
    parser = StrictArgumentParser(prog="python -m preprocessing.synthetic",
                                  description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="the TSV file to write (must not exist)")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--truth", default=None, help="ground truth JSON (default OUTPUT.truth.json)"
    )
    parser.add_argument("--profile", choices=PROFILES, default="default",
                        help="default: the demo's (2 .. 100k values per field); criteo: Criteo "
                             "Kaggle's cardinalities (up to 10M) and Zipf tails")
    parser.add_argument("--shards", type=int, default=1,
                        help="write K files OUTPUT-00000-of-0000K ... instead of OUTPUT")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error(f"--rows must be >= 1, got {args.rows}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if not 1 <= args.shards <= args.rows:
        parser.error(f"--shards must be between 1 and --rows ({args.rows}), got {args.shards}")
    out_dir = Path(args.output).resolve().parent
    if not out_dir.is_dir():
        parser.error(f"--output: directory {out_dir} does not exist")

    def body():
        truth = generate(args.output, args.rows, args.seed, args.truth, args.profile,
                         args.shards)
        where = args.output if args.shards == 1 else \
            f"{args.shards} files {shard_paths(args.output, args.shards)[0].name} ..."
        print(f"wrote {truth['rows']} rows to {where} (label rate "
              f"{truth['label_rate']:.4f}; informative: {', '.join(truth['informative_fields'])})")

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
