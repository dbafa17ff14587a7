"""The parameter cost chosen on validation (pipeline/tuning.py) and `pipeline.run --param_costs`."""
import numpy as np
import pytest

from configs.loader import ConfigError
from pipeline.tuning import (
    choose,
    cost_label,
    format_selection,
    paired_gaps,
    parse_costs,
    parse_embeddings,
    parse_tolerance,
)
from tests.fixtures import random_split_data, read_json, run_module, write_dataset

VOCAB = [300, 200, 20, 10, 100]
FAST = ["--quiet", "--fde_dim", "4",
        "--set", "search.batch_size=200", "--set", "search.pretrain_steps=10",
        "--set", "search.search_steps=40", "--set", "search.checkpoint_every=20",
        "--set", "search.steps_per_call=5",
        "--set", "retrain.batch_size=200", "--set", "retrain.max_epochs=2",
        "--set", "retrain.checkpoint_every=20", "--set", "retrain.steps_per_call=5"]


def _refused(parse, cases):
    """Each (bad input, words) is refused with a ConfigError whose message matches words."""
    for bad, words in cases:
        with pytest.raises(ConfigError, match=words):
            parse(bad)


def _c(valid_auc, params):
    return {"best_valid_auc": valid_auc, "params": params}


def test_choose_keeps_the_best_validation_auc_or_the_smallest_close_one():
    candidates = [_c(0.780, 60_000), _c(0.786, 20_000), _c(0.785, 9_000), _c(0.770, 1_000)]
    assert choose(candidates) == 1
    assert choose(candidates, tolerance=0.001) == 2  # 0.785 is within 0.001 of 0.786
    assert choose(candidates, tolerance=0.006) == 2  # 0.780 is close too, but larger
    assert choose(candidates, tolerance=0.02) == 3
    assert choose([_c(0.7, 5), _c(0.7, 5)]) == 0  # ties: the first
    with pytest.raises(ValueError):
        choose([])
    with pytest.raises(ValueError):
        choose(candidates, tolerance=-0.1)


def _g(gap, se, params):
    return {"best_valid_auc": 0.0, "valid_gap": gap, "valid_gap_se": se, "params": params}


def test_choose_in_standard_errors_keeps_the_smallest_model_within_the_noise():
    candidates = [_g(0.0, 0.0, 60_000), _g(0.001, 0.0015, 20_000), _g(0.004, 0.0015, 9_000)]
    assert choose(candidates, "0se") == 0
    assert choose(candidates, "0.5se") == 0  # 0.001 > 0.5 x 0.0015
    assert choose(candidates, "1se") == 1    # 0.001 <= 1 x 0.0015
    assert choose(candidates, "2se") == 1    # 0.004 > 2 x 0.0015
    assert choose(candidates, "3se") == 2    # 0.004 <= 3 x 0.0015
    assert choose([_g(0.0, 0.0, 5), _g(0.001, 0.0, 3)], "5se") == 0  # no noise: no slack


def test_parse_tolerance_accepts_margins_and_standard_errors():
    assert parse_tolerance("0") == 0.0 and parse_tolerance("0.001") == 0.001
    assert parse_tolerance("1se") == "1se" and parse_tolerance(" 0.5SE ") == "0.5se"
    assert parse_tolerance(2) == 2.0
    _refused(parse_tolerance, (("-1", "must be >= 0, got '-1'"), ("-1se", "must be >= 0"),
                               ("nan", "must be >= 0"), ("abc", "a number or <K>se"),
                               ("se", "a number or <K>se")))


def test_paired_gaps_measure_each_candidate_against_the_best():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=4000)
    labels = (signal + rng.normal(size=4000) > 0).astype(np.float32)
    good = signal + 0.5 * rng.normal(size=4000)
    near = good + 0.05 * rng.normal(size=4000)   # almost the same model
    poor = signal + 3.0 * rng.normal(size=4000)  # clearly worse
    aucs, gaps, ses = paired_gaps(labels, [near, good, poor])
    assert int(np.argmax(aucs)) == int(np.argmin(gaps))
    best = int(np.argmax(aucs))
    assert gaps[best] == 0.0 and ses[best] == 0.0
    assert gaps[2] > 5 * ses[2]                      # poor: worse far beyond the noise
    assert min(gaps[0], gaps[1]) == 0.0 and max(gaps[0], gaps[1]) < 2 * max(ses[0], ses[1])
    cands = [{"valid_gap": g, "valid_gap_se": e, "params": p, "best_valid_auc": a}
             for g, e, a, p in zip(gaps, ses, aucs, (40_000, 50_000, 1_000))]
    assert choose(cands, "2se") == 0  # the smaller of the two indistinguishable models


def test_parse_costs_accepts_numbers_and_names_the_bad_item():
    assert parse_costs("0.01, 0.05") == (0.01, 0.05)
    assert parse_costs("0") == (0.0,)
    assert [cost_label(c) for c in parse_costs("0,0.05,1e-3")] == ["0", "0.05", "0.001"]
    _refused(parse_costs, (("0.01,abc", "'abc' is not a number"), ("-1", "'-1' must be"),
                           ("nan", "'nan' must be"), ("0.1,0.1", "'0.1' is given twice"),
                           ("0.1,", "'' is not a number")))


