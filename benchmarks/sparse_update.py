"""Step time of dense keras Adam vs models.lazy_adam.LazyAdam as the embedding vocabulary grows.

    python -m benchmarks.sparse_update [--rows 10000,1000000,4000000] [--steps 20]
        [--active_rows N] [--optimizers dense,lazy]

Model: one shared embedding table (rows x 32) looked up by a batch of 2000 examples x 39 fields,
flattened into one `Dense(1)`, sigmoid cross-entropy; a `tf.function` train step
(tape -> gradients -> `optimizer.apply_gradients`). Each configuration gets its own model and
optimizer (one optimizer for all variables; LazyAdam falls back to Adam math for the Dense).
`--lookup sparse` (default) reads the table with `tf.gather(table.value, ids)` (a ResourceGather,
what the trainer's lookup does); `--lookup keras` uses stock `keras.layers.Embedding`, whose
`ops.take` first reads the whole variable densely: once a sparse scatter has put the variable in
TensorFlow's copy-on-read mode, that dense read copies the whole table every step (O(rows)) no
matter which optimizer updates it. `--ids uniform` (default) draws ids uniformly from the
vocabulary: the most rows touched per step, the worst case for a lazy optimizer (10k rows: all ~10k
touched; 1M and 4M rows: ~75k of the 78k lookups are distinct). `--ids zipf` draws from a Zipf(1.1)
law over the vocabulary with the ranks randomly permuted, closer to real CTR id frequencies.
`--active_rows N` draws the ids from N random rows of each vocabulary only, so every size touches
about the same number of rows per step and the table isolates the cost of the vocabulary size.
Batches are pre-generated (a few per configuration, cycled). After warm-up, the configurations are
timed round-robin, one step each per round, so noise from other processes hits all of them alike;
the table reports the median (and 10th / 90th percentile) over `--steps` rounds. The last line is
`lazy_<max>_over_<min>=X dense_<max>_over_<min>=Y`, the median-step ratios between the largest and
smallest vocabulary (with the defaults: `lazy_4m_over_10k=X dense_4m_over_10k=Y`); `--optimizers
lazy` times LazyAdam only (the other ratio prints `nan`).
"""

from __future__ import annotations

import argparse
import gc
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from configs.cli import StrictArgumentParser
from models.lazy_adam import LazyAdam

BATCH, FIELDS, DIM = 2000, 39, 32
N_BATCHES = 4
ZIPF_EXPONENT = 1.1


def _sample_ids(
    rng: np.random.Generator, rows: int, how: str, active_rows: int | None
) -> np.ndarray:
    """N_BATCHES x BATCH x FIELDS ids in [0, rows): uniform, or Zipf over randomly permuted ranks.

    With `active_rows`, the ids come from that many randomly chosen rows of the vocabulary.
    """
    shape = (N_BATCHES, BATCH, FIELDS)
    pool = min(rows, active_rows or rows)
    if how == "uniform":
        ranks = rng.integers(0, pool, size=shape)
    else:
        cdf = np.cumsum(1.0 / np.arange(1, pool + 1) ** ZIPF_EXPONENT)
        ranks = np.minimum(np.searchsorted(cdf, rng.random(shape) * cdf[-1]), pool - 1)
    return rng.choice(rows, size=pool, replace=False)[ranks]


def _label(rows: int) -> str:
    for unit, suffix in ((1_000_000, "m"), (1_000, "k")):
        if rows >= unit and rows % unit == 0:
            return f"{rows // unit}{suffix}"
    return str(rows)


def _parse_rows(text: str) -> list[int]:
    try:
        rows = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--rows must be comma-separated integers; received {text!r}"
        ) from None
    if len(rows) < 2 or rows[0] < 2:
        raise argparse.ArgumentTypeError(
            f"--rows needs two or more distinct sizes >= 2; received {text!r}"
        )
    return rows


class _SparseLookupEmbedding(keras.layers.Embedding):
    """keras Embedding whose lookup is a sparse read of the variable (no dense copy of the
    table)."""

    def call(self, inputs):
        return tf.gather(self.embeddings.value, inputs)


