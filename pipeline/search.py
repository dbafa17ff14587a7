"""`python -m pipeline.search`: the AutoDim dimension search (the paper's Algorithm 1).

Pre-training with alpha frozen at uniform, then alternating updates inside one compiled call:
every step a model-weight update on a training batch, every f steps an alpha update on a
validation batch (first-order DARTS). Writes `model_dir/dims.json` with the argmax dimensions
(`search.derive=argmax`, the paper's Eq. 13) or the argmax checked on validation rows
(`search.derive=validated`, `pipeline/derive.py`).

    python -m pipeline.search --data_dir DIR --model_dir DIR [--config FILE] [--preset NAME]
        [--set key=value ...] [--logical_cpus K] [--quiet]
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

from configs.cli import StrictArgumentParser, run_main
from configs.experiment import ExperimentConfig, preset_for_dataset, resolve, run_hash
from configs.features import DataSchema
from configs.loader import ConfigError, to_dict
from pipeline.flags import add_experiment_flags, make_cli_strategy

DIMS_FILE = "dims.json"


def search_schedule(cfg, train_rows: int) -> dict:
    """Step counts of the two phases and the effective alpha-update period f."""
    s = cfg.search
    steps_per_epoch = max(1, math.ceil(train_rows / s.batch_size))
    pretrain = s.pretrain_steps or int(round(s.pretrain_epochs * steps_per_epoch))
    search = s.search_steps or int(round(s.search_epochs * steps_per_epoch))
    f = s.arch_update_every
    if s.variant == "autodim" and s.min_arch_updates and search > 0:
        if search // f < s.min_arch_updates:
            f = max(1, search // s.min_arch_updates)
    if s.variant == "autodim":
        search = int(math.ceil(search / f) * f)
    updates = search // f if s.variant == "autodim" else search
    arch_lr = s.arch_learning_rate
    if s.arch_lr_budget and updates:
        arch_lr = max(arch_lr, s.arch_lr_budget / updates)
    return {"steps_per_epoch": steps_per_epoch, "pretrain_steps": pretrain,
            "search_steps": search, "arch_update_every": f, "arch_updates": updates,
            "arch_learning_rate": arch_lr}


def param_cost_fn(embedding, search_cfg, vocab_sizes):
    """lambda x mean_m w_m E[d_m] / d_max (w = 1, or the field's vocabulary share x M)."""
    import tensorflow as tf

    if not search_cfg.param_cost:
        return None
    dmax = float(embedding.candidate_dims_matrix.max())
    if search_cfg.param_cost_weighting == "params":
        v = np.asarray(vocab_sizes, np.float32)
        weights = v / v.sum() * len(v)
    else:
        weights = np.ones(len(vocab_sizes), np.float32)
    w = tf.constant(weights)
    lam = float(search_cfg.param_cost)

    def cost():
        return lam * tf.reduce_mean(w * embedding.expected_dims()) / dmax
    return cost


def run_search(data_dir: str, model_dir: str, cfg: ExperimentConfig, *, logical_cpus: int = 0,
               quiet: bool = False, preset: str | None = None, strategy=None) -> dict:
    """Runs (or resumes) a search and returns the dims.json contents."""
    import keras
    import tensorflow as tf

    from models.factory import build_search_model
    from pipeline import runtime, summaries
    from pipeline.progress import Progress
    from pipeline.strategy import make_strategy
    from pipeline.trainer import (Optimizers, StepRunner, anneal_temperature, check_finite,
                                  make_embedding_optimizer, paper_temperature)

    schema = DataSchema.load(data_dir)
    if schema.splits.get("train", 0) <= 0 or schema.splits.get("valid", 0) <= 0:
        raise ConfigError(f"{data_dir}: the search needs non-empty train and valid splits, "
                          f"schema.json has {schema.splits}")
    m, s = cfg.model, cfg.search
    record = {"kind": "search", "preset": preset, "config": to_dict(cfg),
              "config_hash": run_hash(cfg), "schema_hash": schema.schema_hash,
              "data_dir": str(Path(data_dir).resolve())}
    # the stored config is re-hashed (and its differing keys named) with the same run_hash
    model_dir = runtime.prepare_model_dir(model_dir, record, rehash=run_hash)
    strategy = strategy or make_strategy(logical_cpus)
    sched = search_schedule(cfg, schema.splits["train"])
    pretrain, f = sched["pretrain_steps"], sched["arch_update_every"]
    total = pretrain + sched["search_steps"]
    keras.utils.set_random_seed(s.seed)

    vocab_sizes = [fs.vocab_size for fs in schema.fields]
    with strategy.scope():
        model = build_search_model(
            m.backbone, vocab_sizes, candidate_dims=m.candidate_dims,
            lookup=m.lookup, unify=m.unify, candidate_norm=m.candidate_norm, seed=s.seed,
            **runtime.backbone_kwargs(m))
        model(tf.zeros([2, len(schema.fields)], tf.int32), training=False)
        opts = Optimizers(dense=keras.optimizers.Adam(learning_rate=s.learning_rate),
                          embedding=make_embedding_optimizer(s.embedding_optimizer, s.learning_rate),
                          arch=keras.optimizers.Adam(learning_rate=sched["arch_learning_rate"]))
        opts.build(model)
        if s.temperature == "paper":
            temp_fn = paper_temperature(s.temperature_decay, s.temperature_min, pretrain)
        else:
            temp_fn = anneal_temperature(s.temperature_min, pretrain, sched["search_steps"])
        runner = StepRunner(strategy, model, opts, s.batch_size,
                            temperature_var=model.embedding.temperature, temperature_fn=temp_fn,
                            arch_regularizer=param_cost_fn(model.embedding, s, vocab_sizes))
    ckpt = runtime.Checkpointer(model_dir / "ckpt", s.keep_checkpoints, model=model,
                                step=runner.step, **opts.trackables())
    resumed = ckpt.restore_latest()
    step = int(runner.step.numpy())
    progress = Progress(total, quiet=quiet)
    progress.log(f"search: {schema.dataset} {len(schema.fields)} fields, backbone={m.backbone} "
                 f"lookup={m.lookup} unify={m.unify} variant={s.variant}, "
                 f"{strategy.num_replicas_in_sync} replica(s); pretrain {pretrain} + search "
                 f"{sched['search_steps']} steps, alpha every {f} steps "
                 f"(lr {sched['arch_learning_rate']:.3g})"
                 + (f"; resumed at step {step} from {resumed}" if resumed else ""))

    arch_done = max(0, step - pretrain) // f if s.variant == "autodim" else 0
    train_it = iter(runtime.distributed_stream(strategy, data_dir, schema, "train", s.batch_size,
                                               seed=s.seed, skip_batches=step,
                                               shuffle_buffer=s.shuffle_buffer))
    val_it = iter(runtime.distributed_stream(strategy, data_dir, schema, "valid", s.batch_size,
                                             seed=s.seed + 1, skip_batches=arch_done,
                                             shuffle_buffer=s.shuffle_buffer))
    eval_ds = runtime.distributed_eval(strategy, data_dir, schema, "valid", s.batch_size)
    eval_every = s.eval_every or sched["steps_per_epoch"]
    writers = {k: tf.summary.create_file_writer(str(model_dir / k))
               for k in ("train", "valid", summaries.HPARAMS_RUN)}
    names = schema.field_names
    emb = model.embedding
    if not resumed:  # once per run: alpha grouped by field, and the run's HParams session
        summaries.write_alpha_layout(writers["train"], names, m.candidate_dims)
        summaries.write_hparams(writers[summaries.HPARAMS_RUN],
                                search_hparams(cfg, sched, schema, preset))

    def log_alpha(at_step):
        probs = np.asarray(emb.probabilities())
        summaries.write_alpha(writers["train"], at_step, names, m.candidate_dims, probs,
                              emb.chosen_dims())

    def boundary(now, every):
        return (now // every + 1) * every

    last_time = time.monotonic()
    final = {}
    while step < total:
        in_pretrain = step < pretrain
        limit = min(total, pretrain if in_pretrain else total, boundary(step, s.checkpoint_every),
                    boundary(step, eval_every))
        if in_pretrain or s.variant == "autodim_s":
            n = max(1, min(s.steps_per_call, limit - step))
            fn = runner.train if in_pretrain else runner.joint
            loss_sum = fn(train_it, tf.constant(n, tf.int64))
        else:
            groups = max(1, min(max(1, s.steps_per_call // f), (limit - step) // f))
            n = groups * f
            loss_sum = runner.search(train_it, val_it, tf.constant(groups, tf.int64),
                                     tf.constant(f, tf.int64))
        prev, step = step, int(runner.step.numpy())
        check_finite(loss_sum, step, ckpt.directory)
        now = time.monotonic()
        rate = n * s.batch_size / max(now - last_time, 1e-9)
        last_time = now
        progress.update(step, "pretrain" if in_pretrain else "search",
                        loss=float(loss_sum) / n, tau=float(emb.temperature.numpy()))
        if step // eval_every > prev // eval_every or step >= total:
            train_m = runner.read_train_metrics()
            val_m = runner.evaluate(eval_ds)
            summaries.write_scalars(writers["train"], step, {
                "loss": train_m["loss"], "auc": train_m["auc"],
                "temperature": float(emb.temperature.numpy()),
                "learning_rate/model": s.learning_rate,
                "learning_rate/arch": sched["arch_learning_rate"], "examples_per_second": rate})
            summaries.write_scalars(writers["valid"], step, {"loss": val_m["loss"],
                                                             "auc": val_m["auc"]})
            log_alpha(step)
            final = {"step": step, "train_loss": train_m["loss"], "train_auc": train_m["auc"],
                     "valid_loss": val_m["loss"], "valid_auc": val_m["auc"]}
            progress.log(f"step {step}: train loss {train_m['loss']:.4f} auc {train_m['auc']:.4f}"
                         f" | valid loss {val_m['loss']:.4f} auc {val_m['auc']:.4f}"
                         f" | tau {float(emb.temperature.numpy()):.3f}")
        if step // s.checkpoint_every > prev // s.checkpoint_every or step >= total:
            ckpt.save(step)
    progress.close()

    probs = np.asarray(emb.probabilities())
    chosen = emb.chosen_dims()
    log_alpha(step)
    if not final:  # resumed after the last step: evaluate once for the record
        val_m = runner.evaluate(eval_ds)
        final = {"step": step, "valid_loss": val_m["loss"], "valid_auc": val_m["auc"]}
    derivation = {"method": "argmax"}
    if s.derive == "validated":
        from pipeline.derive import derive_validated

        derivation = derive_validated(model, data_dir, schema, s, log=progress.log)
        summaries.write_derivation(writers["train"], step, derivation)
    result = dims_record(schema, cfg, probs, chosen, sched, step, derivation)
    derived = derived_valid_metrics(runner, emb, result, eval_ds)
    final = {**final, "derived_valid_loss": derived["loss"], "derived_valid_auc": derived["auc"]}
    progress.log(f"derived architecture (alpha one-hot on the chosen dims): valid loss "
                 f"{derived['loss']:.4f} auc {derived['auc']:.4f}")
    summaries.write_scalars(writers[summaries.HPARAMS_RUN], step, {
        "hparams/derived_valid_auc": derived["auc"],
        "hparams/derived_valid_logloss": derived["loss"],
        "hparams/embedding_params": result["embedding_params"],
        "hparams/params_share": result["params_share"]})
    for w in writers.values():
        w.flush()
    result["final_metrics"] = final
    runtime.atomic_write_json(model_dir / DIMS_FILE, result)
    progress.log(format_dims(result))
    return result


def search_embedding_name(model_cfg) -> str:
    """The SEARCH_EMBEDDINGS name of a model config's search embedding ("custom" if none)."""
    from configs.experiment import SEARCH_EMBEDDINGS

    for name, settings in SEARCH_EMBEDDINGS.items():
        if all(getattr(model_cfg, k) == v for k, v in settings.items()):
            return name
    return "custom"


def search_hparams(cfg: ExperimentConfig, sched: dict, schema: DataSchema,
                   preset: str | None) -> dict:
    """The settings of a search that its HParams session records: what it searched with (backbone,
    search embedding, candidates), the parameter cost and the temperature/alpha schedule that
    shape alpha (the effective alpha learning rate and update period of `search_schedule`)."""
    m, s = cfg.model, cfg.search
    hparams = {
        "kind": "search", "dataset": schema.dataset, "preset": preset or "",
        "backbone": m.backbone, "search_embedding": search_embedding_name(m),
        "lookup": m.lookup, "unify": m.unify, "candidate_norm": m.candidate_norm,
        "candidate_dims": ",".join(str(d) for d in m.candidate_dims), "variant": s.variant,
        "param_cost": s.param_cost, "param_cost_weighting": s.param_cost_weighting,
        "temperature": s.temperature, "temperature_min": s.temperature_min,
        "arch_lr_budget": s.arch_lr_budget, "min_arch_updates": s.min_arch_updates,
        "arch_learning_rate": float(sched["arch_learning_rate"]),
        "arch_update_every": int(sched["arch_update_every"]),
        "learning_rate": s.learning_rate, "batch_size": s.batch_size, "seed": s.seed,
        "derive": s.derive,
    }
    if s.temperature == "paper":  # the decay only shapes the paper's schedule
        hparams["temperature_decay"] = s.temperature_decay
    return hparams


def derived_valid_metrics(runner, embedding, result: dict, eval_ds) -> dict:
    """Validation loss/AUC (the whole split) of the derived architecture: the supernet with alpha
    set to a hard one-hot on each field's derived dim (pipeline.derive's one-hot evaluation),
    alpha restored bit for bit afterwards."""
    from pipeline.derive import ONE_HOT_LOGIT

    dims = np.asarray([result["fields"][n]["dim"] for n in result["field_order"]], np.float32)
    hit = embedding.candidate_dims_matrix == dims[:, None]
    saved = np.array(embedding.alpha.numpy(), copy=True)
    try:
        embedding.alpha.assign(np.where(hit, ONE_HOT_LOGIT, 0.0).astype(saved.dtype))
        return runner.evaluate(eval_ds)
    finally:
        embedding.alpha.assign(saved)


def dims_record(schema: DataSchema, cfg: ExperimentConfig, probs, chosen, sched, step,
                derivation: dict | None = None) -> dict:
    """dims.json: per field the derived "dim" (what retraining reads) and alpha's probabilities;
    `chosen` are the argmax dims. A validated `derivation` (pipeline.derive) supplies the dims and
    each field also records its "argmax_dim"."""
    derivation = derivation or {"method": "argmax"}
    validated = derivation["method"] == "validated"
    dmax = max(cfg.model.candidate_dims)
    fields = {}
    for fs, p, a in zip(schema.fields, probs, chosen):
        d = int(derivation["dims"][fs.name]) if validated else int(a)
        fields[fs.name] = {"dim": d, "probabilities": [round(float(x), 6) for x in p],
                           "vocab_size": fs.vocab_size, "params": fs.vocab_size * d,
                           "full_params": fs.vocab_size * dmax}
        if validated:
            fields[fs.name]["argmax_dim"] = int(a)
    params = sum(v["params"] for v in fields.values())
    full = sum(v["full_params"] for v in fields.values())
    return {"dataset": schema.dataset, "schema_hash": schema.schema_hash,
            "config_hash": run_hash(cfg), "backbone": cfg.model.backbone,
            "variant": cfg.search.variant, "lookup": cfg.model.lookup, "unify": cfg.model.unify,
            "candidate_dims": list(cfg.model.candidate_dims), "field_order": list(schema.field_names),
            "fields": fields, "embedding_params": params, "full_embedding_params": full,
            "params_share": params / full if full else 0.0, "steps": step, "schedule": sched,
            "derivation": derivation}


def format_dims(result: dict) -> str:
    method = result.get("derivation", {}).get("method", "argmax")
    how = "" if method == "argmax" else f", {method}"
    lines = [f"chosen dimensions ({result['embedding_params']:,} embedding parameters, "
             f"{100 * result['params_share']:.1f}% of all fields at {max(result['candidate_dims'])}"
             f"{how}):"]
    for name in result["field_order"]:
        v = result["fields"][name]
        moved = (f"  (argmax {v['argmax_dim']})"
                 if v.get("argmax_dim", v["dim"]) != v["dim"] else "")
        lines.append(f"  {name:<16} dim {v['dim']:>3}  vocab {v['vocab_size']:>9,}  "
                     f"p=[{' '.join(f'{x:.2f}' for x in v['probabilities'])}]{moved}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = StrictArgumentParser(prog="python -m pipeline.search", description=__doc__)
    add_experiment_flags(parser)
    args = parser.parse_args(argv)

    def body():
        strategy = make_cli_strategy(args.logical_cpus)  # must precede any TensorFlow op
        schema = DataSchema.load(args.data_dir)
        preset = args.preset or preset_for_dataset(schema.dataset)
        cfg = resolve(preset, args.config, args.set)
        run_search(args.data_dir, args.model_dir, cfg, quiet=args.quiet, preset=preset,
                   strategy=strategy)

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
