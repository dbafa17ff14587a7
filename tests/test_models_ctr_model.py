"""CTRModel variable groups, save/load round trips, the factory and the Params report."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.backbones.deepfm import DeepFM
from models.ctr_model import CTRModel
from models.factory import build_retrain_model, build_search_model
from models.params import embedding_params, parameter_report
from models.search_embedding import AutoDimEmbedding

VOCAB = [5, 7, 3, 4]
IDS = tf.constant(np.stack([np.arange(6) % v for v in VOCAB], axis=1))


def ids_of(variables):
    return {id(v) for v in variables}


def test_variable_groups_partition_by_identity():
    model = build_search_model("deepfm", VOCAB, (2, 4), seed=0, hidden_units=(8,))
    model(IDS)
    arch, mv, emb, dense = (model.arch_variables, model.model_variables, model.embedding_variables,
                            model.dense_variables)
    assert len(arch) == 1 and arch[0] is model.embedding.alpha
    assert ids_of(arch) | ids_of(mv) == ids_of(model.trainable_variables)
    assert not ids_of(arch) & ids_of(mv)
    assert ids_of(emb) <= ids_of(mv) and not ids_of(emb) & ids_of(dense)
    assert ids_of(emb) | ids_of(dense) == ids_of(mv)
    assert len(emb) == 2 and id(model.first_order.embedding_variables[0]) in ids_of(emb)
    assert all(v.trainable for v in mv)
    retrain = build_retrain_model("fm", VOCAB, [2, 4, 4, 2])
    retrain(IDS)
    assert retrain.arch_variables == [] and len(retrain.embedding_variables) == 3


@pytest.mark.parametrize("builder", ["search", "retrain"])
def test_save_and_load_give_identical_outputs(tmp_path, builder):
    if builder == "search":
        model = build_search_model(
            "nfm",
            VOCAB,
            [(2, 4), (4,), (2, 4), (2,)],
            lookup="separate",
            unify="linear",
            candidate_norm="batchnorm",
            seed=3,
            hidden_units=(8,),
        )
    else:
        model = build_retrain_model("autoint", VOCAB, [2, 4, 4, 2], unify="zero_pad", output_dim=6,
                                    hidden_units=(8,), attention_dim=4)
    model(IDS, training=True)  # moves BN statistics away from their initial values
    rng = np.random.default_rng(0)
    for v in model.trainable_variables:
        v.assign(rng.normal(0, 0.3, v.shape).astype(np.float32))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded(IDS).numpy(), model(IDS).numpy())
    assert ids_of(loaded.arch_variables) <= ids_of(loaded.trainable_variables)
    assert len(loaded.model_variables) == len(model.model_variables)
    np.testing.assert_array_equal(loaded.predict_proba(IDS).numpy(), tf.sigmoid(model(IDS)).numpy())


def test_config_round_trip():
    model = CTRModel(
        AutoDimEmbedding(VOCAB, (2, 8)), DeepFM(hidden_units=(4,)), VOCAB, first_order=False
    )
    clone = CTRModel.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert (
        clone.first_order is None
        and clone.embedding.field_candidates == model.embedding.field_candidates
    )


def test_factory_errors_name_the_argument():
    with pytest.raises(
        ValueError, match=r"unknown backbone 'xdeepfm'; known backbones: \['autoint', 'dcn_v2'"
    ):
        build_search_model("xdeepfm", VOCAB)
    with pytest.raises(ValueError, match="backbone 'deepfm': bad arguments"):
        build_retrain_model("deepfm", VOCAB, [2, 2, 2, 2], hiden_units=(3,))
    with pytest.raises(ValueError, match="lookup must be one of"):
        build_search_model("fm", VOCAB, lookup="sharing")
    with pytest.raises(ValueError, match="vocab_sizes"):
        CTRModel(AutoDimEmbedding(VOCAB), DeepFM(), [5, 7, 3])


def test_parameter_counts_equal_their_formulas():
    M, E = len(VOCAB), 8
    assert embedding_params(VOCAB, [2, 8, 4, 8]) == 5 * 2 + 7 * 8 + 3 * 4 + 4 * 8
    with pytest.raises(ValueError):
        embedding_params(VOCAB, [2])

    retrain = build_retrain_model("deepfm", VOCAB, [2, 8, 4, 8], hidden_units=(16,))
    retrain(IDS)
    report = parameter_report(retrain)
    assert report["embedding"] == embedding_params(VOCAB, [2, 8, 4, 8])
    assert report["transform"] == (2 * E + E) + (8 * E + E) + (4 * E + E) + (8 * E + E)
    assert report["first_order"] == sum(VOCAB) + 1
    mlp = (M * E * 16 + 16) + 2 * 16 + (16 + 1)  # dense, BN gamma/beta, output
    assert report["mlp_and_interaction"] == mlp
    assert report["architecture"] == 0
    assert report["total"] == sum(
        report[k] for k in ("embedding", "transform", "first_order", "mlp_and_interaction")
    )

    dims = (2, 4, 8)
    search = build_search_model("fm", VOCAB, dims, lookup="weight_sharing", unify="linear", seed=0)
    search(IDS)
    r = parameter_report(search)
    assert r["embedding"] == embedding_params(VOCAB, [8] * M)  # full d_N tables
    assert r["transform"] == sum(M * (d * E + E) for d in dims) + M * len(dims)  # + BN scale
    assert r["architecture"] == M * len(dims) and r["mlp_and_interaction"] == 0
    separate = build_search_model(
        "fm", VOCAB, dims, lookup="separate", unify="zero_pad", candidate_norm="none"
    )
    separate(IDS)
    r = parameter_report(separate)
    assert r["embedding"] == embedding_params(VOCAB, [sum(dims)] * M) and r["transform"] == 0
    fde = build_retrain_model("fm", VOCAB, [8] * M, unify="zero_pad")
    fde(IDS)
    assert parameter_report(fde)["transform"] == 0