class _Config:
    """One model + optimizer + tf.function step for a (vocabulary, optimizer) pair."""

    def __init__(
        self, rows: int, kind: str, lookup: str, ids: str, active_rows: int | None, seed: int
    ):
        self.rows, self.kind = rows, kind
        inputs = keras.Input((FIELDS,), dtype="int32")
        layer = _SparseLookupEmbedding if lookup == "sparse" else keras.layers.Embedding
        emb = layer(rows, DIM, name="table")(inputs)
        logits = keras.layers.Dense(1)(keras.layers.Flatten()(emb))
        self.model = keras.Model(inputs, logits)
        self.optimizer = LazyAdam(1e-3) if kind == "lazy" else keras.optimizers.Adam(1e-3)
        rng = np.random.default_rng(seed)
        self.batches = [
            (tf.constant(x, tf.int32), tf.constant(rng.integers(0, 2, size=(BATCH, 1)), tf.float32))
            for x in _sample_ids(rng, rows, ids, active_rows)
        ]
        self.touched_rows = int(np.mean([len(np.unique(x.numpy())) for x, _ in self.batches]))
        self.grad_types: list[str] = []
        self.times: list[float] = []
        model, optimizer = self.model, self.optimizer

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y, logits))
            grads = tape.gradient(loss, model.trainable_variables)
            self.grad_types = [type(g).__name__ for g in grads]
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        self.step = step
        self.calls = 0

    def run(self) -> float:
        x, y = self.batches[self.calls % N_BATCHES]
        self.calls += 1
        start = time.perf_counter()
        self.step(x, y).numpy()  # .numpy() waits for the step to finish
        return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = StrictArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=_parse_rows, default=[10_000, 1_000_000, 4_000_000])
    parser.add_argument("--steps", type=int, default=20, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration")
    parser.add_argument(
        "--lookup",
        choices=("sparse", "keras"),
        default="sparse",
        help="table read: tf.gather on the variable (sparse) or keras.layers.Embedding",
    )
    parser.add_argument(
        "--ids",
        choices=("uniform", "zipf"),
        default="uniform",
        help=f"id distribution: uniform over the vocabulary or Zipf({ZIPF_EXPONENT})",
    )
    parser.add_argument("--active_rows", type=int, default=None,
                        help="draw ids from only this many random rows of each vocabulary")
    parser.add_alias("--active-rows", "--active_rows")
    parser.add_argument("--optimizers", default="dense,lazy",
                        help="comma-separated: dense (keras Adam), lazy (LazyAdam), or both; "
                             "dense Adam at 10M rows takes seconds per step")
    args = parser.parse_args(argv)
    # Dense Adam densifies the table gradient on purpose here; its size warning is expected.
    warnings.filterwarnings("ignore", message="Converting sparse IndexedSlices to a dense Tensor")
    if args.steps < 1 or args.warmup < 1:
        parser.error(f"--steps and --warmup must be >= 1; received {args.steps}, {args.warmup}")
    if args.active_rows is not None and args.active_rows < 1:
        parser.error(f"--active_rows must be >= 1; received {args.active_rows}")
    kinds = [k for k in ("dense", "lazy") if k in args.optimizers.split(",")]
    if not kinds or set(args.optimizers.split(",")) - {"dense", "lazy"}:
        parser.error(f"--optimizers must list dense and/or lazy; received {args.optimizers!r}")

    pairs = [(rows, kind) for rows in args.rows for kind in kinds]
    configs = [
        _Config(rows, kind, args.lookup, args.ids, args.active_rows, seed=i)
        for i, (rows, kind) in enumerate(pairs)
    ]
    for config in configs:
        for _ in range(args.warmup):
            config.run()
    gc.collect()
    for _ in range(args.steps):
        for config in configs:
            config.times.append(config.run())

    active = f" from {args.active_rows} active rows" if args.active_rows else ""
    print(f"batch {BATCH} x {FIELDS} fields x {DIM} dims, {args.ids} ids{active}, "
          f"{args.lookup} lookup, {args.steps} timed rounds after {args.warmup} warm-up steps")
    print(f"{'rows':>10} {'optimizer':>10} {'touched':>8} {'median ms':>10} {'p10 ms':>8} "
          f"{'p90 ms':>8}  table grad")
    medians = {}
    for config in configs:
        ms = np.array(config.times) * 1000
        medians[(config.rows, config.kind)] = float(np.median(ms))
        print(f"{config.rows:>10} {config.kind + ' adam':>10} {config.touched_rows:>8} "
              f"{np.median(ms):>10.1f} {np.percentile(ms, 10):>8.1f} "
              f"{np.percentile(ms, 90):>8.1f}  {config.grad_types[0]}")
    small, large = args.rows[0], args.rows[-1]
    ratios = {kind: medians[(large, kind)] / medians[(small, kind)] if kind in kinds
              else float("nan") for kind in ("lazy", "dense")}
    tag = f"{_label(large)}_over_{_label(small)}"
    print(f"lazy_{tag}={ratios['lazy']:.2f} dense_{tag}={ratios['dense']:.2f}")
    return {"medians_ms": medians, "ratios": ratios}


if __name__ == "__main__":
    main()
