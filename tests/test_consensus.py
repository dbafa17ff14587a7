"""Dimensions across seeds (pipeline/consensus.py): the median rule, the correlations, constant
vectors, `pipeline.search --seeds` end to end (per-seed dirs, consensus dims.json, retraining it,
resuming), and the refusals."""
import json

import numpy as np
import pytest

from configs import experiment
from configs.cli import UsageError
from configs.loader import ConfigError
from pipeline import consensus
from tests.fixtures import random_dataset_dir, read_json

VOCAB = [50, 30, 200, 20, 10, 100]
FAST = ["--preset", "default", "--quiet", "--set", "search.batch_size=200",
        "--set", "search.pretrain_steps=10", "--set", "search.search_steps=30",
        "--set", "search.checkpoint_every=10", "--set", "search.param_cost=0.3"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return random_dataset_dir(tmp_path_factory, "seeds", 3000, VOCAB, seed=5)


def test_parse_seeds_counts_lists_and_refusals():
    assert consensus.parse_seeds("3") == 3
    assert consensus.parse_seeds(" 0, 4,7 ") == [0, 4, 7]
    assert consensus.seed_list(3, 5) == [5, 6, 7]
    assert consensus.seed_list([0, 4, 7], 5) == [0, 4, 7]
    for bad, says in (("0", "at least 2"), ("1", "at least 2"), ("-2", "at least 2"),
                      ("2.5", "expected a number"), ("two", "expected a number"),
                      ("1,1", "seed 1 is given twice"), ("3,-1", "non-negative"),
                      ("3,", "expected a number")):
        with pytest.raises(UsageError, match=says) as err:
            consensus.parse_seeds(bad, "--search_seeds")
        assert str(err.value).startswith("--search_seeds")


def test_median_rule_and_its_tie_break():
    cands = [2, 8, 16, 32]
    assert consensus.consensus_dim([32, 8, 16], cands) == 16  # odd: the median
    assert consensus.consensus_dim([8, 32], cands) == 8  # even: the lower middle one
    assert consensus.consensus_dim([16, 16, 2, 2], cands) == 2
    assert consensus.consensus_dim([2, 32, 32, 16], cands) == 16
    assert consensus.consensus_dim([8, 8, 8], cands) == 8
    # not a candidate (never from a search): snapped to the nearest, the smaller on a tie
    assert consensus.consensus_dim([12], [8, 16]) == 8
    assert consensus.consensus_dim([13], [8, 16]) == 16


def test_correlations_match_numpy_and_hand_values():
    a, b = [2, 8, 8, 32, 16], [2, 2, 16, 32, 8]
    assert consensus.pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)
    # ties share their mean rank: hand-computed rho of [2, 8, 8, 32] and [2, 2, 16, 32] is 5/6
    assert consensus.spearman([2, 8, 8, 32], [2, 2, 16, 32]) == pytest.approx(5 / 6)
    assert consensus.spearman([1, 2, 3, 4], [10, 40, 90, 1000]) == pytest.approx(1.0)
    assert consensus.pearson([1, 2, 3, 4], [10, 40, 90, 1000]) < 0.9
    assert consensus.spearman([4, 3, 2, 1], [1, 2, 3, 5]) == pytest.approx(-1.0)


def test_constant_vectors_give_null_and_say_why():
    assert consensus.pearson([8, 8, 8], [2, 8, 16]) is None
    assert consensus.spearman([2, 8, 16], [8, 8, 8]) is None
    c = consensus.correlations({0: [2, 8, 16], 1: [8, 8, 8], 2: [2, 16, 32]})
    assert c["pearson"]["seed0/seed1"] is None and c["spearman"]["seed1/seed2"] is None
    r02 = np.corrcoef([2, 8, 16], [2, 16, 32])[0, 1]
    assert c["pearson"]["seed0/seed2"] == pytest.approx(r02)
    assert c["pearson"]["mean"] == pytest.approx(r02)  # over the defined pairs only
    assert c["spearman"]["mean"] == pytest.approx(1.0)
    assert "seed1 chose the same dimension for every field" in c["undefined"]
    none = consensus.correlations({0: [8, 8], 1: [8, 8]})
    assert none["pearson"] == {"seed0/seed1": None, "mean": None}
    json.dumps(none)  # null in dims.json, not NaN


