"""Microbenchmark: one training step (forward + backward + SGD) of the search embedding vs a plain
one.

    .venv/bin/python -m benchmarks.embedding_step [--batch 2000 --fields 39 --rows 1000000]

Synthetic ids (uniform per field, Criteo-like field sizes summing to ~--rows), DeepFM backbone,
`keras.optimizers.SGD` inside one `tf.function`; the W step of the search (model_variables only).
Prints the median step time of each variant and its ratio to the plain 32-dim embedding.
"""
from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from configs.cli import StrictArgumentParser
from models.backbones.deepfm import DeepFM
from models.ctr_model import CTRModel
from models.fixed_embedding import FixedEmbedding
from models.search_embedding import AutoDimEmbedding

VARIANTS = {
    "plain_fixed32_zero_pad": lambda v: FixedEmbedding(v, 32, unify="zero_pad"),
    "fixed32_linear": lambda v: FixedEmbedding(v, 32, unify="linear"),
    "autodim_ws_linear_bn_affine": lambda v: AutoDimEmbedding(
        v, lookup="weight_sharing", unify="linear", seed=0
    ),
    "autodim_ws_zero_pad_bn_affine": lambda v: AutoDimEmbedding(
        v, lookup="weight_sharing", unify="zero_pad", seed=0
    ),
    "autodim_sep_linear_bn_affine": lambda v: AutoDimEmbedding(
        v, lookup="separate", unify="linear", seed=0
    ),
    "autodim_ws_linear_no_norm": lambda v: AutoDimEmbedding(
        v, unify="linear", candidate_norm="none", seed=0
    ),
}


def field_sizes(fields: int, rows: int) -> list[int]:
    """Geometric field sizes (a few huge fields, many small ones) summing to about `rows`."""
    weights = 0.8 ** np.arange(fields)
    return [max(2, int(w)) for w in rows * weights / weights.sum()]


def make_step(model, variables, optimizer):
    @tf.function
    def step(ids, labels):
        with tf.GradientTape() as tape:
            logits = model(ids, training=True)
            loss = tf.reduce_mean(
                tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
            )
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return step


def main(argv=None) -> None:
    parser = StrictArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--fields", type=int, default=39)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved timing rounds per variant"
    )
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)

    vocab = field_sizes(args.fields, args.rows)
    rng = np.random.default_rng(0)
    batches = [
        (
            tf.constant(
                np.stack([rng.integers(0, v, args.batch) for v in vocab], axis=1), dtype=tf.int32
            ),
            tf.constant(rng.integers(0, 2, args.batch), dtype=tf.float32),
        )
        for _ in range(4)
    ]
    steps = {}
    for name in args.variants:
        keras.utils.set_random_seed(0)
        model = CTRModel(VARIANTS[name](vocab), DeepFM(), vocab)
        model.build((None, args.fields))
        optimizer = keras.optimizers.SGD(0.01)
        optimizer.build(model.model_variables)
        step = make_step(model, model.model_variables, optimizer)
        for ids, labels in batches:  # trace + warm up
            step(ids, labels).numpy()
        steps[name] = step
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for i in range(args.steps):
                loss = step(*batches[i % len(batches)])
            loss.numpy()
            times[name].append((time.perf_counter() - start) / args.steps)
    print(f"batch={args.batch} fields={args.fields} rows={sum(vocab)} steps={args.steps} "
          f"rounds={args.rounds}")
    base = min(times.get("plain_fixed32_zero_pad", [float("nan")]))
    for name, values in times.items():
        best = min(values)
        print(f"{name:32s} best {best * 1e3:8.1f} ms/step  median {np.median(values) * 1e3:8.1f}  "
              f"ratio vs plain {best / base:5.2f}")


if __name__ == "__main__":
    main()
