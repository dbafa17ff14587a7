"""The dimension search end to end: planted structure found, mirroring, resume, NaN, errors."""
import re

import numpy as np
import pytest

from configs import experiment
from configs.loader import ConfigError
from pipeline.errors import NonFiniteLossError
from tests.fixtures import (
    random_dataset_dir,
    read_json,
    run_module,
    sigkill_after_checkpoint,
    spearman,
    write_dataset,
)

VOCAB = [50, 30, 200, 20, 10, 100]


def _cli(args):
    return run_module("pipeline.search", args)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return random_dataset_dir(tmp_path_factory, "small", 4000, VOCAB, seed=3)


SMALL = ["--preset", "default", "--quiet", "--set", "search.batch_size=200",
         "--set", "search.pretrain_steps=20", "--set", "search.search_steps=40",
         "--set", "search.checkpoint_every=10"]


def test_search_finds_the_planted_fields(planted, planted_search):
    _, truth = planted
    data_dir, search_dir, result = planted_search
    cfg = experiment.resolve("synthetic")
    names = result["field_order"]
    chosen = np.array([result["fields"][n]["dim"] for n in names], float)
    info = {f["name"]: f for f in truth["fields"]}
    importance = np.array([info[n]["importance"] for n in names])
    informative = np.array([info[n]["informative"] for n in names])
    rho = spearman(chosen, importance)
    assert rho >= 0.4, (rho, dict(zip(names, chosen)))
    assert chosen[informative].mean() >= 2 * chosen[~informative].mean()
    # the record is self-consistent
    on_disk = read_json(search_dir / "dims.json")
    assert on_disk["fields"] == result["fields"]
    for n in names:
        f = result["fields"][n]
        assert f["params"] == f["vocab_size"] * f["dim"]
        assert abs(sum(f["probabilities"]) - 1) < 1e-4
        assert f["dim"] == cfg.model.candidate_dims[int(np.argmax(f["probabilities"]))]
    assert result["embedding_params"] < result["full_embedding_params"]
    assert (search_dir / "config.json").exists()
    events = list((search_dir / "train").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard events written"


def test_two_logical_cpus_give_the_same_losses_as_one(small_data, tmp_path):
    # few steps: 1 and 2 replicas agree to float rounding per step (checked to 6 digits), but the
    # alpha feedback loop amplifies rounding over many steps
    common = SMALL + ["--set", "model.dropout=0", "--set", "search.pretrain_steps=10",
                      "--set", "search.search_steps=10"]
    one = _cli(["--data_dir", str(small_data), "--model_dir", str(tmp_path / "one"), *common])
    two = _cli(["--data_dir", str(small_data), "--model_dir", str(tmp_path / "two"), *common,
                "--logical_cpus", "2"])
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 replica(s)" in two.stderr
    a = read_json(tmp_path / "one" / "dims.json")
    b = read_json(tmp_path / "two" / "dims.json")
    for key in ("train_loss", "valid_loss", "valid_auc"):
        assert a["final_metrics"][key] == pytest.approx(b["final_metrics"][key], rel=1e-3), key
    pa = np.array([a["fields"][n]["probabilities"] for n in a["field_order"]])
    pb = np.array([b["fields"][n]["probabilities"] for n in b["field_order"]])
    np.testing.assert_allclose(pa, pb, atol=1e-4)


def test_sigkill_then_rerun_ends_with_the_uninterrupted_dims(small_data, tmp_path):
    args = SMALL + ["--set", "search.search_steps=80", "--set", "search.steps_per_call=5",
                    "--set", "search.checkpoint_every=10"]
    ref = _cli(["--data_dir", str(small_data), "--model_dir", str(tmp_path / "ref"), *args])
    assert ref.returncode == 0, ref.stderr[-3000:]
    model_dir = tmp_path / "killed"
    sigkill_after_checkpoint("pipeline.search", ["--data_dir", str(small_data), "--model_dir",
                                                 str(model_dir), *args], model_dir / "ckpt", 40)
    assert not (model_dir / "dims.json").exists(), "the run finished before it could be killed"
    rerun = _cli(["--data_dir", str(small_data), "--model_dir", str(model_dir), *args])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed at step" in rerun.stderr
    a, b = read_json(tmp_path / "ref" / "dims.json"), read_json(model_dir / "dims.json")
    assert [a["fields"][n]["dim"] for n in a["field_order"]] == \
        [b["fields"][n]["dim"] for n in b["field_order"]]
    pa = np.array([a["fields"][n]["probabilities"] for n in a["field_order"]])
    pb = np.array([b["fields"][n]["probabilities"] for n in b["field_order"]])
    np.testing.assert_allclose(pa, pb, atol=1e-5)


def _nan_valid_dataset(tmp_path, n: int):
    """A dataset whose validation labels are all NaN: training batches stay finite, the first
    alpha update (on a validation batch) poisons the model."""
    rng = np.random.default_rng(0)
    ids = {
        s: np.stack([rng.integers(0, v, n) for v in VOCAB], 1) for s in ("train", "valid", "test")
    }
    labels = {s: (rng.random(n) < 0.3).astype(np.float32) for s in ids}
    labels["valid"][:] = np.nan
    data = tmp_path / "data"
    write_dataset(data, ids, labels, VOCAB, shards=1)
    return data


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    import tensorflow as tf

    from pipeline.search import run_search

    # pre-training stays finite and checkpoints at steps 10 and 20; the first alpha update at
    # step 21 poisons the model
    data = _nan_valid_dataset(tmp_path, 6000)
    cfg = experiment.resolve("default", None, [
        "search.batch_size=100", "search.pretrain_steps=20", "search.search_steps=20",
        "search.checkpoint_every=10", "search.steps_per_call=10"])
    model_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        run_search(str(data), str(model_dir), cfg, quiet=True)
    latest = tf.train.latest_checkpoint(str(model_dir / "ckpt"))
    assert latest is not None and latest.endswith("ckpt-20")
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.isfinite(value).all(), name
    assert not (model_dir / "dims.json").exists()


def test_cli_errors_are_clear(small_data, tmp_path):
    no_schema = _cli(["--data_dir", str(tmp_path), "--model_dir", str(tmp_path / "m")])
    assert no_schema.returncode == 2 and "schema.json does not exist" in no_schema.stderr
    unknown = _cli(["--data_dir", str(small_data), "--model_dir", str(tmp_path / "m"),
                    "--set", "search.learning_rat=0.1"])
    assert unknown.returncode == 2 and "search.learning_rat" in unknown.stderr
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: [unclosed\n")
    bad = _cli(["--data_dir", str(small_data), "--model_dir", str(tmp_path / "m"),
                "--config", str(bad_yaml)])
    assert bad.returncode == 2 and "invalid YAML" in bad.stderr and "bad.yaml" in bad.stderr


def test_model_dir_of_another_config_is_refused(small_data, tmp_path):
    from pipeline.search import run_search

    cfg = experiment.resolve("default", None, ["search.batch_size=200", "search.pretrain_steps=2",
                                               "search.search_steps=2", "search.steps_per_call=2"])
    run_search(str(small_data), str(tmp_path / "m"), cfg, quiet=True)
    other = experiment.resolve("default", None, ["search.batch_size=100", "search.pretrain_steps=2",
                                                 "search.search_steps=2"])
    with pytest.raises(ConfigError, match="different config_hash") as err:
        run_search(str(small_data), str(tmp_path / "m"), other, quiet=True)
    # the message names the settings that differ, old -> new, and keeps the hashes
    msg = str(err.value)
    assert "search.batch_size: 200 -> 100" in msg and "search.steps_per_call: 2 -> 10" in msg
    assert f"config_hash: {experiment.run_hash(cfg)} -> {experiment.run_hash(other)}" in msg
    assert "search.pretrain_steps" not in msg  # unchanged settings are not listed


def test_schedule_adapts_alpha_updates_to_small_data():
    from pipeline.search import search_schedule

    paper = experiment.resolve("paper")
    s = search_schedule(paper, train_rows=80_000)  # 40 steps/epoch: the paper gets ~52 updates
    assert (s["pretrain_steps"], s["search_steps"], s["arch_update_every"]) == (80, 520, 10)
    assert s["arch_updates"] == 52 and s["arch_learning_rate"] == pytest.approx(1e-3)
    adaptive = experiment.resolve("movielens-100k")
    a = search_schedule(adaptive, train_rows=80_000)
    assert a["arch_update_every"] == 1 and a["arch_updates"] == 520
    assert a["arch_learning_rate"] == pytest.approx(3.0 / 520)
    big = search_schedule(adaptive, train_rows=36_000_000)  # Criteo-sized: the paper's f stays
    assert big["arch_update_every"] == 10 and big["arch_learning_rate"] == pytest.approx(1e-3)


def test_refusal_names_only_the_keys_that_enter_the_run_hash(tmp_path):
    from configs.loader import to_dict
    from pipeline.runtime import prepare_model_dir

    def record(cfg):
        return {"kind": "search", "config": to_dict(cfg), "config_hash": experiment.run_hash(cfg),
                "schema_hash": "s0"}

    base = experiment.resolve("default", None, ["search.learning_rate=0.001"])
    prepare_model_dir(tmp_path, record(base), rehash=experiment.run_hash)
    other = experiment.resolve("default", None, [
        "search.learning_rate=0.01", "model.candidate_dims=[2,4]", "search.derive=validated",
        "search.derive_z=3"])
    with pytest.raises(ConfigError) as err:
        prepare_model_dir(tmp_path, record(other), rehash=experiment.run_hash)
    msg = str(err.value)
    assert "search.learning_rate: 0.001 -> 0.01" in msg
    assert "model.candidate_dims: [2, 8, 16, 24, 32] -> [2, 4]" in msg
    assert "derive" not in msg  # POST_SEARCH_KEYS: they do not block a resume
    assert f"config_hash: {experiment.run_hash(base)} -> {experiment.run_hash(other)}" in msg
    # the post-search keys alone resume (and are recorded)
    post = experiment.resolve("default", None, ["search.learning_rate=0.001", "search.derive_z=3"])
    prepare_model_dir(tmp_path, record(post), rehash=experiment.run_hash)
    assert read_json(tmp_path / "config.json")["config"]["search"]["derive_z"] == 3.0
    # a key the stored config does not have (an older run) is shown as absent
    stored = read_json(tmp_path / "config.json")
    del stored["config"]["search"]["param_cost"]
    stored["config_hash"] = "0000"
    (tmp_path / "config.json").write_text(__import__("json").dumps(stored))
    with pytest.raises(ConfigError, match=r"search\.param_cost: \(absent\) -> 0\.05"):
        prepare_model_dir(tmp_path, record(post), rehash=experiment.run_hash)


def test_nan_message_promises_a_checkpoint_only_when_one_exists(tmp_path):
    import tensorflow as tf

    from pipeline.trainer import check_finite

    ckpt_dir = tmp_path / "ckpt"
    with pytest.raises(NonFiniteLossError) as err:
        check_finite(float("nan"), 7, str(ckpt_dir))
    msg = str(err.value)
    assert "No checkpoint was written yet" in msg and str(ckpt_dir) in msg
    assert "intact" not in msg and "by step 7" in msg
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1.0)), str(ckpt_dir), 2)
    saved = manager.save(checkpoint_number=20)
    with pytest.raises(
        NonFiniteLossError, match=re.escape(f"last good checkpoint {saved} is intact")
    ):
        check_finite(float("inf"), 25, str(ckpt_dir))
    assert check_finite(1.5, 26, str(ckpt_dir)) == 1.5


