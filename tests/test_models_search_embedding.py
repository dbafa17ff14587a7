"""AutoDimEmbedding against a direct numpy transcription of the paper's Eq. 1-7."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.search_embedding import BN_EPSILON, BN_MOMENTUM, AutoDimEmbedding

VOCAB = [4, 3, 5]
OFFSETS = [0, 4, 7]
IDS = np.array([[0, 1, 2], [3, 0, 1], [1, 2, 4], [2, 2, 0], [3, 1, 3]])


def set_random_weights(layer, seed=0):
    rng = np.random.default_rng(seed)
    for v in layer.trainable_variables:
        v.assign(rng.normal(0.0, 0.5, v.shape).astype(np.float32))


def reference(layer, ids, p, norm_stats=None):
    """Per-candidate formula. Returns (output [B, M, E], per-candidate batch stats)."""
    table = layer.embedding_variables[0].numpy()
    dims, E = layer.field_candidates[0], layer.output_dim
    starts = (
        [0] * len(dims)
        if layer.lookup == "weight_sharing"
        else list(np.cumsum([0] + list(dims[:-1])))
    )
    out = np.zeros((ids.shape[0], ids.shape[1], E))
    stats = {}
    for m in range(ids.shape[1]):
        rows = table[OFFSETS[m] + ids[:, m]]
        for n, d in enumerate(dims):
            y = rows[:, starts[n] : starts[n] + d]
            if layer.unify == "linear":
                y = y @ layer.kernels[n].numpy()[m] + layer.biases[n].numpy()[m]
            if layer.candidate_norm != "none":
                mean, var = (y.mean(0), y.var(0)) if norm_stats is None else norm_stats[(m, n)]
                stats[(m, n)] = (y.mean(0), y.var(0))
                y = (y - mean) / np.sqrt(var + BN_EPSILON)
                if layer.candidate_norm == "batchnorm_affine":
                    y = y * layer.candidate_scale.numpy()[m, n]
            out[:, m, : y.shape[1]] += p[m, n] * y
    return out, stats


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


COMBOS = [(lk, un, nm) for lk in ("weight_sharing", "separate") for un in ("linear", "zero_pad")
          for nm in ("batchnorm_affine", "batchnorm", "none")]


@pytest.mark.parametrize("lookup,unify,norm", COMBOS)
def test_matches_per_candidate_formula_in_training_and_inference(lookup, unify, norm):
    layer = AutoDimEmbedding(
        VOCAB, (2, 3, 5), lookup=lookup, unify=unify, candidate_norm=norm, seed=1
    )
    layer.build((None, 3))
    set_random_weights(layer)
    alpha = np.array([[0.5, -1.0, 2.0], [0.0, 0.3, 0.1], [1.5, 0.2, -0.4]], np.float32)
    layer.alpha.assign(alpha)
    layer.gumbel_scale.assign(0.0)  # training p = softmax(log_softmax(alpha) / tau) with tau = 1
    expected, stats = reference(layer, IDS, softmax(alpha))
    got = layer(tf.constant(IDS), training=True).numpy()
    assert got.shape == (5, 3, 5)
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)

    if norm == "none":
        np.testing.assert_allclose(layer(tf.constant(IDS)).numpy(), expected, rtol=2e-4, atol=2e-5)
        return
    # Inference uses the moving statistics: momentum * init + (1 - momentum) * batch stats.
    moving = {
        k: (BN_MOMENTUM * 0.0 + (1 - BN_MOMENTUM) * mu, BN_MOMENTUM * 1.0 + (1 - BN_MOMENTUM) * var)
        for k, (mu, var) in stats.items()
    }
    expected_eval, _ = reference(layer, IDS[:2], softmax(alpha), norm_stats=moving)
    np.testing.assert_allclose(
        layer(tf.constant(IDS[:2]), training=False).numpy(), expected_eval, rtol=2e-4, atol=2e-5
    )


def test_weight_sharing_candidates_are_prefixes_of_the_max_table():
    layer = AutoDimEmbedding(VOCAB, (1, 2, 4), unify="zero_pad", candidate_norm="none")
    layer.build((None, 3))
    table = np.arange(12 * 4, dtype=np.float32).reshape(12, 4)
    layer.embedding_variables[0].assign(table)
    ids = np.array([[1, 2, 3]])
    for n, d in enumerate((1, 2, 4)):
        alpha = np.full((3, 3), -50.0, np.float32)
        alpha[:, n] = 50.0  # p = one-hot on candidate n
        layer.alpha.assign(alpha)
        got = layer(tf.constant(ids)).numpy()[0]
        rows = table[[1, 4 + 2, 7 + 3]]
        expected = np.zeros((3, 4), np.float32)
        expected[:, :d] = rows[:, :d]
        np.testing.assert_allclose(got, expected, atol=1e-4)
    # Uniform p: column j gets weight (#candidates with d_n > j) / 3.
    layer.alpha.assign(np.zeros((3, 3), np.float32))
    got = layer(tf.constant(ids)).numpy()[0]
    np.testing.assert_allclose(got, rows * np.array([3, 2, 1, 1]) / 3.0, rtol=1e-6)


def test_linear_unification_on_hand_built_weights():
    layer = AutoDimEmbedding([2], (1, 2), unify="linear", candidate_norm="none")
    layer.build((None, 1))
    layer.embedding_variables[0].assign([[1.0, 2.0], [3.0, -1.0]])
    layer.kernels[0].assign([[[2.0, 0.0]]])            # W_1: [1, 2]
    layer.kernels[1].assign([[[1.0, 1.0], [0.0, 1.0]]])  # W_2: [2, 2]
    layer.biases[0].assign([[0.5, 0.5]])
    layer.biases[1].assign([[0.0, -1.0]])
    layer.alpha.assign(np.log([[0.25, 0.75]]).astype(np.float32))
    got = layer(tf.constant([[1]])).numpy()[0, 0]
    # x = [3, -1]; cand1 = [3] @ [[2, 0]] + 0.5 = [6.5, 0.5]; cand2 = [3, -1] @ W_2 + b = [3, 1]
    np.testing.assert_allclose(
        got, 0.25 * np.array([6.5, 0.5]) + 0.75 * np.array([3.0, 1.0]), rtol=1e-6
    )


def test_gumbel_softmax_sums_to_one_and_sharpens_with_temperature():
    layer = AutoDimEmbedding([10] * 50, (2, 4, 8, 16), seed=3)
    layer.build((None, 50))
    layer.alpha.assign(np.random.default_rng(0).normal(0, 0.5, (50, 4)).astype(np.float32))
    first = layer.mixing_weights(training=True).numpy()
    np.testing.assert_allclose(first.sum(-1), 1.0, rtol=1e-5)
    assert not np.allclose(
        first, layer.mixing_weights(training=True).numpy()
    )  # fresh noise per call
    assert first.max(-1).mean() < 0.9
    layer.temperature.assign(0.01)
    cold = layer.mixing_weights(training=True).numpy()
    np.testing.assert_allclose(cold.sum(-1), 1.0, rtol=1e-5)
    assert cold.max(-1).mean() > 0.98
    assert (cold.max(-1) > 0.9).mean() >= 0.95
    # Evaluation: no noise, plain softmax(alpha) whatever the temperature.
    np.testing.assert_allclose(
        layer.mixing_weights(training=False), softmax(layer.alpha.numpy()), rtol=1e-5
    )
    np.testing.assert_allclose(layer.probabilities(), softmax(layer.alpha.numpy()), rtol=1e-5)


def test_gradients_reach_alpha_and_only_the_batch_rows_of_the_table():
    for lookup in ("weight_sharing", "separate"):
        layer = AutoDimEmbedding(VOCAB, (2, 4), lookup=lookup, seed=0)
        ids = tf.constant(IDS[:2])
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer(ids, training=True) - 1.0))
        g_table, g_alpha = tape.gradient(loss, [layer.embedding_variables[0], layer.alpha])
        assert isinstance(g_table, tf.IndexedSlices)
        rows = set((IDS[:2] + np.array(OFFSETS)).ravel().tolist())
        assert set(g_table.indices.numpy().tolist()) == rows
        assert np.abs(g_table.values.numpy()).sum() > 0
        assert g_alpha.shape == (3, 2) and np.abs(g_alpha.numpy()).sum() > 0
        assert layer.arch_variables == [layer.alpha]
        assert all(
            v is not layer.alpha for v in layer.embedding_variables + layer.transform_variables
        )


def test_per_field_candidate_lists():
    cands = [(2, 4), (1, 2, 4), (4,)]
    layer = AutoDimEmbedding(VOCAB, cands, unify="zero_pad", candidate_norm="none")
    layer.build((None, 3))
    assert layer.output_dim == 4 and layer.num_candidates == 3
    table = np.arange(12 * 4, dtype=np.float32).reshape(12, 4) + 1
    layer.embedding_variables[0].assign(table)
    probs = layer.probabilities().numpy()
    np.testing.assert_allclose(probs, [[0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3], [1, 0, 0]], atol=1e-6)
    got = layer(tf.constant([[1, 2, 3]])).numpy()[0]
    rows = table[[1, 6, 10]]
    np.testing.assert_allclose(got[0], rows[0] * [1, 1, 0.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(got[1], rows[1] * [1, 2 / 3, 1 / 3, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(got[2], rows[2], rtol=1e-6)
    layer.alpha.assign([[0, 5, 9], [0, 0, 1], [0, 9, 9]])  # masked slots never win
    assert layer.chosen_dims() == [4, 4, 4]
    layer.alpha.assign([[5, 0, 9], [0, 3, 1], [0, 9, 9]])
    assert layer.chosen_dims() == [2, 2, 4]


@pytest.mark.parametrize("lookup,unify", [("weight_sharing", "linear"), ("separate", "zero_pad")])
def test_per_field_lists_match_reference_with_batchnorm(lookup, unify):
    cands = [(2, 4), (1, 3)]
    layer = AutoDimEmbedding(
        [4, 3], cands, lookup=lookup, unify=unify, candidate_norm="batchnorm", seed=0
    )
    layer.build((None, 2))
    set_random_weights(layer, seed=2)
    layer.alpha.assign(np.zeros((2, 2), np.float32))
    layer.gumbel_scale.assign(0.0)
    ids = np.array([[0, 1], [3, 2], [1, 0], [2, 2]])
    got = layer(tf.constant(ids), training=True).numpy()
    table = layer.embedding_variables[0].numpy()
    widths = (
        [sum(max(c[n] for c in cands) for n in range(2))] * 2 if lookup == "separate" else [4, 3]
    )
    expected = np.zeros((4, 2, 4))
    for m, (offset, dims) in enumerate(zip([0, 4], cands)):
        if lookup == "weight_sharing" and widths[m] != 4:  # field 1 lives in its own 3-wide table
            rows = layer.embedding_variables[1].numpy()[ids[:, m]]
        else:
            rows = table[offset + ids[:, m]]
        starts = [0, 2] if lookup == "separate" else [0, 0]
        for n, d in enumerate(dims):
            y = rows[:, starts[n] : starts[n] + d]
            if unify == "linear":
                y = y @ layer.kernels[n].numpy()[m, :d] + layer.biases[n].numpy()[m]
            y = (y - y.mean(0)) / np.sqrt(y.var(0) + BN_EPSILON)
            expected[:, m, : y.shape[1]] += 0.5 * y
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)


def test_config_round_trip_and_identical_outputs():
    layer = AutoDimEmbedding(
        VOCAB,
        [(2, 4), (2, 4, 8), (8,)],
        lookup="separate",
        unify="zero_pad",
        candidate_norm="batchnorm",
        embeddings_initializer="glorot_uniform",
        seed=7,
    )
    layer.build((None, 3))
    config = layer.get_config()
    clone = AutoDimEmbedding.from_config(config)
    assert clone.get_config() == config
    clone.build((None, 3))
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(tf.constant(IDS)).numpy(), layer(tf.constant(IDS)).numpy())
    assert config["candidate_dims"] == [[2, 4], [2, 4, 8], [8]]
    assert AutoDimEmbedding(VOCAB).get_config()["candidate_dims"] == [2, 8, 16, 24, 32]


def test_batchnorm_affine_scale_starts_at_the_embedding_stddev():
    layer = AutoDimEmbedding(VOCAB, (2, 4))
    layer.build((None, 3))
    np.testing.assert_allclose(layer.candidate_scale.numpy(), 0.01)
    custom = AutoDimEmbedding(
        VOCAB, (2, 4), embeddings_initializer=keras.initializers.RandomNormal(stddev=0.1)
    )
    custom.build((None, 3))
    np.testing.assert_allclose(custom.candidate_scale.numpy(), 0.1)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(candidate_dims=(8, 2)), "strictly increasing"),
    (dict(candidate_dims=(0, 2)), "candidate_dims[0]"),
    (dict(candidate_dims=()), "must not be empty"),
    (dict(candidate_dims=[(2,), (4,)]), "2 per-field lists but vocab_sizes has 3"),
    (dict(candidate_dims=[(2,), 4, (4,)]), "all ints or all lists"),
    (dict(lookup="shared"), "lookup must be one of"),
    (dict(unify="pad"), "unify must be one of"),
    (dict(candidate_norm="layernorm"), "candidate_norm must be one of"),
    (dict(vocab_sizes=[3, 0]), "vocab_sizes[1]"),
    (dict(affine_scale_init=-1.0), "affine_scale_init"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, needle):
    args = dict(vocab_sizes=VOCAB)
    args.update(kwargs)
    with pytest.raises(ValueError) as err:
        AutoDimEmbedding(**args)
    assert needle in str(err.value)
    assert "got" in str(err.value) or "has" in str(err.value)


def test_bad_ids_fail_loudly():
    layer = AutoDimEmbedding(VOCAB, (2, 4))
    with pytest.raises(ValueError, match="shape"):
        layer(tf.constant([[0, 1]]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside"):
        layer(tf.constant([[0, 3, 0]]))  # field 1 has vocab 3: id 3 would read field 2's first row
