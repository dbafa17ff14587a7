"""pipeline.trainer's FusedAdam against Keras Adam (updates, checkpoints both ways) and
StreamingStats' one-bincount histogram against the two-mask form it replaced."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.trainer import FusedAdam, StreamingStats, make_dense_optimizer

SHAPES = [(5, 3), (3,), ()]


def _variables(seed=0):
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.normal(size=s).astype(np.float32), name=f"w{i}")
            for i, s in enumerate(SHAPES)]


def _gradients(steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[tf.constant(rng.normal(size=s).astype(np.float32)) for s in SHAPES]
            for _ in range(steps)]


def _train(opt, variables, grads, compiled=True):
    def step(gs):
        opt.apply_gradients(zip(gs, variables))

    run = tf.function(step) if compiled else step
    for gs in grads:
        run(gs)


def _slots(opt, variables):
    index = [opt._get_variable_index(v) for v in variables]
    return ([opt._momentums[i].numpy() for i in index],
            [opt._velocities[i].numpy() for i in index])


def _assert_close(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=2e-6, atol=1e-8)


@pytest.mark.parametrize("compiled", [True, False])
def test_fused_adam_updates_match_keras_adam_over_several_steps(compiled):
    grads = _gradients(8)
    fused_vars, keras_vars = _variables(), _variables()
    fused = FusedAdam(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-6)
    ref = keras.optimizers.Adam(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-6)
    _train(fused, fused_vars, grads, compiled)
    _train(ref, keras_vars, grads, compiled)
    assert int(fused.iterations.numpy()) == int(ref.iterations.numpy()) == 8
    start = [v.numpy() for v in _variables()]
    moved = [abs(v.numpy() - s).max() for v, s in zip(keras_vars, start)]
    assert min(moved) > 0.01  # the steps did move every variable
    _assert_close([v.numpy() for v in fused_vars], [v.numpy() for v in keras_vars])
    for got, want in zip(_slots(fused, fused_vars), _slots(ref, keras_vars)):
        _assert_close(got, want)


def test_fused_adam_falls_back_to_keras_for_amsgrad_and_sparse_gradients():
    var, ref_var = keras.Variable(np.ones((4, 2), np.float32)), keras.Variable(
        np.ones((4, 2), np.float32))
    fused, ref = FusedAdam(learning_rate=0.1), keras.optimizers.Adam(learning_rate=0.1)
    sparse = tf.IndexedSlices(tf.constant([[1.0, 2.0]]), tf.constant([2]), tf.constant([4, 2]))
    fused.apply_gradients([(sparse, var)])
    ref.apply_gradients([(sparse, ref_var)])
    np.testing.assert_array_equal(var.numpy(), ref_var.numpy())
    ams_vars, ams_ref = _variables(), _variables()
    grads = _gradients(3)
    _train(FusedAdam(learning_rate=0.01, amsgrad=True), ams_vars, grads)
    _train(keras.optimizers.Adam(learning_rate=0.01, amsgrad=True), ams_ref, grads)
    for a, b in zip(ams_vars, ams_ref):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("first,second", [(keras.optimizers.Adam, FusedAdam),
                                          (FusedAdam, keras.optimizers.Adam)])
def test_a_checkpoint_of_one_restores_into_the_other(tmp_path, first, second):
    grads = _gradients(6)
    variables = _variables()
    opt = first(learning_rate=0.01)
    _train(opt, variables, grads[:3])
    path = tf.train.Checkpoint(opt=opt, v=variables).save(str(tmp_path / "ckpt"))

    restored_vars = _variables(seed=9)
    restored = second(learning_rate=0.01)
    restored.build(restored_vars)
    tf.train.Checkpoint(opt=restored, v=restored_vars).restore(path).assert_consumed()
    assert int(restored.iterations.numpy()) == 3
    for a, b in zip(restored_vars, variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for got, want in zip(_slots(restored, restored_vars), _slots(opt, variables)):
        for x, y in zip(got, want):
            np.testing.assert_array_equal(x, y)
    # and training goes on as the original would
    _train(restored, restored_vars, grads[3:])
    _train(opt, variables, grads[3:])
    _assert_close([v.numpy() for v in restored_vars], [v.numpy() for v in variables])


def test_make_dense_optimizer_is_fused_adam_and_round_trips_its_config():
    opt = make_dense_optimizer(0.003)
    assert type(opt) is FusedAdam
    assert float(opt.learning_rate.numpy()) == pytest.approx(0.003)
    assert keras.saving.get_registered_name(FusedAdam) == "autodim>FusedAdam"
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is FusedAdam and again.get_config() == opt.get_config()


def _two_mask_batch(bins, labels, logits, per_example):
    """StreamingStats.batch as it was: two boolean masks and two bincounts."""
    probs = tf.sigmoid(logits)
    index = tf.clip_by_value(tf.cast(probs * bins, tf.int32), 0, bins - 1)
    is_pos = labels > 0.5
    pos = tf.math.bincount(tf.boolean_mask(index, is_pos), minlength=bins, maxlength=bins,
                           dtype=tf.float64)
    neg = tf.math.bincount(tf.boolean_mask(index, ~is_pos), minlength=bins, maxlength=bins,
                           dtype=tf.float64)
    return tf.reduce_sum(tf.cast(per_example, tf.float64)), pos, neg


@pytest.mark.parametrize("bins", [1, 7, 1000])
def test_streaming_stats_histograms_equal_the_two_mask_form(bins):
    rng = np.random.default_rng(bins)
    stats = StreamingStats(f"t{bins}", bins=bins)
    strategy = tf.distribute.get_strategy()
    want_loss, want_pos, want_neg, count = 0.0, np.zeros(bins), np.zeros(bins), 0
    for size in (50, 1, 333):
        labels = tf.constant(rng.integers(0, 2, size=size).astype(np.float32))
        # saturated scores too (probability 0 and 1 land in the first and last bin)
        logits = tf.constant(np.concatenate([rng.normal(scale=3, size=size - 1), [40.0]])[
            :size].astype(np.float32))
        per_example = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
        stats.add(strategy, stats.batch(labels, logits, per_example))
        loss, pos, neg = _two_mask_batch(bins, labels, logits, per_example)
        want_loss += float(loss)
        want_pos += pos.numpy()
        want_neg += neg.numpy()
        count += size
    np.testing.assert_array_equal(stats.pos.numpy(), want_pos)
    np.testing.assert_array_equal(stats.neg.numpy(), want_neg)
    assert float(stats.count.numpy()) == count
    assert float(stats.loss_sum.numpy()) == pytest.approx(want_loss, rel=1e-12)
    assert stats.pos.numpy().sum() + stats.neg.numpy().sum() == count
    stats.reset()
    assert float(stats.count.numpy()) == 0 and not stats.pos.numpy().any()


def test_fused_adam_step_is_one_resource_apply_adam_per_dense_variable():
    variables = _variables()
    opt = FusedAdam(learning_rate=0.01)
    opt.build(variables)
    step = tf.function(lambda gs: opt.apply_gradients(zip(gs, variables)))
    graph = step.get_concrete_function(_gradients(1)[0]).graph
    ops = [op.type for op in graph.get_operations()]
    assert ops.count("ResourceApplyAdam") == len(SHAPES)
