"""Cost against data size at Criteo scale: each figure a ratio between a small and a large size.

    python -m benchmarks.scaling [--step_rows 10000,1000000,10000000]
        [--train_rows 1000000,10000000] [--beam_rows 1000000,16000000] [--train_steps 300]
        [--vocab_cap 10000] [--parts step,train,beam] [--workdir DIR] [--keep] [Beam options]

1. Search step time against table rows (in this process). The real search supernet and its
   compiled call: `pipeline.search_task.SearchTask` with the `criteo` preset (DeepFM, weight-
   sharing zero-padded candidates 2..32, one 32-wide table for every field plus the first-order
   table, LazyAdam on both, Adam on the MLP and on alpha), `StepRunner.search` with one alpha step
   on a validation batch and f = 10 weight steps per call, as the search runs on Criteo-sized data.
   The 39 fields are Criteo-shaped: I1..I13 at 100 rows each, C1..C26 in proportion to Criteo
   Kaggle's cardinalities (`preprocessing.synthetic.CRITEO_CARDINALITIES`), scaled so the table
   has exactly R rows (R = each of `--step_rows`; at 10M, C3 has 3.0M rows). The same rows are
   touched per batch at every R: each field draws its ids uniformly from a fixed random set of
   as many of its rows as it has at the smallest R (at the smallest R, all of them), so a larger
   table only spreads the same work over more memory. Batches are made in memory (8 training,
   2 validation, cycled), so the figure is the step alone. After `--warmup` calls per size the
   sizes take turns, one call each, `--step_calls` rounds; reported: the median call's time per
   weight step (its alpha step amortised), and the median time of the embedding optimizer's
   update alone (LazyAdam applying one batch's table gradient), timed in the same rounds.
2. Training examples/second and peak memory against input rows (subprocesses). Per N of
   `--train_rows`: the first N rows of the synthetic data (below) through the Beam job, then
   `python -m pipeline.search` on its output for `--train_steps` search steps (pretraining 0,
   f = 10, one evaluation of the validation split and the derivation at the end). Examples/s is
   the search's own rate (its last progress line: steps after the first call over their time,
   times the batch), peak memory the summed RSS of its process tree (`benchmarks.preprocess.
   measure`). The vocabulary grows with the rows (uncapped, Criteo-shaped fields reach millions
   of ids, and the model's size would be the variable), so every Beam run here caps each field
   at `--vocab_cap` ids (the job's `default_max_vocab_size`): with the default 10,000 the tables
   have at most 26 x 10,000 + 13 x ~200 rows at any N (under 0.11 GB with their optimizer
   slots), so the input rows are the variable; each size's vocabulary total is printed (500k /
   1M rows: 37,953 / 64,670). `--vocab_cap 0` runs uncapped.
3. Beam job rows/second and peak memory against rows (subprocesses): `python -m preprocessing.run
   --dataset criteo` on the first N rows, for N in `--beam_rows`, with the same cap and runner
   options (default: DirectRunner, multi-processing, 2 workers). Rows/s is rows over the wall
   time (start-up included); memory the peak summed RSS of the process tree.

The data: `python -m preprocessing.synthetic --profile criteo --rows MAX --shards K` once, MAX
the largest size of parts 2 and 3, in shards of half the greatest common divisor of the sizes
(the defaults: 32 shards of 500,000 rows), so every size is its first shards (a directory of
links; the smallest size is two files, one per DirectRunner worker). The Beam outputs of part 2
are Beam runs of their own, listed in part 3's table too. Parts 2 and 3 run their smallest size
twice, before and after the larger ones (this machine's speed drifts between runs), and use the
median. Everything large goes in one new temporary directory (under `--workdir` if given), removed
at the end unless `--keep`.

Last two lines: `beam_mem_<B>_over_<b>=... examples_per_s_<T>_over_<t>=...` (Beam job peak
memory, training examples/s), then `step_<S>_over_<s>=X mem_<T>_over_<t>=Y beam_<B>_over_<b>=Z`:
X the median step time at the largest `--step_rows` over the smallest, Y the training peak memory
at the largest `--train_rows` over the smallest, Z the Beam job's time per row at the largest
`--beam_rows` over the smallest. With the defaults: `step_10m_over_10k=X mem_10m_over_1m=Y
beam_16m_over_1m=Z`. A part left out of `--parts` prints `nan`.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.preprocess import DEFAULT_BEAM, measure, median
from configs.cli import JobError, StrictArgumentParser, run_main

REPO = Path(__file__).resolve().parents[1]
NUMERIC_FIELDS, NUMERIC_ROWS = 13, 100
TRAIN_BATCHES, VALID_BATCHES = 8, 2
PARTS = ("step", "train", "beam")
# pipeline.search's plain progress line at the end of its search phase (pipeline/progress.py)
PROGRESS = re.compile(r"^search (\d+)/(\d+) step .*?([0-9.]+)(step/s|s/step)")


def size_label(rows: int) -> str:
    for unit, suffix in ((1_000_000, "m"), (1_000, "k")):
        if rows >= unit and rows % unit == 0:
            return f"{rows // unit}{suffix}"
    return str(rows)


def _sizes(flag: str, minimum: int):
    def parse(text: str) -> list[int]:
        try:
            sizes = sorted({int(part) for part in text.split(",") if part.strip()})
        except ValueError:
            sizes = []
        if len(sizes) < 2 or sizes[0] < minimum:
            raise argparse.ArgumentTypeError(
                f"{flag} needs two or more distinct comma-separated sizes >= {minimum}; "
                f"received {text!r}")
        return sizes
    return parse


def criteo_vocab_sizes(rows: int) -> list[int]:
    """39 vocabulary sizes summing to `rows`: I1..I13 at 100, C1..C26 in proportion to Criteo
    Kaggle's cardinalities (at least 2 each; C3, the largest, takes the rounding)."""
    from preprocessing.synthetic import CRITEO_CARDINALITIES

    rest = rows - NUMERIC_FIELDS * NUMERIC_ROWS
    if rest < 2 * len(CRITEO_CARDINALITIES):
        raise ValueError(f"{rows} rows cannot hold 39 Criteo-shaped fields")
    total = sum(CRITEO_CARDINALITIES)
    cat = [max(2, c * rest // total) for c in CRITEO_CARDINALITIES]
    largest = int(np.argmax(CRITEO_CARDINALITIES))
    cat[largest] += rest - sum(cat)
    if cat[largest] < 2:
        raise ValueError(f"{rows} rows cannot hold 39 Criteo-shaped fields")
    return [NUMERIC_ROWS] * NUMERIC_FIELDS + cat


# ------------------------------------------------------------------------- 1. search step
class StepCase:
    """The criteo preset's search supernet over a Criteo-shaped table of `rows` rows, fed
    in-memory batches whose ids come from `active[m]` fixed random rows of each field m."""

    def __init__(self, rows: int, active: list[int], strategy, cfg, sched: dict, seed: int):
        import tensorflow as tf

        from configs.features import DataSchema, FieldSchema
        from pipeline.search_task import SearchTask
        from preprocessing.synthetic import FIELD_NAMES

        self.rows, batch = rows, cfg.search.batch_size
        self.vocab = criteo_vocab_sizes(rows)
        rng = np.random.default_rng(seed)
        pools = [rng.choice(v, size=a, replace=False) for v, a in zip(self.vocab, active)]

        def batches(n: int):
            ids = np.stack([p[rng.integers(0, len(p), size=n * batch)] for p in pools], axis=1)
            labels = (rng.random(n * batch) < 0.27).astype(np.float32)
            return ids.astype(np.int32), labels

        train, valid = batches(TRAIN_BATCHES), batches(VALID_BATCHES)
        offsets = np.concatenate([[0], np.cumsum(self.vocab)[:-1]]).astype(np.int64)
        table_ids = (train[0] + offsets).reshape(TRAIN_BATCHES, batch, -1)
        self.touched = float(np.mean([np.unique(b).size for b in table_ids]))
        kinds = ["numeric"] * NUMERIC_FIELDS + ["categorical"] * (len(self.vocab) - NUMERIC_FIELDS)
        schema = DataSchema(
            dataset="criteo-shaped", fields=tuple(
                FieldSchema(n, k, v) for n, k, v in zip(FIELD_NAMES, kinds, self.vocab)),
            splits={"train": TRAIN_BATCHES * batch}, label_rate=0.27,
            config={"benchmark": "scaling"}, config_hash="benchmark")
        self.task = SearchTask(strategy, "", schema, cfg, sched)
        self.table_mb = 3 * rows * max(cfg.model.candidate_dims) * 4 / 1e6  # table, m, v

        def stream(data):
            ds = tf.data.Dataset.from_tensor_slices(data).batch(batch, drop_remainder=True)
            return iter(strategy.experimental_distribute_dataset(ds.repeat().prefetch(2)))

        self.train_it, self.val_it = stream(train), stream(valid)
        self.one = tf.constant(1, tf.int64)
        self.f = tf.constant(sched["arch_update_every"], tf.int64)
        self.steps_per_call = sched["arch_update_every"]
        # the embedding optimizer alone: one batch's gradient of the table, as the step makes it
        table = self.task.model.embedding.embedding_variables[0]
        dim = int(table.shape[1])
        grad = tf.IndexedSlices(
            tf.constant(rng.normal(0, 1e-3, (batch * len(self.vocab), dim)).astype(np.float32)),
            tf.constant(table_ids[0].ravel().astype(np.int32)),
            tf.constant([rows, dim], tf.int64))
        optimizer = self.task.opts.embedding

        @tf.function
        def apply_once():
            strategy.run(lambda: optimizer.apply_gradients([(grad, table)]))
            return tf.constant(0.0)

        self._apply = apply_once
        self.step_ms: list[float] = []
        self.apply_ms: list[float] = []

    def call(self, record: bool = True) -> None:
        start = time.perf_counter()
        loss = float(self.task.runner.search(self.train_it, self.val_it, self.one, self.f))
        elapsed = time.perf_counter() - start
        if not math.isfinite(loss):
            raise JobError(f"search step at {self.rows:,} rows: non-finite loss {loss}")
        start = time.perf_counter()
        self._apply().numpy()
        applied = time.perf_counter() - start
        if record:
            self.step_ms.append(1e3 * elapsed / self.steps_per_call)
            self.apply_ms.append(1e3 * applied)


def bench_step(sizes: list[int], calls: int, warmup: int, batch: int) -> float:
    """Part 1; returns the median step time at the largest size over the smallest."""
    from configs.experiment import resolve
    from pipeline.search import search_schedule
    from pipeline.strategy import make_strategy

    strategy = make_strategy(0)
    cfg = resolve("criteo", set_overrides=[
        f"search.batch_size={batch}", "search.min_arch_updates=0", "search.pretrain_steps=0",
        "search.pretrain_epochs=0", "search.search_steps=1000"])
    sched = search_schedule(cfg, train_rows=TRAIN_BATCHES * batch)
    active = criteo_vocab_sizes(sizes[0])
    t0 = time.perf_counter()
    cases = [StepCase(rows, active, strategy, cfg, sched, seed=i) for i, rows in enumerate(sizes)]
    print(f"built {len(cases)} supernets in {time.perf_counter() - t0:.0f} s", flush=True)
    for case in cases:
        for _ in range(warmup):
            case.call(record=False)
    gc.collect()
    for _ in range(calls):
        for case in cases:
            case.call()
    base = float(np.median(cases[0].step_ms))
    print(f"\npart 1: search step of the criteo preset's supernet, batch {batch} x 39 fields, "
          f"1 alpha + {sched['arch_update_every']} weight steps per call, {calls} calls per size "
          f"after {warmup} warm-up calls (round robin); same rows touched at every size")
    print(f"{'table rows':>12} {'C3 rows':>10} {'tables+slots MB':>16} {'touched':>8} "
          f"{'ms/step':>8} {'p10':>7} {'p90':>7} {'/smallest':>10} {'LazyAdam ms':>12}")
    for c in cases:
        ms = np.array(c.step_ms)
        print(f"{c.rows:>12,} {c.vocab[NUMERIC_FIELDS + 2]:>10,} {c.table_mb:>16,.0f} "
              f"{c.touched:>8,.0f} {np.median(ms):>8.1f} {np.percentile(ms, 10):>7.1f} "
              f"{np.percentile(ms, 90):>7.1f} {np.median(ms) / base:>10.2f} "
              f"{np.median(c.apply_ms):>12.1f}")
    ratio = float(np.median(cases[-1].step_ms)) / base
    del cases
    gc.collect()
    return ratio


# ------------------------------------------------------------------------- data and Beam
def write_data(workdir: Path, sizes: list[int]) -> tuple[list[Path], int]:
    """Synthetic Criteo-profile rows for the largest size, in shards of half the sizes' greatest
    common divisor (or all of it when odd); returns the shard files and their rows each."""
    from preprocessing.synthetic import shard_paths

    unit = math.gcd(*sizes)
    shard_rows = unit // 2 if unit % 2 == 0 else unit
    shards = max(sizes) // shard_rows
    out = workdir / "raw" / "criteo.tsv"
    out.parent.mkdir(parents=True)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "preprocessing.synthetic", "--profile", "criteo", "--rows",
           str(max(sizes)), "--shards", str(shards), "--seed", "0", "--output", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    if proc.returncode != 0:
        raise JobError(f"{' '.join(cmd[1:])} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    print(f"generated {max(sizes):,} Criteo-profile rows in {shards} files of {shard_rows:,} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return shard_paths(out, shards) if shards > 1 else [out], shard_rows


def input_glob(workdir: Path, files: list[Path], shard_rows: int, rows: int) -> str:
    """A directory linking the first files that hold `rows` rows; returns its glob."""
    directory = workdir / f"input-{rows}"
    if not directory.exists():
        directory.mkdir()
        for path in files[:rows // shard_rows]:
            (directory / path.name).symlink_to(path)
    return str(directory / "*.tsv")


def run_beam(pattern: str, rows: int, out: Path, config: Path | None,
             beam_args: list[str]) -> dict:
    extra = ["--preprocess_config", str(config)] if config else []
    result = measure([sys.executable, "-m", "preprocessing.run", "--dataset", "criteo",
                      "--input", pattern, "--data_dir", str(out), *extra, *beam_args])
    stats = json.loads((out / "stats.json").read_text())
    if stats["rows_read"] != rows:
        raise JobError(f"the Beam job read {stats['rows_read']:,} rows of {pattern}, "
                       f"expected {rows:,}")
    result.update(rows=rows, vocab=sum(stats["vocab_sizes"].values()),
                  train_rows=stats.get("rows_written", {}).get("train"))
    print(f"  beam {rows:>12,} rows {result['seconds']:8.1f} s  "
          f"{rows / result['seconds']:9,.0f} rows/s  peak tree RSS "
          f"{result['peak_tree_mb']:7,.0f} MB  vocabulary {result['vocab']:,}", flush=True)
    return result


def run_train(data_dir: Path, model_dir: Path, steps: int, batch: int) -> dict:
    """`pipeline.search` for `steps` search steps; its rate from the last progress line."""
    log = model_dir.with_suffix(".log")
    sets = [f"search.batch_size={batch}", "search.pretrain_steps=0", "search.pretrain_epochs=0",
            f"search.search_steps={steps}", "search.min_arch_updates=0",
            f"search.eval_every={steps}", f"search.checkpoint_every={steps}"]
    cmd = [sys.executable, "-m", "pipeline.search", "--data_dir", str(data_dir),
           "--model_dir", str(model_dir)]
    for item in sets:
        cmd += ["--set", item]
    # stderr (the progress lines) to a file, which measure() would not return
    try:
        result = measure(["sh", "-c", 'exec "$@" 2>"$0"', str(log), *cmd])
    except RuntimeError as err:
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise JobError(f"{err}\n{tail}") from err
    lines = [m for m in map(PROGRESS.match, log.read_text().splitlines()) if m]
    done = lines and int(lines[-1].group(1)) == int(lines[-1].group(2)) == steps
    if not done or not (model_dir / "dims.json").exists():
        raise JobError(f"pipeline.search on {data_dir} did not finish {steps} steps "
                       f"(log: {log})")
    rate, unit = float(lines[-1].group(3)), lines[-1].group(4)
    steps_per_s = rate if unit == "step/s" else 1.0 / rate
    result.update(examples_per_s=steps_per_s * batch)
    print(f"  train {data_dir.name:>12} {steps} steps {result['seconds']:7.1f} s  "
          f"{result['examples_per_s']:9,.0f} examples/s  peak tree RSS "
          f"{result['peak_tree_mb']:7,.0f} MB", flush=True)
    return result


def _bracketed(sizes: list[int], repeats: int) -> list[int]:
    """Run order: the smallest size, the others ascending, the smallest again (`repeats` 2)."""
    return [*sizes, sizes[0]] if repeats > 1 else list(sizes)


def bench_io(args, beam_args: list[str], workdir: Path, parts: set[str]) -> dict:
    """Parts 2 and 3; returns their figures by size."""
    beam_sizes = args.beam_rows if "beam" in parts else []
    train_sizes = args.train_rows if "train" in parts else []
    sizes = sorted(set(beam_sizes) | set(train_sizes))
    files, shard_rows = write_data(workdir, sizes)
    config = None
    if args.vocab_cap:
        config = workdir / "preprocess.yaml"
        config.write_text(f"dataset:\n  default_max_vocab_size: {args.vocab_cap}\n")
    beam: dict[int, list[dict]] = {}
    data_dirs: dict[int, Path] = {}
    print(f"\nBeam job runs (runner args: {' '.join(beam_args)}; vocabulary cap "
          f"{args.vocab_cap or 'none'})", flush=True)
    for i, rows in enumerate(_bracketed(sizes, args.small_repeats)):
        out = workdir / f"data-{rows}-{i}"
        beam.setdefault(rows, []).append(
            run_beam(input_glob(workdir, files, shard_rows, rows), rows, out, config, beam_args))
        if rows in train_sizes and rows not in data_dirs:
            data_dirs[rows] = out
        else:
            shutil.rmtree(out)
    train: dict[int, list[dict]] = {}
    if train_sizes:
        print(f"\ntraining runs (pipeline.search, {args.train_steps} search steps, batch "
              f"{args.batch})", flush=True)
        for i, rows in enumerate(_bracketed(train_sizes, args.small_repeats)):
            train.setdefault(rows, []).append(
                run_train(data_dirs[rows], workdir / f"search-{rows}-{i}", args.train_steps,
                          args.batch))
    return {"beam": beam, "train": train}


def _med(runs: list[dict], key: str) -> float:
    return median([r[key] for r in runs])


def report_train(train: dict[int, list[dict]], beam: dict[int, list[dict]]) -> tuple[float, float]:
    sizes = sorted(train)
    small = sizes[0]
    print("\npart 2: training (pipeline.search) against input rows; medians over runs")
    print(f"{'input rows':>12} {'train rows':>11} {'vocabulary':>11} {'runs':>5} "
          f"{'examples/s':>11} {'/smallest':>10} {'peak MB':>9} {'/smallest':>10}")
    for rows in sizes:
        runs, vocab = train[rows], beam[rows][0]["vocab"]
        rate, mem = _med(runs, "examples_per_s"), _med(runs, "peak_tree_mb")
        train_rows = beam[rows][0]["train_rows"]
        print(f"{rows:>12,} {train_rows if train_rows is not None else '?':>11,} {vocab:>11,} "
              f"{len(runs):>5} {rate:>11,.0f} {rate / _med(train[small], 'examples_per_s'):>10.2f}"
              f" {mem:>9,.0f} {mem / _med(train[small], 'peak_tree_mb'):>10.2f}")
    big = sizes[-1]
    return (_med(train[big], "examples_per_s") / _med(train[small], "examples_per_s"),
            _med(train[big], "peak_tree_mb") / _med(train[small], "peak_tree_mb"))


def report_beam(beam: dict[int, list[dict]], sizes: list[int]) -> tuple[float, float]:
    small, big = sizes[0], sizes[-1]

    def per_row(rows):
        return _med(beam[rows], "seconds") / rows

    print("\npart 3: Beam job (preprocessing.run) against rows; medians over runs")
    print(f"{'rows':>12} {'runs':>5} {'seconds':>9} {'rows/s':>10} {'us/row':>8} {'/smallest':>10}"
          f" {'peak MB':>9} {'/smallest':>10}")
    for rows in sorted(beam):
        mem = _med(beam[rows], "peak_tree_mb")
        print(f"{rows:>12,} {len(beam[rows]):>5} {_med(beam[rows], 'seconds'):>9.1f} "
              f"{1 / per_row(rows):>10,.0f} {1e6 * per_row(rows):>8.2f} "
              f"{per_row(rows) / per_row(small):>10.2f} {mem:>9,.0f} "
              f"{mem / _med(beam[small], 'peak_tree_mb'):>10.2f}"
              f"{'' if rows in sizes else '  (for part 2 only)'}")
    return (per_row(big) / per_row(small),
            _med(beam[big], "peak_tree_mb") / _med(beam[small], "peak_tree_mb"))


# ------------------------------------------------------------------------- main
def run(args, beam_args: list[str]) -> int:
    parts = set(args.parts)
    nan = float("nan")
    step = mem = rate = beam_time = beam_mem = nan
    workdir = None
    try:
        if "step" in parts:
            step = bench_step(args.step_rows, args.step_calls, args.warmup, args.batch)
        if parts & {"train", "beam"}:
            if args.workdir:
                Path(args.workdir).mkdir(parents=True, exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix="scaling-", dir=args.workdir))
            results = bench_io(args, beam_args, workdir, parts)
            if "train" in parts:
                rate, mem = report_train(results["train"], results["beam"])
            if "beam" in parts:
                beam_time, beam_mem = report_beam(results["beam"], args.beam_rows)
    finally:
        if workdir is not None:
            if args.keep:
                print(f"kept {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    s, t, b = (f"{size_label(x[-1])}_over_{size_label(x[0])}"
               for x in (args.step_rows, args.train_rows, args.beam_rows))
    print("targets: step <= 1.5, examples/s within 10%, training memory <= 1.2, Beam time per "
          "row within 15%, Beam memory <= 1.3")
    print(f"beam_mem_{b}={beam_mem:.2f} examples_per_s_{t}={rate:.2f}")
    print(f"step_{s}={step:.2f} mem_{t}={mem:.2f} beam_{b}={beam_time:.2f}", flush=True)
    return 0


def main(argv=None) -> int:
    parser = StrictArgumentParser(beam=True, prog="python -m benchmarks.scaling",
                                  description=__doc__.split("\n")[0])
    parser.add_argument("--step_rows", type=_sizes("--step_rows", 2000),
                        default=[10_000, 1_000_000, 10_000_000],
                        help="table rows of the search-step part (comma-separated)")
    parser.add_argument("--train_rows", type=_sizes("--train_rows", 1000),
                        default=[1_000_000, 10_000_000], help="input rows of the training part")
    parser.add_argument("--beam_rows", type=_sizes("--beam_rows", 1000),
                        default=[1_000_000, 16_000_000], help="input rows of the Beam part")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts to run, of {','.join(PARTS)}")
    parser.add_argument("--step_calls", type=int, default=10,
                        help="timed calls per size in part 1 (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per size in part 1")
    parser.add_argument("--batch", type=int, default=2000, help="global batch (parts 1 and 2)")
    parser.add_argument("--train_steps", type=int, default=300,
                        help="search steps per training run (a multiple of 10, >= 20)")
    parser.add_argument("--vocab_cap", type=int, default=10_000,
                        help="the Beam job's default_max_vocab_size in parts 2 and 3 (0: none)")
    parser.add_argument("--small_repeats", type=int, default=2, choices=(1, 2),
                        help="runs of the smallest size in parts 2 and 3 (2: before and after "
                             "the others)")
    parser.add_argument("--workdir", default=None,
                        help="where to create the temporary work directory (default: the "
                             "system's temp dir); only that new directory is removed")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args, beam_args = parser.parse_args(argv)
    args.parts = [p for p in args.parts.split(",") if p.strip()]
    if not args.parts or set(args.parts) - set(PARTS):
        parser.error(f"--parts must list some of {','.join(PARTS)}; received {args.parts}")
    if args.step_calls < 1 or args.warmup < 1 or args.batch < 1:
        parser.error("--step_calls, --warmup and --batch must be >= 1")
    if args.train_steps < 20 or args.train_steps % 10:
        parser.error(f"--train_steps must be a multiple of 10, >= 20; received {args.train_steps}")
    if args.vocab_cap < 0:
        parser.error(f"--vocab_cap must be >= 0; received {args.vocab_cap}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return run_main(lambda: run(args, beam_args or DEFAULT_BEAM))


if __name__ == "__main__":
    sys.exit(main())
