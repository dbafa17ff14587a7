"""The dimension search end to end: planted structure found, mirroring, resume, NaN, errors."""
import numpy as np
import pytest

from configs import experiment
from configs.loader import ConfigError
from pipeline.errors import NonFiniteLossError
from tests.fixtures import (random_dataset_dir, read_json, run_module,
                            sigkill_after_checkpoint, spearman, write_dataset)

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
    one = _cli(["--data", str(small_data), "--model_dir", str(tmp_path / "one"), *common])
    two = _cli(["--data", str(small_data), "--model_dir", str(tmp_path / "two"), *common,
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
    ref = _cli(["--data", str(small_data), "--model_dir", str(tmp_path / "ref"), *args])
    assert ref.returncode == 0, ref.stderr[-3000:]
    model_dir = tmp_path / "killed"
    sigkill_after_checkpoint("pipeline.search", ["--data", str(small_data), "--model_dir",
                                                 str(model_dir), *args], model_dir / "ckpt", 40)
    assert not (model_dir / "dims.json").exists(), "the run finished before it could be killed"
    rerun = _cli(["--data", str(small_data), "--model_dir", str(model_dir), *args])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed at step" in rerun.stderr
    a, b = read_json(tmp_path / "ref" / "dims.json"), read_json(model_dir / "dims.json")
    assert [a["fields"][n]["dim"] for n in a["field_order"]] == \
        [b["fields"][n]["dim"] for n in b["field_order"]]
    pa = np.array([a["fields"][n]["probabilities"] for n in a["field_order"]])
    pb = np.array([b["fields"][n]["probabilities"] for n in b["field_order"]])
    np.testing.assert_allclose(pa, pb, atol=1e-5)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    import tensorflow as tf

    from pipeline.search import run_search

    rng = np.random.default_rng(0)
    n = 6000
    ids = {s: np.stack([rng.integers(0, v, n) for v in VOCAB], 1) for s in ("train", "valid", "test")}
    labels = {s: (rng.random(n) < 0.3).astype(np.float32) for s in ids}
    # a corrupt validation split: pre-training (training batches only) stays finite and
    # checkpoints at steps 10 and 20; the first alpha update at step 21 poisons the model
    labels["valid"][:] = np.nan
    data = tmp_path / "data"
    write_dataset(data, ids, labels, VOCAB, shards=1)
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
    no_schema = _cli(["--data", str(tmp_path), "--model_dir", str(tmp_path / "m")])
    assert no_schema.returncode == 2 and "schema.json does not exist" in no_schema.stderr
    unknown = _cli(["--data", str(small_data), "--model_dir", str(tmp_path / "m"),
                    "--set", "search.learning_rat=0.1"])
    assert unknown.returncode == 2 and "search.learning_rat" in unknown.stderr
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: [unclosed\n")
    bad = _cli(["--data", str(small_data), "--model_dir", str(tmp_path / "m"),
                "--config", str(bad_yaml)])
    assert bad.returncode == 2 and "invalid YAML" in bad.stderr and "bad.yaml" in bad.stderr


def test_model_dir_of_another_config_is_refused(small_data, tmp_path):
    from pipeline.search import run_search

    cfg = experiment.resolve("default", None, ["search.batch_size=200", "search.pretrain_steps=2",
                                               "search.search_steps=2", "search.steps_per_call=2"])
    run_search(str(small_data), str(tmp_path / "m"), cfg, quiet=True)
    other = experiment.resolve("default", None, ["search.batch_size=100", "search.pretrain_steps=2",
                                                 "search.search_steps=2"])
    with pytest.raises(ConfigError, match="different config_hash"):
        run_search(str(small_data), str(tmp_path / "m"), other, quiet=True)


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
