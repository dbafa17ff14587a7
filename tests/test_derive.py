"""search.derive=validated: the paired-test decision rule, coordinate descent, and the derivation
end to end (record, valid moves, alpha untouched, resume with another derive setting, mirrored)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs import experiment
from configs.loader import ConfigError, config_hash, to_dict
from pipeline import derive
from tests.fixtures import REPO, random_dataset_dir, read_json

VOCAB = [50, 30, 200, 20, 10, 100]
CANDS = (2, 8, 16, 24, 32)


# ---------------------------------------------------------------------- decision rule
def _noise(n=2000, seed=0, scale=0.3):
    return np.random.default_rng(seed).normal(0, scale, n)


def test_paired_difference_is_mean_and_standard_error_of_the_differences():
    cur = np.array([0.5, 0.7, 0.2, 0.9])
    cand = np.array([0.4, 0.8, 0.1, 0.6])
    d = cand - cur  # -0.1, 0.1, -0.1, -0.3
    mean, se = derive.paired_difference(cand, cur)
    assert mean == pytest.approx(-0.1)
    assert se == pytest.approx(np.sqrt(((d - d.mean()) ** 2).sum() / 3) / 2)
    with pytest.raises(ValueError, match="equal-length"):
        derive.paired_difference(cand, cur[:3])


def test_a_larger_dim_needs_a_significant_improvement():
    base = 0.5 + _noise()
    jitter = _noise(seed=1, scale=0.05)
    se = jitter.std(ddof=1) / np.sqrt(jitter.size)  # ~0.0011
    clearly = base - 5 * se + jitter - jitter.mean()  # mean diff -5 SE
    barely = base - 1 * se + jitter - jitter.mean()  # mean diff -1 SE: better, not significantly
    assert derive.best_move(8, base, {16: clearly}, z=2.0)["to"] == 16
    assert derive.best_move(8, base, {16: barely}, z=2.0) is None
    assert derive.best_move(8, base, {16: barely}, z=0.5)["to"] == 16  # z is the threshold
    assert derive.accepts(-0.01, 0.004, larger=True, z=2.0)
    assert not derive.accepts(-0.008, 0.004, larger=True, z=2.0)


def test_a_smaller_dim_is_taken_when_not_worse_and_refused_when_worse():
    base = 0.5 + _noise()
    jitter = _noise(seed=2, scale=0.05)
    same = base.copy()
    slightly_worse = base + 1e-4 + jitter - jitter.mean()  # insignificantly worse: still refused
    slightly_better = base - 1e-4 + jitter - jitter.mean()
    assert derive.best_move(16, base, {8: same}, z=2.0) == {"to": 8, "mean_diff": 0.0, "se": 0.0}
    assert derive.best_move(16, base, {8: slightly_worse}, z=2.0) is None
    assert derive.best_move(16, base, {8: slightly_better}, z=2.0)["to"] == 8
    # the same worse vector as a LARGER dim is refused too
    assert derive.best_move(2, base, {8: slightly_worse}, z=2.0) is None


def test_the_lowest_mean_loss_among_accepted_alternatives_wins():
    base = 0.5 + _noise()
    rng = np.random.default_rng(3)
    small_gain = base - 0.001
    big_gain = base - 0.004
    noisy = rng.normal(0, 3.0, base.size)
    huge_but_noisy = base - 0.05 + noisy - noisy.mean()  # lowest mean, larger, not significant
    move = derive.best_move(16, base, {2: small_gain, 8: big_gain, 32: huge_but_noisy}, z=2.0)
    assert move["to"] == 8 and move["mean_diff"] == pytest.approx(-0.004)
    # once the large candidate is significant it wins on its lower mean
    move = derive.best_move(16, base, {2: small_gain, 8: big_gain, 32: base - 0.05}, z=2.0)
    assert move["to"] == 32


def test_margin_order_puts_the_least_decided_field_first():
    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    assert derive.margin_order(probs) == [2, 1, 0, 3]


def _toy_losses(per_field, rows=3000):
    """loss(dims) = shared per-row noise + sum_m per_field[m][d_m] (+ tiny per-arch noise)."""
    common = 0.4 + _noise(rows, seed=7)

    def evaluate(dims):
        out = common.copy()
        for m, d in enumerate(dims):
            out = out + per_field[m][d]
        return out

    return evaluate


def _recorded(evaluate):
    """`evaluate` that also records the architectures it is asked for."""
    calls = []

    def recording(dims):
        calls.append(tuple(dims))
        return evaluate(dims)

    return recording, calls


def test_coordinate_descent_moves_only_where_the_rule_says():
    rows = 3000
    zero = np.zeros(rows)
    rng = np.random.default_rng(11)
    wobble = rng.normal(0, 0.2, rows)
    wobble -= wobble.mean()
    per_field = [
        # argmax 2, but 16 is clearly better (the cost-cut big field): moves up to 16
        {2: zero + 0.02, 8: zero + 0.01, 16: zero},
        # argmax 16, 2 is exactly as good: moves down to 2
        {2: zero, 8: zero + 0.001, 16: zero},
        # argmax 8, 16 a little better on average but not significantly: stays
        {2: zero + 0.01, 8: zero, 16: wobble - 0.001},
    ]
    evaluate, calls = _recorded(_toy_losses(per_field, rows))
    out = derive.coordinate_descent(evaluate, [2, 16, 8], [(2, 8, 16)] * 3, order=[0, 1, 2],
                                    z=2.0, sweeps=3, field_names=["item", "user", "ctx"],
                                    direction="both")
    assert out["dims"] == [16, 2, 8]
    assert [(m["field"], m["from"], m["to"], m["sweep"]) for m in out["moves"]] == [
        ("item", 2, 16, 1), ("user", 16, 2, 1)]
    assert out["sweeps"] == 2  # the second sweep changed nothing: no third
    assert len(calls) == len(set(calls)) == out["evaluations"]  # nothing evaluated twice
    assert out["final_loss"] == pytest.approx(out["start_loss"] - 0.02)


def test_coordinate_descent_up_only_tries_and_takes_only_larger_dims():
    """direction "up" (the default): the argmax stands except where a larger dimension is
    significantly better; smaller candidates are never evaluated."""
    rows = 3000
    zero = np.zeros(rows)
    per_field = [
        {2: zero + 0.02, 8: zero + 0.01, 16: zero},  # cost-cut field: up to 16
        {2: zero - 0.01, 8: zero + 0.001, 16: zero},  # 2 better, but down is not tried
        {2: zero + 0.01, 8: zero, 16: zero + 0.002},  # larger is worse: stays
    ]
    evaluate, calls = _recorded(_toy_losses(per_field, rows))
    out = derive.coordinate_descent(evaluate, [2, 16, 8], [(2, 8, 16)] * 3, order=[0, 1, 2],
                                    z=2.0, sweeps=3, direction="up")
    assert out["dims"] == [16, 16, 8]
    assert [(m["from"], m["to"]) for m in out["moves"]] == [(2, 16)]
    # start, field 0 at 8 and 16, field 2 at 16; sweep 2 re-tries nothing new
    assert sorted(calls) == sorted([(2, 16, 8), (8, 16, 8), (16, 16, 8), (16, 16, 16)])
    assert all(c[1] == 16 for c in calls)  # field 1 was never tried smaller


def test_coordinate_descent_honours_the_sweep_limit_and_field_order():
    rows = 500
    zero = np.zeros(rows)
    # field 0 is best at 8; field 1 should be 16 exactly when field 0 is at 8, so field 1 (tried
    # first) can only improve in the sweep after field 0 moved
    def evaluate(dims):
        a, b = dims
        loss = 0.5 + _noise(rows, seed=5)
        loss = loss + (0.0 if a == 8 else 0.02)
        loss = loss + (0.0 if (b == 16) == (a == 8) else 0.01)
        return loss + zero

    one = derive.coordinate_descent(evaluate, [2, 2], [(2, 8, 16)] * 2, order=[1, 0], z=2.0,
                                    sweeps=1, direction="both")
    assert one["dims"] == [8, 2] and one["sweeps"] == 1  # field 1 first: nothing to gain yet
    two = derive.coordinate_descent(evaluate, [2, 2], [(2, 8, 16)] * 2, order=[1, 0], z=2.0,
                                    sweeps=2, direction="both")
    assert two["dims"] == [8, 16]
    assert [m["sweep"] for m in two["moves"]] == [1, 2]


# ---------------------------------------------------------------------- config
def test_derive_settings_are_validated_and_left_out_of_the_run_hash():
    cfg = experiment.resolve("frappe")
    assert cfg.search.derive == "argmax"  # presets keep the paper's derivation
    validated = experiment.resolve("frappe", None, ["search.derive=validated",
                                                    "search.derive_z=3", "search.derive_sweeps=1"])
    assert experiment.run_hash(validated) == experiment.run_hash(cfg)
    data = to_dict(cfg)
    for key in (*experiment.POST_SEARCH_KEYS, *experiment.BUDGET_KEYS, "budget_multiplier_lr"):
        del data["search"][key]  # the derivation's keys, and the budget's while none is set
    assert experiment.run_hash(cfg) == config_hash(data)  # = the hash before the keys existed
    other = experiment.resolve("frappe", None, ["search.param_cost=0.1"])
    assert experiment.run_hash(other) != experiment.run_hash(cfg)
    for bad, text in [("search.derive=best", "not one of"),
                      ("search.derive_max_rows=0", "derive_max_rows=0"),
                      ("search.derive_z=-1", "derive_z=-1.0"),
                      ("search.derive_sweeps=0", "derive_sweeps=0"),
                      ("search.derive_direction=down", "not one of")]:
        with pytest.raises(ConfigError, match=text):
            experiment.resolve("frappe", None, [bad])


# ---------------------------------------------------------------------- end to end
SEARCH = ["search.batch_size=200", "search.pretrain_steps=20", "search.search_steps=40",
          "search.checkpoint_every=20", "search.steps_per_call=10"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return random_dataset_dir(tmp_path_factory, "derive_data", 4000, VOCAB, seed=3)


def _event_tags(directory: Path) -> set:
    import tensorflow as tf

    tags = set()
    for path in directory.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(v.tag for v in event.summary.value)
    return tags


def test_validated_derivation_end_to_end(small_data, tmp_path, monkeypatch):
    from pipeline.search import run_search

    model_dir = tmp_path / "search"
    argmax = run_search(str(small_data), str(model_dir),
                        experiment.resolve("default", None, SEARCH), quiet=True)
    assert argmax["derivation"] == {"method": "argmax"}
    assert all("argmax_dim" not in f for f in argmax["fields"].values())

    seen = {}
    real = derive.derive_validated

    def spy(model, *args, **kwargs):
        alpha = model.embedding.alpha
        seen["before"] = np.array(alpha.numpy(), copy=True)
        record = real(model, *args, **kwargs)
        seen["after"] = np.array(alpha.numpy(), copy=True)
        seen["record"] = record
        return record

    monkeypatch.setattr(derive, "derive_validated", spy)
    # same supernet (derive settings are not part of the run hash): resumes after the last step
    cfg = experiment.resolve("default", None, SEARCH + [
        "search.derive=validated", "search.derive_max_rows=300", "search.derive_direction=both"])
    result = run_search(str(small_data), str(model_dir), cfg, quiet=True)
    dv = result["derivation"]
    assert dv is seen["record"] and dv["method"] == "validated" and dv["direction"] == "both"
    on_disk = read_json(model_dir / "dims.json")
    assert on_disk["derivation"]["dims"] == dv["dims"] and on_disk["fields"] == result["fields"]

    # alpha is the search's, bit for bit, after the derivation
    np.testing.assert_array_equal(seen["after"], seen["before"])
    names = result["field_order"]
    for n in names:
        f, a = result["fields"][n], argmax["fields"][n]
        assert f["probabilities"] == a["probabilities"]
        assert f["argmax_dim"] == a["dim"] == dv["argmax_dims"][n]
        assert f["dim"] == dv["dims"][n] and f["dim"] in CANDS
        assert f["params"] == f["vocab_size"] * f["dim"]
    assert result["final_metrics"]["valid_loss"] == pytest.approx(
        argmax["final_metrics"]["valid_loss"], rel=1e-5)

    # validated dims = argmax dims + the recorded moves, each one allowed by the rule
    dims = dict(dv["argmax_dims"])
    for mv in dv["moves"]:
        assert dims[mv["field"]] == mv["from"] and mv["to"] in CANDS and mv["to"] != mv["from"]
        if mv["to"] > mv["from"]:
            assert mv["mean_diff"] < -dv["z"] * mv["se"]
        else:
            assert mv["mean_diff"] <= 0
        dims[mv["field"]] = mv["to"]
    assert dims == dv["dims"]
    assert dv["moves"], "no move on this fixture: the replay above checked nothing"
    assert dv["rows"] == 300  # derive_max_rows caps the 500 validation rows
    # the first sweep tries every other candidate of every field once
    assert dv["evaluations"] >= 1 + len(VOCAB) * (len(CANDS) - 1)
    assert dv["valid_logloss"] <= dv["argmax_valid_logloss"]
    assert dv["seconds"] > 0
    assert result["embedding_params"] == sum(f["params"] for f in result["fields"].values())
    assert {"dims/derivation", "derive/valid_logloss_validated"} <= _event_tags(model_dir / "train")
    print(f"validated derivation: {dv['evaluations']} evaluations of {dv['rows']} rows, "
          f"{dv['seconds']:.2f}s, {len(dv['moves'])} moves")


MIRRORED = r"""
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from configs import experiment
from configs.features import DataSchema
from models.factory import build_search_model
from pipeline.derive import derive_validated
from tests.fixtures import random_split_data, write_dataset

