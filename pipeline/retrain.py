"""`python -m pipeline.retrain`: train the discrete architecture (the paper's Algorithm 2) and
keep the best of K random draws; the training is `pipeline.retrain_task`'s task run by
`pipeline.controller`.

    python -m pipeline.retrain --data_dir DIR --dims SOURCE --model_dir DIR [--backbone NAME]
        [--dim FIELD=D ...] [--trials K] [--config FILE] [--preset NAME] [--set key=value ...]
        [--logical_cpus K | --strategy multi_worker|parameter_server]

SOURCE is a search's dims.json, `fde:D` (every field at D) or `random:SEED` (RaS; `--trials K`
keeps the best of K draws on validation). `--dim FIELD=D` (repeatable) overrides single fields
on top of any SOURCE, for per-field ablations. Early stopping on validation AUC restores the best
weights; the test split is then scored and `metrics.json`, `test_predictions.npz`,
`valid_predictions.npz` and `model.keras` are written to model_dir.
"""
from __future__ import annotations

import hashlib
import json
import sys

import numpy as np

from configs import fileio
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
        if dims.get("over_budget"):
            print(dims["over_budget"], file=sys.stderr, flush=True)
        return _retrain_one(data_dir, schema, dims, fileio.path(model_dir), cfg, quiet=quiet,
                            preset=preset, strategy=strategy)
    results = []
    for k in range(trials):
        dims = apply_dim_overrides(load_dims(dims_source, schema, cfg.model.candidate_dims,
                                             trial=k), dim_overrides, schema)
        sub = fileio.path(model_dir) / "trials" / str(k)
        results.append(_retrain_one(data_dir, schema, dims, sub, cfg, quiet=quiet,
                                    preset=preset, strategy=strategy))
    best_k = int(np.argmax([r["best_valid_auc"] for r in results]))
    best = dict(results[best_k])
    best["trial"] = best_k
    best["trials"] = [{"trial": k, "valid_auc": r["best_valid_auc"], "test_auc": r["test_auc"],
                       "params": r["params"]} for k, r in enumerate(results)]
    from pipeline import runtime

    top = runtime.output_dir(model_dir)  # a multi-worker run's other workers: their own copy
    for name in (MODEL_FILE, SPEC_FILE, PREDICTIONS_FILE, VALID_PREDICTIONS_FILE):
        src = top / "trials" / str(best_k) / name
        if name == VALID_PREDICTIONS_FILE and not src.exists():
            continue  # a trial finished before validation predictions were saved
        fileio.copy_file(src, top / name)
    runtime.atomic_write_json(top / METRICS_FILE, best)
    return best


def _retrain_one(data_dir, schema, dims: dict, model_dir, cfg: ExperimentConfig, *, quiet,
                 preset, strategy) -> dict:
    """One retraining in model_dir (a finished one is read back, not repeated)."""
    from pipeline import runtime
    from pipeline.controller import Controller, EarlyStopping
    from pipeline.retrain_task import RetrainTask, TestScoring

    dims_hash = hashlib.sha256(json.dumps(dims["dims"]).encode()).hexdigest()[:16]
    record = {"kind": "retrain", "preset": preset, "config": to_dict(cfg),
              "config_hash": retrain_hash(cfg), "schema_hash": schema.schema_hash,
              "dims_hash": dims_hash, "dims": dims, "data_dir": fileio.absolute(data_dir)}
    model_dir = runtime.prepare_model_dir(model_dir, record, rehash=retrain_hash)
    # finished already (by the chief, in a multi-worker run): a rerun is a no-op
    metrics_path = runtime.shared_dir(model_dir) / METRICS_FILE
    if metrics_path.exists():
        return json.loads(metrics_path.read_text(encoding="utf-8"))
    task = RetrainTask(strategy, data_dir, schema, dims, cfg, preset=preset)
    stopping = EarlyStopping(strategy, task.model, model_dir, cfg.retrain.patience)
    scoring = TestScoring(task, stopping, model_dir)
    Controller(task, model_dir, task.settings(), hooks=[stopping, scoring], quiet=quiet).run()
    result = scoring.result
    # the model and everything it holds are freed now, not at some later collection: a next
    # retraining in this process (trials, pipeline.run, --param_costs) must not hold both
    del task, stopping, scoring
    runtime.collect_garbage()
    return result


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


def save_valid_predictions(model, data_dir, schema, model_dir, batch_size: int):
    """Writes the validation split's labels and probabilities (for `pipeline.tuning`'s paired
    comparison of candidates) to model_dir/valid_predictions.npz."""
    from pipeline import runtime

    labels, probs = predict_split(model, data_dir, schema, "valid", batch_size)
    return runtime.save_npz(fileio.path(model_dir) / VALID_PREDICTIONS_FILE, labels=labels,
                            probabilities=probs)


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
        # the strategy must precede any TensorFlow op
        strategy = make_cli_strategy(args.logical_cpus, args.strategy)
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
