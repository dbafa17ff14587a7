"""The compiled training machinery shared by the search and retraining.

Everything stateful (model, optimizers, metrics, step counter) is created under the strategy's
scope. Each compiled call runs several steps (`tf.range` loop around `strategy.run`); there is no
host synchronisation inside a call. Losses are per-example with
`tf.nn.compute_average_loss(global_batch_size=...)`, so gradients summed across replicas are the
global-batch mean for any replica count. Variable groups come from the model's properties
(`dense_variables`, `embedding_variables`, `arch_variables`), never from name matching.
"""
from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from models.lazy_adam import LazyAdam
from pipeline.errors import NonFiniteLossError

__all__ = ["NonFiniteLossError", "Optimizers", "StepRunner", "check_finite",
           "make_embedding_optimizer", "paper_temperature", "anneal_temperature", "numpy_auc",
           "numpy_logloss"]


def make_embedding_optimizer(kind: str, learning_rate: float) -> keras.optimizers.Optimizer:
    if kind == "lazy_adam":
        return LazyAdam(learning_rate=learning_rate)
    if kind == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    raise ValueError(f"embedding_optimizer must be 'lazy_adam' or 'adam', got {kind!r}")


@dataclasses.dataclass
class Optimizers:
    dense: keras.optimizers.Optimizer
    embedding: keras.optimizers.Optimizer
    arch: keras.optimizers.Optimizer | None = None

    def build(self, model) -> None:
        """Creates the slots before the first traced step (and before a checkpoint restore)."""
        self.dense.build(model.dense_variables)
        self.embedding.build(model.embedding_variables)
        if self.arch is not None and model.arch_variables:
            self.arch.build(model.arch_variables)

    def trackables(self) -> dict:
        out = {"dense_optimizer": self.dense, "embedding_optimizer": self.embedding}
        if self.arch is not None:
            out["arch_optimizer"] = self.arch
        return out


def per_example_loss(labels, logits):
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)


