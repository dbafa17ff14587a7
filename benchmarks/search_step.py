"""Step time of the AutoDim search (AD-1..AD-4) against plain FDE training, with the input rate.

    python -m benchmarks.search_step [--rows 200000] [--fields 39] [--data DIR]
        [--data_root ../shared/data] [--steps 30] [--batch 2000] [--warmup 2]

The paper's variants (Sec. 3.5) are the four combinations lookup x unify: AD-1 weight-sharing +
zero-padding, AD-2 weight-sharing + linear (the paper's main variant), AD-3 separate + zero-padding,
AD-4 separate + linear. FDE is plain training with every field at the maximum dimension 32 and no
architecture weights (`build_retrain_model(dims=[32] * M, unify="zero_pad")`, no projection).

Everything runs through the real machinery: DeepFM with the default model config (MLP 128-128,
dropout 0.2, batchnorm_affine candidates; the `preset` row none), `runtime.distributed_stream`
train/valid streams, Adam for dense weights and alpha, LazyAdam for the tables, and
`StepRunner.search` (one alpha step on a validation batch + f=10 weight steps per call) or
`StepRunner.train` (10 weight steps per call, FDE). `--warmup` calls per model are excluded (the
first traces); then the models take turns, one call each, `ceil(--steps / 10)` rounds, so load from
other processes hits them alike. Reported: the median over calls of the call's wall time / 10 (ms
per weight step; for AD the alpha step is included, amortised over its 10 weight steps), and
examples/s = batch / that; also the median process CPU time per step (all threads), which other
processes' load disturbs less.

Also measured: the input pipeline alone (a fresh `distributed_stream` of the same data, iterated
with `pipeline.input.measure_examples_per_second`), and the share of a weight step taken by the
trainer's training statistics (a 1000-bin score histogram per step, reduced across replicas):
the same FDE and AD-2 models with the statistics replaced by constants.

Data: by default a synthetic dataset in a temp dir (`--rows` train rows, rows/8 valid and test;
vocabulary sizes on the synthetic generator's geometric ladder from 2 to 100,000 over `--fields`
fields, Zipf(1.1) ids, written in the preprocessing output layout). `--data DIR` uses a
preprocessed directory instead. With `--data_root R` and `R/movielens-100k` present, MovieLens-
100k is preprocessed (`python -m preprocessing.run`) into a temp dir and FDE DeepFM examples/s on
it is reported too (pytorch-fm's DeepFM: ~115k examples/s at batch 2000 on 2 cores); skipped
with a message when absent.

Also timed: `preset`, what the adaptive presets search with (AD-1 without candidate BatchNorm).

Last line: `ad2_over_fde=X input_over_train=Y fde_examples_per_s=Z preset_over_fde=W` (AD-2
ms/step over FDE ms/step, input examples/s over FDE training examples/s, FDE training examples/s,
the presets' search ms/step over FDE ms/step; all on the main data).
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from configs.cli import StrictArgumentParser

REPO = Path(__file__).resolve().parents[1]
F = 10  # weight steps per call (the search's arch_update_every)
VARIANTS = {  # paper Sec. 3.5
    "AD-1": ("weight_sharing", "zero_pad"),
    "AD-2": ("weight_sharing", "linear"),
    "AD-3": ("separate", "zero_pad"),
    "AD-4": ("separate", "linear"),
}
# What the adaptive presets search with (configs/experiment.py): AD-1 without candidate BatchNorm.
PRESET = ("preset", ("weight_sharing", "zero_pad", "none"))
ML100K_PYTORCH_FM = 115_000  # examples/s, pytorch-fm DeepFM, batch 2000, 2 cores (the issue)


# ---------------------------------------------------------------------------------- data
def ladder_vocab_sizes(fields: int) -> list[int]:
    """The synthetic generator's geometric ladder 2 .. 100,000 spread over `fields` fields, plus
    the OOV id 0 (vocab_size = distinct values + 1)."""
    if fields < 1:
        raise ValueError(f"--fields must be >= 1, got {fields}")
    steps = max(fields - 1, 1)
    return [int(round(2 * 50000 ** (i / steps))) + 1 for i in range(fields)]


def _zipf_ids(rng, vocab_size: int, n: int, s: float = 1.1) -> np.ndarray:
    """Ids 1..vocab_size-1 with P(id) ~ id**-s (id 1 the most frequent, as preprocessing numbers
    values by descending count)."""
    ranks = np.arange(1, vocab_size, dtype=np.float64)
    cdf = np.cumsum(ranks ** -s)
    return 1 + np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right").clip(0, vocab_size - 2)


def write_synthetic(data_dir: Path, rows: int, vocab_sizes: list[int], seed: int = 0,
                    shards: int = 4):
    """Writes train/valid/test (rows, rows/8, rows/8) in the preprocessing output layout: GZIP
    TFRecords of tf.Example with one int64 per field and a float `label`, and schema.json. Labels
    follow a random first-order model of the first three fields (a learnable signal)."""
    import tensorflow as tf

    from configs.features import SPLITS, DataSchema, FieldSchema

    rng = np.random.default_rng(seed)
    names = [f"f{i}" for i in range(len(vocab_sizes))]
    tables = [rng.normal(0, 1.0, v) for v in vocab_sizes[:3]]
    sizes = {}
    for split, n in zip(SPLITS, (rows, max(rows // 8, 1), max(rows // 8, 1))):
        ids = np.stack([_zipf_ids(rng, v, n) for v in vocab_sizes], axis=1)
        logit = sum(t[ids[:, f]] for f, t in enumerate(tables)) - 1.0
        labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        out = data_dir / split
        out.mkdir(parents=True, exist_ok=True)
        # one Example reused: setting values in place is ~3x faster than building a proto per row
        example = tf.train.Example()
        slots = [example.features.feature[nm].int64_list.value for nm in names]
        for slot in slots:
            slot.append(0)
        label_slot = example.features.feature["label"].float_list.value
        label_slot.append(0.0)
        writers = [tf.io.TFRecordWriter(str(out / f"part-{i:05d}-of-{shards:05d}.tfrecord.gz"),
                                        options="GZIP") for i in range(shards)]
        for r, (row, y) in enumerate(zip(ids.tolist(), labels.tolist())):
            for slot, v in zip(slots, row):
                slot[0] = v
            label_slot[0] = y
            writers[r % shards].write(example.SerializeToString())
        for w in writers:
            w.close()
        sizes[split] = n
    schema = DataSchema(
        dataset="synthetic-benchmark",
        fields=tuple(FieldSchema(n, "categorical", int(v), 1) for n, v in zip(names, vocab_sizes)),
        splits=sizes, label_rate=0.0, config={"benchmark": "search_step"},
        config_hash="benchmark")
    schema.save(data_dir)
    return schema


def preprocess_movielens(raw_dir: Path, out_dir: Path) -> None:
    cmd = [sys.executable, "-m", "preprocessing.run", "--dataset", "movielens-100k",
           "--input", str(raw_dir), "--data_dir", str(out_dir)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


# ---------------------------------------------------------------------------------- models
class _NullStats:
    """Stands in for StepRunner.train_stats: constant statistics, nothing reduced or stored (to
    measure what the real statistics cost per step)."""

    def batch(self, labels, logits, per_example):
        import tensorflow as tf
        return tf.constant(0.0, tf.float64)

    def add(self, strategy, stats) -> None:
        return None


class Bench:
    """One model with its optimizers, StepRunner and streams; `call()` runs one timed call."""

    def __init__(self, name, strategy, data_dir, schema, batch, variant=None, stats=True,
                 seed=0):
        import keras
        import tensorflow as tf

        from configs.experiment import ModelConfig
        from models.factory import build_retrain_model, build_search_model
        from pipeline import runtime
        from pipeline.trainer import (
            Optimizers,
            StepRunner,
            make_embedding_optimizer,
            paper_temperature,
        )

        self.name, self.batch, self.is_search = name, batch, variant is not None
        m = ModelConfig()
        vocab = [fs.vocab_size for fs in schema.fields]
        keras.utils.set_random_seed(seed)
        with strategy.scope():
            if self.is_search:
                lookup, unify, norm = (*variant, m.candidate_norm)[:3]
                model = build_search_model("deepfm", vocab, candidate_dims=m.candidate_dims,
                                           lookup=lookup, unify=unify,
                                           candidate_norm=norm, seed=seed,
                                           **runtime.backbone_kwargs(m))
            else:
                model = build_retrain_model(
                    "deepfm",
                    vocab,
                    dims=[max(m.candidate_dims)] * len(vocab),
                    unify="zero_pad",
                    **runtime.backbone_kwargs(m),
                )
            model(tf.zeros([2, len(vocab)], tf.int32), training=False)
            opts = Optimizers(dense=keras.optimizers.Adam(1e-3),
                              embedding=make_embedding_optimizer("lazy_adam", 1e-3),
                              arch=keras.optimizers.Adam(1e-3) if self.is_search else None)
            opts.build(model)
            kw = {}
            if self.is_search:
                kw = dict(temperature_var=model.embedding.temperature,
                          temperature_fn=paper_temperature(5e-5, 0.01, 0))
            self.runner = StepRunner(strategy, model, opts, batch, **kw)
        if not stats:
            self.runner.train_stats = _NullStats()
        self.train_it = iter(runtime.distributed_stream(strategy, data_dir, schema, "train", batch,
                                                        seed=seed))
        self.val_it = (iter(runtime.distributed_stream(strategy, data_dir, schema, "valid", batch,
                                                       seed=seed + 1))
                       if self.is_search else None)
        self._one = tf.constant(1, tf.int64)
        self._f = tf.constant(F, tf.int64)
        self.times: list[float] = []
        self.cpu_times: list[float] = []

    def call(self, record: bool = True) -> float:
        cpu = time.process_time()
        start = time.perf_counter()
        if self.is_search:
            loss = self.runner.search(self.train_it, self.val_it, self._one, self._f)
        else:
            loss = self.runner.train(self.train_it, self._f)
        value = float(loss)  # host sync: the call has finished
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        if not math.isfinite(value):
            raise RuntimeError(f"{self.name}: non-finite loss {value}")
        if record:
            self.times.append(elapsed / F)
            self.cpu_times.append(cpu / F)
        return elapsed

    @property
    def ms_per_step(self) -> float:
        return 1e3 * float(np.median(self.times))

    @property
    def cpu_ms_per_step(self) -> float:
        return 1e3 * float(np.median(self.cpu_times))

    @property
    def examples_per_s(self) -> float:
        return self.batch / (self.ms_per_step / 1e3)


def run_benches(benches: list[Bench], warmup: int, rounds: int) -> None:
    for b in benches:
        for _ in range(warmup):
            b.call(record=False)
    for _ in range(rounds):
        for b in benches:
            b.call()
    for b in benches:  # stop their input pipelines (threads, shuffle buffers)
        b.train_it = b.val_it = None


def input_rate(strategy, data_dir, schema, batch, steps) -> float:
    from pipeline import runtime
    from pipeline.input import measure_examples_per_second

    stream = runtime.distributed_stream(strategy, data_dir, schema, "train", batch, seed=7)
    return measure_examples_per_second(stream, steps=steps, warmup=5)


# ---------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = StrictArgumentParser(prog="python -m benchmarks.search_step",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="synthetic training rows")
    parser.add_argument("--fields", type=int, default=39, help="synthetic fields")
    parser.add_argument(
        "--data_dir", help="a preprocessed data dir to use instead of synthetic data"
    )
    parser.add_argument("--data_root", help="directory holding movielens-100k/ (raw) for the "
                        "MovieLens FDE figure; skipped when absent")
    parser.add_argument("--steps", type=int, default=30,
                        help=f"timed weight steps per model (rounded up to calls of {F})")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per model")
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--input_batches", type=int, default=100,
                        help="batches timed for the input-pipeline rate")
    parser.add_argument("--no_stats_cost", action="store_true",
                        help="skip the runs without training statistics")
    parser.add_alias("--data-root", "--data_root")
    parser.add_alias("--input-batches", "--input_batches")
    parser.add_alias("--no-stats-cost", "--no_stats_cost")
    parser.add_alias("--data", "--data_dir")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.batch < 1 or args.rows < args.batch:
        parser.error("need --steps >= 1, --warmup >= 1, --batch >= 1 and --rows >= --batch")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from configs.features import DataSchema
    from pipeline.strategy import make_strategy

    tmp = Path(tempfile.mkdtemp(prefix="search_step_"))
    try:
        strategy = make_strategy(0)
        if args.data_dir:
            data_dir = Path(args.data_dir)
            schema = DataSchema.load(data_dir)
            what = f"{data_dir} ({schema.dataset})"
        else:
            data_dir = tmp / "synthetic"
            t0 = time.perf_counter()
            schema = write_synthetic(data_dir, args.rows, ladder_vocab_sizes(args.fields))
            what = (f"synthetic, written in {time.perf_counter() - t0:.0f} s")
        vocab = [fs.vocab_size for fs in schema.fields]
        print(f"data: {what}: {schema.splits.get('train', 0):,} train rows, {len(vocab)} fields, "
              f"vocab {min(vocab):,}..{max(vocab):,} (sum {sum(vocab):,}); batch {args.batch}; "
              f"{strategy.num_replicas_in_sync} replica(s); tf {tf.__version__}", flush=True)

        rounds = -(-args.steps // F)
        benches = [Bench("FDE", strategy, data_dir, schema, args.batch)]
        benches += [Bench(n, strategy, data_dir, schema, args.batch, variant=v)
                    for n, v in [*VARIANTS.items(), PRESET]]
        if not args.no_stats_cost:
            benches += [Bench("FDE/no-stats", strategy, data_dir, schema, args.batch, stats=False),
                        Bench("AD-2/no-stats", strategy, data_dir, schema, args.batch,
                              variant=VARIANTS["AD-2"], stats=False)]
        run_benches(benches, args.warmup, rounds)
        by = {b.name: b for b in benches}
        fde = by["FDE"]
        in_rate = input_rate(strategy, data_dir, schema, args.batch, args.input_batches)

        ml_rate = None
        ml_note = ""
        if args.data_root:
            raw = Path(args.data_root) / "movielens-100k"
            if raw.is_dir():
                ml_dir = tmp / "ml100k"
                t0 = time.perf_counter()
                preprocess_movielens(raw, ml_dir)
                prep_s = time.perf_counter() - t0
                ml_schema = DataSchema.load(ml_dir)
                ml = Bench("FDE ML-100k", strategy, ml_dir, ml_schema, args.batch)
                run_benches([ml], args.warmup, rounds)
                ml_rate = ml.examples_per_s
                ml_cpu = ml.cpu_ms_per_step
                ml_best = args.batch / min(ml.times)
                ml_note = (f"(preprocessed in {prep_s:.0f} s; "
                           f"{ml_schema.splits['train']:,} train rows, {len(ml_schema.fields)} "
                           f"fields)")
            else:
                ml_note = f"skipped: {raw} not found"

        print(f"\n{'model':<16}{'lookup':<16}{'unify':<10}{'ms/step':>9}{'min':>8}{'max':>8}"
              f"{'ex/s':>10}{'/FDE':>7}{'cpu ms':>8}{'cpu/FDE':>8}")
        for b in benches:
            lookup, unify = dict([*VARIANTS.items(), PRESET]).get(
                b.name.split("/")[0], ("fixed-32", "zero_pad"))[:2]
            print(f"{b.name:<16}{lookup:<16}{unify:<10}{b.ms_per_step:>9.1f}"
                  f"{1e3 * min(b.times):>8.1f}{1e3 * max(b.times):>8.1f}"
                  f"{b.examples_per_s:>10,.0f}{b.ms_per_step / fde.ms_per_step:>7.2f}"
                  f"{b.cpu_ms_per_step:>8.1f}{b.cpu_ms_per_step / fde.cpu_ms_per_step:>8.2f}")
        print(f"({len(fde.times)} calls of {F} weight steps per model after {args.warmup} warm-up "
              f"calls; median, min, max over calls; AD calls include their alpha step; cpu ms = "
              f"median process CPU time per step, all threads, less sensitive to other load)")
        if "FDE/no-stats" in by:
            for name in ("FDE", "AD-2"):
                with_s, without = by[name].ms_per_step, by[f"{name}/no-stats"].ms_per_step
                print(
                    f"training statistics (1000-bin histogram + reduce) in {name}: "
                    f"{with_s - without:+.1f} ms/step ({100 * (with_s - without) / with_s:+.0f}%)"
                )
        print(f"input pipeline alone: {in_rate:,.0f} examples/s ({args.input_batches} batches); "
              f"FDE training consumes {fde.examples_per_s:,.0f} examples/s")
        if ml_rate is not None:
            print(f"FDE DeepFM on MovieLens-100k: {ml_rate:,.0f} examples/s (best call "
                  f"{ml_best:,.0f}), "
                  f"{ml_cpu:.1f} cpu ms/step {ml_note}; "
                  f"pytorch-fm DeepFM ~{ML100K_PYTORCH_FM:,} -> "
                  f"{ml_rate / ML100K_PYTORCH_FM:.2f}x")
        elif ml_note:
            print(f"MovieLens-100k: {ml_note}")
        ad2 = by["AD-2"].ms_per_step / fde.ms_per_step
        preset = by["preset"].ms_per_step / fde.ms_per_step
        print("(preset = the adaptive presets' search: weight sharing, zero padding, no candidate "
              "BatchNorm)")
        print(f"targets: AD-2/FDE {ad2:.2f} (<= 1.6), input/train "
              f"{in_rate / fde.examples_per_s:.2f} (>= 3)")
        print(f"ad2_over_fde={ad2:.3f} input_over_train={in_rate / fde.examples_per_s:.3f} "
              f"fde_examples_per_s={fde.examples_per_s:.0f} preset_over_fde={preset:.3f}",
              flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
