"""`python -m pipeline.retrain`: train the discrete architecture (the paper's Algorithm 2).

    python -m pipeline.retrain --data_dir DIR --dims SOURCE --model_dir DIR [--backbone NAME]
        [--dim FIELD=D ...] [--trials K] [--config FILE] [--preset NAME] [--set key=value ...]
        [--logical_cpus K]

SOURCE is a search's dims.json, `fde:D` (every field at D) or `random:SEED` (RaS; `--trials K`
keeps the best of K draws on validation). `--dim FIELD=D` (repeatable) overrides single fields
on top of any SOURCE, for per-field ablations. Early stopping on validation AUC restores the best
weights; the test split is then scored and `metrics.json`, `test_predictions.npz`,
`valid_predictions.npz` and `model.keras` are written to model_dir.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from configs.cli import StrictArgumentParser, run_main
from configs.experiment import ExperimentConfig, preset_for_dataset, resolve, retrain_hash
from configs.features import DataSchema
from configs.loader import ConfigError, load_yaml, merge, parse_set_overrides, to_dict
from pipeline.dims import apply_dim_overrides, dims_path, load_dims, parse_dim_overrides
from pipeline.flags import add_experiment_flags, make_cli_strategy

METRICS_FILE = "metrics.json"
MODEL_FILE = "model.keras"
SPEC_FILE = "model_spec.json"
PREDICTIONS_FILE = "test_predictions.npz"
VALID_PREDICTIONS_FILE = "valid_predictions.npz"  # at the best weights; pipeline.tuning reads it


def retrain(data_dir: str, dims_source: str, model_dir: str, cfg: ExperimentConfig, *,
            trials: int = 1, quiet: bool = False, preset: str | None = None, strategy=None,
            logical_cpus: int = 0, trial_index: int = 0, dim_overrides: dict | None = None) -> dict:
    """Retrains (or resumes) and returns metrics.json's contents; with trials > 1 (random dims)
    trains each draw in model_dir/trials/K and keeps the best on validation AUC. dim_overrides
    ({field: D}) replace single fields' dimensions of every draw."""
    schema = DataSchema.load(data_dir)
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    if trials > 1 and not dims_source.startswith("random:"):
        raise ConfigError("--trials > 1 only makes sense with --dims random:SEED")
    if strategy is None:
        from pipeline.strategy import make_strategy
        strategy = make_strategy(logical_cpus)
    if trials == 1:
        dims = apply_dim_overrides(
            load_dims(dims_source, schema, cfg.model.candidate_dims, trial=trial_index),
            dim_overrides, schema)
        return _retrain_one(data_dir, schema, dims, Path(model_dir), cfg, quiet=quiet,
                            preset=preset, strategy=strategy)
    results = []
    for k in range(trials):
        dims = apply_dim_overrides(load_dims(dims_source, schema, cfg.model.candidate_dims,
                                             trial=k), dim_overrides, schema)
        sub = Path(model_dir) / "trials" / str(k)
        results.append(_retrain_one(data_dir, schema, dims, sub, cfg, quiet=quiet,
                                    preset=preset, strategy=strategy))
    best_k = int(np.argmax([r["best_valid_auc"] for r in results]))
    best = dict(results[best_k])
    best["trial"] = best_k
    best["trials"] = [{"trial": k, "valid_auc": r["best_valid_auc"], "test_auc": r["test_auc"],
                       "params": r["params"]} for k, r in enumerate(results)]
    top = Path(model_dir)
    for name in (MODEL_FILE, SPEC_FILE, PREDICTIONS_FILE, VALID_PREDICTIONS_FILE):
        src = top / "trials" / str(best_k) / name
        if name == VALID_PREDICTIONS_FILE and not src.exists():
            continue  # a trial finished before validation predictions were saved
        shutil.copy2(src, top / name)
    from pipeline.runtime import atomic_write_json
    atomic_write_json(top / METRICS_FILE, best)
    return best


