"""Retraining a discrete architecture as a task for `pipeline.controller`: the model, its
optimizers and compiled training calls (the paper's Algorithm 2), and the hook that scores the
restored best model on the test split and writes the retraining's outputs."""
from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

from configs import fileio
from pipeline import runtime, summaries
from pipeline.controller import (
    CallResult,
    Controller,
    EarlyStopping,
    EvalLogs,
    Hook,
    LoopSettings,
    Task,
)
from pipeline.parameter_server import dispatch
from pipeline.trainer import (
    Optimizers,
    StepRunner,
    make_dense_optimizer,
    make_embedding_optimizer,
)


class RetrainTask(Task):
    """Trains the model of `dims` (pipeline.dims.load_dims' record) with the `retrain` config:
    weight steps on training batches, `retrain.steps_per_call` per compiled call."""

    def __init__(self, strategy, data_dir: str, schema, dims: dict, cfg,
                 preset: str | None = None):
        from models.factory import build_retrain_model, effective_mlp_input
        from models.params import parameter_report

        m, r = cfg.model, cfg.retrain
        self.strategy, self.data_dir, self.schema, self.cfg = strategy, data_dir, schema, cfg
        self.dims, self.preset = dims, preset
        dims_list = dims["dims"]
        steps_per_epoch = max(1, -(-schema.splits["train"] // r.batch_size))
        self.max_steps = max(1, int(round(r.max_epochs * steps_per_epoch)))
        self.eval_every = r.eval_every or steps_per_epoch
        vocab_sizes = [f.vocab_size for f in schema.fields]
        # unify to the largest chosen dimension, not the largest candidate: no field needs more,
        # and the interaction and MLP input then cost no more than the widest field requires
        output_dim = max(dims_list)
        self.mlp_input = effective_mlp_input(m.backbone, r.mlp_input)
        self.spec = {"backbone": m.backbone, "vocab_sizes": vocab_sizes, "dims": dims_list,
                     "unify": r.unify, "output_dim": int(output_dim), "mlp_input": self.mlp_input,
                     "mlp_units": list(m.mlp_units),
                     "dropout": m.dropout, "field_names": list(schema.field_names),
                     "schema_hash": schema.schema_hash,
                     "data_dir": fileio.absolute(data_dir)}
        keras.utils.set_random_seed(r.seed)

        def build():
            model = build_retrain_model(m.backbone, vocab_sizes, dims_list, unify=r.unify,
                                        output_dim=int(output_dim), mlp_input=self.mlp_input,
                                        **runtime.backbone_kwargs(m))
            model(tf.zeros([2, len(vocab_sizes)], tf.int32), training=False)
            return model

        self._build_model = build
        with strategy.scope():
            model = build()
            opts = Optimizers(
                dense=make_dense_optimizer(r.learning_rate),
                embedding=make_embedding_optimizer(r.embedding_optimizer, r.learning_rate))
            opts.build(model)
            self.runner = StepRunner(strategy, model, opts, r.batch_size)
        self.model, self.opts = model, opts
        self.report = parameter_report(model)  # counts of the fixed architecture

    def settings(self) -> LoopSettings:
        r = self.cfg.retrain
        return LoopSettings(total_steps=self.max_steps, steps_per_call=r.steps_per_call,
                            eval_every=self.eval_every, checkpoint_every=r.checkpoint_every,
                            keep_checkpoints=r.keep_checkpoints, global_batch_size=r.batch_size)

    def trackables(self) -> dict:
        return {"model": self.model, "step": self.runner.step, **self.opts.trackables()}

    def start(self, step: int) -> None:
        r = self.cfg.retrain
        self.train_it = iter(runtime.distributed_stream(
            self.strategy, self.data_dir, self.schema, "train", r.batch_size, seed=r.seed,
            skip_batches=step, shuffle_buffer=r.shuffle_buffer))
        self.eval_ds = runtime.distributed_eval(self.strategy, self.data_dir, self.schema,
                                                "valid", r.batch_size)

    def train(self, step: int, budget: int) -> CallResult:
        # dispatch: one call here, or under a ParameterServerStrategy one per worker
        loss_sum = dispatch(self.strategy, self.runner.train, budget,
                            lambda n: (self.train_it, tf.constant(n, tf.int64)))
        return CallResult(budget, loss_sum, "retrain")

    def export_model(self):
        """The model that is scored on the test split and saved: the trained one, or under a
        ParameterServerStrategy its local copy with Keras-weight tables (`local_copy`)."""
        from pipeline import parameter_server

        if not parameter_server.is_parameter_server(self.strategy):
            return self.model
        return parameter_server.local_copy(self.model, self._build_model)

    def train_scalars(self) -> dict:
        return {"learning_rate/model": self.cfg.retrain.learning_rate}

    def release_training(self) -> None:
        self.runner.release_training()
        self.opts = self.train_it = None

    def describe(self, step: int, resumed: str | None) -> str:
        return (f"retrain: {self.schema.dataset} backbone={self.cfg.model.backbone} dims from "
                f"{self.dims['source']} ({self.report['embedding']:,} embedding params), "
                f"max {self.max_steps} steps" + (f"; resumed at step {step}" if resumed else ""))

    def hparams(self) -> dict:
        # the session's own run holds only the metrics of the chosen (best) model, written at the
        # end: the valid run's last `auc` is the last evaluation, not the restored best
        m, r = self.cfg.model, self.cfg.retrain
        return {"kind": "retrain", "dataset": self.schema.dataset, "preset": self.preset or "",
                "backbone": m.backbone, "dims_kind": self.dims["kind"],
                "dims_source": self.dims["source"], "unify": r.unify,
                "mlp_input": self.mlp_input, "embedding_params": int(self.report["embedding"]),
                "learning_rate": r.learning_rate, "batch_size": r.batch_size}

    def eval_message(self, logs: EvalLogs) -> str:
        best = " (best)" if logs.notes.get("improved") else ""
        return (f"step {logs.step}: train loss {logs.train['loss']:.4f} | valid loss "
                f"{logs.valid['loss']:.4f} auc {logs.valid['auc']:.4f}{best}")


class TestScoring(Hook):
    """At the end (after `EarlyStopping` restored the best weights): the test split scored, the
    test and validation predictions, the model, its spec and metrics.json written (`result`
    holds metrics.json's contents), and the HParams session's metrics."""

    __test__ = False  # not a pytest test class

    def __init__(self, task: RetrainTask, early_stopping: EarlyStopping, model_dir: str | Path):
        self.task, self.early_stopping = task, early_stopping
        self.model_dir = fileio.path(model_dir)
        self.result: dict | None = None

    def metrics(self, ctl: Controller) -> dict:
        """Scores the test split and saves both splits' predictions, the model and its spec."""
        from pipeline.evaluation import numpy_auc, numpy_logloss
        from pipeline.retrain import (
            MODEL_FILE,
            PREDICTIONS_FILE,
            SPEC_FILE,
            predict_split,
            save_valid_predictions,
        )

        task, r, d = self.task, self.task.cfg.retrain, self.model_dir
        model = task.export_model()
        labels, probs = predict_split(model, task.data_dir, task.schema, "test", r.batch_size)
        runtime.save_npz(d / PREDICTIONS_FILE, labels=labels, probabilities=probs)
        valid_path = save_valid_predictions(model, task.data_dir, task.schema, d, r.batch_size)
        with runtime.load_npz(valid_path) as valid:
            best_valid_logloss = numpy_logloss(valid["labels"], valid["probabilities"])
        runtime.save_keras_model(model, d / MODEL_FILE)
        runtime.atomic_write_json(d / SPEC_FILE, task.spec)
        seconds = ctl.train_seconds  # every process of the run (a resumed one too)
        return {
            "dataset": task.schema.dataset, "schema_hash": task.schema.schema_hash,
            "backbone": task.cfg.model.backbone, "dims_source": task.dims["source"],
            "dims_kind": task.dims["kind"],
            "dims": dict(zip(task.schema.field_names, task.dims["dims"], strict=True)),
            "test_auc": numpy_auc(labels, probs), "test_logloss": numpy_logloss(labels, probs),
            "test_rows": int(labels.size), "best_valid_auc": self.early_stopping.best_value,
            "best_valid_logloss": best_valid_logloss,
            "params": int(task.report["embedding"]), "parameter_report": task.report,
            "steps": ctl.step, "stopped_early": self.early_stopping.stopped,
            "train_seconds": seconds,
            "examples_per_second": _examples_per_second(ctl, r.batch_size),
        }

    def end(self, ctl: Controller) -> None:
        from pipeline.retrain import METRICS_FILE

        metrics = self.metrics(ctl)
        with ctl.writers["valid"].as_default(step=ctl.step):
            tf.summary.scalar("test/auc", metrics["test_auc"])
            tf.summary.scalar("test/logloss", metrics["test_logloss"])
        # the HParams session's metrics: those of the model that was kept (best validation AUC)
        summaries.write_scalars(ctl.writers[summaries.HPARAMS_RUN], ctl.step, {
            "hparams/best_valid_auc": metrics["best_valid_auc"],
            "hparams/best_valid_logloss": metrics["best_valid_logloss"],
            "hparams/test_auc": metrics["test_auc"],
            "hparams/test_logloss": metrics["test_logloss"],
            "hparams/embedding_params": metrics["params"]})
        ctl.flush()
        path = self.model_dir / METRICS_FILE
        runtime.atomic_write_json(path, metrics)
        ctl.log(f"test auc {metrics['test_auc']:.4f} logloss {metrics['test_logloss']:.4f} "
                f"params {metrics['params']:,} -> {path}")
        self.result = metrics


def _examples_per_second(ctl: Controller, batch_size: int) -> float:
    """This process's training rate; a run resumed after its last step trained nothing here:
    the rate of the whole run (its steps over the training time its checkpoints recorded)."""
    if ctl.trained_steps:
        return ctl.trained_steps * batch_size / max(ctl.process_seconds, 1e-9)
    return ctl.step * batch_size / ctl.train_seconds if ctl.train_seconds > 0 else 0.0