def test_parse_embeddings_names_the_bad_item():
    assert parse_embeddings("raw, ad2") == ("raw", "ad2")
    _refused(parse_embeddings, (("raw,linear", "unknown 'linear'; known: raw, ad2"),
                                ("ad2,ad2", "'ad2' is given twice"), ("", "unknown ''")))


def test_format_selection_shows_the_embedding_column_only_when_there_is_one():
    row = {"param_cost": 0.05, "best_valid_auc": 0.78, "test_auc": 0.77, "params": 1234}
    plain = format_selection({"candidates": [row, {**row, "param_cost": 0.01}], "chosen": 1})
    assert "embedding" not in plain
    assert plain.splitlines()[2].endswith("<- chosen (validation)")
    named = format_selection({"candidates": [{**row, "search_embedding": "raw"},
                                             {**row, "search_embedding": "ad2"}], "chosen": 0})
    lines = named.splitlines()
    assert lines[0].split()[0] == "embedding"
    assert lines[1].split()[:2] == ["raw", "0.05"] and "<- chosen" in lines[1]
    assert lines[2].split()[:2] == ["ad2", "0.05"]


@pytest.fixture(scope="module")
def fixture_workdir(tmp_path_factory):
    """A pipeline.run workdir whose data/ already holds a small dataset (two fields carry the
    label), so the run skips the Beam job."""
    work = tmp_path_factory.mktemp("tuning")
    ids, labels = random_split_data(6000, VOCAB, seed=3)
    write_dataset(work / "data", ids, labels, VOCAB)
    return work


def test_run_with_param_costs_keeps_the_best_validated_model(fixture_workdir):
    work = fixture_workdir
    res = run_module("pipeline.run", ["--workdir", str(work), "--param_costs", "0,2", *FAST])
    assert res.returncode == 0, res.stderr[-3000:]
    selection = read_json(work / "param_cost_selection.json")
    first_choice = selection["chosen"]
    free, costly = selection["candidates"]
    assert [free["param_cost"], costly["param_cost"]] == [0.0, 2.0]
    # a cost of 2 drives the search to small dimensions
    assert costly["params"] < free["params"]
    assert sum(costly["dims"].values()) < sum(free["dims"].values())
    for c in (free, costly):
        metrics = read_json(f"{c['retrain_dir']}/metrics.json")
        assert metrics["best_valid_auc"] == c["best_valid_auc"]
        assert metrics["params"] == c["params"]
        searched = read_json(f"{c['search_dir']}/config.json")["config"]["search"]
        assert searched["param_cost"] == c["param_cost"]
    best = max((0, 1), key=lambda i: selection["candidates"][i]["best_valid_auc"])
    assert selection["chosen"] == best
    summary = read_json(work / "summary.json")
    chosen = selection["candidates"][best]
    assert summary["autodim"]["test_auc"] == chosen["test_auc"]
    assert summary["autodim"]["params"] == chosen["params"]
    assert summary["dims"] == chosen["dims"]
    assert "<- chosen (validation)" in res.stdout

    # rerun with a tolerance that admits both: the smaller model, from the finished runs
    stamps = {p: p.stat().st_mtime_ns for p in work.glob("*_cost*/*.json")}
    res = run_module("pipeline.run", ["--workdir", str(work), "--param_costs", "0,2",
                                      "--cost_tolerance", "1", *FAST])
    assert res.returncode == 0, res.stderr[-3000:]
    again = read_json(work / "param_cost_selection.json")
    assert again["chosen"] == 1 and again["tolerance"] == 1.0
    assert read_json(work / "summary.json")["autodim"]["params"] == costly["params"]
    assert {p: p.stat().st_mtime_ns for p in work.glob("*_cost*/metrics.json")} == {
        p: t for p, t in stamps.items() if p.name == "metrics.json"}

    # in standard errors: the validation predictions retraining saved, compared pairwise
    first = read_json(work / "param_cost_selection.json")
    saved = {c["retrain_dir"]: np.load(f"{c['retrain_dir']}/valid_predictions.npz")["probabilities"]
             for c in first["candidates"]}
    (work / "retrain_cost2" / "valid_predictions.npz").unlink()  # as if retrained before it existed
    res = run_module("pipeline.run", ["--workdir", str(work), "--param_costs", "0,2",
                                      "--cost_tolerance", "0se", "--no_export", *FAST])
    assert res.returncode == 0, res.stderr[-3000:]
    paired = read_json(work / "param_cost_selection.json")
    assert paired["tolerance"] == "0se" and "DeLong" in paired["rule"]
    assert "gap / SE" in res.stdout
    for c in paired["candidates"]:  # the missing file was recomputed from model.keras
        z = np.load(f"{c['retrain_dir']}/valid_predictions.npz")
        np.testing.assert_allclose(z["probabilities"], saved[c["retrain_dir"]], atol=1e-6)
        assert abs(c["valid_auc_exact"] - c["best_valid_auc"]) < 0.01
    exact = [c["valid_auc_exact"] for c in paired["candidates"]]
    best = int(np.argmax(exact))
    assert [c["valid_gap"] for c in paired["candidates"]] == pytest.approx(
        [max(exact) - a for a in exact])
    assert paired["candidates"][best]["valid_gap_se"] == 0.0
    assert paired["candidates"][1 - best]["valid_gap_se"] > 0
    assert paired["chosen"] == best  # 0 standard errors: the best, whatever its size

    # the export follows the choice: a new version when it changed, the same one otherwise
    def exported():
        versions = sorted((work / "exports" / "fixture").iterdir(), key=lambda p: int(p.name))
        return [read_json(v / "assets.extra" / "export.json")["model_dir"] for v in versions]

    costly_dir = str((work / "retrain_cost2").resolve())
    chosen_first = str((work / ("retrain_cost0", "retrain_cost2")[first_choice]).resolve())
    assert exported() == ([chosen_first] if first_choice == 1 else [chosen_first, costly_dir])
    res = run_module("pipeline.run", ["--workdir", str(work), "--param_costs", "0,2",
                                      "--cost_tolerance", "1", *FAST])
    assert res.returncode == 0, res.stderr[-3000:]
    assert exported()[-1] == costly_dir and len(exported()) == (1 if first_choice == 1 else 2)