def _record(dims, seed):
    cands = [2, 8, 16, 32]
    names = ["a", "b", "c", "d"]
    vocab = [10, 20, 30, 40]
    return {"dataset": "x", "schema_hash": "h", "backbone": "fm", "candidate_dims": cands,
            "field_order": names, "config_hash": f"c{seed}", "steps": 7, "schedule": {},
            "derivation": {"method": "argmax"}, "embedding_params": sum(
                v * d for v, d in zip(vocab, dims)), "budget": {"params": 1},
            "fields": {n: {"dim": d, "probabilities": [0.25 + 0.05 * seed, 0.25, 0.25, 0.25],
                           "vocab_size": v} for n, d, v in zip(names, dims, vocab)}}


def test_consensus_record_fields_params_and_disagreement():
    records = {3: _record([2, 8, 32, 16], 3), 5: _record([8, 8, 16, 16], 5),
               9: _record([32, 8, 2, 16], 9)}
    rec = consensus.consensus_record(records)
    assert [rec["fields"][n]["dim"] for n in "abcd"] == [8, 8, 16, 16]
    assert rec["embedding_params"] == 10 * 8 + 20 * 8 + 30 * 16 + 40 * 16
    assert rec["full_embedding_params"] == 32 * 100
    assert rec["fields"]["a"]["probabilities"][0] == pytest.approx(0.25 + 0.05 * 17 / 3)
    c = rec["consensus"]
    assert c["seeds"] == [3, 5, 9]
    assert c["fields"]["a"] == {"dims": [2, 8, 32], "agree": False, "disagreement": 30,
                                "candidate_steps": 3}
    assert c["fields"]["b"]["agree"] and c["fields"]["b"]["disagreement"] == 0
    assert c["pearson"]["seed3/seed9"] == pytest.approx(
        np.corrcoef([2, 8, 32, 16], [32, 8, 2, 16])[0, 1])
    assert rec["derivation"]["method"] == "consensus" and "budget" not in rec
    bad = _record([2, 2, 2, 2], 4)
    bad["schema_hash"] = "other"
    with pytest.raises(ConfigError, match="seed 4's dims.json has another schema_hash"):
        consensus.consensus_record({3: records[3], 4: bad})


