"""`python -m benchmarks.serving [--rows N]`: serving latency and size, AutoDim vs FDE-32.

Builds a synthetic Criteo-format dataset (preprocessing.synthetic) in a temporary directory,
preprocesses it with the real Beam job (in-process DirectRunner), builds two DeepFM re-training
models on it and exports both with pipeline.export:

- AutoDim-like: mixed dims (most fields 2..8, a few 24..32, projected to 32 with per-field
  linear transforms for the FM term: `unify=linear`, `mlp_input=raw`, what pipeline.retrain
  trains with a search's dims.json by default; `--mlp_input unified` feeds the MLP the projected
  embeddings instead, which pipeline.export folds into the first MLP layer unless `--no_fold`);
- FDE-32: every field at 32 with `unify=zero_pad` (a plain embedding, no projection).

Weights are untrained (latency and size do not depend on their values). Both SavedModels are
loaded with tf.saved_model.load and their `serving_default` signatures called on raw string rows
of the test split at batch 1 and batch 2000: median and p99 over repeated calls after warm-up.
The two models' calls alternate (AutoDim, FDE, AutoDim, ...), so load from other processes on
a shared machine hits both alike and the ratio stays meaningful.
Size = bytes of the version directory (du). The last line is

    ad_over_fde_latency_b2000=X ad_over_fde_size=Y p99_b1_ms=Z

(X: AutoDim/FDE median latency at batch 2000; Y: AutoDim/FDE size; Z: AutoDim's p99 at batch 1).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from configs.cli import StrictArgumentParser
from configs.experiment import MLP_INPUTS

# Most fields small, a few wide (the shape of the paper's Table 4 selections).
AUTODIM_PATTERN = [2, 4, 2, 8, 2, 2, 4, 8, 2, 32, 2, 4, 2, 2, 8, 2, 24, 4, 2, 2]
FDE_DIM = 32


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build_model_dir(data_dir: Path, model_dir: Path, dims: list[int], unify: str,
                    mlp_input: str = "unified") -> Path:
    import keras
    import tensorflow as tf

    from configs.features import DataSchema
    from models.factory import build_retrain_model

    schema = DataSchema.load(data_dir)
    vocab_sizes = [f.vocab_size for f in schema.fields]
    keras.utils.set_random_seed(0)
    model = build_retrain_model("deepfm", vocab_sizes, dims, unify=unify, output_dim=FDE_DIM,
                                mlp_input=mlp_input, hidden_units=(400, 400), dropout=0.0)
    model(tf.zeros([2, len(vocab_sizes)], tf.int32), training=False)
    model_dir.mkdir(parents=True)
    model.save(model_dir / "model.keras")
    spec = {"backbone": "deepfm", "vocab_sizes": vocab_sizes, "dims": dims, "unify": unify,
            "output_dim": FDE_DIM, "mlp_input": mlp_input, "mlp_units": [400, 400], "dropout": 0.0,
            "field_names": list(schema.field_names), "schema_hash": schema.schema_hash,
            "data_dir": str(data_dir.resolve())}
    (model_dir / "model_spec.json").write_text(json.dumps(spec), encoding="utf-8")
    return model_dir


def raw_test_rows(raw: Path, names) -> list[list[str]]:
    from configs.features import dataset_spec
    from preprocessing.formats import line_parser, split_index

    parser = line_parser(dataset_spec("criteo"))
    rows = []
    with open(raw, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if split_index(raw.name, line_no, (0.8, 0.1, 0.1), 0) == 2:
                rows.append(list(parser.split(line.rstrip("\n"), line_no)[0][1:]))
    return rows


def time_calls(fns: dict, inputs, calls: int, warmup: int) -> dict[str, tuple[float, float]]:
    """{name: (median ms, p99 ms)} of `calls` calls per function after `warmup` untimed ones,
    the functions called in alternation."""
    for _ in range(warmup):
        for fn in fns.values():
            fn(**inputs)["probability"].numpy()
    times = {name: [] for name in fns}
    for _ in range(calls):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(**inputs)["probability"].numpy()
            times[name].append((time.perf_counter() - t0) * 1000.0)
    return {name: (float(np.median(t)), float(np.percentile(t, 99))) for name, t in times.items()}


def main(argv=None) -> int:
    parser = StrictArgumentParser(prog="python -m benchmarks.serving",
                                  description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20000, help="synthetic raw rows")
    parser.add_argument("--calls_b1", type=int, default=300)
    parser.add_argument("--calls_b2000", type=int, default=100)
    parser.add_argument("--mlp_input", choices=MLP_INPUTS, default="raw",
                        help="the AutoDim model's MLP input (retrain's default: raw)")
    parser.add_argument("--no_fold", action="store_true",
                        help="export the unified AutoDim model without folding its projections")
    parser.add_argument("--keep", default=None, help="work directory to keep (default: temp)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from configs.features import DataSchema
    from pipeline.export import export
    from preprocessing import run as run_mod
    from preprocessing.synthetic import generate

    with tempfile.TemporaryDirectory(prefix="bench_serving_") as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        raw = root / "raw.txt"
        generate(raw, args.rows, seed=0)
        data = root / "data"
        t0 = time.perf_counter()
        run_mod.run(["--dataset", "criteo", "--input", str(raw), "--data_dir", str(data),
                     "--runner=DirectRunner", "--direct_running_mode=in_memory"])
        schema = DataSchema.load(data)
        names = list(schema.field_names)
        m = len(names)
        ad_dims = [AUTODIM_PATTERN[i % len(AUTODIM_PATTERN)] for i in range(m)]
        print(f"data: {args.rows} rows, {m} fields, total vocab "
              f"{sum(f.vocab_size for f in schema.fields):,} ({time.perf_counter() - t0:.0f}s); "
              f"AutoDim dims {ad_dims}")
        variants = {"autodim": (ad_dims, "linear", args.mlp_input),
                    "fde32": ([FDE_DIM] * m, "zero_pad", "unified")}
        rows = raw_test_rows(raw, names)
        big = [rows[i % len(rows)] for i in range(2000)]
        batches = {1: {n: tf.constant([rows[0][k]]) for k, n in enumerate(names)},
                   2000: {n: tf.constant([r[k] for r in big]) for k, n in enumerate(names)}}
        results, fns = {}, {}
        for name, (dims, unify, mlp_input) in variants.items():
            model_dir = build_model_dir(data, root / f"model_{name}", dims, unify, mlp_input)
            version = export(model_dir, root / "exports", name, fold=not args.no_fold,
                             log=lambda *_: None)
            fns[name] = tf.saved_model.load(str(version)).signatures["serving_default"]
            emb = sum(f.vocab_size * d for f, d in zip(schema.fields, dims, strict=True))
            results[name] = {"size": du(version), "params": emb, "unify": unify}
        for b, calls in ((1, args.calls_b1), (2000, args.calls_b2000)):
            for name, timing in time_calls(fns, batches[b], calls, warmup=10).items():
                results[name][f"b{b}"] = timing
        for name, r in results.items():
            print(f"{name:8s} unify={r['unify']:8s} embedding params {r['params']:>9,}  "
                  f"size {r['size']:>10,} B"
                  f"  b1 median {r['b1'][0]:.2f} ms p99 {r['b1'][1]:.2f} ms"
                  f"  b2000 median {r['b2000'][0]:.1f} ms p99 {r['b2000'][1]:.1f} ms")
        ad, fde = results["autodim"], results["fde32"]
        print(f"ad_over_fde_latency_b2000={ad['b2000'][0] / fde['b2000'][0]:.3f} "
              f"ad_over_fde_size={ad['size'] / fde['size']:.3f} p99_b1_ms={ad['b1'][1]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
