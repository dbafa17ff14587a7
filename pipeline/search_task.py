"""The dimension search as a task for `pipeline.controller`: the supernet, its optimizers and
compiled calls (the paper's Algorithm 1), and its hooks (alpha in TensorBoard after every
evaluation; at the end the derivation of the dimensions and `dims.json`)."""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from configs import fileio
from pipeline import budget as budget_lib
from pipeline import runtime, summaries
from pipeline.controller import CallResult, Controller, EvalLogs, Hook, LoopSettings, Task
from pipeline.parameter_server import dispatch
from pipeline.trainer import (
    Optimizers,
    StepRunner,
    anneal_temperature,
    make_embedding_optimizer,
    paper_temperature,
)


def param_cost_fn(embedding, search_cfg, vocab_sizes):
    """lambda x mean_m w_m E[d_m] / d_max (w = 1, or the field's vocabulary share x M). None with
    a budget (`pipeline.budget.BudgetConstraint`'s multiplier then weighs the parameters)."""
    if not search_cfg.param_cost or budget_lib.requested(search_cfg):
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


class SearchTask(Task):
    """Pre-training with alpha frozen at uniform, then either `groups` x [an alpha update on a
    validation batch, f weight updates] per compiled call (`autodim`) or joint updates on the
    same training batch (`autodim_s`). `sched` is `pipeline.search.search_schedule`'s."""

    def __init__(self, strategy, data_dir: str, schema, cfg, sched: dict,
                 preset: str | None = None):
        from models.factory import build_search_model

        m, s = cfg.model, cfg.search
        self.strategy, self.data_dir, self.schema, self.cfg = strategy, data_dir, schema, cfg
        self.sched, self.preset = sched, preset
        self.pretrain, self.f = sched["pretrain_steps"], sched["arch_update_every"]
        self.total = self.pretrain + sched["search_steps"]
        keras.utils.set_random_seed(s.seed)
        vocab_sizes = [fs.vocab_size for fs in schema.fields]
        with strategy.scope():
            model = build_search_model(
                m.backbone, vocab_sizes, candidate_dims=m.candidate_dims,
                lookup=m.lookup, unify=m.unify, candidate_norm=m.candidate_norm, seed=s.seed,
                **runtime.backbone_kwargs(m))
            model(tf.zeros([2, len(schema.fields)], tf.int32), training=False)
            opts = Optimizers(
                dense=keras.optimizers.Adam(learning_rate=s.learning_rate),
                embedding=make_embedding_optimizer(s.embedding_optimizer, s.learning_rate),
                arch=keras.optimizers.Adam(learning_rate=sched["arch_learning_rate"]))
            opts.build(model)
            if s.temperature == "paper":
                temp_fn = paper_temperature(s.temperature_decay, s.temperature_min, self.pretrain)
            else:
                temp_fn = anneal_temperature(s.temperature_min, self.pretrain,
                                             sched["search_steps"])
            self.budget = budget_lib.resolve(s, vocab_sizes, m.candidate_dims)
            self.constraint = None if self.budget is None else budget_lib.BudgetConstraint(
                model.embedding, vocab_sizes, self.budget, s.budget_multiplier_lr)
            self.runner = StepRunner(
                strategy, model, opts, s.batch_size, temperature_var=model.embedding.temperature,
                temperature_fn=temp_fn,
                arch_regularizer=param_cost_fn(model.embedding, s, vocab_sizes),
                arch_constraint=self.constraint)
        self.model, self.opts, self.embedding = model, opts, model.embedding

    def settings(self) -> LoopSettings:
        s = self.cfg.search
        return LoopSettings(total_steps=self.total, steps_per_call=s.steps_per_call,
                            eval_every=s.eval_every or self.sched["steps_per_epoch"],
                            checkpoint_every=s.checkpoint_every,
                            keep_checkpoints=s.keep_checkpoints, global_batch_size=s.batch_size)

    def trackables(self) -> dict:
        extra = {} if self.constraint is None else {
            "budget_multiplier": self.constraint.multiplier}
        return {"model": self.model, "step": self.runner.step, **self.opts.trackables(), **extra}

    def start(self, step: int) -> None:
        s = self.cfg.search
        arch_done = max(0, step - self.pretrain) // self.f if s.variant == "autodim" else 0
        self.train_it = iter(runtime.distributed_stream(
            self.strategy, self.data_dir, self.schema, "train", s.batch_size, seed=s.seed,
            skip_batches=step, shuffle_buffer=s.shuffle_buffer))
        self.val_it = iter(runtime.distributed_stream(
            self.strategy, self.data_dir, self.schema, "valid", s.batch_size, seed=s.seed + 1,
            skip_batches=arch_done, shuffle_buffer=s.shuffle_buffer))
        self.eval_ds = runtime.distributed_eval(self.strategy, self.data_dir, self.schema,
                                                "valid", s.batch_size)

    def phase_end(self, step: int) -> int | None:
        return self.pretrain if step < self.pretrain else None

    def train(self, step: int, budget: int) -> CallResult:
        # dispatch: one call here, or under a ParameterServerStrategy one per worker
        if step < self.pretrain or self.cfg.search.variant == "autodim_s":
            fn = self.runner.train if step < self.pretrain else self.runner.joint
            loss_sum = dispatch(self.strategy, fn, budget,
                                lambda n: (self.train_it, tf.constant(n, tf.int64)))
            return CallResult(budget, loss_sum, "pretrain" if step < self.pretrain else "search")
        groups = max(1, budget // self.f)  # whole groups of f steps (at least one)
        f = tf.constant(self.f, tf.int64)
        loss_sum = dispatch(self.strategy, self.runner.search, groups,
                            lambda g: (self.train_it, self.val_it, tf.constant(g, tf.int64), f))
        return CallResult(groups * self.f, loss_sum, "search")

    def release_training(self) -> None:
        self.runner.release_training()
        self.opts = self.train_it = self.val_it = None

    def temperature(self) -> float:
        return float(self.embedding.temperature.numpy())

    def train_scalars(self) -> dict:
        budget = {} if self.constraint is None else self.constraint.scalars()
        return {"temperature": self.temperature(),
                "learning_rate/model": self.cfg.search.learning_rate,
                "learning_rate/arch": self.sched["arch_learning_rate"], **budget}

    def progress_values(self) -> dict:
        return {"tau": self.temperature()}

    def describe(self, step: int, resumed: str | None) -> str:
        m, s, sched = self.cfg.model, self.cfg.search, self.sched
        return (f"search: {self.schema.dataset} {len(self.schema.fields)} fields, "
                f"backbone={m.backbone} lookup={m.lookup} unify={m.unify} variant={s.variant}, "
                f"{self.strategy.num_replicas_in_sync} replica(s); pretrain {self.pretrain} + "
                f"search {sched['search_steps']} steps, alpha every {self.f} steps "
                f"(lr {sched['arch_learning_rate']:.3g})"
                + (f"; budget {self.budget.params:,} embedding parameters "
                   f"({self.budget.flag} {budget_lib.format_value(self.budget.value)}"
                   + (", not below the largest model: it binds nothing"
                      if self.budget.params >= self.budget.full else "") + ")"
                   if self.budget else "")
                + (f"; resumed at step {step} from {resumed}" if resumed else ""))

    def hparams(self) -> dict:
        from pipeline.search import search_hparams

        return search_hparams(self.cfg, self.sched, self.schema, self.preset)

    def eval_message(self, logs: EvalLogs) -> str:
        t, v = logs.train, logs.valid
        return (f"step {logs.step}: train loss {t['loss']:.4f} auc {t['auc']:.4f}"
                f" | valid loss {v['loss']:.4f} auc {v['auc']:.4f}"
                f" | tau {self.temperature():.3f}")


class AlphaLogging(Hook):
    """Alpha in TensorBoard: the custom-scalars layout once per run, then per-field
    probabilities, the heatmap and the dims table after every evaluation and at the end."""

    def __init__(self, task: SearchTask):
        self.task = task
        self.names = task.schema.field_names
        self.dims = task.cfg.model.candidate_dims

    def begin(self, ctl: Controller) -> None:
        if not ctl.resumed:
            summaries.write_alpha_layout(ctl.writers["train"], self.names, self.dims)

    def write(self, ctl: Controller, step: int) -> None:
        emb = self.task.embedding
        summaries.write_alpha(ctl.writers["train"], step, self.names, self.dims,
                              np.asarray(emb.probabilities()), emb.chosen_dims())

    def after_evaluation(self, ctl: Controller, logs: EvalLogs) -> None:
        self.write(ctl, logs.step)

    def end(self, ctl: Controller) -> None:
        self.write(ctl, ctl.step)


class Derivation(Hook):
    """At the end: the dimensions read off the trained supernet (argmax, or validated by
    `pipeline.derive`), the derived architecture's validation metrics, the HParams session's
    metrics and `dims.json` (`result` holds its contents)."""

    def __init__(self, task: SearchTask, model_dir: str | Path):
        self.task, self.model_dir = task, fileio.path(model_dir)
        self.result: dict | None = None

    def final_metrics(self, ctl: Controller) -> dict:
        """The last evaluation's metrics, or (a run resumed after its last step) a new one."""
        if ctl.last_logs is None:
            val_m = self.task.evaluate()
            return {"step": ctl.step, "valid_loss": val_m["loss"], "valid_auc": val_m["auc"]}
        t, v = ctl.last_logs.train, ctl.last_logs.valid
        return {"step": ctl.last_logs.step, "train_loss": t["loss"], "train_auc": t["auc"],
                "valid_loss": v["loss"], "valid_auc": v["auc"]}

    def derive(self, ctl: Controller) -> dict:
        s = self.task.cfg.search
        if s.derive != "validated":
            return {"method": "argmax"}
        from pipeline import derive  # looked up at call time (tests replace derive_validated)

        record = derive.derive_validated(self.task.model, self.task.data_dir, self.task.schema,
                                         s, log=ctl.log)
        summaries.write_derivation(ctl.writers["train"], ctl.step, record)
        return record

    def fit_budget(self, ctl: Controller, result: dict) -> None:
        """Repairs (and fills) the derived dims to the budget on validation rows
        (`pipeline.budget.fit_budget`) and records it as dims.json's "budget"."""
        from pipeline import derive

        task, s = self.task, self.task.cfg.search
        names = result["field_order"]
        vocab = [result["fields"][n]["vocab_size"] for n in names]
        start = [result["fields"][n]["dim"] for n in names]
        ids, labels = derive.load_rows(task.data_dir, task.schema, s.derive_max_rows,
                                       s.batch_size)
        emb = task.embedding
        saved = np.array(emb.alpha.numpy(), copy=True)
        try:
            fitted = budget_lib.fit_budget(
                derive.OneHotEvaluator(task.model, ids, labels, s.batch_size), start,
                emb.field_candidates, vocab, task.budget.params, names)
        finally:
            emb.alpha.assign(saved)
        budget_lib.apply_dims(result, fitted["dims"])
        if result["derivation"]["method"] != "validated":  # the argmax stays on record
            for n, d in zip(names, start):
                if result["fields"][n]["dim"] != d:
                    result["fields"][n]["argmax_dim"] = d
        c = task.constraint
        result["budget"] = budget_lib.record(
            task.budget, result["embedding_params"], fitted, float(c.multiplier.numpy()),
            float(c.expected_params().numpy()))
        ctl.log(budget_lib.format_record(result["budget"]))

    def end(self, ctl: Controller) -> None:
        from pipeline.search import DIMS_FILE, dims_record, format_dims

        task, step, emb = self.task, ctl.step, self.task.embedding
        probs, chosen = np.asarray(emb.probabilities()), emb.chosen_dims()
        final = self.final_metrics(ctl)
        result = dims_record(task.schema, task.cfg, probs, chosen, task.sched, step,
                             self.derive(ctl))
        if task.budget is not None:
            self.fit_budget(ctl, result)
        derived = derived_valid_metrics(task.runner, emb, result, task.eval_ds)
        final = {**final, "derived_valid_loss": derived["loss"],
                 "derived_valid_auc": derived["auc"]}
        ctl.log(f"derived architecture (alpha one-hot on the chosen dims): valid loss "
                f"{derived['loss']:.4f} auc {derived['auc']:.4f}")
        summaries.write_scalars(ctl.writers[summaries.HPARAMS_RUN], step, {
            "hparams/derived_valid_auc": derived["auc"],
            "hparams/derived_valid_logloss": derived["loss"],
            "hparams/embedding_params": result["embedding_params"],
            "hparams/params_share": result["params_share"]})
        ctl.flush()
        result["final_metrics"] = final
        runtime.atomic_write_json(self.model_dir / DIMS_FILE, result)
        ctl.log(format_dims(result))
        self.result = result


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
