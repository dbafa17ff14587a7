"""`python -m benchmarks.large_vocab`: training and serving with vocabularies of a million entries
or more per field (issue 17, section 3).

    python -m benchmarks.large_vocab [--vocab 10000,1000000] [--train_only 10000000]
        [--fields 2] [--dim 16] [--steps 120] [--batch 2000] [--checkpoints 3] [--repeat 3]
        [--calls_b1 300] [--calls_b2000 50] [--seed 0] [--workdir DIR] [--keep]

Per V in `--vocab` (and `--train_only`), a preprocessed dataset in the exact layout the Beam job
writes (`_AUTODIM_PREPROCESS`, schema.json with the resolved `csv` dataset config, stats.json,
vocab/<field>.txt written by the job's own vocabulary writer, GZIP TFRecord shards of tf.Examples
encoded and framed by the job's own codec and GZIP writer) is built directly from id arrays,
without running the Beam job on millions of rows. Its schema: `--fields` large categorical fields
of V tokens each (8 hex characters, like Criteo's hashed values; Zipf-like counts, ids in the
job's order: descending count, ties by token), 3 small categorical fields and 2 numeric ones
(log-bucket tokens). Rows draw ids with the same Zipf law (about 1% OOV ids). stats.json names no
raw input files, so the export synthesises its warm-up requests from the vocabularies.

Then, with the project's code paths:
- `pipeline.retrain.retrain` (the Python API of `python -m pipeline.retrain`: DeepFM, the large
  fields at `--dim`, the others at 4, LazyAdam on the tables) for exactly `--steps` steps of
  `--batch` rows (one epoch), checkpointing every steps/`--checkpoints` steps with the trainer's
  own Checkpointer. `--repeat` retrainings per V, the V's alternating, each in its own process
  (retrain_in_subprocess says why). ms/step: per retraining the median over the controller's
  compiled calls (the first two, tracing and filling the shuffle buffer, left out) of call time /
  steps, then the median over the retrainings; checkpoint: the median time of every save and the
  size of one on disk; train RSS: the largest peak RSS of a retraining's process (VmHWM, from the
  start of retrain() on, TensorFlow's own ~0.6 GB included);
- for V in `--vocab` (not `--train_only`): `pipeline.export.export` of the last retraining: wall
  time and the version directory's size (its vocabulary assets shown apart);
- that SavedModel loaded with plain `tf.saved_model.load` (timed); its `transform` signature must
  map the raw test rows to the ids in the TFRecords (else the benchmark fails); `serving_default`
  timed at batch 1 and batch 2000 on raw test rows: median and p99 over `--calls_b1` /
  `--calls_b2000` calls after warm-up, the V's calls alternating so load from other processes
  hits every V alike.

One row per V, then (with `--train_only`) `step_<T>_over_<S>=X ckpt_mb_<T>=Y train_rss_mb_<T>=Z`
for the largest train-only V, and last

    step_<L>_over_<S>=X latency_b2000_<L>_over_<S>=Y savedmodel_mb_<L>=Z

with S and L the smallest and largest V of `--vocab` (`step_1m_over_10k=...` by default): X the
ms/step ratio, Y the batch-2000 median latency ratio, Z the SavedModel's size in MB (10^6 bytes).
Memory: the retraining holds 3 x V x (dim + 1) floats per large field (tables, LazyAdam's two
slots); its end releases the slots, then restores the best weights one variable at a time and
writes model.keras from views of the variables (`pipeline.memory`'s "restore copy": at most one
table more). `--fields 2` keeps `--train_only 10000000` well inside a 24 GB machine.
Everything is written into one temporary directory (under `--workdir` if given), removed at the
end unless `--keep`.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from configs.cli import StrictArgumentParser, UsageError, run_main

SMALL_CATEGORICAL = (("cat1", 3), ("cat2", 40), ("cat3", 500))  # (field, tokens)
NUMERIC = ("num1", "num2")
NUMERIC_TOKENS = ("__missing__", "0", "1", "L0", "L1", "L2", "L3", "L4", "L5", "L6", "L7", "L8",
                  "L9", "L10", "L11", "L12", "L13", "L14", "L15", "L16", "L17", "L18", "L19",
                  "L20", "L21", "L22", "2", "-1", "-2", "-3")
SMALL_DIM = 4
ZIPF_EXPONENT = 1.05
OOV_FRACTION = 0.01
EVAL_ROWS = 2000  # valid and test rows (a batch-2000 serving request is 2000 test rows)
WARMUP_CALLS = 2  # compiled calls left out of ms/step (tracing, shuffle buffer)
MB = 1e6
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers

def label(v: int) -> str:
    """10000 -> '10k', 1000000 -> '1m', 2500 -> '2500'."""
    if v % 1_000_000 == 0:
        return f"{v // 1_000_000}m"
    if v % 1000 == 0:
        return f"{v // 1000}k"
    return str(v)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS since the last reset_peak_rss) of this process, MB."""
    fields = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                fields[key] = int(value.split()[0]) * 1024 / MB
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


