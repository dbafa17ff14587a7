"""MixedDimEmbedding / FixedEmbedding / FirstOrder on hand-built tables."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from models.fixed_embedding import FixedEmbedding
from models.linear import FirstOrder
from models.mixed_embedding import MixedDimEmbedding

VOCAB = [3, 2, 4]
IDS = np.array([[0, 1, 3], [2, 0, 1]])


def test_zero_pad_groups_fields_by_dim_and_keeps_field_order():
    layer = MixedDimEmbedding(VOCAB, [2, 4, 2], unify="zero_pad")
    layer.build((None, 3))
    tables = {v.shape[1]: v for v in layer.embedding_variables}
    assert sorted(tables) == [2, 4] and tables[2].shape == (3 + 4, 2) and tables[4].shape == (2, 4)
    t2 = np.arange(14, dtype=np.float32).reshape(7, 2)
    t4 = -np.arange(8, dtype=np.float32).reshape(2, 4) - 1
    tables[2].assign(t2)
    tables[4].assign(t4)
    got = layer(tf.constant(IDS)).numpy()
    assert got.shape == (2, 3, 4)
    np.testing.assert_array_equal(
        got[0, 0], [0, 1, 0, 0]
    )  # field 0, id 0 -> row 0 of the 2-wide table
    np.testing.assert_array_equal(got[0, 1], t4[1])  # field 1, id 1
    np.testing.assert_array_equal(
        got[0, 2], [t2[3 + 3][0], t2[3 + 3][1], 0, 0]
    )  # field 2 rows start at 3
    np.testing.assert_array_equal(got[1, 2], [t2[4][0], t2[4][1], 0, 0])
    assert layer.transform_variables == [] and layer.arch_variables == []


def test_linear_projects_every_field_with_its_own_weight_and_bias():
    layer = MixedDimEmbedding(VOCAB, [1, 2, 1], output_dim=2, unify="linear")
    layer.build((None, 3))
    by_width = {v.shape[1]: v for v in layer.embedding_variables}
    by_width[1].assign([[1.0], [2.0], [3.0], [10.0], [20.0], [30.0], [40.0]])
    by_width[2].assign([[1.0, 2.0], [3.0, 4.0]])
    kernels = {k.shape[1]: k for k in layer.kernels}
    biases = {b.shape[0]: b for b in layer.biases}
    kernels[1].assign([[[1.0, -1.0]], [[0.5, 2.0]]])          # fields 0 and 2
    biases[2].assign([[0.0, 1.0], [1.0, 0.0]])
    kernels[2].assign([[[1.0, 0.0], [1.0, 1.0]]])  # field 1 (dim == output_dim, still projected)
    biases[1].assign([[0.5, 0.5]])
    got = layer(tf.constant([[2, 1, 3]])).numpy()[0]
    np.testing.assert_allclose(got[0], [3.0, -3.0 + 1.0])
    np.testing.assert_allclose(got[1], [3.0 + 4.0 + 0.5, 4.0 + 0.5])
    np.testing.assert_allclose(got[2], [0.5 * 40 + 1.0, 2.0 * 40])


def test_fixed_embedding_zero_pad_is_a_plain_embedding():
    layer = FixedEmbedding(VOCAB, 3)
    layer.build((None, 3))
    assert len(layer.embedding_variables) == 1 and layer.transform_variables == []
    assert layer.trainable_variables == layer.embedding_variables
    table = layer.embedding_variables[0].numpy()
    np.testing.assert_array_equal(layer(tf.constant(IDS)).numpy(), table[IDS + np.array([0, 3, 5])])
    config = layer.get_config()
    assert config["dim"] == 3 and "dims" not in config
    assert FixedEmbedding.from_config(config).get_config() == config
    linear = FixedEmbedding(VOCAB, 3, unify="linear")
    linear.build((None, 3))
    assert [k.shape for k in linear.kernels] == [(3, 3, 3)]


def test_gradients_are_row_sparse():
    layer = MixedDimEmbedding(VOCAB, [2, 2, 4], unify="linear")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(tf.constant(IDS)))
    grads = tape.gradient(loss, layer.embedding_variables)
    assert all(isinstance(g, tf.IndexedSlices) for g in grads)
    rows_2wide = set(np.concatenate([IDS[:, 0], IDS[:, 1] + 3]).tolist())
    assert (
        set(
            grads[[v.shape[1] for v in layer.embedding_variables].index(2)].indices.numpy().tolist()
        )
        == rows_2wide
    )


def test_first_order_sums_one_weight_per_field_plus_bias():
    layer = FirstOrder(VOCAB)
    layer.build((None, 3))
    np.testing.assert_array_equal(layer.embedding_variables[0].numpy(), 0.0)  # zero init
    layer.embedding_variables[0].assign(np.arange(9, dtype=np.float32)[:, None])
    layer.bias.assign(0.5)
    np.testing.assert_allclose(layer(tf.constant(IDS)).numpy(), [0 + 4 + 8 + 0.5, 2 + 3 + 6 + 0.5])


@pytest.mark.parametrize("kwargs,needle", [
    (dict(dims=[2, 4]), "dims has 2 entries but vocab_sizes has 3"),
    (dict(dims=[2, 0, 4]), "dims[1]"),
    (dict(dims=[2, 4, 4], unify="concat"), "unify must be one of"),
    (dict(dims=[2, 4, 4], output_dim=2, unify="zero_pad"), "output_dim >= max(dims)=4"),
    (dict(dims=[2, 4, 4], output_dim=0), "output_dim must be a positive int"),
])
def test_bad_arguments(kwargs, needle):
    with pytest.raises(ValueError) as err:
        MixedDimEmbedding(VOCAB, **kwargs)
    assert needle in str(err.value)


@pytest.mark.parametrize("unify", ["linear", "zero_pad"])
@pytest.mark.parametrize("dims,output_dim", [([3, 3, 3], None), ([3, 3, 3], 5), ([4, 2, 2], None)])
def test_flat_and_unified_equal_raw_fields_concat_and_unify_fields(unify, dims, output_dim):
    """One width (FDE: one gather of [B, M, d]) and mixed widths (per field): the flat raw input
    and the unified embeddings, their gradients, and `call`, all as the per-field reference."""
    vocab = [5, 3, 7]
    layer = MixedDimEmbedding(vocab, dims, output_dim=output_dim, unify=unify)
    layer.build((None, 3))
    rng = np.random.default_rng(len(dims) + (output_dim or 0))
    for v in layer.transform_variables:  # non-zero biases too
        v.assign(rng.normal(size=v.shape).astype(np.float32))
    ids = tf.constant(np.stack([rng.integers(0, v, size=6) for v in vocab], axis=1))
    weights = layer.trainable_variables
    flat_w = tf.constant(rng.normal(size=(6, sum(dims))).astype(np.float32))
    unified_w = tf.constant(rng.normal(size=(6, 3, layer.output_dim)).astype(np.float32))

    def run(fn):
        with tf.GradientTape() as tape:
            flat, unified = fn()
            loss = tf.reduce_sum(flat * flat_w) + tf.reduce_sum(unified * unified_w)
        grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, weights)]
        return flat.numpy(), unified.numpy(), grads

    def reference():
        columns = layer.raw_fields(ids)
        return tf.concat(columns, axis=1), layer.unify_fields(columns)

    flat, unified, grads = run(lambda: layer.flat_and_unified(ids))
    want_flat, want_unified, want_grads = run(reference)
    np.testing.assert_array_equal(flat, want_flat)
    np.testing.assert_allclose(unified, want_unified, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer(ids).numpy(), want_unified, rtol=1e-6, atol=1e-6)
    only_flat, none = layer.flat_and_unified(ids, unified=False)
    assert none is None
    np.testing.assert_array_equal(only_flat.numpy(), want_flat)
