"""The parameter cost chosen on validation (pipeline/tuning.py) and `pipeline.run --param_costs`."""
import pytest

from configs.loader import ConfigError
from pipeline.tuning import choose, cost_label, format_selection, parse_costs, parse_embeddings
from tests.fixtures import random_split_data, read_json, run_module, write_dataset

VOCAB = [300, 200, 20, 10, 100]
FAST = ["--quiet", "--fde_dim", "4",
        "--set", "search.batch_size=200", "--set", "search.pretrain_steps=10",
        "--set", "search.search_steps=40", "--set", "search.checkpoint_every=20",
        "--set", "search.steps_per_call=5",
        "--set", "retrain.batch_size=200", "--set", "retrain.max_epochs=2",
        "--set", "retrain.checkpoint_every=20", "--set", "retrain.steps_per_call=5"]


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


def test_parse_costs_accepts_numbers_and_names_the_bad_item():
    assert parse_costs("0.01, 0.05") == (0.01, 0.05)
    assert parse_costs("0") == (0.0,)
    assert [cost_label(c) for c in parse_costs("0,0.05,1e-3")] == ["0", "0.05", "0.001"]
    for bad, words in (("0.01,abc", "'abc' is not a number"), ("-1", "'-1' must be"),
                       ("nan", "'nan' must be"), ("0.1,0.1", "'0.1' is given twice"),
                       ("0.1,", "'' is not a number")):
        with pytest.raises(ConfigError, match=words):
            parse_costs(bad)


def test_parse_embeddings_names_the_bad_item():
    assert parse_embeddings("raw, ad2") == ("raw", "ad2")
    for bad, words in (("raw,linear", "unknown 'linear'; known: raw, ad2"),
                       ("ad2,ad2", "'ad2' is given twice"), ("", "unknown ''")):
        with pytest.raises(ConfigError, match=words):
            parse_embeddings(bad)


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
        assert read_json(f"{c['retrain_dir']}/metrics.json")["best_valid_auc"] == c["best_valid_auc"]
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