def reset_peak_rss() -> None:
    """Resets VmHWM to the current RSS (Linux >= 4.0; a no-op elsewhere)."""
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")


def parse_sizes(text: str, flag: str, minimum: int) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()] if text else []
    except ValueError:
        raise UsageError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if any(v < minimum for v in sizes):
        raise UsageError(f"{flag}: every size must be >= {minimum}, got {text!r}")
    return sorted(set(sizes))


# ----------------------------------------------------------------------------- the dataset

def hex_tokens(n: int, salt: int) -> np.ndarray:
    """n distinct 8-hex-character tokens (bytes, S8): an odd multiplier mod 2**32 is a bijection."""
    idx = np.arange(1, n + 1, dtype=np.uint64)
    h = ((idx * np.uint64(2654435761) + np.uint64(salt * 0x9E3779B1)) & np.uint64(0xFFFFFFFF))
    return np.frombuffer(h.astype(">u4").tobytes().hex().encode("ascii"), dtype="S8")


def zipf_counts(n: int, total: float) -> np.ndarray:
    """Non-increasing counts of n tokens, count(rank r) ~ total / r^s, at least 1."""
    ranks = np.arange(1, n + 1, dtype=np.float64)
    weights = ranks ** -ZIPF_EXPONENT
    return np.maximum(1, np.floor(total * weights / weights.sum())).astype(np.int64)


