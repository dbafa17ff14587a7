"""Row-sparse ("lazy") Adam for embedding tables (Keras 3, TensorFlow backend).

Keras 3's `Adam.update_step` treats every gradient as dense: `assign_add` on the moment slots with
an `IndexedSlices` gradient densifies it, so a step costs O(vocabulary rows). `LazyAdam` keeps the
Keras optimizer machinery (iterations, learning-rate schedules, tf.distribute handling, variable
tracking) and only replaces `update_step`: when the gradient is a `tf.IndexedSlices` (what
`tf.gather` / `keras.ops.take` / `keras.layers.Embedding` produce for the table) it updates the
touched rows of the variable and of its `m`/`v` slots with sparse gathers and scatters, so the step
costs O(touched rows). Rows a step does not touch keep their value and their moments bitwise,
as in TF1 `LazyAdamOptimizer`. Duplicate row ids are summed first, so on the touched rows the result
equals Keras Adam's update with the same (dense) gradient. Dense gradients use Keras Adam's math
unchanged.

A table with no more rows than the batch has lookups (MovieLens-100k's 3,765 rows against 2,000 x 8
lookups; never a Criteo-sized one) is updated by one XLA-compiled function instead: the same
update computed for every row and written back only on the touched ones (`_masked_dense_adam`),
three times faster there. Its values equal the sparse path's to float rounding (XLA may fuse a
multiply-add: 1 ulp); untouched rows and moments stay bitwise.

Where the hook sits (keras/src/optimizers/base_optimizer.py and backend/tensorflow/optimizer.py):
`apply` filters `None` gradients (keeps `IndexedSlices`), `_backend_apply_gradients` clips (patched
here to stay sparse), `TFOptimizer._backend_update_step` all-reduces gradients in a replica context
(MirroredStrategy reduces `IndexedSlices` by concatenation, so they stay sparse) and then calls
`update_step` per variable inside `strategy.extended.update`. Options whose Keras implementation
touches every row or densifies the gradient (weight decay, EMA, gradient accumulation, loss scale
factor) are rejected.
"""

from __future__ import annotations

import keras
import tensorflow as tf

_UNSUPPORTED = {
    "weight_decay": "decays every row of every variable each step (O(vocabulary))",
    "use_ema": "keeps a dense moving average of every variable (O(vocabulary) per step)",
    "gradient_accumulation_steps": "accumulates gradients in dense buffers",
    "loss_scale_factor": "divides gradients with an op that does not accept tf.IndexedSlices",
}


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def _deduplicate(grad: tf.IndexedSlices) -> tf.IndexedSlices:
    """Sums the rows of `grad` that share an index; indices come out unique (first-seen order).

    The sum is a `scatter_nd` into [unique rows, ...]: on CPU it adds the rows in input order,
    bitwise what `unsorted_segment_sum` gives, in half the time (TensorFlow 2.21, 78k lookups of a
    2000 x 39 batch into 10k rows x 32: 8.5 against 18.1 ms of CPU time, the largest part of a
    sparse update). Both ops have GPU kernels.
    """
    unique_ids, positions = tf.unique(grad.indices)
    shape = tf.concat([tf.shape(unique_ids), tf.shape(grad.values)[1:]], axis=0)
    summed = tf.scatter_nd(tf.expand_dims(positions, -1), grad.values, shape)
    return tf.IndexedSlices(summed, unique_ids, grad.dense_shape)


def _small_table(gradient: tf.IndexedSlices, variable) -> bool:
    """Whether the table has no more rows than the gradient has (static) lookups: then an update
    of every row, masked to the touched ones, costs no more than the sparse one's work per
    lookup."""
    lookups = gradient.indices.shape[0] if gradient.indices.shape.rank == 1 else None
    rows = variable.shape[0]
    return lookups is not None and rows is not None and int(rows) <= int(lookups)


@tf.function(jit_compile=True)
def _masked_dense_adam(var, m, v, ids, values, alpha, one_minus_beta_1, one_minus_beta_2,
                       epsilon):
    """The lazy update of a SMALL table (`_small_table`), XLA-compiled: the lookups' rows are
    summed into a dense [rows, ...] gradient (a scatter-add, in input order as `_deduplicate`),
    every row's Adam update is computed and only the touched rows are written back (`tf.where`;
    untouched rows keep their value and moments bitwise). The same expressions as the sparse
    path; compiled, the scatter-add loses TensorFlow's per-row kernel overhead (2,000 x 8
    lookups into 3,765 x 32 rows, MovieLens-100k: 0.7 against 2.1 ms per update on 2 cores).
    Unique ids (the sparse path's first op) have no XLA kernel, hence the mask."""
    index = tf.expand_dims(ids, -1)
    g = tf.scatter_nd(index, values, tf.shape(var, out_type=ids.dtype))
    touched = tf.scatter_nd(index, tf.ones_like(ids), tf.shape(var, out_type=ids.dtype)[:1]) > 0
    touched = tf.reshape(touched, [-1] + [1] * (var.shape.rank - 1))
    m_old, v_old, var_old = m.read_value(), v.read_value(), var.read_value()
    m_new = m_old + (g - m_old) * one_minus_beta_1
    v_new = v_old + (tf.square(g) - v_old) * one_minus_beta_2
    var_new = var_old - (m_new * alpha) / (tf.sqrt(v_new) + epsilon)
    m.assign(tf.where(touched, m_new, m_old))
    v.assign(tf.where(touched, v_new, v_old))
    var.assign(tf.where(touched, var_new, var_old))


