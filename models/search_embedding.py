"""AutoDim's search-stage embedding (paper Sec. 2.2): candidate dims per field, unified, mixed.

For field m with candidate dims d_1 < ... < d_N:

1. Lookup (2.2.1). `weight_sharing`: one d_N-wide row per id, candidate n = its first d_n columns.
   `separate`: one independent row per candidate, stored side by side (one table of width
   sum(d_n)). Either way all fields live in ONE concatenated table (see `_tables.FieldTables`): a
   step is one gather whose gradient is an `IndexedSlices` over the batch's rows.
2. Unify (2.2.2). `linear` (Eq. 1): per field and candidate a [d_n, d_max] weight and [d_max] bias
   shared by all values of the field ([M, d_n, d_max] weights, batched over fields).
   `zero_pad` (Eq. 4): pad to d_max.
3. Normalise (Eq. 2/3). BatchNorm of each candidate with per-field, per-candidate, per-dimension
   statistics (after the transform for `linear`, before padding for `zero_pad`); batch statistics
   are summed over all replicas (synchronised BN), moving averages (momentum 0.9, epsilon 1e-5 as
   PyTorch's BatchNorm1d in the paper's code base) are used at inference.
4. Mix (Eq. 5-7): p = softmax((log_softmax(alpha) + g) / tau), g = -log(-log(u)), output
   sum_n p_n * candidate_n.

`candidate_norm`:
- "batchnorm": the paper's BN without affine parameters. Measured problem: it makes every
  candidate unit-variance, so an FM's inner products are far larger than with an un-normalised
  N(0, 0.01^2) embedding (initial FM logit std 11.5 instead of 0.38), which destabilises the start
  of the search.
- "batchnorm_affine" (default): the same BN followed by a learnable scale per field and candidate
  (a [M, N] weight, no shift), initialised to the embedding initializer's stddev (0.01 by default).
  Candidates stay magnitude-comparable (the point of the paper's BN) while the mixed embedding
  starts with the magnitude of an ordinary embedding.
- "none": no normalisation.

Gumbel noise: one sample per field per step (shape [M, N], as in the paper); every replica draws
the same noise because the SeedGenerator state is mirrored. (Per-example noise, shape [B, M, N], is
a possible variant, not implemented.) The trainer sets `temperature` each step and can switch the
noise off with `gumbel_scale` (1.0 on, 0.0 off). `training=False` (evaluation) uses no noise and the
expected mixture p = softmax(alpha): the distribution `chosen_dims` takes its argmax from,
independent of where the temperature annealing is.

How it is computed (exactly the formulas above, re-associated for speed; a naive version with one
einsum and one BatchNormalization layer per candidate measured 5x the step time of a plain
embedding model):
- BN of a linear candidate is affine per output column given its statistics, so
  sum_n p_n s_n BN(x_n W_n + b_n) = x @ W_eff + c with
  W_eff = sum_n pad(W_n * p_n s_n / sigma_n) and c = sum_n p_n s_n (b_n - mu_n) / sigma_n: ONE
  batched matmul per step. The batch statistics of y_n = x_n W_n + b_n follow from x's:
  mu_n = mean(x_n) W_n + b_n, sigma_n^2[e] = W_n[:, e]^T Cov(x_n) W_n[:, e], where with weight
  sharing Cov(x_n) is the leading block of one [M, d_N, d_N] covariance. Gradients flow through
  the statistics as in BN.
- zero_pad: a column of candidate n is a column of the looked-up row, so statistics are per column
  of the row; with weight sharing every candidate containing a column has that column's statistics
  (a padded zero column normalises to 0), so the row is normalised once and multiplied by
  c[m, j] = sum_{n: d_n > j} p_n s_n.
All tensors are field-major ([M, B, .]) inside; the output is [B, M, d_max].
"""
from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from configs.experiment import CANDIDATE_NORMS, LOOKUPS, UNIFIES
from models._tables import FieldTables
from models._validation import (
    check_choice,
    check_dim_list,
    check_vocab_sizes,
    get_embeddings_initializer,
    initializer_stddev,
)

