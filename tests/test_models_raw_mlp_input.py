"""`mlp_input="raw"`: the MLP of DeepFM / W&D reads the per-field embeddings at their own dims.

The claim in models/ctr_model.py is that this is a re-parameterisation of the unified model (the
first MLP layer is linear), so the tests build a unified model, fold its weights into a raw model
(models/folding.py: first-layer kernel rows W_m K_m, bias b + sum_m b_m K_m) and require the same
logits.
"""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from models.backbones.nfm import NFM
from models.ctr_model import CTRModel
from models.factory import (
    build_backbone,
    build_retrain_model,
    build_search_model,
    effective_mlp_input,
)
from models.folding import can_fold, fold_mlp_input
from models.mixed_embedding import MixedDimEmbedding

VOCAB = [5, 7, 3, 4, 6]
DIMS = [2, 8, 2, 4, 8]
E = 8
rng = np.random.default_rng(0)
IDS = tf.constant(np.stack([rng.integers(0, v, 32) for v in VOCAB], axis=1))


def randomise(model):
    """Non-trivial values everywhere (zero-initialised biases and first-order weights included)."""
    for v in model.variables:
        shift = 1.0 if "variance" in v.path else 0.0
        v.assign(rng.normal(0.0, 0.3, v.shape).astype(np.float32) + shift)
    return model


@pytest.mark.parametrize("backbone,unify", [("deepfm", "linear"), ("wide_deep", "linear"),
                                            ("deepfm", "zero_pad"), ("wide_deep", "zero_pad")])
def test_fold_mlp_input_serves_the_same_logits(backbone, unify):
    unified = build_retrain_model(backbone, VOCAB, DIMS, unify=unify, mlp_input="unified",
                                  hidden_units=(16, 8), dropout=0.2)
    unified(IDS)
    randomise(unified)
    assert can_fold(unified)
    folded = fold_mlp_input(unified)
    assert folded.mlp_input == "raw" and not can_fold(folded)
    assert tuple(folded.backbone.mlp.dense_layers[0].kernel.shape) == (sum(DIMS), 16)
    want = unified(IDS, training=False).numpy()
    assert want.std() > 0.1
    np.testing.assert_allclose(folded(IDS, training=False).numpy(), want, rtol=1e-4, atol=1e-4)


def test_fold_mlp_input_refuses_what_it_cannot_fold():
    fm = build_retrain_model("fm", VOCAB, DIMS)
    fde = build_retrain_model("deepfm", VOCAB, [8] * len(VOCAB), unify="zero_pad",
                              hidden_units=(8,))
    for model in (fm, fde, build_search_model("deepfm", VOCAB, (2, 4), hidden_units=(8,))):
        model(IDS)
        assert not can_fold(model)
    with pytest.raises(ValueError, match="no foldable unified MLP input"):
        fold_mlp_input(fm)


def test_raw_mlp_input_shapes_and_parameters():
    deepfm = build_retrain_model("deepfm", VOCAB, DIMS, mlp_input="raw", hidden_units=(16,))
    deepfm(IDS)
    assert deepfm.mlp_input == "raw"
    assert tuple(deepfm.backbone.mlp.dense_layers[0].kernel.shape) == (sum(DIMS), 16)
    # The FM term still unifies.
    assert len(deepfm.embedding.transform_variables) == 2 * len(set(DIMS))
    wd = build_retrain_model("wide_deep", VOCAB, DIMS, mlp_input="raw", hidden_units=(16,))
    wd(IDS)
    assert tuple(wd.backbone.mlp.dense_layers[0].kernel.shape) == (sum(DIMS), 16)
    assert wd.embedding.transform_variables == []  # W&D needs no unification at all
    unified = build_retrain_model("wide_deep", VOCAB, DIMS, mlp_input="unified", hidden_units=(16,))
    unified(IDS)
    assert tuple(unified.backbone.mlp.dense_layers[0].kernel.shape) == (len(VOCAB) * E, 16)
    # Backbones without an MLP over the flattened embeddings keep the unified input.
    fm = build_retrain_model("fm", VOCAB, DIMS, mlp_input="raw")
    assert fm.mlp_input == "unified" and effective_mlp_input("nfm", "raw") == "unified"
    assert effective_mlp_input("deepfm", "raw") == "raw"


def test_raw_mlp_input_trains_and_round_trips(tmp_path):
    import keras

    model = build_retrain_model("deepfm", VOCAB, DIMS, mlp_input="raw", hidden_units=(16,),
                                dropout=0.0)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(IDS, training=True)))
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None for g in grads)  # every weight (projections included) is used
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.mlp_input == "raw"
    np.testing.assert_array_equal(loaded(IDS, training=False).numpy(),
                                  model(IDS, training=False).numpy())


def test_raw_mlp_input_refusals_name_the_problem():
    with pytest.raises(ValueError, match="mlp_input_dim is only for backbones"):
        NFM(hidden_units=(8,), mlp_input_dim=10)
    with pytest.raises(ValueError, match="mlp_input_dim must be a positive int"):
        build_backbone("deepfm", mlp_input_dim=0)
    with pytest.raises(ValueError, match="mlp_input must be one of"):
        CTRModel(MixedDimEmbedding(VOCAB, DIMS), build_backbone("deepfm"), VOCAB, mlp_input="flat")
    with pytest.raises(ValueError, match="mlp_input_dim=sum\\(dims\\)=24"):
        CTRModel(MixedDimEmbedding(VOCAB, DIMS), build_backbone("deepfm", mlp_input_dim=23), VOCAB,
                 mlp_input="raw")
    search = build_search_model("deepfm", VOCAB, (2, 4))
    with pytest.raises(ValueError, match="mixed-dimension"):
        CTRModel(search.embedding, build_backbone("deepfm", mlp_input_dim=24), VOCAB,
                 mlp_input="raw")
    with pytest.raises(ValueError, match="mlp_input must be 'raw' or 'unified'"):
        effective_mlp_input("deepfm", "flat")
