"""Concatenated embedding tables: all fields of the same width share ONE table.

A plain per-field `keras.layers.Embedding` costs one gather (and one sparse gradient) per field;
with 39 fields that dominates a CTR step. Here fields are grouped by table width; each group stores
its fields' tables stacked row-wise in one variable, and a lookup is `ids + row_offsets` followed by
a single `tf.gather`, whose gradient is an `IndexedSlices` touching only the batch's rows (the
row-sparse optimizer relies on that).

`FieldTables` is a plain helper (not a layer): the owning layer calls `create` from its `build`, so
the variables belong to (and are saved with) the layer.

Under a `tf.distribute.ParameterServerStrategy` the tables are plain `tf.Variable`s instead of Keras
weights (`plain`): the strategy's variable partitioner, asked only inside `sharding_tables()`
(`table_partitioner`), splits each table by rows over the parameter servers (a `ShardedVariable`),
rows are read with `tf.nn.embedding_lookup` (which knows a ShardedVariable's row order) and
`variables` lists the shards, each updated by the row-sparse optimizer. Keras variables cannot
hold a ShardedVariable (docs/DESIGN.md, "Tables sharded over parameter servers"). The layer keeps
them in `_plain_tables`, outside its Keras weights: `plain_tables(model)` finds them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
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

    plain: bool = False  # plain tf.Variables (a parameter-server run), set by `create`

    def create(
        self, layer: keras.layers.Layer, initializer, name: str = "embeddings"
    ) -> list:
        """Adds one variable per group to `layer` (call from the layer's `build`): Keras weights,
        or under a ParameterServerStrategy plain tf.Variables sharded by rows (`plain`)."""
        if _parameter_server_scope():
            return self._create_plain(layer, initializer, name)
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

    def _create_plain(self, layer, initializer, name):
        initializer = keras.initializers.get(initializer)
        self.plain = True
        tables = []
        with sharding_tables():
            for g in self.groups:
                shape = (g.rows, g.width)
                tables.append(tf.Variable(
                    initial_value=_per_shard_initial_value(initializer, shape),
                    shape=shape, dtype=tf.float32, trainable=True,
                    name=name if len(self.groups) == 1 else f"{name}_w{g.width}"))
        self.tables = tables
        # outside Keras's tracking (a tuple of tf.Variables is not a Keras weight)
        layer._plain_tables = tuple(tables)
        return tables

    @property
    def variables(self) -> list:
        """What the row-sparse optimizer updates: the tables, or each table's shards."""
        if not self.plain:
            return list(self.tables)
        return [shard for table in self.tables for shard in _shards(table)]

    def _gather(self, table, ids: tf.Tensor) -> tf.Tensor:
        if self.plain:  # a ShardedVariable: embedding_lookup follows its row partition
            return tf.nn.embedding_lookup(table, ids)
        # `table.value` (the tf.Variable) makes this a sparse resource gather; gathering from
        # the Keras variable would read (and, after sparse writes, copy) the whole table.
        return tf.gather(table.value, ids)

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
            out.append(self._gather(table, group_ids))
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
            out.append(self._gather(self.tables[gi], field_ids))
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


# ------------------------------------------------------------------ parameter-server tables
_SHARDING = threading.local()


@contextlib.contextmanager
def sharding_tables():
    """While active (a table's creation), `table_partitioner` partitions; elsewhere it does not."""
    previous = getattr(_SHARDING, "on", False)
    _SHARDING.on = True
    try:
        yield
    finally:
        _SHARDING.on = previous


def table_partitioner(partitioner):
    """A ParameterServerStrategy `variable_partitioner` that applies `partitioner` (e.g.
    `tf.distribute.experimental.partitioners.FixedShardsPartitioner`) to the embedding tables only
    and leaves every other variable whole: the strategy asks its partitioner about every variable
    created in its scope, and a Keras weight (a Dense kernel, an optimizer slot) must not become
    a ShardedVariable (Keras reads `.handle`, which a ShardedVariable lacks)."""

    def partition(shape, dtype):
        if getattr(_SHARDING, "on", False):
            return partitioner(shape, dtype)
        return [1] * len(shape)

    return partition


def _parameter_server_scope() -> bool:
    if not tf.distribute.has_strategy():
        return False
    return isinstance(tf.distribute.get_strategy(),
                      tf.distribute.experimental.ParameterServerStrategy)


def _shards(table) -> list:
    return list(table.variables) if hasattr(table, "variables") else [table]


def _per_shard_initial_value(initializer, shape):
    """A tf.Variable initial value that ParameterServerStrategy calls per shard (with its
    `shard_info`), so each shard is initialised on its parameter server at its own shape: no
    process ever holds the whole table. A Keras initializer seeded with an int (an unseeded one
    picks an int once) draws the same numbers at every call, so each shard's draw is seeded by
    its first row (`_shard_initializer`): equal-sized shards would otherwise start equal."""

    def initial_value(shard_info=None):
        if shard_info is None:
            return initializer(shape, dtype="float32")
        shard = _shard_initializer(initializer, int(shard_info.offset[0]))
        return shard(tuple(shard_info.shape), dtype="float32")

    return initial_value


def _shard_initializer(initializer, first_row: int):
    seed = getattr(initializer, "seed", None)
    if not isinstance(seed, int) or isinstance(seed, bool) or first_row == 0:
        return initializer  # no seed (constants), or a SeedGenerator: new numbers per call
    config = initializer.get_config()
    config["seed"] = (seed + 1_000_003 * first_row) % (2**31 - 1)
    return type(initializer).from_config(config)


def plain_tables(model) -> list:
    """The plain tf.Variable tables (ShardedVariables) of a model's layers, in layer order; empty
    for a model with Keras-weight tables."""
    out = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        out.extend(getattr(layer, "_plain_tables", ()))
    return out
