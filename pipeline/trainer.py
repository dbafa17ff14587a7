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

__all__ = ["FusedAdam", "NonFiniteLossError", "Optimizers", "StepRunner", "check_finite",
           "make_dense_optimizer", "make_embedding_optimizer", "paper_temperature",
           "anneal_temperature"]


@keras.saving.register_keras_serializable(package="autodim")
class FusedAdam(keras.optimizers.Adam):
    """Keras Adam whose dense update is TensorFlow's fused `ResourceApplyAdam` kernel (CPU and
    GPU): one op per variable instead of Keras's ~15 (casts, powers, square roots and three
    read-modify-write assignments), the same arithmetic

        alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
        m += (g - m) * (1 - beta_1);  v += (g**2 - v) * (1 - beta_2)
        var -= m * alpha / (sqrt(v) + epsilon)

    on the same slots (a checkpoint of `keras.optimizers.Adam` restores into it and back). The one
    difference is float rounding: the kernel forms 1 - beta in float32, Keras in float64 before
    the cast (relative 2e-7 on the moments' step). amsgrad and `IndexedSlices` gradients fall back
    to Keras's update_step."""

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable), m=_handle(self._momentums[index]),
            v=_handle(self._velocities[index]),
            beta1_power=tf.pow(tf.cast(self.beta_1, dtype), step),
            beta2_power=tf.pow(tf.cast(self.beta_2, dtype), step),
            lr=tf.cast(learning_rate, dtype), beta1=tf.cast(self.beta_1, dtype),
            beta2=tf.cast(self.beta_2, dtype), epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype), use_locking=False)


