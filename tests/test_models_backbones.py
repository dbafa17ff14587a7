"""Backbones: hand-computed values where the formula is simple, shapes/finiteness for all."""
from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.backbones.dcn_v2 import DCNv2
from models.backbones.fm import FM, fm_interaction
from models.backbones.ipnn import IPNN
from models.factory import BACKBONES, build_retrain_model, build_search_model
from models.mlp import MLP

VOCAB = [5, 7, 3, 4]
IDS = np.stack([np.arange(6) % v for v in VOCAB], axis=1)


def test_fm_equals_brute_force_pairwise_sum():
    e = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
    expected = [
        sum(e[b, i] @ e[b, j] for i, j in itertools.combinations(range(5), 2)) for b in range(3)
    ]
    np.testing.assert_allclose(FM()(tf.constant(e)).numpy(), expected, rtol=1e-5)


def _fm_square_of_sum(e):
    """The textbook form, differentiated by plain autodiff."""
    return 0.5 * (tf.square(tf.reduce_sum(e, axis=1)) - tf.reduce_sum(tf.square(e), axis=1))


@pytest.mark.parametrize("shape", [(4, 6, 3), (2, 2, 5), (3, 1, 2)])
def test_fm_interaction_value_and_gradient_equal_autodiff_of_the_square_of_sum_form(shape):
    rng = np.random.default_rng(sum(shape))
    e = tf.constant(rng.normal(size=shape).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(shape[0], shape[2])).astype(np.float32))

    def value_and_grad(fn):
        with tf.GradientTape() as tape:
            tape.watch(e)
            out = fn(e)
            loss = tf.reduce_sum(out * upstream)
        return out.numpy(), tape.gradient(loss, e).numpy()

    out, grad = value_and_grad(fm_interaction)
    want_out, want_grad = value_and_grad(_fm_square_of_sum)
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)
    # d out_d / d e_{m,d} = sum_m' e_{m',d} - e_{m,d}
    hand = upstream.numpy()[:, None, :] * (e.numpy().sum(axis=1, keepdims=True) - e.numpy())
    np.testing.assert_allclose(grad, hand, rtol=1e-5, atol=1e-6)
    # the same inside a compiled function (what the trainer traces)
    compiled = tf.function(lambda x: tf.gradients(tf.reduce_sum(fm_interaction(x) * upstream),
                                                  x)[0])
    np.testing.assert_allclose(compiled(e).numpy(), want_grad, rtol=1e-5, atol=1e-6)


def test_fm_interaction_registers_no_gradient_function_per_trace():
    # a tf.custom_gradient would add a process-global "CustomGradient-<uid>" registry entry (and
    # keep its graph alive) on every trace
    from tensorflow.python.framework import ops

    def registered():
        return set(ops.gradient_registry.list())

    before = registered()
    for batch in (2, 3, 4):
        tf.function(lambda x: tf.gradients(tf.reduce_sum(fm_interaction(x)), x)[0])(
            tf.ones([batch, 3, 2]))
    assert {n for n in registered() - before if n.startswith("CustomGradient")} == set()


def test_ipnn_feeds_the_embeddings_and_all_pairwise_inner_products():
    layer = IPNN(hidden_units=(), dropout=0.0)
    e = np.random.default_rng(1).normal(size=(2, 3, 2)).astype(np.float32)
    layer.build(e.shape)
    assert layer.mlp.output_layer.kernel.shape == (3 * 2 + 3, 1)
    kernel = np.random.default_rng(2).normal(size=(9, 1)).astype(np.float32)
    layer.mlp.output_layer.kernel.assign(kernel)
    inner = np.stack([[e[b, i] @ e[b, j] for i, j in [(0, 1), (0, 2), (1, 2)]] for b in range(2)])
    features = np.concatenate([e.reshape(2, 6), inner], axis=1)
    np.testing.assert_allclose(layer(tf.constant(e)).numpy(), (features @ kernel)[:, 0], rtol=1e-5)


def test_dcn_v2_cross_layer_formula():
    layer = DCNv2(num_cross_layers=1, hidden_units=())
    e = np.random.default_rng(3).normal(size=(2, 2, 2)).astype(np.float32)
    layer.build(e.shape)
    (kernel,), bias = layer.cross_weights[0]
    w = np.random.default_rng(4).normal(size=(4, 4)).astype(np.float32)
    kernel.assign(w)
    bias.assign(np.full(4, 0.1, np.float32))
    out_kernel = np.arange(4, dtype=np.float32)[:, None]
    layer.output_layer.kernel.assign(out_kernel)
    x0 = e.reshape(2, 4)
    x1 = x0 * (x0 @ w + 0.1) + x0
    np.testing.assert_allclose(layer(tf.constant(e)).numpy(), (x1 @ out_kernel)[:, 0], rtol=1e-5)
    low = DCNv2(num_cross_layers=2, low_rank=3)
    low.build((None, 2, 2))
    assert [tuple(m.shape) for m in low.cross_weights[0][0]] == [(4, 3), (3, 4)]


def test_mlp_layers_and_dropout_only_in_training():
    mlp = MLP((8, 4), dropout=0.5, output_units=1)
    x = tf.constant(np.random.default_rng(5).normal(size=(16, 6)).astype(np.float32))
    mlp.build(x.shape)
    assert [d.kernel.shape for d in mlp.dense_layers] == [(6, 8), (8, 4)]
    np.testing.assert_array_equal(mlp(x).numpy(), mlp(x).numpy())
    assert mlp(x).shape == (16, 1)
    assert not np.allclose(mlp(x, training=True).numpy(), mlp(x, training=True).numpy())
    with pytest.raises(ValueError, match="dropout"):
        MLP(dropout=1.5)
    with pytest.raises(ValueError, match=r"hidden_units\[1\]"):
        MLP((8, -1))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_with_both_embeddings(name):
    keras.utils.set_random_seed(0)  # tiny random models: keep the dead-ReLU odds fixed
    kwargs = {"hidden_units": (16, 8)}
    if name == "fm":
        kwargs = {}
    for model in (build_search_model(name, VOCAB, (2, 4, 8), seed=0, **kwargs),
                  build_retrain_model(name, VOCAB, [2, 8, 4, 8], **kwargs),
                  build_retrain_model(name, VOCAB, [4, 4, 4, 4], unify="zero_pad", **kwargs)):
        for training in (True, False):
            out = model(tf.constant(IDS), training=training).numpy()
            assert out.shape == (6,) and np.isfinite(out).all()
        assert np.std(model(tf.constant(IDS), training=True).numpy()) > 0  # depends on the input
