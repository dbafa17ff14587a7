"""Retraining: AutoDim vs random dims on planted data, FDE, metrics, resume, refusals."""
import json
import re

import numpy as np
import pytest

from configs import experiment
from configs.loader import ConfigError
from tests.fixtures import random_dataset_dir, read_json, run_module, sigkill_after_checkpoint

VOCAB = [50, 30, 200, 20, 10, 100]
FAST = ["retrain.batch_size=200", "retrain.max_epochs=3", "retrain.checkpoint_every=10",
        "retrain.steps_per_call=5"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return random_dataset_dir(tmp_path_factory, "small", 4000, VOCAB, seed=5)


def _auc(labels, scores):
    """Brute-force pairwise AUC (ties count one half): the hand evaluation."""
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (len(pos) * len(neg))


def test_fde_gives_exactly_d_and_metrics_match_the_saved_predictions(small_data, tmp_path):
    import keras
    import tensorflow as tf

    import models.factory  # noqa: F401  (registers the serializable classes)
    from configs.features import DataSchema
    from pipeline import input as input_lib
    from pipeline.retrain import retrain

    cfg = experiment.resolve("default", None, FAST)
    m = retrain(str(small_data), "fde:8", str(tmp_path / "fde8"), cfg, quiet=True)
    assert set(m["dims"].values()) == {8}
    assert m["params"] == 8 * sum(VOCAB)
    saved = np.load(tmp_path / "fde8" / "test_predictions.npz")
    y, p = saved["labels"], saved["probabilities"]
    schema = DataSchema.load(small_data)
    assert len(y) == schema.splits["test"]
    assert m["test_auc"] == pytest.approx(_auc(y, p), abs=1e-9)
    eps = 1e-7
    pc = np.clip(p.astype(np.float64), eps, 1 - eps)
    assert m["test_logloss"] == pytest.approx(
        -np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc)), rel=1e-9
    )
    # the saved model reproduces the saved predictions
    model = keras.saving.load_model(tmp_path / "fde8" / "model.keras")
    ds = input_lib.make_dataset(str(small_data), schema, "test", 512, shuffle=False, repeat=False)
    again = np.concatenate([tf.sigmoid(model(ids, training=False)).numpy() for ids, _ in ds])
    np.testing.assert_allclose(again, p, atol=1e-5)
    spec = read_json(tmp_path / "fde8" / "model_spec.json")
    assert spec["dims"] == [8] * len(VOCAB) and spec["schema_hash"] == schema.schema_hash
    # the validation split at the same (best) weights, for pipeline.tuning's paired comparison
    valid = np.load(tmp_path / "fde8" / "valid_predictions.npz")
    vy, vp = valid["labels"], valid["probabilities"]
    assert len(vy) == schema.splits["valid"]
    ds = input_lib.make_dataset(str(small_data), schema, "valid", 512, shuffle=False, repeat=False)
    np.testing.assert_allclose(
        np.concatenate([tf.sigmoid(model(ids, training=False)).numpy() for ids, _ in ds]), vp,
        atol=1e-5)
    # best_valid_auc is the streaming (thresholded) metric of the same weights
    assert abs(m["best_valid_auc"] - _auc(vy, vp)) < 0.01