def job_order(tokens: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The job's id order (preprocessing.vocabulary.order_vocabulary): descending count, ties
    by the token's bytes ascending."""
    order = np.lexsort((tokens, -counts))
    return tokens[order], counts[order]


def sample_ids(rng, counts: np.ndarray, n: int) -> np.ndarray:
    """n ids in 1..len(counts) drawn with probability ~ count, ~OOV_FRACTION of them 0."""
    cdf = np.cumsum(counts, dtype=np.float64)
    ids = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right") + 1
    ids = np.minimum(ids, len(counts))
    ids[rng.random(n) < OOV_FRACTION] = 0
    return ids.astype(np.int64)


def dataset_config(big_fields: list[str]):
    """(DatasetSpec, resolved config, config hash) of the `csv` dataset the job would be given
    (configs.preprocess.resolve, as preprocessing.run does)."""
    from configs.preprocess import PreprocessConfig, resolve

    fields = ([{"name": n, "kind": "numeric"} for n in NUMERIC]
              + [{"name": n} for n, _ in SMALL_CATEGORICAL] + [{"name": n} for n in big_fields])
    names = [f["name"] for f in fields]
    cfg = PreprocessConfig(dataset={
        "name": "large_vocab", "fields": fields, "delimiter": "\t", "label_column": "label",
        "columns": ["label", *names], "default_min_count": 1})
    return resolve("csv", cfg)


def write_records(path: Path, encoder, columns: list[np.ndarray], names: list[str],
                  labels: np.ndarray, level: int) -> None:
    """The rows as one GZIP TFRecord file, with the job's codec (preprocessing.example_codec)
    and GZIP writer (preprocessing.writing.GzipFile)."""
    from preprocessing.example_codec import TFRecordFramer, int64_entries
    from preprocessing.writing import GzipFile

    entries = [int64_entries(name, col.tolist()) for name, col in zip(names, columns)]
    records = encoder.assemble(entries, labels.tolist())
    out = GzipFile(open(path, "wb"), level)
    try:
        out.write(TFRecordFramer().frame(records))
    finally:
        out.close()


def build_dataset(data_dir: Path, vocab: int, num_big: int, train_rows: int, seed: int = 0,
                  shards: int = 4, eval_rows: int = EVAL_ROWS, batch: int = 2000) -> dict:
    """Writes the preprocessed dataset; returns {"schema", "test_ids" [rows, M], "test_raw"
    [rows][M] raw strings whose tokens give test_ids, "unique_per_batch": the mean distinct ids
    of the first large field per `batch` training rows (in file order)}."""
    from configs.features import LABEL_KEY, MISSING_TOKEN, SPLITS, DataSchema, FieldSchema
    from pipeline.token_ops import synthetic_numeric_raw
    from preprocessing import output
    from preprocessing.counts import summarize_counts
    from preprocessing.example_codec import ExampleEncoder
    from preprocessing.vocabulary import _WriteVocabFn

    rng = np.random.default_rng(seed)
    big = [f"big{i}" for i in range(1, num_big + 1)]
    spec, resolved, chash = dataset_config(big)
    names = list(spec.field_names)
    data_dir.mkdir(parents=True)
    output.write_marker(str(data_dir))
    (data_dir / "vocab").mkdir()

    vocabs, counts = {}, {}
    for salt, name in enumerate(names):
        if name in NUMERIC:
            tokens = np.array([t.encode() for t in NUMERIC_TOKENS])
            c = np.arange(len(tokens), 0, -1, dtype=np.int64) * 1000  # strictly decreasing
        else:
            size = dict(SMALL_CATEGORICAL).get(name, vocab)
            tokens = hex_tokens(size, salt)
            if name in dict(SMALL_CATEGORICAL):
                tokens = np.concatenate([[MISSING_TOKEN.encode()], tokens[1:]]).astype("S11")
            c = zipf_counts(size, 20.0 * size)
        tokens, c = job_order(tokens, c)
        vocabs[name], counts[name] = tokens, c
    totals: dict[str, float] = {}
    for name in names:  # the job's vocabulary writer, one field at a time
        pairs = list(zip(vocabs[name].astype(str).tolist(), counts[name].tolist()))
        for key, n in _WriteVocabFn(str(data_dir)).process({name: pairs}):
            totals[key] = n
        del pairs

    encoder = ExampleEncoder(names, LABEL_KEY, {n: () for n in names})  # assemble() only
    weights = {n: rng.normal(0.0, 0.5, len(counts[n]) + 1) for n in names if n not in big}
    sizes, test = {}, None
    unique_per_batch = []
    for split, rows in zip(SPLITS, (train_rows, eval_rows, eval_rows)):
        ids = np.stack([sample_ids(rng, counts[n], rows) for n in names], axis=1)
        logit = sum(weights[n][ids[:, i]] for i, n in enumerate(names) if n in weights) - 1.0
        labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        out = data_dir / split
        out.mkdir()
        n_shards = shards if split == "train" else 1
        for s in range(n_shards):  # dealt round-robin, as the job's sink does
            write_records(out / f"part-{s:05d}-of-{n_shards:05d}.tfrecord.gz", encoder,
                          [ids[s::n_shards, i] for i in range(len(names))], names,
                          labels[s::n_shards], resolved["compression_level"])
        sizes[split] = rows
        totals[f"written/{split}"] = rows
        totals[f"label_sum/{split}"] = float(labels.sum())
        if split == "train":
            col = ids[:, names.index(big[0])]
            unique_per_batch = [len(np.unique(col[i:i + batch])) for i in
                                range(0, min(rows, 20 * batch), batch)]
        if split == "test":
            test = ids
    totals["read"] = sum(sizes.values())

    stats = summarize_counts(totals, names)
    stats.update({"dataset": "csv", "input": "benchmarks.large_vocab (built from ids, no raw "
                  "files)", "output": str(data_dir), "config_hash": chash,
                  "max_bad_fraction": resolved["max_bad_fraction"], "vocab_caps": {}})
    (data_dir / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True),
                                         encoding="utf-8")
    schema = DataSchema(
        dataset="csv",
        fields=tuple(FieldSchema(f.name, f.kind, stats["vocab_sizes"][f.name], spec.min_count(f),
                                 spec.max_vocab_size(f)) for f in spec.fields),
        splits=sizes, label_rate=stats["label_rate"]["train"], config=resolved,
        config_hash=chash)
    (data_dir / "schema.json").write_text(schema.to_json(), encoding="utf-8")

    kinds = {f.name: f.kind for f in spec.fields}
    raw = []
    for row in test.tolist():
        values = []
        for name, i in zip(names, row):
            token = vocabs[name][i - 1].decode() if i > 0 else None
            if kinds[name] == "numeric":
                values.append(synthetic_numeric_raw(token) if token else "1e300")
            elif token is None:
                values.append("oov-" + name)  # not a hex token: out of vocabulary
            else:
                values.append("" if token == MISSING_TOKEN else token)
        raw.append(values)
    return {"schema": schema, "test_ids": test, "test_raw": raw,
            "unique_per_batch": float(np.mean(unique_per_batch))}