# PyTorch BatchNorm1d defaults (the paper's implementation is pytorch-fm). Keras' default epsilon
# 1e-3 would swamp the variance of a N(0, 0.01^2) embedding column (1e-4).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
_MASKED_LOGIT = -1e9
_OWNER = "AutoDimEmbedding"


def normalise_candidate_dims(candidate_dims: Any, num_fields: int) -> tuple[tuple[int, ...], ...]:
    """A flat list (shared by all fields) or one list per field -> one tuple per field."""
    if isinstance(candidate_dims, (str, bytes)) or not isinstance(candidate_dims, Sequence):
        raise ValueError(f"{_OWNER}: candidate_dims must be a list of ints or of int lists, "
                         f"got {candidate_dims!r}")
    if len(candidate_dims) == 0:
        raise ValueError(f"{_OWNER}: candidate_dims must not be empty, "
                         f"got {list(candidate_dims)!r}")
    nested = [isinstance(c, Sequence) and not isinstance(c, (str, bytes)) for c in candidate_dims]
    if not any(nested):
        dims = check_dim_list(_OWNER, "candidate_dims", candidate_dims, increasing=True)
        return tuple(dims for _ in range(num_fields))
    if not all(nested):
        raise ValueError(
            f"{_OWNER}: candidate_dims must be all ints or all lists (one per field), "
            f"got {candidate_dims!r}"
        )
    if len(candidate_dims) != num_fields:
        raise ValueError(
            f"{_OWNER}: candidate_dims has {len(candidate_dims)} per-field lists but vocab_sizes "
            f"has {num_fields} fields"
        )
    return tuple(
        check_dim_list(_OWNER, f"candidate_dims[{m}]", dims, increasing=True)
        for m, dims in enumerate(candidate_dims)
    )