@keras.saving.register_keras_serializable(package="autodim")
class LazyAdam(keras.optimizers.Adam):
    """Adam that updates only the touched rows (and their moments) for `IndexedSlices` gradients.

    Args: as `keras.optimizers.Adam` (`learning_rate`, `beta_1`, `beta_2`, `epsilon`, `amsgrad`,
    `clipnorm`, `clipvalue`, `global_clipnorm`, `name`). `weight_decay`, `use_ema`,
    `gradient_accumulation_steps` and `loss_scale_factor` raise `ValueError` because Keras
    implements them densely.

    Semantics on an `IndexedSlices` gradient with summed rows `g` at unique ids `idx` and the
    optimizer's global step `t = iterations + 1`:
        m[idx] += (g - m[idx]) * (1 - beta_1)
        v[idx] += (g**2 - v[idx]) * (1 - beta_2)
        var[idx] -= lr * sqrt(1 - beta_2**t) / (1 - beta_1**t) * m[idx] / (sqrt(v[idx]) + eps)
    Rows not in `idx` are left untouched. Clipping is applied to the de-duplicated rows, so norms
    equal those of the equivalent dense gradient.
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        **kwargs,
    ):
        for option, reason in _UNSUPPORTED.items():
            value = kwargs.get(option)
            # weight_decay=0.0 still runs Keras's dense decay op, so only None is accepted there.
            enabled = value is not None if option == "weight_decay" else bool(value)
            if enabled:
                raise ValueError(
                    f"LazyAdam does not support `{option}` (received {option}={value!r}): Keras "
                    f"{reason}. Use keras.optimizers.Adam for variables that need it."
                )
        for name, value in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
                raise ValueError(
                    f"LazyAdam `{name}` must be a float in [0, 1); received {value!r}."
                )
        if not isinstance(epsilon, (int, float)) or float(epsilon) <= 0.0:
            raise ValueError(f"LazyAdam `epsilon` must be a positive float; received {epsilon!r}.")
        if not isinstance(amsgrad, bool):
            raise ValueError(f"LazyAdam `amsgrad` must be a bool; received {amsgrad!r}.")
        super().__init__(
            learning_rate=learning_rate,
            beta_1=float(beta_1),
            beta_2=float(beta_2),
            epsilon=float(epsilon),
            amsgrad=amsgrad,
            **kwargs,
        )

    def _clip_gradients(self, grads):
        """Keras clipping, applied to the de-duplicated rows of sparse gradients (stays sparse).

        The base implementation squares / clips `IndexedSlices` with ops that densify them, and
        would measure duplicate rows separately; clipping the summed rows gives the same norm as
        the dense gradient.
        """
        if not (self.clipnorm or self.clipvalue or self.global_clipnorm):
            return grads
        grads = [_deduplicate(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        values = [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads]
        clipped = super()._clip_gradients(values)
        return [
            tf.IndexedSlices(c, g.indices, g.dense_shape) if isinstance(g, tf.IndexedSlices) else c
            for g, c in zip(grads, clipped)
        ]

    def update_step(self, gradient, variable, learning_rate):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        self._sparse_update_step(gradient, variable, learning_rate)

    def _sparse_update_step(self, gradient: tf.IndexedSlices, variable, learning_rate):
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        m = self._momentums[index]
        v = self._velocities[index]

        lr = tf.cast(learning_rate, dtype)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        alpha = lr * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))

        if _small_table(gradient, variable) and not self.amsgrad:
            _masked_dense_adam(
                _tf_variable(variable), _tf_variable(m), _tf_variable(v), gradient.indices,
                tf.cast(gradient.values, dtype), alpha, tf.constant(1 - self.beta_1, dtype),
                tf.constant(1 - self.beta_2, dtype), tf.constant(self.epsilon, dtype))
            return

        gradient = _deduplicate(gradient)
        ids = gradient.indices
        g = tf.cast(gradient.values, dtype)

        # Same elementwise expressions as keras Adam.update_step, restricted to the rows `ids`.
        m_rows = tf.gather(m.value, ids)
        m_rows = m_rows + (g - m_rows) * (1 - self.beta_1)
        v_rows = tf.gather(v.value, ids)
        v_rows = v_rows + (tf.square(g) - v_rows) * (1 - self.beta_2)
        self.assign(m, tf.IndexedSlices(m_rows, ids, gradient.dense_shape))
        self.assign(v, tf.IndexedSlices(v_rows, ids, gradient.dense_shape))
        if self.amsgrad:
            v_hat = self._velocity_hats[index]
            v_rows = tf.maximum(tf.gather(v_hat.value, ids), v_rows)
            self.assign(v_hat, tf.IndexedSlices(v_rows, ids, gradient.dense_shape))
        delta = (m_rows * alpha) / (tf.sqrt(v_rows) + self.epsilon)
        # gather + scatter_update: ResourceScatterSub is several times slower on CPU.
        var_rows = tf.gather(_tf_variable(variable), ids) - delta
        self.assign(variable, tf.IndexedSlices(var_rows, ids, gradient.dense_shape))