vocab = [50, 30, 200, 20]
ids, labels = random_split_data(800, vocab, seed=4)
write_dataset(sys.argv[1], ids, labels, vocab)
schema = DataSchema.load(sys.argv[1])
cfg = experiment.resolve("default", None, ["search.derive=validated", "search.batch_size=40",
                                          "search.derive_direction=both",
                                          "model.candidate_dims=2,8,16"]).search
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
kw = dict(candidate_dims=(2, 8, 16), seed=1, hidden_units=(16,), dropout=0.0)
single = build_search_model("deepfm", vocab, **kw)
single(tf.zeros([2, 4], tf.int32))
rng = np.random.default_rng(0)
single.set_weights([w + rng.normal(0, 0.3, w.shape).astype(w.dtype) if w.dtype.kind == "f" else w
                    for w in single.get_weights()])
with strategy.scope():
    mirrored = build_search_model("deepfm", vocab, **kw)
    mirrored(tf.zeros([2, 4], tf.int32))
mirrored.set_weights(single.get_weights())
out = {}
for name, model in (("single", single), ("mirrored", mirrored)):
    before = model.embedding.alpha.numpy().copy()
    rec = derive_validated(model, sys.argv[1], schema, cfg)
    out[name] = {"dims": rec["dims"], "argmax": rec["argmax_dims"], "loss": rec["valid_logloss"],
                 "argmax_loss": rec["argmax_valid_logloss"], "evaluations": rec["evaluations"],
                 "restored": bool(np.array_equal(before, model.embedding.alpha.numpy())),
                 "copies": [bool(np.array_equal(before, v.numpy())) for v in
                            getattr(model.embedding.alpha.value, "values",
                                    [model.embedding.alpha])]}
print("RESULT " + json.dumps(out))
"""


def test_derivation_under_mirrored_strategy_matches_single_device(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", MIRRORED, str(tmp_path / "data")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    one, two = out["single"], out["mirrored"]
    assert one["restored"] and two["restored"]
    assert two["copies"] == [True, True]  # alpha restored on both replicas
    assert one["dims"] == two["dims"] and one["argmax"] == two["argmax"]
    assert one["evaluations"] == two["evaluations"] >= 1 + 4 * 2
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert two["argmax_loss"] == pytest.approx(one["argmax_loss"], rel=1e-5)