def test_search_seeds_end_to_end_retrain_and_resume(small_data, tmp_path, capsys):
    from pipeline import search

    model_dir = tmp_path / "m"
    code = search.main(["--data_dir", str(small_data), "--model_dir", str(model_dir),
                        "--seeds", "2", *FAST])
    out = capsys.readouterr().out
    assert code == 0
    seeds = {s: read_json(model_dir / f"seed{s}" / "dims.json") for s in (0, 1)}
    for s in seeds:
        assert read_json(model_dir / f"seed{s}" / "config.json")["config"]["search"]["seed"] == s
    names = seeds[0]["field_order"]
    vecs = {s: [seeds[s]["fields"][n]["dim"] for n in names] for s in (0, 1)}
    top = read_json(model_dir / "dims.json")
    assert [top["fields"][n]["dim"] for n in names] == [min(a, b) for a, b in zip(*vecs.values())]
    c = top["consensus"]
    assert c["seeds"] == [0, 1] and c["fields"][names[0]]["dims"] == [vecs[0][0], vecs[1][0]]
    want = (None if min(np.ptp(vecs[0]), np.ptp(vecs[1])) == 0
            else np.corrcoef(vecs[0], vecs[1])[0, 1])
    assert c["pearson"]["seed0/seed1"] == pytest.approx(want)
    assert c["pearson"]["mean"] == pytest.approx(want)
    assert "consensus of seeds 0, 1" in out and "Pearson: mean" in out
    assert read_json(model_dir / "config.json")["kind"] == "search_seeds"

    # pipeline.retrain reads the consensus as it reads a single search's dims.json
    from pipeline.retrain import retrain

    cfg = experiment.resolve("default", None, [
        "retrain.batch_size=500", "retrain.max_epochs=1", "retrain.steps_per_call=5"])
    metrics = retrain(str(small_data), str(model_dir), str(tmp_path / "r"), cfg, quiet=True)
    assert metrics["dims"] == {n: top["fields"][n]["dim"] for n in names}
    assert metrics["params"] == top["embedding_params"]

    # a third seed: seeds 0 and 1 are skipped (their files untouched), seed 2 runs in its own
    # process (the multi-GPU path, here with every GPU hidden)
    stamp = (model_dir / "seed0" / "dims.json").stat().st_mtime_ns
    cfg = experiment.resolve("default", None, [a for a in FAST[3:] if a != "--set"])
    argv = ["--data_dir", str(small_data), "--preset", "default", *FAST[3:]]
    rec = consensus.run_seeds(str(small_data), str(model_dir), cfg, [0, 1, 2], quiet=True,
                              preset="default", cli_argv=argv, device_slots=["-1", "-1"])
    assert (model_dir / "seed0" / "dims.json").stat().st_mtime_ns == stamp
    assert (model_dir / "seed2" / "dims.json").exists() and (model_dir / "seed2.log").exists()
    seed2 = read_json(model_dir / "seed2" / "dims.json")
    assert read_json(model_dir / "seed2" / "config.json")["config"]["search"]["seed"] == 2
    vecs[2] = [seed2["fields"][n]["dim"] for n in names]
    assert [rec["fields"][n]["dim"] for n in names] == [
        int(np.median(col)) for col in zip(vecs[0], vecs[1], vecs[2])]
    assert read_json(model_dir / "dims.json") == json.loads(json.dumps(rec))
    assert sorted(k for k in rec["consensus"]["spearman"] if k != "mean") == [
        "seed0/seed1", "seed0/seed2", "seed1/seed2"]


def test_refusals_name_the_flag_and_write_nothing(small_data, tmp_path, capsys):
    from pipeline import run as pipeline_run
    from pipeline import search

    for value in ("1", "0", "-2", "2.5", "0,0"):
        code = search.main(["--data_dir", str(small_data), "--model_dir", str(tmp_path / "m"),
                            "--seeds", value])
        assert code == 2 and "--seeds" in capsys.readouterr().err
    code = search.main(["--data_dir", str(small_data), "--model_dir", str(tmp_path / "m"),
                        "--seeds", "2", "--strategy", "multi_worker"])
    assert code == 2 and "multi_worker" in capsys.readouterr().err
    code = search.main(["--data_dir", str(small_data), "--model_dir", str(tmp_path / "m"),
                        "--seeds", "2", "--memory_limit", "1K"])  # as a single search: refused
    assert code == 2 and "--memory_limit" in capsys.readouterr().err
    work = tmp_path / "w"
    for extra, says in ((["--search_seeds", "1"], "--search_seeds '1'"),
                        (["--search_seeds", "2", "--param_costs", "0.01,0.05"],
                         "--search_seeds and --param_costs"),
                        (["--search_seeds", "2", "--strategy", "multi_worker"],
                         "--search_seeds and --strategy multi_worker")):
        code = pipeline_run.main(["--workdir", str(work), "--demo", *extra])
        assert code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "m").exists() and not work.exists()
    # a single search's directory is not turned into a multi-seed one (its dims.json kept)
    single = tmp_path / "single"
    single.mkdir()
    (single / "config.json").write_text(json.dumps({"kind": "search", "config_hash": "x"}))
    cfg = experiment.resolve("default")
    with pytest.raises(ConfigError, match="different config_hash, kind"):
        consensus.run_seeds(str(small_data), str(single), cfg, [0, 1])
    assert sorted(p.name for p in single.iterdir()) == ["config.json"]