def test_run_refuses_bad_param_costs_before_starting(tmp_path):
    work = tmp_path / "never"
    res = run_module("pipeline.run", ["--workdir", str(work), "--param_costs", "0.01,x", *FAST])
    assert res.returncode == 2
    assert "--param_costs: 'x' is not a number" in res.stderr
    res = run_module("pipeline.run", ["--workdir", str(work), "--param_costs", "0.01",
                                      "--cost_tolerance", "-1", *FAST])
    assert res.returncode == 2 and "--cost_tolerance must be >= 0" in res.stderr
    res = run_module("pipeline.run", ["--workdir", str(work), "--param_costs", "0.01",
                                      "--cost_tolerance", "one", *FAST])
    assert res.returncode == 2 and "a number or <K>se (e.g. 1se), got 'one'" in res.stderr
    res = run_module("pipeline.run", ["--workdir", str(work), *FAST])  # no data, no --input
    assert res.returncode == 2 and "--dataset and --input are required" in res.stderr
    assert not work.exists()


def test_run_with_search_embeddings_searches_each_and_keeps_the_best_validated(tmp_path):
    ids, labels = random_split_data(6000, VOCAB, seed=3)
    write_dataset(tmp_path / "data", ids, labels, VOCAB)
    res = run_module("pipeline.run", ["--workdir", str(tmp_path), "--param_costs", "0.5",
                                      "--search_embeddings", "raw,ad2", "--no_export", *FAST])
    assert res.returncode == 0, res.stderr[-3000:]
    selection = read_json(tmp_path / "param_cost_selection.json")
    raw, ad2 = selection["candidates"]
    assert [raw["search_embedding"], ad2["search_embedding"]] == ["raw", "ad2"]
    # the preset's own embedding keeps the plain names; the other one is prefixed
    assert raw["search_dir"].endswith("/search_cost0.5")
    assert ad2["search_dir"].endswith("/search_ad2_cost0.5")
    assert ad2["retrain_dir"].endswith("/retrain_ad2_cost0.5")
    for c, unify, norm in ((raw, "zero_pad", "none"), (ad2, "linear", "batchnorm_affine")):
        model = read_json(f"{c['search_dir']}/config.json")["config"]["model"]
        assert (model["unify"], model["candidate_norm"]) == (unify, norm)
        assert (c["unify"], c["candidate_norm"]) == (unify, norm)
        assert (
            read_json(f"{c['retrain_dir']}/metrics.json")["best_valid_auc"] == c["best_valid_auc"]
        )
    assert raw["dims"] != ad2["dims"] or raw["best_valid_auc"] != ad2["best_valid_auc"]
    best = max((0, 1), key=lambda i: selection["candidates"][i]["best_valid_auc"])
    assert selection["chosen"] == best
    assert read_json(tmp_path / "summary.json")["autodim"]["test_auc"] == \
        selection["candidates"][best]["test_auc"]
    assert "embedding" in res.stdout and "<- chosen (validation)" in res.stdout


def test_run_refuses_bad_search_embeddings_before_starting(tmp_path):
    work = tmp_path / "never"
    res = run_module("pipeline.run", ["--workdir", str(work), "--search_embeddings", "raw",
                                      *FAST])
    assert res.returncode == 2 and "--search_embeddings needs --param_costs" in res.stderr
    res = run_module("pipeline.run", ["--workdir", str(work), "--param_costs", "0.05",
                                      "--search_embeddings", "raw,bn", *FAST])
    assert res.returncode == 2 and "--search_embeddings: unknown 'bn'" in res.stderr
    assert not work.exists()