def _handle(variable):
    """The resource handle of a Keras (or tf) variable."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


def make_dense_optimizer(learning_rate: float) -> keras.optimizers.Optimizer:
    """Adam for the dense weights (FusedAdam: Keras Adam's update in one kernel per variable)."""
    return FusedAdam(learning_rate=learning_rate)


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
    every step, in cross-replica context. `arch_constraint` (`pipeline.budget.BudgetConstraint`):
    its `penalty()` joins the architecture loss and its `update()` (the Lagrange multiplier's dual
    step) runs after every alpha update, in cross-replica context on the all-reduced alpha.
    """

    def __init__(self, strategy, model, optimizers: Optimizers, global_batch_size: int,
                 temperature_var=None, temperature_fn=None, arch_regularizer=None,
                 arch_constraint=None):
        self.strategy = strategy
        self.model = model
        self.opt = optimizers
        self.global_batch_size = int(global_batch_size)
        self.temperature_var = temperature_var
        self.temperature_fn = temperature_fn
        self.arch_regularizer = arch_regularizer
        self.arch_constraint = arch_constraint
        with strategy.scope():
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            # coarse bins for the training stream (monitoring only, on the hot path)
            self.train_stats = StreamingStats("train", bins=1000)
            self.eval_stats = StreamingStats("eval", bins=10_000)
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
        terms = [f() for f in (self.arch_regularizer,
                                getattr(self.arch_constraint, "penalty", None)) if f is not None]
        if not terms:
            return 0.0
        return tf.nn.scale_regularization_loss(tf.add_n(terms))

    def _after_arch_update(self):
        """The constraint's multiplier step (cross-replica context)."""
        if self.arch_constraint is not None:
            self.arch_constraint.update()

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
        return loss, self.train_stats.batch(labels, logits, per_ex)

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
        return self.eval_stats.batch(labels, logits, per_example_loss(labels, logits))

    # ------------------------------------------------------------------ compiled calls
    def _set_temperature(self):
        if self.temperature_var is not None and self.temperature_fn is not None:
            self.temperature_var.assign(self.temperature_fn(self.step))

    def _one_weight_step(self, iterator, with_arch=False):
        self._set_temperature()
        ids, labels = next(iterator)
        loss, stats = self.strategy.run(self._weight_step, args=(ids, labels, with_arch))
        if with_arch:
            self._after_arch_update()
        self.step.assign_add(1)
        self.train_stats.add(self.strategy, stats)
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
            self._after_arch_update()
            for _ in tf.range(f):
                total += self._one_weight_step(train_iterator)
        return total

    def _evaluate(self, dataset):
        for ids, labels in dataset:
            stats = self.strategy.run(self._eval_step, args=(ids, labels))
            self.eval_stats.add(self.strategy, stats)

    def evaluate(self, dataset) -> dict:
        self.eval_stats.reset()
        self.evaluate_fn(dataset)
        return self.eval_stats.result()

    def read_train_metrics(self, reset: bool = True) -> dict:
        out = self.train_stats.result()
        if reset:
            self.train_stats.reset()
        return out

    def release_training(self) -> None:
        """Drops the optimizers and the compiled training calls (their traced graphs capture the
        optimizer slots) once training is over; `evaluate` keeps working."""
        self.opt = None
        self.train = self.search = self.joint = None


class StreamingStats:
    """Loss and AUC accumulated across replicas and steps without Keras metrics' replica-context
    writes: each replica returns its batch's loss sum, count and score histograms per label; they
    are summed across replicas (strategy.reduce) and added to plain variables in cross-replica
    context. AUC comes from the histograms (`bins` equal-width score bins; pairs within one bin
    count one half), within ~1/bins of the exact value and independent of the replica count."""

    def __init__(self, name: str, bins: int):
        self.BINS = int(bins)
        self.loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name=f"{name}_loss_sum")
        self.count = tf.Variable(0.0, dtype=tf.float64, trainable=False, name=f"{name}_count")
        self.pos = tf.Variable(
            tf.zeros([self.BINS], tf.float64), trainable=False, name=f"{name}_pos"
        )
        self.neg = tf.Variable(
            tf.zeros([self.BINS], tf.float64), trainable=False, name=f"{name}_neg"
        )

    def batch(self, labels, logits, per_example):
        """Per-replica sufficient statistics of one batch: the loss sum, the count and one
        histogram of 2 x `bins` counts (negatives' score bins, then positives'), counted by ONE
        bincount of `bin + bins * label` (two boolean masks and two bincounts cost ~2x more)."""
        bins = self.BINS
        probs = tf.sigmoid(logits)
        index = tf.clip_by_value(tf.cast(probs * bins, tf.int32), 0, bins - 1)
        index += bins * tf.cast(labels > 0.5, tf.int32)
        hist = tf.math.bincount(index, minlength=2 * bins, maxlength=2 * bins, dtype=tf.float64)
        return (tf.reduce_sum(tf.cast(per_example, tf.float64)),
                tf.cast(tf.size(labels), tf.float64), hist)

    def add(self, strategy, stats) -> None:
        loss_sum, count, hist = (strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None)
                                 for t in stats)
        self.loss_sum.assign_add(loss_sum)
        self.count.assign_add(count)
        self.neg.assign_add(hist[:self.BINS])
        self.pos.assign_add(hist[self.BINS:])

    def reset(self) -> None:
        for v in (self.loss_sum, self.count, self.pos, self.neg):
            v.assign(tf.zeros_like(v))

    def result(self) -> dict:
        count = float(self.count.numpy())
        pos, neg = self.pos.numpy(), self.neg.numpy()
        return {"loss": float(self.loss_sum.numpy()) / count if count else float("nan"),
                "auc": histogram_auc(pos, neg)}


def histogram_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score_pos > score_neg) + P(tie)/2 over score-bin histograms."""
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / (n_pos * n_neg))


def check_finite(total_loss, step: int, manager_dir: str) -> float:
    """One host read per compiled call: raise if any step in the call produced NaN/Inf."""
    value = float(total_loss)
    if not math.isfinite(value):
        # only a checkpoint that exists is promised intact (the manager's state file names it)
        latest = tf.train.latest_checkpoint(str(manager_dir))
        if latest:
            kept = f"The last good checkpoint {latest} is intact"
        else:
            kept = f"No checkpoint was written yet in {manager_dir}"
        raise NonFiniteLossError(
            f"training loss became {value} by step {step}; stopped without saving. {kept} "
            f"(check the input data for NaN labels, or lower the learning rate)")
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