class StepRunner:
    """Builds the compiled multi-step functions for one model.

    train(it, n): n weight steps on training batches (pre-training, retraining).
    search(train_it, val_it, groups, f): `groups` x [one alpha step on a validation batch, then f
      weight steps] -- the paper's first-order DARTS with f = arch_update_every.
    joint(it, n): n steps updating weights and alpha on the same training batch (AutoDim-s).
    evaluate(dataset): loss/AUC over a finite distributed dataset.
    The temperature (a variable of the search embedding) is set from `temperature_fn(step)` before
    every step, in cross-replica context.
    """

    def __init__(self, strategy, model, optimizers: Optimizers, global_batch_size: int,
                 temperature_var=None, temperature_fn=None, arch_regularizer=None):
        self.strategy = strategy
        self.model = model
        self.opt = optimizers
        self.global_batch_size = int(global_batch_size)
        self.temperature_var = temperature_var
        self.temperature_fn = temperature_fn
        self.arch_regularizer = arch_regularizer
        with strategy.scope():
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.train_loss = keras.metrics.Mean(name="train_loss")
            self.train_auc = keras.metrics.AUC(num_thresholds=1000, name="train_auc")
            self.eval_loss = keras.metrics.Mean(name="eval_loss")
            self.eval_auc = keras.metrics.AUC(num_thresholds=1000, name="eval_auc")
        self.train = tf.function(self._train)
        self.search = tf.function(self._search)
        self.joint = tf.function(self._joint)
        self.evaluate_fn = tf.function(self._evaluate)

    # ------------------------------------------------------------------ per-replica steps
    def _forward_loss(self, ids, labels):
        logits = self.model(ids, training=True)
        per_ex = per_example_loss(labels, logits)
        loss = tf.nn.compute_average_loss(per_ex, global_batch_size=self.global_batch_size)
        return logits, per_ex, loss

    def _arch_penalty(self):
        """The architecture regulariser, scaled so its replica-summed gradient counts once."""
        if self.arch_regularizer is None:
            return 0.0
        return tf.nn.scale_regularization_loss(self.arch_regularizer())

    def _weight_step(self, ids, labels, with_arch: bool = False):
        dense = self.model.dense_variables
        emb = self.model.embedding_variables
        arch = self.model.arch_variables if with_arch else []
        with tf.GradientTape() as tape:
            logits, per_ex, loss = self._forward_loss(ids, labels)
            objective = loss + self._arch_penalty() if with_arch else loss
        grads = tape.gradient(objective, dense + emb + arch)
        n_d, n_e = len(dense), len(emb)
        self.opt.dense.apply_gradients(zip(grads[:n_d], dense))
        self.opt.embedding.apply_gradients(zip(grads[n_d:n_d + n_e], emb))
        if with_arch:
            self.opt.arch.apply_gradients(zip(grads[n_d + n_e:], arch))
        self.train_loss.update_state(per_ex)
        self.train_auc.update_state(labels, tf.sigmoid(logits))
        return loss

    def _arch_step(self, ids, labels):
        arch = self.model.arch_variables
        with tf.GradientTape() as tape:
            _, _, loss = self._forward_loss(ids, labels)
            objective = loss + self._arch_penalty()
        grads = tape.gradient(objective, arch)
        self.opt.arch.apply_gradients(zip(grads, arch))
        return loss

    def _eval_step(self, ids, labels):
        logits = self.model(ids, training=False)
        self.eval_loss.update_state(per_example_loss(labels, logits))
        self.eval_auc.update_state(labels, tf.sigmoid(logits))

    # ------------------------------------------------------------------ compiled calls
    def _set_temperature(self):
        if self.temperature_var is not None and self.temperature_fn is not None:
            self.temperature_var.assign(self.temperature_fn(self.step))

    def _one_weight_step(self, iterator, with_arch=False):
        self._set_temperature()
        ids, labels = next(iterator)
        loss = self.strategy.run(self._weight_step, args=(ids, labels, with_arch))
        self.step.assign_add(1)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)

    def _train(self, iterator, n):
        total = tf.constant(0.0)
        for _ in tf.range(n):
            total += self._one_weight_step(iterator)
        return total

    def _joint(self, iterator, n):
        total = tf.constant(0.0)
        for _ in tf.range(n):
            total += self._one_weight_step(iterator, with_arch=True)
        return total

    def _search(self, train_iterator, val_iterator, groups, f):
        total = tf.constant(0.0)
        for _ in tf.range(groups):
            self._set_temperature()
            ids, labels = next(val_iterator)
            self.strategy.run(self._arch_step, args=(ids, labels))
            for _ in tf.range(f):
                total += self._one_weight_step(train_iterator)
        return total

    def _evaluate(self, dataset):
        for ids, labels in dataset:
            self.strategy.run(self._eval_step, args=(ids, labels))

    def evaluate(self, dataset) -> dict:
        self.eval_loss.reset_state()
        self.eval_auc.reset_state()
        self.evaluate_fn(dataset)
        return {"loss": float(self.eval_loss.result()), "auc": float(self.eval_auc.result())}

    def read_train_metrics(self, reset: bool = True) -> dict:
        out = {"loss": float(self.train_loss.result()), "auc": float(self.train_auc.result())}
        if reset:
            self.train_loss.reset_state()
            self.train_auc.reset_state()
        return out


def check_finite(total_loss, step: int, manager_dir: str) -> float:
    """One host read per compiled call: raise if any step in the call produced NaN/Inf."""
    value = float(total_loss)
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"training loss became {value} by step {step}; stopped without saving. The last good "
            f"checkpoint in {manager_dir} is intact (check the input data for NaN labels, or "
            f"lower the learning rate)")
    return value


def paper_temperature(decay: float, t_min: float, offset: int):
    """tau = max(t_min, 1 - decay * t), t = steps since the search phase began."""
    def fn(step):
        t = tf.cast(tf.maximum(step - offset, 0), tf.float32)
        return tf.maximum(tf.constant(t_min, tf.float32), 1.0 - decay * t)
    return fn


def anneal_temperature(t_min: float, offset: int, length: int):
    """Linear from 1 to t_min over the search phase's `length` steps, whatever the data size."""
    length = max(int(length), 1)
    def fn(step):
        t = tf.cast(tf.clip_by_value(step - offset, 0, length), tf.float32)
        return 1.0 - (1.0 - t_min) * t / float(length)
    return fn


def numpy_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U with average ranks for ties)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [scores.size]])
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def numpy_logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probs, np.float64), eps, 1 - eps)
    y = np.asarray(labels, np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
