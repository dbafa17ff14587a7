"""Re-training embedding (paper Sec. 2.4.2): one chosen dim per field, unified to `output_dim`.

Fields are grouped by dimension; each group is one concatenated table (sparse gradients) and, for
`unify="linear"`, one [M_g, d, output_dim] kernel and [M_g, output_dim] bias. A call gathers each
field's rows from its group table, projects them with the field's slice of the kernel and stacks
the fields in their original order: with mixed widths this per-field form is faster than grouped
gathers plus a concat, a reorder gather and a transpose (serving latency, BENCHMARKS.md). With one
width (every field at the same dim, FDE) a call is one gather of [B, M, d] instead
(`flat_and_unified`). No BatchNorm (the paper drops it at re-training: there is nothing to
compare).

Design choice: with `unify="linear"` every field is projected, including fields whose dim already
equals `output_dim`. The paper's Eq. 1 transforms every candidate including d_N, so the re-trained
model has the same function class as the searched one. With `unify="zero_pad"` a field of width
`output_dim` is used as is, so all-equal dims with `zero_pad` is a plain embedding (the fast FDE
path, see `FixedEmbedding`).
"""
from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from configs.experiment import UNIFIES
from models._tables import FieldTables
from models._validation import (
    check_choice,
    check_dim_list,
    check_positive_int,
    check_vocab_sizes,
    get_embeddings_initializer,
)


@keras.saving.register_keras_serializable(package="autodim")
class MixedDimEmbedding(keras.layers.Layer):
    """int ids [B, M] -> [B, M, output_dim] with field m embedded in dims[m] then unified."""

    _owner = "MixedDimEmbedding"

    def __init__(
        self,
        vocab_sizes: Sequence[int],
        dims: Sequence[int],
        output_dim: int | None = None,
        unify: str = "linear",
        embeddings_initializer: Any = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = self._owner
        self.vocab_sizes = check_vocab_sizes(owner, vocab_sizes)
        self.dims = check_dim_list(owner, "dims", dims, increasing=False)
        if len(self.dims) != len(self.vocab_sizes):
            raise ValueError(
                f"{owner}: dims has {len(self.dims)} entries but vocab_sizes has "
                f"{len(self.vocab_sizes)} fields (dims={list(self.dims)})"
            )
        self.output_dim = (max(self.dims) if output_dim is None
                           else check_positive_int(owner, "output_dim", output_dim))
        self._output_dim_arg = output_dim
        self.unify = check_choice(owner, "unify", unify, UNIFIES)
        if self.unify == "zero_pad" and self.output_dim < max(self.dims):
            raise ValueError(
                f"{owner}: unify='zero_pad' needs output_dim >= max(dims)={max(self.dims)}, "
                f"got output_dim={output_dim}"
            )
        self.embeddings_initializer = get_embeddings_initializer(embeddings_initializer)
        self._tables = FieldTables(self.vocab_sizes, self.dims, owner)

    def build(self, input_shape):
        num_fields = len(self.vocab_sizes)
        if len(input_shape) != 2 or (input_shape[1] is not None and input_shape[1] != num_fields):
            raise ValueError(f"{self._owner}: expected ids of shape [batch, {num_fields}], "
                             f"got {tuple(input_shape)}")
        self._tables.create(self, self.embeddings_initializer)
        self.kernels, self.biases = [], []
        if self.unify == "linear":
            for group in self._tables.groups:
                limit = float(np.sqrt(6.0 / (group.width + self.output_dim)))
                self.kernels.append(self.add_weight(
                    name=f"transform_kernel_w{group.width}",
                    shape=(len(group.fields), group.width, self.output_dim),
                    initializer=keras.initializers.RandomUniform(-limit, limit),
                ))
                self.biases.append(self.add_weight(
                    name=f"transform_bias_w{group.width}",
                    shape=(len(group.fields), self.output_dim),
                    initializer="zeros",
                ))

    @property
    def embedding_variables(self) -> list:
        return self._tables.variables

    @property
    def arch_variables(self) -> list:
        return []

    @property
    def transform_variables(self) -> list:
        return list(self.kernels) + list(self.biases)

    def call(self, ids, training=None):
        tables = self._tables
        if self.unify == "zero_pad" and len(tables.groups) == 1:
            # One width: a plain embedding (the FDE path).
            (out,) = tables.lookup(tables.check_ids(ids))
            if tables.groups[0].width < self.output_dim:
                out = tf.pad(out, [[0, 0], [0, 0], [0, self.output_dim - tables.groups[0].width]])
            return out
        if len(tables.groups) == 1:
            return self.flat_and_unified(ids)[1]
        return self.unify_fields(self.raw_fields(ids))

    def raw_fields(self, ids) -> list[tf.Tensor]:
        """ids [B, M] -> each field's embedding at its own dim, [B, dims[m]], in field order."""
        return self._tables.lookup_fields(self._tables.check_ids(ids))

    def flat_and_unified(self, ids, unified: bool = True):
        """ids [B, M] -> (the raw embeddings concatenated in field order [B, sum d_m], the
        unified ones [B, M, output_dim] or None if `unified` is False): what `raw_fields` +
        `tf.concat` and `unify_fields` give, computed together.

        With one table width (FDE) this is ONE gather of [B, M, d] whose reshape is the flat
        input and whose per-field projection (a batched matmul over the field axis) the unified
        one: measured cheaper than M gathers + a concat + a stack and their gradients
        (benchmarks/pytorch_fm.py), and the table's gradient arrives as one row-sparse slice
        instead of M to be concatenated. Mixed widths keep the per-field form (see the module
        docstring)."""
        tables = self._tables
        if len(tables.groups) > 1:
            columns = self.raw_fields(ids)
            return tf.concat(columns, axis=1), self.unify_fields(columns) if unified else None
        (rows,) = tables.lookup(tables.check_ids(ids))  # [B, M, d]
        width = tables.groups[0].width
        flat = tf.reshape(rows, [-1, len(self.vocab_sizes) * width])
        if not unified:
            return flat, None
        if self.unify == "linear":
            # [M, B, d] x [M, d, E] -> [M, B, E]: one batched matmul of every field's projection
            field_major = tf.transpose(rows, [1, 0, 2])
            projected = tf.matmul(field_major, self.kernels[0].value)
            projected += self.biases[0].value[:, None]
            return flat, tf.transpose(projected, [1, 0, 2])
        if width < self.output_dim:
            rows = tf.pad(rows, [[0, 0], [0, 0], [0, self.output_dim - width]])
        return flat, rows

    def unify_fields(self, columns: Sequence[tf.Tensor]) -> tf.Tensor:
        """`raw_fields` output -> [B, M, output_dim] (per-field projection or zero padding)."""
        tables = self._tables
        kernels = [tf.convert_to_tensor(k) for k in self.kernels]
        biases = [tf.convert_to_tensor(b) for b in self.biases]
        out = []
        for (gi, j), rows in zip(tables.slots, columns, strict=True):
            if self.unify == "linear":
                rows = tf.matmul(rows, kernels[gi][j]) + biases[gi][j]
            elif tables.groups[gi].width < self.output_dim:
                rows = tf.pad(rows, [[0, 0], [0, self.output_dim - tables.groups[gi].width]])
            out.append(rows)
        return tf.stack(out, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], len(self.vocab_sizes), self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_sizes=list(self.vocab_sizes),
            dims=list(self.dims),
            output_dim=self._output_dim_arg,
            unify=self.unify,
            embeddings_initializer=keras.initializers.serialize(self.embeddings_initializer),
        )
        return config
