"""Concatenated embedding tables: all fields of the same width share ONE table.

A plain per-field `keras.layers.Embedding` costs one gather (and one sparse gradient) per field;
with 39 fields that dominates a CTR step. Here fields are grouped by table width; each group stores
its fields' tables stacked row-wise in one variable, and a lookup is `ids + row_offsets` followed by
a single `tf.gather`, whose gradient is an `IndexedSlices` touching only the batch's rows (the
row-sparse optimizer relies on that).

`FieldTables` is a plain helper (not a layer): the owning layer calls `create` from its `build`, so
the variables belong to (and are saved with) the layer.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class TableGroup:
    """Fields (indices into the model's field order) stored in one table of `width` columns."""

    width: int
    fields: tuple[int, ...]
    offsets: tuple[int, ...]  # first row of each field inside the group table
    rows: int


def group_fields(vocab_sizes: Sequence[int], widths: Sequence[int]) -> list[TableGroup]:
    """Groups fields by width, widest first; inside a group fields keep their original order."""
    groups = []
    for width in sorted(set(widths), reverse=True):
        fields = tuple(m for m, w in enumerate(widths) if w == width)
        sizes = [vocab_sizes[m] for m in fields]
        offsets = tuple(int(x) for x in np.concatenate([[0], np.cumsum(sizes)[:-1]]))
        groups.append(TableGroup(int(width), fields, offsets, int(sum(sizes))))
    return groups


class FieldTables:
    """Grouped concatenated tables for `vocab_sizes` fields with per-field `widths`."""

    def __init__(self, vocab_sizes: Sequence[int], widths: Sequence[int], owner: str):
        self.vocab_sizes = tuple(vocab_sizes)
        self.widths = tuple(widths)
        self.owner = owner
        self.groups = group_fields(self.vocab_sizes, self.widths)
        total_rows = sum(g.rows for g in self.groups)
        self.index_dtype = tf.int32 if total_rows < 2**31 - 1 else tf.int64
        order = [m for g in self.groups for m in g.fields]
        # Position of field m in the concatenation of the groups' outputs.
        self.inverse_order = tuple(int(i) for i in np.argsort(order))
        self.identity_order = order == list(range(len(order)))
        # (group index, position inside the group) of each field, in the original field order.
        self.slots = tuple(
            next((gi, g.fields.index(m)) for gi, g in enumerate(self.groups) if m in g.fields)
            for m in range(len(self.vocab_sizes))
        )
        self.tables: list[keras.Variable] = []

    def create(
        self, layer: keras.layers.Layer, initializer, name: str = "embeddings"
    ) -> list[keras.Variable]:
        """Adds one variable per group to `layer` (call from the layer's `build`)."""
        self.tables = [
            layer.add_weight(
                name=name if len(self.groups) == 1 else f"{name}_w{g.width}",
                shape=(g.rows, g.width),
                initializer=initializer,
                trainable=True,
            )
            for g in self.groups
        ]
        return self.tables

    def check_ids(self, ids: tf.Tensor) -> tf.Tensor:
        """Casts ids to the index dtype and fails loudly on an id outside [0, vocab_size).

        Without this an id >= vocab_size of field m would silently read a row of field m + 1.
        """
        ids = tf.cast(ids, self.index_dtype)
        if ids.shape.rank != 2 or (
            ids.shape[1] is not None and ids.shape[1] != len(self.vocab_sizes)
        ):
            raise ValueError(
                f"{self.owner}: expected int ids of shape [batch, {len(self.vocab_sizes)}], got "
                f"shape {ids.shape}"
            )
        vocab = tf.constant(self.vocab_sizes, dtype=self.index_dtype)
        in_range = tf.reduce_all((ids >= 0) & (ids < vocab))
        check = tf.debugging.Assert(
            in_range,
            [
                f"{self.owner}: an id is outside [0, vocab_size) of its field; "
                f"vocab_sizes={list(self.vocab_sizes)}"
            ],
            summarize=1,
        )
        with tf.control_dependencies([check]):
            return tf.identity(ids)

    def lookup(self, ids: tf.Tensor, field_major: bool = False) -> list[tf.Tensor]:
        """Checked ids [B, M] -> one tensor per group (group order): [B, M_g, width_g], or
        [M_g, B, width_g] if `field_major` (ids are transposed before the gather, which is cheaper
        than transposing the embeddings when the next op is a per-field batched matmul)."""
        field_axis = 0 if field_major else 1
        if field_major:
            ids = tf.transpose(ids)
        out = []
        for group, table in zip(self.groups, self.tables):
            if len(group.fields) == len(self.vocab_sizes):
                group_ids = ids
            else:
                group_ids = tf.gather(ids, list(group.fields), axis=field_axis)
            if any(group.offsets):
                offsets = tf.constant(group.offsets, dtype=self.index_dtype)
                group_ids = group_ids + (offsets[:, None] if field_major else offsets)
            # `table.value` (the tf.Variable) makes this a sparse resource gather; gathering from
            # the Keras variable would read (and, after sparse writes, copy) the whole table.
            out.append(tf.gather(table.value, group_ids))
        return out

    def lookup_fields(self, ids: tf.Tensor) -> list[tf.Tensor]:
        """Checked ids [B, M] -> one [B, width_m] tensor per field, in the original field order.

        One gather per field from its group's table (at `row offset + id`). For a mixed-width model
        whose fields are combined per field anyway (a per-field projection, or a stack into
        [B, M, E]) this is cheaper than per-group gathers followed by a concat and a reorder
        gather (BENCHMARKS.md, serving).
        """
        columns = tf.unstack(ids, num=len(self.vocab_sizes), axis=1)
        out = []
        for m, (gi, j) in enumerate(self.slots):
            offset = self.groups[gi].offsets[j]
            field_ids = columns[m] + offset if offset else columns[m]
            out.append(tf.gather(self.tables[gi].value, field_ids))
        return out

    def merge(self, parts: Sequence[tf.Tensor], field_major: bool = False) -> tf.Tensor:
        """Per-group outputs (same last dim) -> [B, M, E] (or [M, B, E]) in the original field
        order."""
        field_axis = 0 if field_major else 1
        merged = parts[0] if len(parts) == 1 else tf.concat(list(parts), axis=field_axis)
        if self.identity_order:
            return merged
        return tf.gather(merged, list(self.inverse_order), axis=field_axis)

    def lookup_padded(self, ids: tf.Tensor, width: int, field_major: bool = False) -> tf.Tensor:
        """Each field's row zero-padded on the right to `width` columns: [B, M, width] (or
        [M, B, width])."""
        parts = [
            p if g.width == width else tf.pad(p, [[0, 0], [0, 0], [0, width - g.width]])
            for g, p in zip(self.groups, self.lookup(ids, field_major))
        ]
        return self.merge(parts, field_major)