def test_nan_before_the_first_checkpoint_says_none_was_written(tmp_path):
    from pipeline.search import run_search

    # no pre-training: the first call's alpha update on a (corrupt) validation batch poisons the
    # model before the first checkpoint (due at step 10)
    data = _nan_valid_dataset(tmp_path, 2000)
    cfg = experiment.resolve("default", None, [
        "search.batch_size=100", "search.pretrain_epochs=0", "search.search_steps=20",
        "search.checkpoint_every=10", "search.steps_per_call=5"])
    with pytest.raises(NonFiniteLossError, match="No checkpoint was written yet") as err:
        run_search(str(data), str(tmp_path / "run"), cfg, quiet=True)
    assert "intact" not in str(err.value)


def test_search_hparams_session_layout_and_heatmap_in_tensorboard(small_data, tmp_path):
    from tensorboard.plugins.custom_scalar import metadata as cs_metadata
    from tensorboard.plugins.hparams import metadata as hp_metadata

    from pipeline import summaries
    from pipeline.search import run_search
    from tests.test_summaries import hparams_session, read_events, scalar_series, summary_images

    cfg = experiment.resolve("default", None, [
        "search.batch_size=200", "search.pretrain_steps=10", "search.search_steps=20",
        "search.steps_per_call=10", "search.param_cost=0.07"])
    model_dir = tmp_path / "m"
    result = run_search(str(small_data), str(model_dir), cfg, quiet=True, preset="default")
    run = model_dir / summaries.HPARAMS_RUN
    hp = hparams_session(run)
    assert hp["kind"] == "search" and hp["backbone"] == cfg.model.backbone
    assert hp["search_embedding"] == "raw" and hp["param_cost"] == pytest.approx(0.07)
    assert hp["temperature"] == "anneal" and hp["temperature_min"] == pytest.approx(0.01)
    assert hp["arch_lr_budget"] == pytest.approx(3.0)
    assert hp["arch_learning_rate"] == pytest.approx(result["schedule"]["arch_learning_rate"])
    assert hp["candidate_dims"] == "2,8,16,24,32" and hp["preset"] == "default"
    assert "temperature_decay" not in hp  # only the paper's schedule uses it
    final = result["final_metrics"]
    (auc,) = scalar_series(run, "hparams/derived_valid_auc")
    (loss,) = scalar_series(run, "hparams/derived_valid_logloss")
    (params,) = scalar_series(run, "hparams/embedding_params")
    assert auc == (result["steps"], pytest.approx(final["derived_valid_auc"], abs=1e-6))
    assert loss[1] == pytest.approx(final["derived_valid_loss"], rel=1e-6)
    assert params[1] == result["embedding_params"]
    assert 0.0 <= final["derived_valid_auc"] <= 1.0
    # the alpha layout once, in the run that holds the alpha scalars, and the labelled heatmap
    train = model_dir / "train"
    layouts = [v for _, v in read_events(train) if v.tag == cs_metadata.CONFIG_SUMMARY_TAG]
    assert len(layouts) == 1
    images = summary_images(train, summaries.HEATMAP_TAG)
    assert images and images[-1].shape[0] > 28 * len(VOCAB)
    # a rerun of the finished search starts neither a second session nor a second layout
    run_search(str(small_data), str(model_dir), cfg, quiet=True, preset="default")
    assert len([v for _, v in read_events(train) if v.tag == cs_metadata.CONFIG_SUMMARY_TAG]) == 1
    assert len([v for _, v in read_events(run)
                if v.tag == hp_metadata.SESSION_START_INFO_TAG]) == 1