def _retrain_one(data_dir, schema, dims: dict, model_dir: Path, cfg: ExperimentConfig, *, quiet,
                 preset, strategy) -> dict:
    import keras
    import tensorflow as tf

    from models.factory import build_retrain_model, effective_mlp_input
    from models.params import parameter_report
    from pipeline import runtime, summaries
    from pipeline.progress import Progress
    from pipeline.evaluation import numpy_auc, numpy_logloss
    from pipeline.trainer import Optimizers, StepRunner, check_finite, make_embedding_optimizer

    m, r = cfg.model, cfg.retrain
    dims_list = dims["dims"]
    dims_hash = hashlib.sha256(json.dumps(dims_list).encode()).hexdigest()[:16]
    record = {"kind": "retrain", "preset": preset, "config": to_dict(cfg),
              "config_hash": retrain_hash(cfg), "schema_hash": schema.schema_hash,
              "dims_hash": dims_hash, "dims": dims, "data_dir": str(Path(data_dir).resolve())}
    model_dir = runtime.prepare_model_dir(model_dir, record, rehash=retrain_hash)
    metrics_path = model_dir / METRICS_FILE
    if metrics_path.exists():  # finished already: a rerun is a no-op
        return json.loads(metrics_path.read_text(encoding="utf-8"))

    spe = max(1, -(-schema.splits["train"] // r.batch_size))
    max_steps = max(1, int(round(r.max_epochs * spe)))
    eval_every = r.eval_every or spe
    vocab_sizes = [f.vocab_size for f in schema.fields]
    # unify to the largest chosen dimension, not the largest candidate: no field needs more, and
    # the interaction and MLP input then cost no more than the widest field requires
    output_dim = max(dims_list)
    mlp_input = effective_mlp_input(m.backbone, r.mlp_input)
    spec = {"backbone": m.backbone, "vocab_sizes": vocab_sizes, "dims": dims_list,
            "unify": r.unify, "output_dim": int(output_dim), "mlp_input": mlp_input,
            "mlp_units": list(m.mlp_units),
            "dropout": m.dropout, "field_names": list(schema.field_names),
            "schema_hash": schema.schema_hash, "data_dir": str(Path(data_dir).resolve())}
    keras.utils.set_random_seed(r.seed)
    with strategy.scope():
        model = build_retrain_model(m.backbone, vocab_sizes, dims_list, unify=r.unify,
                                    output_dim=int(output_dim), mlp_input=mlp_input,
                                    **runtime.backbone_kwargs(m))
        model(tf.zeros([2, len(vocab_sizes)], tf.int32), training=False)
        opts = Optimizers(dense=keras.optimizers.Adam(learning_rate=r.learning_rate),
                          embedding=make_embedding_optimizer(r.embedding_optimizer, r.learning_rate))
        opts.build(model)
        runner = StepRunner(strategy, model, opts, r.batch_size)
        best_auc = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_auc")
        bad_evals = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_evals")
    ckpt = runtime.Checkpointer(model_dir / "ckpt", r.keep_checkpoints, model=model,
                                step=runner.step, best_auc=best_auc, bad_evals=bad_evals,
                                **opts.trackables())
    best_ckpt = tf.train.Checkpoint(model=runtime.model_state(model))
    best_prefix = str(model_dir / "best" / "weights")
    resumed = ckpt.restore_latest()
    step = int(runner.step.numpy())
    progress = Progress(max_steps, quiet=quiet)
    report = parameter_report(model)
    progress.log(f"retrain: {schema.dataset} backbone={m.backbone} dims from {dims['source']} "
                 f"({report['embedding']:,} embedding params), max {max_steps} steps"
                 + (f"; resumed at step {step}" if resumed else ""))
    writers = {k: tf.summary.create_file_writer(str(model_dir / k))
               for k in ("train", "valid", summaries.HPARAMS_RUN)}
    if not resumed:
        # the session's own run holds only the metrics of the chosen (best) model, written at the
        # end: the valid run's last `auc` is the last evaluation, not the restored best
        summaries.write_hparams(writers[summaries.HPARAMS_RUN], {
            "kind": "retrain", "dataset": schema.dataset, "preset": preset or "",
            "backbone": m.backbone, "dims_kind": dims["kind"], "dims_source": dims["source"],
            "unify": r.unify, "mlp_input": mlp_input,
            "embedding_params": int(report["embedding"]),
            "learning_rate": r.learning_rate, "batch_size": r.batch_size})
    train_it = iter(runtime.distributed_stream(strategy, data_dir, schema, "train", r.batch_size,
                                               seed=r.seed, skip_batches=step,
                                               shuffle_buffer=r.shuffle_buffer))
    eval_ds = runtime.distributed_eval(strategy, data_dir, schema, "valid", r.batch_size)
    started = time.monotonic()
    trained_steps = 0
    stopped_early = False
    while step < max_steps and int(bad_evals.numpy()) < r.patience:
        limit = min(max_steps, (step // eval_every + 1) * eval_every,
                    (step // r.checkpoint_every + 1) * r.checkpoint_every)
        n = max(1, min(r.steps_per_call, limit - step))
        t0 = time.monotonic()
        loss_sum = runner.train(train_it, tf.constant(n, tf.int64))
        prev, step = step, int(runner.step.numpy())
        check_finite(loss_sum, step, ckpt.directory)
        trained_steps += n
        rate = n * r.batch_size / max(time.monotonic() - t0, 1e-9)
        progress.update(step, "retrain", loss=float(loss_sum) / n)
        if step // eval_every > prev // eval_every or step >= max_steps:
            tm = runner.read_train_metrics()
            vm = runner.evaluate(eval_ds)
            summaries.write_scalars(writers["train"], step, {"loss": tm["loss"], "auc": tm["auc"],
                                    "examples_per_second": rate, "learning_rate/model": r.learning_rate})
            summaries.write_scalars(writers["valid"], step, {"loss": vm["loss"], "auc": vm["auc"]})
            improved = vm["auc"] > float(best_auc.numpy())
            if improved:
                best_auc.assign(vm["auc"])
                bad_evals.assign(0)
                best_ckpt.write(best_prefix)
            else:
                bad_evals.assign_add(1)
            progress.log(f"step {step}: train loss {tm['loss']:.4f} | valid loss {vm['loss']:.4f} "
                         f"auc {vm['auc']:.4f}{' (best)' if improved else ''}")
            stopped_early = int(bad_evals.numpy()) >= r.patience
        if step // r.checkpoint_every > prev // r.checkpoint_every or step >= max_steps or stopped_early:
            ckpt.save(step)
    progress.close()
    train_seconds = time.monotonic() - started

    best_ckpt.read(best_prefix).assert_existing_objects_matched()
    labels, probs = predict_split(model, data_dir, schema, "test", r.batch_size)
    np.savez_compressed(model_dir / PREDICTIONS_FILE, labels=labels, probabilities=probs)
    with np.load(save_valid_predictions(model, data_dir, schema, model_dir, r.batch_size)) as valid:
        best_valid_logloss = numpy_logloss(valid["labels"], valid["probabilities"])
    model.save(model_dir / MODEL_FILE)
    runtime.atomic_write_json(model_dir / SPEC_FILE, spec)
    metrics = {
        "dataset": schema.dataset, "schema_hash": schema.schema_hash, "backbone": m.backbone,
        "dims_source": dims["source"], "dims_kind": dims["kind"],
        "dims": dict(zip(schema.field_names, dims_list)),
        "test_auc": numpy_auc(labels, probs), "test_logloss": numpy_logloss(labels, probs),
        "test_rows": int(labels.size), "best_valid_auc": float(best_auc.numpy()),
        "best_valid_logloss": best_valid_logloss,
        "params": int(report["embedding"]), "parameter_report": report,
        "steps": step, "stopped_early": stopped_early, "train_seconds": train_seconds,
        "examples_per_second": trained_steps * r.batch_size / max(train_seconds, 1e-9),
    }
    with writers["valid"].as_default(step=step):
        tf.summary.scalar("test/auc", metrics["test_auc"])
        tf.summary.scalar("test/logloss", metrics["test_logloss"])
    # the HParams session's metrics: those of the model that was kept (best validation AUC)
    summaries.write_scalars(writers[summaries.HPARAMS_RUN], step, {
        "hparams/best_valid_auc": metrics["best_valid_auc"],
        "hparams/best_valid_logloss": metrics["best_valid_logloss"],
        "hparams/test_auc": metrics["test_auc"], "hparams/test_logloss": metrics["test_logloss"],
        "hparams/embedding_params": metrics["params"]})
    for w in writers.values():
        w.flush()
    runtime.atomic_write_json(metrics_path, metrics)
    progress.log(f"test auc {metrics['test_auc']:.4f} logloss {metrics['test_logloss']:.4f} "
                 f"params {metrics['params']:,} -> {metrics_path}")
    return metrics


def predict_split(model, data_dir, schema, split: str, batch_size: int):
    """Labels and probabilities of every record of `split`, in file order."""
    import tensorflow as tf

    from pipeline import input as input_lib

    ds = input_lib.make_dataset(data_dir, schema, split, batch_size, shuffle=False, repeat=False,
                                seed=None)

    @tf.function(reduce_retracing=True)  # the last, partial batch must not retrace
    def scores(ids):
        return tf.sigmoid(model(ids, training=False))

    labels, probs = [], []
    for ids, y in ds:
        labels.append(y.numpy())
        probs.append(scores(ids).numpy())
    return np.concatenate(labels), np.concatenate(probs)


def save_valid_predictions(model, data_dir, schema, model_dir: Path, batch_size: int) -> Path:
    """Writes the validation split's labels and probabilities (for `pipeline.tuning`'s paired
    comparison of candidates) to model_dir/valid_predictions.npz."""
    labels, probs = predict_split(model, data_dir, schema, "valid", batch_size)
    path = Path(model_dir) / VALID_PREDICTIONS_FILE
    np.savez_compressed(path, labels=labels, probabilities=probs)
    return path


def _search_backbone(source: str, config_file: str | None, set_overrides: list[str]) -> str | None:
    """The backbone a dims.json was searched with, used when none is asked for: without
    `--backbone`, `--config` or `--set model.backbone=...` the retraining keeps the search's
    backbone, not the preset's. None for fde:D / random:SEED (and for a file that load_dims will
    refuse with its own error)."""
    explicit = [parse_set_overrides(set_overrides)]
    if config_file:
        explicit.append(load_yaml(config_file))
    if any("backbone" in (d.get("model") or {}) for d in explicit):
        return None
    if source.startswith(("fde:", "random:")):
        return None
    try:
        backbone = json.loads(dims_path(source).read_text(encoding="utf-8")).get("backbone")
    except (OSError, ValueError, AttributeError):
        return None
    return backbone if isinstance(backbone, str) else None


def main(argv=None) -> int:
    parser = StrictArgumentParser(prog="python -m pipeline.retrain", description=__doc__)
    add_experiment_flags(parser)
    parser.add_argument("--dims", required=True, help="dims.json, fde:D or random:SEED")
    parser.add_argument("--backbone", help="retrain with another backbone than the search's "
                        "(default: a dims.json's own backbone; fde:/random: the preset's)")
    parser.add_argument("--dim", action="append", default=[], metavar="FIELD=D",
                        help="override one field's dimension on top of --dims (repeatable)")
    parser.add_argument("--trials", type=int, default=1, help="RaS: best of K random draws")
    args = parser.parse_args(argv)

    def body():
        strategy = make_cli_strategy(args.logical_cpus)  # must precede any TensorFlow op
        schema = DataSchema.load(args.data_dir)
        preset = args.preset or preset_for_dataset(schema.dataset)
        cfg = resolve(preset, args.config, args.set)
        backbone = args.backbone or _search_backbone(args.dims, args.config, args.set)
        if backbone:
            cfg = merge(cfg, {"model": {"backbone": backbone}})
        retrain(args.data_dir, args.dims, args.model_dir, cfg, trials=args.trials,
                quiet=args.quiet, preset=preset, strategy=strategy,
                dim_overrides=parse_dim_overrides(args.dim))

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
