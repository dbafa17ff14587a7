"""The built-in synthetic dataset: Criteo-format TSV with a planted, documented label model.

`python -m preprocessing.synthetic --output FILE --rows N --seed S [--truth TRUTH.json]`

Format (what `preprocessing`'s criteo reader parses): one row per line, exactly 40 tab-separated
columns: the label (0/1), I1..I13 (integers, possibly negative in I2) and C1..C26 (8-digit
lower-case hex tokens); an empty column is a missing value.

The plan (fixed for a `GENERATOR_VERSION`; the seed draws the values, latents and tokens):

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
    """How one field is generated. Categorical: `cardinality` Zipf(`zipf`) values. Numeric:
    `dist` ("lognormal": floor(exp(N(mu, sigma))), "geometric": Geometric(p=mu) - 1) clipped at
    `vmax`, with probability `neg_rate` replaced by -1..-3."""

    name: str
    kind: str
    missing: float
    latent_dim: int = 0
    cardinality: int = 0
    zipf: float = 1.0
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


class SyntheticGenerator:
    """Draws the seed's parameters (tokens, biases, latents), calibrates the logit, then makes
    blocks of rows on demand."""

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
            if p.dist == "lognormal":
                raw = np.floor(np.exp(rng.normal(p.mu, p.sigma, n)))
            else:
                raw = rng.geometric(p.mu, n).astype(np.float64) - 1
            raw = np.minimum(raw, p.vmax).astype(np.int64)
            if p.neg_rate > 0:
                neg = rng.random(n) < p.neg_rate
                raw = np.where(neg, -rng.integers(1, 4, n), raw)
            idx = numeric_bucket(raw, p.vmin)
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
        z = self.alpha * inter + self.beta * first
        lo, hi = -20.0, 20.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if np.mean(1.0 / (1.0 + np.exp(-(mid + z)))) < TARGET_LABEL_RATE:
                lo = mid
            else:
                hi = mid
        self.intercept = 0.5 * (lo + hi)

    # --------------------------------------------------------------------------- rendering
    def to_tsv(self, block: Block) -> str:
        """The block's rows as Criteo TSV text (each line ends with a newline)."""
        cols = [np.where(block.labels > 0, "1", "0").astype(object).tolist()]
        for p in PLAN:
            if p.kind == "categorical":
                cols.append(self._tokens[p.name][block.idx[p.name]].tolist())
            else:
                values, inverse = np.unique(block.raw[p.name], return_inverse=True)
                table = np.array([str(v) for v in values.tolist()], dtype=object)
                col = table[inverse.reshape(-1)]
                col[block.missing[p.name]] = ""
                cols.append(col.tolist())
        if not cols[0]:
            return ""
        return "\n".join(map("\t".join, zip(*cols))) + "\n"


def iter_blocks(
    rows: int, seed: int, generator: SyntheticGenerator | None = None
) -> Iterator[Block]:
    """The blocks making up `rows` rows for `seed` (the last one truncated)."""
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    gen = generator or SyntheticGenerator(seed)
    for i in range(-(-rows // BLOCK_ROWS)):
        yield gen.block(i, min(BLOCK_ROWS, rows - i * BLOCK_ROWS))


def iter_chunks(rows: int, seed: int) -> Iterator[str]:
    """The dataset as TSV text chunks of up to `BLOCK_ROWS` lines (for streaming consumers)."""
    gen = SyntheticGenerator(seed)
    for block in iter_blocks(rows, seed, gen):
        yield gen.to_tsv(block)


class _Stats:
    """Streaming ground-truth statistics over the generated rows."""

    def __init__(self, gen: SyntheticGenerator):
        self.n = 0
        self.positives = 0
        self.seen = {p.name: np.zeros(p.num_tokens + 1, bool) for p in PLAN}
        self.missing = {p.name: 0 for p in PLAN}
        self.moments = {k: [0.0, 0.0] for k in list(INFORMATIVE) + list(PAIRS) + ["logit"]}

    def add(self, b: Block) -> None:
        self.n += len(b)
        self.positives += int(b.labels.sum())
        for p in PLAN:
            self.seen[p.name][b.idx[p.name]] = True
            self.missing[p.name] += int(b.missing[p.name].sum())
        series = dict(b.contrib)
        series.update(b.pair_terms)
        series["logit"] = b.logits
        for k, v in series.items():
            self.moments[k][0] += float(v.sum())
            self.moments[k][1] += float(np.square(v).sum())

    def var(self, key) -> float:
        if self.n == 0:
            return 0.0
        s, s2 = self.moments[key]
        return max(s2 / self.n - (s / self.n) ** 2, 0.0)


def _truth(gen: SyntheticGenerator, stats: _Stats) -> dict:
    fields = []
    for p in PLAN:
        fields.append({
            "name": p.name, "kind": p.kind, "cardinality": p.num_tokens,
            "observed_cardinality": int(stats.seen[p.name][:p.num_tokens].sum()),
            "missing_rate": p.missing,
            "observed_missing_rate": stats.missing[p.name] / stats.n if stats.n else 0.0,
            "zipf_exponent": p.zipf if p.kind == "categorical" else None,
            "numeric_max": p.vmax if p.kind == "numeric" else None,
            "informative": p.informative, "latent_dim": p.latent_dim,
            "importance": stats.var(p.name) if p.informative else 0.0,
        })
    return {
        "generator": "preprocessing.synthetic", "version": GENERATOR_VERSION, "seed": gen.seed,
        "rows": stats.n, "label_rate": stats.positives / stats.n if stats.n else 0.0,
        "target_label_rate": TARGET_LABEL_RATE, "intercept": gen.intercept,
        "interaction_scale": gen.alpha, "first_order_scale": gen.beta, "common_dim": COMMON_DIM,
        "logit_variance": stats.var("logit"),
        "informative_fields": list(INFORMATIVE),
        "interactions": [{"fields": [f, g], "variance": stats.var((f, g))} for f, g in PAIRS],
        "fields": fields,
    }


def generate(path: str | Path, rows: int, seed: int, truth_path: str | Path | None = None) -> dict:
    """Writes `rows` rows to `path` and the ground truth to `truth_path` (default
    path + ".truth.json"); returns the ground truth."""
    path = Path(path)
    truth_path = Path(truth_path) if truth_path else Path(str(path) + ".truth.json")
    for p in (path, truth_path):  # never overwrites: both files appear atomically, truth last
        if p.exists():
            raise FileExistsError(f"{p} exists; choose another --output (or remove it)")
    gen = SyntheticGenerator(seed)
    stats = _Stats(gen)
    with atomic_output(path, "w", encoding="ascii", newline="\n") as out:
        for block in iter_blocks(rows, seed, gen):
            stats.add(block)
            out.write(gen.to_tsv(block))
    truth = _truth(gen, stats)
    truth["data_file"] = path.name
    with atomic_output(truth_path, "w", encoding="utf-8") as out:
        out.write(json.dumps(truth, indent=2) + "\n")
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
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error(f"--rows must be >= 1, got {args.rows}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    out_dir = Path(args.output).resolve().parent
    if not out_dir.is_dir():
        parser.error(f"--output: directory {out_dir} does not exist")

    def body():
        truth = generate(args.output, args.rows, args.seed, args.truth)
        print(f"wrote {truth['rows']} rows to {args.output} (label rate "
              f"{truth['label_rate']:.4f}; informative: {', '.join(truth['informative_fields'])})")

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