@keras.saving.register_keras_serializable(package="autodim")
class AutoDimEmbedding(keras.layers.Layer):
    """int ids [B, M] -> mixed candidate embeddings [B, M, d_max] (float32)."""

    def __init__(
        self,
        vocab_sizes: Sequence[int],
        candidate_dims: Sequence[int] | Sequence[Sequence[int]] = (2, 8, 16, 24, 32),
        lookup: str = "weight_sharing",
        unify: str = "linear",
        candidate_norm: str = "batchnorm_affine",
        embeddings_initializer: Any = None,
        affine_scale_init: float | None = None,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_sizes = check_vocab_sizes(_OWNER, vocab_sizes)
        num_fields = len(self.vocab_sizes)
        self.field_candidates = normalise_candidate_dims(candidate_dims, num_fields)
        self._candidate_dims_config = (
            list(self.field_candidates[0])
            if all(not isinstance(c, Sequence) for c in candidate_dims)
            else [list(c) for c in self.field_candidates]
        )
        self.lookup = check_choice(_OWNER, "lookup", lookup, LOOKUPS)
        self.unify = check_choice(_OWNER, "unify", unify, UNIFIES)
        self.candidate_norm = check_choice(_OWNER, "candidate_norm", candidate_norm,
                                           CANDIDATE_NORMS)
        self.embeddings_initializer = get_embeddings_initializer(embeddings_initializer)
        if affine_scale_init is not None and not (
                isinstance(affine_scale_init, (int, float)) and affine_scale_init > 0):
            raise ValueError(f"{_OWNER}: affine_scale_init must be a positive float or None, "
                             f"got {affine_scale_init!r}")
        self.affine_scale_init = affine_scale_init
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

        self.num_candidates = max(len(c) for c in self.field_candidates)
        dims = np.zeros((num_fields, self.num_candidates), dtype=np.int64)  # 0 = no such candidate
        for m, cands in enumerate(self.field_candidates):
            dims[m, : len(cands)] = cands
        self._dims = dims
        self._valid = dims > 0
        self.output_dim = int(dims.max())
        self._slot_widths = [int(w) for w in dims.max(axis=0)]
        if self.lookup == "weight_sharing":
            widths = [max(c) for c in self.field_candidates]
            self._slot_starts = [0] * self.num_candidates
            self._raw_width = self.output_dim
        else:
            widths = [sum(self._slot_widths)] * num_fields
            self._slot_starts = [int(s) for s in np.cumsum([0] + self._slot_widths[:-1])]
            self._raw_width = sum(self._slot_widths)
        self._tables = FieldTables(self.vocab_sizes, widths, _OWNER)
        # Per-field candidate lists: slot n of field m uses only its first dims[m, n] columns.
        # Linear: masks on the rows of W_n ([M, D_n], None when all ones). Zero-pad: which row
        # columns belong to candidate n of field m ([M, N, R]).
        self._row_masks = []
        for width in self._slot_widths:
            mask = np.arange(width)[None, :] < dims[:, len(self._row_masks), None]
            mask = mask.astype(np.float32)
            self._row_masks.append(None if mask.all() else mask)
        columns = np.arange(self._raw_width)[None, None, :]
        starts = np.asarray(self._slot_starts)[None, :, None]
        self._column_masks = ((columns >= starts)
                              & (columns < starts + dims[:, :, None])).astype(np.float32)

    # ------------------------------------------------------------------ build
    def build(self, input_shape):
        num_fields, n_cand, out_dim = len(self.vocab_sizes), self.num_candidates, self.output_dim
        if len(input_shape) != 2 or (input_shape[1] is not None and input_shape[1] != num_fields):
            raise ValueError(f"{_OWNER}: expected ids of shape [batch, {num_fields}], "
                             f"got {tuple(input_shape)}")
        self._tables.create(self, self.embeddings_initializer)
        self.alpha = self.add_weight(name="alpha", shape=(num_fields, n_cand),
                                     initializer="zeros", trainable=True)
        scalar = dict(shape=(), trainable=False, aggregation="only_first_replica")
        one = keras.initializers.Constant(1.0)
        self.temperature = self.add_weight(name="temperature", initializer=one, **scalar)
        self.gumbel_scale = self.add_weight(name="gumbel_scale", initializer=one, **scalar)
        self.kernels, self.biases = [], []
        if self.unify == "linear":
            for n, width in enumerate(self._slot_widths):
                limit = float(np.sqrt(6.0 / (width + out_dim)))  # Glorot-uniform per field
                self.kernels.append(self.add_weight(
                    name=f"transform_kernel_{n}", shape=(num_fields, width, out_dim),
                    initializer=keras.initializers.RandomUniform(-limit, limit),
                ))
                self.biases.append(self.add_weight(
                    name=f"transform_bias_{n}", shape=(num_fields, out_dim), initializer="zeros",
                ))
        self.candidate_scale = None
        if self.candidate_norm == "batchnorm_affine":
            init = self.affine_scale_init or initializer_stddev(self.embeddings_initializer)
            self.candidate_scale = self.add_weight(
                name="candidate_scale", shape=(num_fields, n_cand),
                initializer=keras.initializers.Constant(init),
            )
        self.moving_mean = self.moving_variance = None
        if self.candidate_norm != "none":
            # linear: statistics of each transformed candidate [M, N, d_max]; zero_pad: of each
            # column of the looked-up row [M, R] (each column belongs to known candidates).
            shape = ((num_fields, n_cand, out_dim) if self.unify == "linear"
                     else (num_fields, self._raw_width))
            stats = dict(shape=shape, trainable=False, aggregation="only_first_replica")
            self.moving_mean = self.add_weight(name="moving_mean", initializer="zeros", **stats)
            self.moving_variance = self.add_weight(name="moving_variance", initializer="ones",
                                                   **stats)

    # ------------------------------------------------------------------ variable groups
    @property
    def embedding_variables(self) -> list:
        """The big row-sparse tables (for the row-sparse optimizer)."""
        return self._tables.variables

    @property
    def arch_variables(self) -> list:
        return [self.alpha]

    @property
    def transform_variables(self) -> list:
        """Unification weights and biases plus the per-candidate BN scale."""
        extra = [self.candidate_scale] if self.candidate_scale is not None else []
        return list(self.kernels) + list(self.biases) + extra

    # ------------------------------------------------------------------ mixing weights
    def _logits(self) -> tf.Tensor:
        alpha = tf.convert_to_tensor(self.alpha)
        if self._valid.all():
            return alpha
        return tf.where(tf.constant(self._valid), alpha, tf.fill(tf.shape(alpha), _MASKED_LOGIT))

    def probabilities(self) -> tf.Tensor:
        """[M, N] softmax(alpha); candidates a field does not have get probability 0."""
        return tf.nn.softmax(self._logits(), axis=-1)

    def mixing_weights(self, training: bool = False) -> tf.Tensor:
        """[M, N] p of Eq. 6 (training: Gumbel noise and temperature) or softmax(alpha) (eval)."""
        logits = self._logits()
        if not training:
            return tf.nn.softmax(logits, axis=-1)
        shape = (len(self.vocab_sizes), self.num_candidates)
        u = keras.random.uniform(shape, minval=1e-10, maxval=1.0, seed=self.seed_generator)
        gumbel = -tf.math.log(-tf.math.log(u))
        noise = gumbel * tf.convert_to_tensor(self.gumbel_scale)
        scores = tf.nn.log_softmax(logits, axis=-1) + noise
        return tf.nn.softmax(scores / tf.convert_to_tensor(self.temperature), axis=-1)

    @property
    def candidate_dims_matrix(self) -> np.ndarray:
        """[M, N] candidate dimension of each field's slot (0 where a field has fewer
        candidates)."""
        return np.where(self._valid, self._dims, 0).astype(np.float32)

    def expected_dims(self) -> tf.Tensor:
        """[M] sum_n softmax(alpha)_n * d_n: differentiable in alpha (for a parameter-cost term)."""
        dims = tf.constant(self.candidate_dims_matrix)
        return tf.reduce_sum(self.probabilities() * dims, axis=-1)

    def chosen_dims(self) -> list[int]:
        """Eq. 13: the candidate dim with the largest alpha, per field (eager only)."""
        best = np.argmax(np.asarray(self.probabilities()), axis=-1)
        return [int(self._dims[m, n]) for m, n in enumerate(best)]

    # ------------------------------------------------------------------ forward
    @staticmethod
    def _global_sums(tensors: list) -> list:
        """Sums over all replicas in sync (identity without a distribution strategy)."""
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync == 1:
            return tensors
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tensors)

    def _update_moving(self, mean: tf.Tensor, variance: tf.Tensor) -> None:
        self.moving_mean.assign(self.moving_mean * BN_MOMENTUM + mean * (1.0 - BN_MOMENTUM))
        self.moving_variance.assign(
            self.moving_variance * BN_MOMENTUM + variance * (1.0 - BN_MOMENTUM))

    def _slot(self, x: tf.Tensor, n: int) -> tf.Tensor:
        return x[..., self._slot_starts[n] : self._slot_starts[n] + self._slot_widths[n]]

    def _linear(self, raw: tf.Tensor, weights: tf.Tensor, training: bool) -> tf.Tensor:
        """[M, B, R] -> [M, B, d_max]: sum_n weights_n * norm(x_n W_n + b_n) as one matmul."""
        kernels = [
            k if mask is None else k * tf.constant(mask)[:, :, None]
            for k, mask in zip(self.kernels, self._row_masks, strict=True)
        ]
        n_cand = self.num_candidates
        if self.moving_mean is None:
            scales = [weights[:, n, None] for n in range(n_cand)]  # [M, 1]
            shift = tf.add_n([scales[n] * self.biases[n] for n in range(n_cand)])
        else:
            if training:
                count = tf.cast(tf.shape(raw)[1], raw.dtype)
                sums = [count, tf.reduce_sum(raw, axis=1)]
                if self.lookup == "weight_sharing":  # one covariance; candidates use leading blocks
                    sums.append(tf.matmul(raw, raw, transpose_a=True))
                else:
                    sums += [tf.matmul(self._slot(raw, n), self._slot(raw, n), transpose_a=True)
                             for n in range(n_cand)]
                count, sum_x, *sum_xx = self._global_sums(sums)
                mean_x = sum_x / count
                means, variances = [], []
                for n, kernel in enumerate(kernels):
                    mean_n = self._slot(mean_x, n)
                    width = self._slot_widths[n]
                    second = sum_xx[0][:, :width, :width] if len(sum_xx) == 1 else sum_xx[n]
                    cov = second / count - mean_n[:, :, None] * mean_n[:, None, :]
                    means.append(tf.squeeze(tf.matmul(mean_n[:, None, :], kernel), 1)
                                 + self.biases[n])
                    variances.append(tf.maximum(
                        tf.reduce_sum(tf.matmul(cov, kernel) * kernel, axis=1), 0.0))
                mean, variance = tf.stack(means, axis=1), tf.stack(variances, axis=1)  # [M, N, E]
                self._update_moving(mean, variance)
            else:
                mean = tf.convert_to_tensor(self.moving_mean)
                variance = tf.convert_to_tensor(self.moving_variance)
            gains = weights[:, :, None] * tf.math.rsqrt(variance + BN_EPSILON)  # [M, N, E]
            scales = [gains[:, n] for n in range(n_cand)]
            shift = tf.add_n([scales[n] * (self.biases[n] - mean[:, n]) for n in range(n_cand)])
        scaled = [kernel * scale[:, None, :] for kernel, scale in zip(kernels, scales, strict=True)]
        if self.lookup == "weight_sharing":
            rows = self._raw_width
            kernel = tf.add_n([tf.pad(k, [[0, 0], [0, rows - k.shape[1]], [0, 0]]) for k in scaled])
        else:
            kernel = tf.concat(scaled, axis=1)
        return tf.matmul(raw, kernel) + shift[:, None, :]

    def _zero_pad(self, raw: tf.Tensor, weights: tf.Tensor, training: bool) -> tf.Tensor:
        """[M, B, R] -> [M, B, d_max]: sum_n weights_n * pad(norm(x_n))."""
        if self.moving_mean is not None:
            if training:
                count = tf.cast(tf.shape(raw)[1], raw.dtype)
                count, sum_x, sum_x2 = self._global_sums(
                    [count, tf.reduce_sum(raw, axis=1), tf.reduce_sum(tf.square(raw), axis=1)]
                )
                mean = sum_x / count
                variance = tf.maximum(sum_x2 / count - tf.square(mean), 0.0)
                self._update_moving(mean, variance)
            else:
                mean = tf.convert_to_tensor(self.moving_mean)
                variance = tf.convert_to_tensor(self.moving_variance)
            raw = (raw - mean[:, None, :]) * tf.math.rsqrt(variance + BN_EPSILON)[:, None, :]
        column_weights = tf.einsum("mn,mnr->mr", weights, tf.constant(self._column_masks))
        mixed = raw * column_weights[:, None, :]
        if self.lookup == "weight_sharing":
            return mixed
        out_dim = self.output_dim
        return tf.add_n([
            tf.pad(self._slot(mixed, n), [[0, 0], [0, 0], [0, out_dim - self._slot_widths[n]]])
            for n in range(self.num_candidates)
        ])

    def call(self, ids, training=None):
        training = bool(training)
        ids = self._tables.check_ids(ids)
        raw = self._tables.lookup_padded(ids, self._raw_width, field_major=True)  # [M, B, R]
        p = self.mixing_weights(training)  # [M, N]
        weights = p * self.candidate_scale if self.candidate_scale is not None else p
        if self.unify == "linear":
            out = self._linear(raw, weights, training)
        else:
            out = self._zero_pad(raw, weights, training)
        return tf.transpose(out, [1, 0, 2])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], len(self.vocab_sizes), self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_sizes=list(self.vocab_sizes),
            candidate_dims=self._candidate_dims_config,
            lookup=self.lookup,
            unify=self.unify,
            candidate_norm=self.candidate_norm,
            embeddings_initializer=keras.initializers.serialize(self.embeddings_initializer),
            affine_scale_init=self.affine_scale_init,
            seed=self.seed,
        )
        return config