# ----------------------------------------------------------------------------- the stages

@contextlib.contextmanager
def timed_method(cls, method: str, sink: list, after=None):
    """Replaces cls.method by a wrapper appending (seconds, result) to `sink` (`after(result)`
    first: what makes the call's work complete); restores it on exit."""
    original = getattr(cls, method)

    def wrapper(self, *args, **kwargs):
        t0 = time.perf_counter()
        result = original(self, *args, **kwargs)
        if after is not None:
            after(result)
        sink.append((time.perf_counter() - t0, result))
        return result

    setattr(cls, method, wrapper)
    try:
        yield
    finally:
        setattr(cls, method, original)


def retrain_config(steps: int, batch: int, checkpoints: int):
    from configs.experiment import resolve

    every = max(1, -(-steps // checkpoints))
    return resolve("default", None, [
        "model.backbone=deepfm", f"retrain.batch_size={batch}", "retrain.max_epochs=1",
        f"retrain.checkpoint_every={every}", "retrain.keep_checkpoints=1",
        "retrain.steps_per_call=10", "retrain.embedding_optimizer=lazy_adam"])


def run_retrain(data_dir: Path, model_dir: Path, schema, dim: int, steps: int, batch: int,
                checkpoints: int, strategy) -> dict:
    """pipeline.retrain.retrain for `steps` steps; ms/step, checkpoint time and size, peak RSS."""
    from pipeline import runtime
    from pipeline.retrain import retrain
    from pipeline.retrain_task import RetrainTask

    cfg = retrain_config(steps, batch, checkpoints)
    overrides = {f.name: dim for f in schema.fields if f.name.startswith("big")}
    calls, saves = [], []

    def checkpoint_bytes(prefix):
        return sum(p.stat().st_size for p in Path(prefix).parent.glob(Path(prefix).name + ".*"))

    reset_peak_rss()
    t0 = time.perf_counter()
    with timed_method(RetrainTask, "train", calls, after=lambda r: float(r.loss_sum)), \
            timed_method(runtime.Checkpointer, "save", saves):
        metrics = retrain(str(data_dir), f"fde:{SMALL_DIM}", str(model_dir), cfg, quiet=True,
                          preset="default", strategy=strategy, dim_overrides=overrides)
        sizes = [checkpoint_bytes(prefix) for _, prefix in saves[-1:]]
    wall = time.perf_counter() - t0
    if metrics["steps"] != steps:
        raise RuntimeError(f"the retraining ran {metrics['steps']} steps, expected {steps}")
    per_step = [s / r.steps for s, r in calls[WARMUP_CALLS:]] or [s / r.steps for s, r in calls]
    return {"ms_per_step": 1000.0 * float(np.median(per_step)), "calls": len(calls),
            "ckpt_s": [s for s, _ in saves],
            "ckpt_bytes": sizes[0], "train_rss_mb": rss_mb()[1], "retrain_s": wall,
            "params": metrics["params"]}


_CHILD = ("import json, sys; from benchmarks.large_vocab import retrain_child; "
          "print(json.dumps(retrain_child(**json.loads(sys.argv[1]))))")


def retrain_child(data_dir: str, model_dir: str, dim: int, steps: int, batch: int,
                  checkpoints: int) -> dict:
    """run_retrain in this process (a fresh one: see retrain_in_subprocess)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pipeline.strategy import make_strategy

    strategy = make_strategy(0)  # before any TensorFlow op
    from configs.features import DataSchema

    return run_retrain(Path(data_dir), Path(model_dir), DataSchema.load(data_dir), dim, steps,
                       batch, checkpoints, strategy)


def retrain_in_subprocess(data_dir: Path, model_dir: Path, dim: int, steps: int, batch: int,
                          checkpoints: int) -> dict:
    """run_retrain in a new Python process, so that each retraining's peak RSS (VmHWM) is its
    own, measured from a fresh TensorFlow runtime rather than on top of what earlier retrainings
    left in the allocator's free lists."""
    params = {"data_dir": str(data_dir), "model_dir": str(model_dir), "dim": dim,
              "steps": steps, "batch": batch, "checkpoints": checkpoints}
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=path)
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(params)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the retraining on {data_dir} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_alternating(cases: dict, calls: int, warmup: int) -> dict[str, tuple[float, float]]:
    """{name: (median ms, p99 ms)} of `calls` calls of each case's (fn, inputs) after `warmup`
    untimed ones, the cases called in alternation."""
    for _ in range(warmup):
        for fn, inputs in cases.values():
            fn(**inputs)["probability"].numpy()
    times = {name: [] for name in cases}
    for _ in range(calls):
        for name, (fn, inputs) in cases.items():
            t0 = time.perf_counter()
            fn(**inputs)["probability"].numpy()
            times[name].append((time.perf_counter() - t0) * 1000.0)
    return {name: (float(np.median(t)), float(np.percentile(t, 99))) for name, t in times.items()}


def load_served(version: Path, names: list[str], raw: list[list[str]], ids: np.ndarray) -> dict:
    """Loads the SavedModel (timed), checks its `transform` against the records' ids, and
    returns the batch-1 and batch-2000 inputs of `serving_default`."""
    import tensorflow as tf

    t0 = time.perf_counter()
    loaded = tf.saved_model.load(str(version))
    load_s = time.perf_counter() - t0
    rows = [raw[i % len(raw)] for i in range(2000)]
    want = ids[[i % len(raw) for i in range(2000)]]
    batch = {n: tf.constant([r[k] for r in rows]) for k, n in enumerate(names)}
    got = loaded.signatures["transform"](**batch)["ids"].numpy()
    if not np.array_equal(got, want):
        bad = np.argwhere(got != want)[0]
        raise RuntimeError(f"{version}: transform gives id {got[tuple(bad)]} for field "
                           f"{names[bad[1]]} of test row {bad[0]}, the records have "
                           f"{want[tuple(bad)]}")
    return {"loaded": loaded, "fn": loaded.signatures["serving_default"], "load_s": load_s,
            "b1": {n: tf.constant([raw[0][k]]) for k, n in enumerate(names)}, "b2000": batch}


# ----------------------------------------------------------------------------- main

def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


COLUMNS = ("V", "ms/step", "uniq/batch", "ckpt_MB", "ckpt_s", "train_RSS_MB", "export_s",
           "savedmodel_MB", "assets_MB", "load_s", "b1_med_ms", "b1_p99_ms", "b2000_med_ms",
           "b2000_p99_ms")


def table_row(v: int, r: dict) -> str:
    b1, b2000 = r.get("b1", (None, None)), r.get("b2000", (None, None))
    cells = [str(v), fmt(r["ms_per_step"], ".2f"), fmt(r["unique_per_batch"], ".0f"),
             fmt(r["ckpt_bytes"] / MB, ".1f"), fmt(r["ckpt_s"], ".2f"),
             fmt(r["train_rss_mb"], ".0f"), fmt(r.get("export_s"), ".2f"),
             fmt(r["size"] / MB if "size" in r else None, ".1f"),
             fmt(r["assets"] / MB if "assets" in r else None, ".1f"), fmt(r.get("load_s"), ".2f"),
             fmt(b1[0], ".2f"), fmt(b1[1], ".2f"),
             fmt(b2000[0], ".1f"), fmt(b2000[1], ".1f")]
    return "  ".join(f"{c:>{max(len(h), 9)}}" for c, h in zip(cells, COLUMNS))


def bench(args, root: Path) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pipeline.export import export

    served = args.vocab_sizes
    train_only = [v for v in args.train_only_sizes if v not in served]
    every = served + train_only
    train_rows = args.steps * args.batch
    data, results, loaded = {}, {v: {} for v in every}, {}
    for v in every:
        t0 = time.perf_counter()
        data[v] = build_dataset(root / f"data_{label(v)}", v, args.fields, train_rows,
                                seed=args.seed, batch=args.batch)
        results[v]["unique_per_batch"] = data[v]["unique_per_batch"]
        print(f"V={v:,}: dataset built in {time.perf_counter() - t0:.1f} s "
              f"({len(data[v]['schema'].fields)} fields, {args.fields} of {v:,} tokens; "
              f"{train_rows:,} training rows)", flush=True)

    runs = {v: [] for v in every}
    for rep in range(args.repeat):  # the V's alternate, so a slow phase of the machine hits all
        for v in every:
            model_dir = root / f"retrain_{label(v)}_{rep}"
            r = retrain_in_subprocess(root / f"data_{label(v)}", model_dir, args.dim,
                                      args.steps, args.batch, args.checkpoints)
            runs[v].append(r)
            print(f"V={v:,} run {rep + 1}/{args.repeat}: {args.steps} steps in "
                  f"{r['retrain_s']:.1f} s, {r['ms_per_step']:.2f} ms/step, checkpoint "
                  f"{r['ckpt_bytes'] / MB:.1f} MB in {', '.join(f'{s:.2f}' for s in r['ckpt_s'])}"
                  f" s; peak RSS {r['train_rss_mb']:.0f} MB ({r['params']:,} embedding params)",
                  flush=True)
            if rep < args.repeat - 1 or v in train_only:  # only the last run is exported
                shutil.rmtree(model_dir)
    for v in every:
        rs = runs[v]
        results[v].update(
            ms_per_step=float(np.median([r["ms_per_step"] for r in rs])),
            ckpt_s=float(np.median([s for r in rs for s in r["ckpt_s"]])),
            ckpt_bytes=rs[-1]["ckpt_bytes"], train_rss_mb=max(r["train_rss_mb"] for r in rs))
        if v in train_only:  # its dataset is not exported
            shutil.rmtree(root / f"data_{label(v)}")

    for v in served:
        r = results[v]
        t0 = time.perf_counter()
        version = export(root / f"retrain_{label(v)}_{args.repeat - 1}", root / "exports",
                         f"v{label(v)}", log=lambda *_: None)
        r["export_s"] = time.perf_counter() - t0
        r["size"], r["assets"] = du(version), du(version / "assets")
        gc.collect()
        loaded[v] = load_served(version, list(data[v]["schema"].field_names),
                                data[v]["test_raw"], data[v]["test_ids"])
        r["load_s"] = loaded[v]["load_s"]
        print(f"V={v:,}: exported in {r['export_s']:.1f} s ({r['size'] / MB:.1f} MB), loaded in "
              f"{r['load_s']:.2f} s; its transform maps the raw test rows to the records' ids",
              flush=True)
    for b, calls in ((1, args.calls_b1), (2000, args.calls_b2000)):
        cases = {v: (x["fn"], x[f"b{b}"]) for v, x in loaded.items()}
        for v, timing in time_alternating(cases, calls, warmup=5).items():
            results[v][f"b{b}"] = timing

    print("  ".join(f"{h:>9}" for h in COLUMNS))
    for v in every:
        print(table_row(v, results[v]))
    small, large = results[served[0]], results[served[-1]]
    s, big = label(served[0]), label(served[-1])
    if train_only:
        t, name = results[train_only[-1]], label(train_only[-1])
        print(f"step_{name}_over_{s}={t['ms_per_step'] / small['ms_per_step']:.3f} "
              f"ckpt_mb_{name}={t['ckpt_bytes'] / MB:.1f} "
              f"train_rss_mb_{name}={t['train_rss_mb']:.0f}")
    print(f"step_{big}_over_{s}={large['ms_per_step'] / small['ms_per_step']:.3f} "
          f"latency_b2000_{big}_over_{s}={large['b2000'][0] / small['b2000'][0]:.3f} "
          f"savedmodel_mb_{big}={large['size'] / MB:.1f}")
    return 0


def main(argv=None) -> int:
    parser = StrictArgumentParser(prog="python -m benchmarks.large_vocab",
                                  description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", default="10000,1000000",
                        help="comma-separated V (tokens per large field): trained, exported, "
                             "served (at least two)")
    parser.add_argument("--train_only", default="",
                        help="comma-separated V measured for the step and checkpoint only "
                             "(e.g. 10000000)")
    parser.add_argument("--fields", type=int, default=2, help="large fields (V tokens each)")
    parser.add_argument("--dim", type=int, default=16, help="the large fields' dimension")
    parser.add_argument("--steps", type=int, default=120, help="retraining steps per V")
    parser.add_argument("--batch", type=int, default=2000, help="retraining batch size")
    parser.add_argument("--checkpoints", type=int, default=3,
                        help="checkpoints written during each retraining (median time)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="retrainings per V, the V's alternating (median ms/step)")
    parser.add_argument("--calls_b1", type=int, default=300)
    parser.add_argument("--calls_b2000", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None,
                        help="where the temporary directory is created (default: the system's)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (its path is printed)")
    args = parser.parse_args(argv)
    for flag in ("fields", "dim", "steps", "batch", "checkpoints", "repeat", "calls_b1",
                 "calls_b2000"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")

    def body():
        args.vocab_sizes = parse_sizes(args.vocab, "--vocab", 2)
        args.train_only_sizes = parse_sizes(args.train_only, "--train_only", 2)
        if len(args.vocab_sizes) < 2:
            raise UsageError(f"--vocab needs at least two sizes to compare, got {args.vocab!r}")
        created = None
        if args.workdir and not os.path.isdir(args.workdir):
            os.makedirs(args.workdir)
            created = args.workdir
        root = Path(tempfile.mkdtemp(prefix="bench_large_vocab_", dir=args.workdir))
        try:
            return bench(args, root)
        finally:
            if args.keep:
                print(f"kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
                if created:
                    with contextlib.suppress(OSError):
                        os.rmdir(created)  # only if empty: ours

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