def test_retrain_resumes_after_sigkill_with_the_same_result(small_data, tmp_path):
    sets = [a for s in FAST + ["retrain.patience=100"] for a in ("--set", s)]
    args = [
        "--data_dir",
        str(small_data),
        "--dims",
        "fde:4",
        "--preset",
        "default",
        "--quiet",
        *sets,
    ]
    ref = run_module("pipeline.retrain", args + ["--model_dir", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr[-2000:]
    killed = tmp_path / "killed"
    sigkill_after_checkpoint("pipeline.retrain", args + ["--model_dir", str(killed)],
                             killed / "ckpt", 30)
    assert not (killed / "metrics.json").exists(), "finished before it could be killed"
    rerun = run_module("pipeline.retrain", args + ["--model_dir", str(killed)])
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resumed at step" in rerun.stderr
    a, b = read_json(tmp_path / "ref" / "metrics.json"), read_json(killed / "metrics.json")
    assert a["steps"] == b["steps"]
    assert a["test_auc"] == pytest.approx(b["test_auc"], abs=1e-6)
    assert a["best_valid_auc"] == pytest.approx(b["best_valid_auc"], abs=1e-6)


def test_mismatched_dims_are_refused(small_data, tmp_path):
    from configs.features import DataSchema
    from pipeline.dims import load_dims
    from pipeline.retrain import retrain

    schema = DataSchema.load(small_data)
    fields = {n: {"dim": 8} for n in schema.field_names}
    other = tmp_path / "dims.json"
    other.write_text(json.dumps({"dataset": "criteo", "schema_hash": "0123456789abcdef",
                                 "fields": fields}))
    with pytest.raises(ConfigError, match="searched on dataset 'criteo'.*search again"):
        retrain(str(small_data), str(other), str(tmp_path / "m"), experiment.resolve("default"))
    renamed = dict(fields)
    renamed["zz"] = renamed.pop(schema.field_names[0])
    other.write_text(json.dumps({"schema_hash": schema.schema_hash, "fields": renamed}))
    with pytest.raises(ConfigError, match="fields differ"):
        load_dims(str(other), schema, (2, 8))
    for bad in ("fde:x", "fde:0", "random:y", str(tmp_path / "nope.json")):
        with pytest.raises(ConfigError):
            load_dims(bad, schema, (2, 8))
    with pytest.raises(ConfigError, match="--trials"):
        retrain(str(small_data), "fde:8", str(tmp_path / "t"), experiment.resolve("default"),
                trials=3)


def test_dim_overrides_change_only_the_named_fields_and_bad_ones_are_refused(small_data, tmp_path):
    out = tmp_path / "abl"
    res = run_module("pipeline.retrain", ["--data_dir", str(small_data), "--dims", "fde:4",
                                          "--dim", "f2=16", "--dim", "f5=2", "--model_dir",
                                          str(out), "--preset", "default", "--quiet",
                                          *[x for s in FAST for x in ("--set", s)]])
    assert res.returncode == 0, res.stderr
    m = read_json(out / "metrics.json")
    assert m["dims"] == {"f0": 4, "f1": 4, "f2": 16, "f3": 4, "f4": 4, "f5": 2}
    assert m["params"] == 4 * sum(VOCAB) + 12 * VOCAB[2] - 2 * VOCAB[5]
    assert m["dims_source"] == "fde:4 with f2=16,f5=2"
    assert read_json(out / "model_spec.json")["dims"] == [4, 4, 16, 4, 4, 2]
    for args, message in ((["--dim", "f9=8"], "no field 'f9' in dataset .*fields: f0, f1"),
                          (["--dim", "f1"], "'f1': expected FIELD=D"),
                          (["--dim", "f1=x"], "'f1=x': D must be an integer"),
                          (["--dim", "f1=-3"], "'f1=-3': D must be positive"),
                          (["--dim", "f1=8", "--dim", "f1=16"], "'f1' is given twice")):
        bad = tmp_path / "bad"
        res = run_module("pipeline.retrain", ["--data_dir", str(small_data), "--dims", "fde:4",
                                              "--model_dir", str(bad), "--preset", "default",
                                              *args])
        assert res.returncode == 2, (args, res.stderr)
        assert re.search(message, res.stderr), (args, res.stderr)
        assert not bad.exists()
    # the finished directory with other overrides is refused, not mixed
    res = run_module("pipeline.retrain", ["--data_dir", str(small_data), "--dims", "fde:4",
                                          "--dim", "f2=8", "--model_dir", str(out), "--preset",
                                          "default", "--quiet",
                                          *[x for s in FAST for x in ("--set", s)]])
    assert res.returncode == 2 and "dims_hash" in res.stderr, res.stderr
    assert read_json(out / "metrics.json")["dims"]["f2"] == 16


def test_dim_overrides_past_a_searched_budget_are_retrained_with_a_warning(small_data, tmp_path,
                                                                          capsys):
    """A budgeted search's dims.json keeps its budget; --dim overrides may go over it (an
    explicit choice), and retrain says so on stderr, naming the flag and both sizes."""
    from configs.features import DataSchema
    from pipeline.dims import apply_dim_overrides, load_dims
    from pipeline.retrain import retrain

    schema = DataSchema.load(small_data)
    budget = 8 * sum(VOCAB)  # 3,280: exactly every field at 8
    dims_file = tmp_path / "dims.json"
    dims_file.write_text(json.dumps({
        "schema_hash": schema.schema_hash, "budget": {"params": budget},
        "fields": {n: {"dim": 8} for n in schema.field_names}}))
    loaded = load_dims(str(dims_file), schema, (2, 8, 16))
    assert loaded["budget"] == budget
    within = apply_dim_overrides(loaded, {"f2": 2, "f5": 16}, schema)  # -1,200 + 800
    assert "over_budget" not in within
    over = apply_dim_overrides(loaded, {"f2": 16}, schema)  # +1,600
    assert over["over_budget"] == (
        f"warning: --dim f2=16 gives {budget + 1600:,} embedding parameters, over the "
        f"{budget:,} budget {dims_file} was searched for (its \"budget\"); retraining anyway")
    m = retrain(str(small_data), str(dims_file), str(tmp_path / "m"),
                experiment.resolve("default", set_overrides=FAST), quiet=True,
                dim_overrides={"f2": 16})
    assert m["params"] == budget + 1600
    assert over["over_budget"] in capsys.readouterr().err


def test_random_dims_are_seeded_draws_from_the_candidates(small_data):
    from configs.features import DataSchema
    from pipeline.dims import load_dims

    schema = DataSchema.load(small_data)
    a = load_dims("random:3", schema, (2, 8, 16))
    b = load_dims("random:3", schema, (2, 8, 16))
    c = load_dims("random:3", schema, (2, 8, 16), trial=1)
    assert a["dims"] == b["dims"] and a["dims"] != c["dims"]
    assert set(a["dims"]) <= {2, 8, 16}


def test_autodim_beats_random_dims_at_equal_parameters(planted_search, tmp_path):
    from configs.features import DataSchema
    from pipeline.retrain import retrain

    data_dir, search_dir, dims = planted_search
    schema = DataSchema.load(data_dir)
    cfg = experiment.resolve("synthetic")
    auto = retrain(str(data_dir), str(search_dir / "dims.json"), str(tmp_path / "auto"), cfg,
                   quiet=True)
    # a random allocation of the same dimensions to the fields (a permutation of AutoDim's
    # choices), the one of 500 draws whose parameter count is closest to AutoDim's
    names = schema.field_names
    chosen = np.array([dims["fields"][n]["dim"] for n in names])
    vocab = np.array([f.vocab_size for f in schema.fields])
    rng = np.random.default_rng(0)
    perms = [rng.permutation(chosen) for _ in range(500)]
    params = np.array([int(vocab @ p) for p in perms])
    k = int(np.argmin(np.abs(params - auto["params"])))
    assert abs(params[k] - auto["params"]) <= 0.1 * auto["params"]
    random_dims = dict(dims, fields={n: dict(dims["fields"][n], dim=int(d))
                                     for n, d in zip(names, perms[k])})
    path = tmp_path / "random_dims.json"
    path.write_text(json.dumps(random_dims))
    rand = retrain(str(data_dir), str(path), str(tmp_path / "rand"), cfg, quiet=True)
    assert rand["params"] == params[k]
    assert auto["test_auc"] > rand["test_auc"] + 0.005, (auto["test_auc"], rand["test_auc"])


def test_a_dims_json_is_retrained_with_its_search_backbone_unless_another_is_asked(
    small_data, tmp_path
):
    from configs.features import DataSchema
    from pipeline.retrain import _search_backbone

    schema = DataSchema.load(small_data)
    dims = tmp_path / "search" / "dims.json"
    dims.parent.mkdir()
    dims.write_text(json.dumps({"backbone": "fm", "schema_hash": schema.schema_hash,
                                "fields": {n: {"dim": 4} for n in schema.field_names}}))
    sets = [a for s in FAST + ["retrain.max_epochs=1"] for a in ("--set", s)]
    out = run_module("pipeline.retrain", ["--data_dir", str(small_data), "--dims", str(dims),
                                          "--model_dir", str(tmp_path / "m"), "--quiet", *sets])
    assert out.returncode == 0, out.stderr[-2000:]
    assert read_json(tmp_path / "m" / "metrics.json")["backbone"] == "fm"  # not the preset's deepfm
    assert experiment.resolve("default").model.backbone != "fm"
    # the precedence: --backbone (handled by main), then --set / --config, then the dims.json
    assert _search_backbone(str(dims), None, []) == "fm"
    assert _search_backbone(str(dims.parent), None, []) == "fm"
    assert _search_backbone(str(dims), None, ["model.backbone=nfm"]) is None
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  backbone: wide_deep\n")
    assert _search_backbone(str(dims), str(cfg), []) is None
    assert _search_backbone("fde:8", None, []) is None
    assert _search_backbone(str(tmp_path / "missing.json"), None, []) is None


def test_search_only_settings_neither_refuse_nor_repeat_a_finished_retraining(small_data, tmp_path):
    from pipeline.retrain import retrain

    cfg = experiment.resolve("default", None, FAST + ["retrain.max_epochs=1"])
    first = retrain(str(small_data), "fde:4", str(tmp_path / "m"), cfg, quiet=True)
    metrics = tmp_path / "m" / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    # a run recorded under the old hash definition (the whole config) is re-hashed from its config
    record = read_json(tmp_path / "m" / "config.json")
    record["config_hash"] = experiment.run_hash(cfg)
    (tmp_path / "m" / "config.json").write_text(json.dumps(record))
    searched_otherwise = experiment.resolve("default", None, FAST + [
        "retrain.max_epochs=1", "search.param_cost=0.3", "model.unify=linear",
        "model.candidate_norm=batchnorm", "model.lookup=separate"])
    assert experiment.run_hash(searched_otherwise) != experiment.run_hash(cfg)
    again = retrain(str(small_data), "fde:4", str(tmp_path / "m"), searched_otherwise, quiet=True)
    assert again == first and metrics.stat().st_mtime_ns == stamp
    for changed in ("retrain.learning_rate=0.01", "model.backbone=fm", "model.dropout=0.5"):
        other = experiment.resolve("default", None, FAST + ["retrain.max_epochs=1", changed])
        with pytest.raises(ConfigError, match="different config_hash"):
            retrain(str(small_data), "fde:4", str(tmp_path / "m"), other, quiet=True)


def test_hparams_record_the_restored_best_not_the_last_evaluation(small_data, tmp_path):
    from pipeline import summaries
    from pipeline.retrain import retrain
    from tests.test_summaries import hparams_session, scalar_series

    # a high learning rate over-fits the small data: validation AUC peaks, then falls
    cfg = experiment.resolve("default", None, [
        "retrain.batch_size=200", "retrain.max_epochs=4", "retrain.eval_every=5",
        "retrain.steps_per_call=5", "retrain.patience=100", "retrain.learning_rate=0.05"])
    m = retrain(str(small_data), "fde:8", str(tmp_path / "r"), cfg, quiet=True, preset="default")
    evals = [v for _, v in scalar_series(tmp_path / "r" / "valid", "auc")]
    assert len(evals) >= 5
    assert m["best_valid_auc"] == pytest.approx(max(evals), abs=1e-6)
    assert evals[-1] < max(evals) - 1e-4, evals  # the last evaluation is not the chosen model
    run = tmp_path / "r" / summaries.HPARAMS_RUN
    hp = hparams_session(run)
    assert hp["kind"] == "retrain" and hp["dims_source"] == "fde:8"
    assert hp["embedding_params"] == m["params"] == 8 * sum(VOCAB)
    ((step, best),) = scalar_series(run, "hparams/best_valid_auc")
    assert step == m["steps"] and best == pytest.approx(m["best_valid_auc"], abs=1e-6)
    assert best != pytest.approx(evals[-1], abs=1e-5)
    ((_, test_auc),) = scalar_series(run, "hparams/test_auc")
    assert test_auc == pytest.approx(m["test_auc"], abs=1e-6)
    # the validation logloss of the same (best) weights, from the saved predictions
    valid = np.load(tmp_path / "r" / "valid_predictions.npz")
    y, p = valid["labels"], np.clip(valid["probabilities"].astype(np.float64), 1e-7, 1 - 1e-7)
    ((_, logloss),) = scalar_series(run, "hparams/best_valid_logloss")
    assert logloss == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)), rel=1e-6)
    assert m["best_valid_logloss"] == pytest.approx(logloss, rel=1e-6)


def test_refusal_names_the_retraining_settings_that_differ_not_the_search_ones(tmp_path):
    from configs.loader import to_dict
    from pipeline.runtime import prepare_model_dir

    def record(cfg):
        return {"kind": "retrain", "config": to_dict(cfg),
                "config_hash": experiment.retrain_hash(cfg), "schema_hash": "s0", "dims_hash": "d0"}

    base = experiment.resolve("default", None, FAST)
    prepare_model_dir(tmp_path, record(base), rehash=experiment.retrain_hash)
    other = experiment.resolve("default", None, FAST + [
        "retrain.learning_rate=0.01", "model.dropout=0.5", "search.param_cost=0.3",
        "model.lookup=separate"])
    with pytest.raises(ConfigError, match="different config_hash") as err:
        prepare_model_dir(tmp_path, record(other), rehash=experiment.retrain_hash)
    msg = str(err.value)
    assert "retrain.learning_rate: 0.001 -> 0.01" in msg and "model.dropout: 0.2 -> 0.5" in msg
    assert "param_cost" not in msg and "lookup" not in msg  # search-only: they do not block
    assert experiment.retrain_hash(base) in msg and experiment.retrain_hash(other) in msg
