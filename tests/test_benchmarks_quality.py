"""The quality benchmark's arithmetic (frontier interpolation, the table) and its clean skip."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks import quality


def test_frontier_is_interpolated_in_log_params_and_flat_beyond_the_ends():
    points = [(100.0, 0.70), (400.0, 0.80)]
    assert quality.frontier_auc(points, 200.0) == pytest.approx(0.75)  # log-midpoint
    assert quality.frontier_auc(points, 50.0) == pytest.approx(0.70)
    assert quality.frontier_auc(points, 1000.0) == pytest.approx(0.80)


def run(auc, params, dims=None):
    return {"test_auc": auc, "test_logloss": 0.5, "params": params, "dims": dims or {}}


def test_table_reports_means_shares_frontier_gaps_and_dims_correlation():
    results = {
        ("ml", "deepfm"): {
            "fde2": [run(0.70, 100), run(0.72, 100)],
            "fde8": [run(0.80, 400), run(0.80, 400)],
            "autodim": [
                run(0.78, 200, {"a": 2, "b": 8, "c": 4}),
                run(0.76, 200, {"a": 2, "b": 16, "c": 8}),
            ],
        }
    }
    lines = quality.summarise(results, frontier_dims=(2, 8))
    rows = {
        line.split("|")[3].strip(): [c.strip() for c in line.split("|")[1:-1]] for line in lines[2:]
    }
    assert set(rows) == {"fde2", "fde8", "autodim"}
    ad = rows["autodim"]
    assert ad[3] == "0.7700 ± 0.0100"
    assert ad[5] == "200" and ad[6] == "50.0%"
    # frontier at 200 params: log-midpoint of (100, 0.71) and (400, 0.80) = 0.755
    assert float(ad[7]) == pytest.approx(0.77 - 0.755, abs=1e-4)
    assert ad[8] == "2 8 4"
    assert float(ad[9]) == pytest.approx(np.corrcoef([2, 8, 4], [2, 16, 8])[0, 1], abs=0.01)


def test_missing_data_root_skips_and_bad_frontier_is_refused(tmp_path, capsys):
    assert quality.main(["--data_root", str(tmp_path / "absent")]) == 0
    assert "skipped" in capsys.readouterr().out
    (tmp_path / "root").mkdir()
    with pytest.raises(SystemExit):
        quality.main(["--data_root", str(tmp_path / "root"), "--frontier", "8"])
    with pytest.raises(SystemExit):
        quality.main(["--data_root", str(tmp_path / "root"), "--methods", "fde4"])


def test_autodim_validated_reuses_the_same_seeds_autodim_search(tmp_path):
    """autodim_validated copies the finished autodim search of its seed (then only re-derives);
    without one, or when its own search exists, nothing is copied."""
    seed_dir = tmp_path / "frappe" / "deepfm" / "seed0"
    target = seed_dir / "autodim_validated"
    assert not quality.reuse_search(target)  # no autodim search yet: it searches itself
    search = seed_dir / "autodim" / "search"
    (search / "ckpt").mkdir(parents=True)
    (search / "ckpt" / "ckpt-10.index").write_bytes(b"weights")
    assert not quality.reuse_search(target)  # unfinished (no dims.json): not copied
    (search / "dims.json").write_text('{"fields": {}}')
    assert quality.reuse_search(target)
    assert (target / "search" / "ckpt" / "ckpt-10.index").read_bytes() == b"weights"
    assert (target / "search" / "dims.json").read_text() == '{"fields": {}}'
    (search / "dims.json").write_text("changed")
    assert not quality.reuse_search(target)  # its own copy is kept once made
    assert (target / "search" / "dims.json").read_text() == '{"fields": {}}'
    assert "autodim_validated" in quality.SEARCHED


def test_autodim_tuned_reuses_the_same_seeds_autodim_run_at_the_preset_cost(tmp_path, capsys):
    """autodim_tuned copies the finished autodim search and retraining of its seed as its
    candidate at the preset's cost; not when the cost is not a candidate, the autodim run is
    unfinished, or its own copy exists. Bad --tune_costs are refused."""
    seed_dir = tmp_path / "frappe" / "fm" / "seed1"
    target = seed_dir / "autodim_tuned"
    source = seed_dir / "autodim"
    (source / "search").mkdir(parents=True)
    (source / "search" / "dims.json").write_text("dims")
    (source / "retrain").mkdir()
    assert not quality.reuse_for_tuning(target, 0.05, (0.01, 0.05))  # retrain unfinished
    (source / "retrain" / "metrics.json").write_text("metrics")
    assert not quality.reuse_for_tuning(target, 0.05, (0.01, 0.02))  # not a candidate
    assert quality.reuse_for_tuning(target, 0.05, (0.01, 0.05))
    assert (target / "search_cost0.05" / "dims.json").read_text() == "dims"
    assert (target / "retrain_cost0.05" / "metrics.json").read_text() == "metrics"
    assert not (target / "search_cost0.01").exists()
    (source / "search" / "dims.json").write_text("changed")
    assert not quality.reuse_for_tuning(target, 0.05, (0.01, 0.05))
    assert (target / "search_cost0.05" / "dims.json").read_text() == "dims"
    (tmp_path / "root").mkdir()
    with pytest.raises(SystemExit):
        quality.main(["--data_root", str(tmp_path / "root"), "--tune_costs", "0.01,abc"])
    assert "--tune_costs: 'abc' is not a number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quality.main(["--data_root", str(tmp_path / "root"), "--tune_tolerance", "1sd"])
    assert "--tune_tolerance must be a number or <K>se (e.g. 1se), got '1sd'" in \
        capsys.readouterr().err


def _dims_json(dims):
    names = [f"f{i}" for i in range(len(dims))]
    return {"dataset": "ml", "schema_hash": "h", "backbone": "fm", "candidate_dims": [2, 8, 16],
            "field_order": names, "config_hash": "c", "steps": 1,
            "fields": {n: {"dim": d, "probabilities": [0.2, 0.3, 0.5], "vocab_size": 10}
                       for n, d in zip(names, dims)}}


def test_autodim_consensus_reads_the_seeds_autodim_searches_and_reports_them(tmp_path):
    """autodim_consensus's dims.json is the consensus of the seeds' `autodim` search dims (none
    searched again when present); its table row shows single / consensus / tuned against the
    frontier and the seeds' correlations."""
    import json

    backbone_dir = tmp_path / "ml" / "fm"
    seeds_dims = {0: [2, 8, 16, 16], 1: [8, 8, 2, 16], 2: [16, 8, 8, 2]}
    for seed, dims in seeds_dims.items():
        search = backbone_dir / f"seed{seed}" / "autodim" / "search"
        search.mkdir(parents=True)
        (search / "dims.json").write_text(json.dumps(_dims_json(dims)))
    path = quality.consensus_dims(tmp_path, backbone_dir, "movielens-100k", "fm", [0, 1, 2], [])
    assert path == backbone_dir / "consensus_seeds0-1-2" / "dims.json"
    rec = json.loads(path.read_text())
    assert [rec["fields"][f"f{i}"]["dim"] for i in range(4)] == [8, 8, 8, 16]
    c = rec["consensus"]
    assert c["pearson"]["seed0/seed1"] == pytest.approx(
        np.corrcoef(seeds_dims[0], seeds_dims[1])[0, 1])

    results = {("ml", "fm"): {
        "fde8": [run(0.70, 100)], "fde16": [run(0.80, 400)],
        "autodim": [run(0.76, 200, {"a": 8})],
        "autodim_consensus": [dict(run(0.77, 200, {"a": 8}), consensus=c)],
    }}
    lines = quality.summarise(results, frontier_dims=(8, 16))
    row = [x.strip() for x in lines[-1].split("|")[1:-1]]
    # frontier at 200 params: log-midpoint of (100, 0.70) and (400, 0.80) = 0.75
    assert row[:5] == ["ml", "fm", "0.7600 @ 200 (+0.0100)", "0.7700 @ 200 (+0.0200)", ""]
    assert row[5].startswith(f"{c['pearson']['mean']:.2f} (")
    assert row[6] == f"{c['spearman']['mean']:.2f}"


def test_dims_are_compared_by_field_name_whatever_order_a_run_lists_them():
    """A fresh retraining returns dims in schema order, a resumed one (metrics.json) sorted: the
    table's dims and their correlation must not depend on which."""
    results = {("ml", "fm"): {
        "fde2": [run(0.70, 100)], "fde8": [run(0.80, 400)],
        "autodim": [run(0.78, 200, {"b": 8, "a": 2, "c": 4}),
                    run(0.76, 200, {"a": 2, "b": 16, "c": 8})]}}
    lines = quality.summarise(results, frontier_dims=(2, 8))
    row = [c.strip() for c in lines[-1].split("|")[1:-1]]
    assert row[8] == "2 8 4"
    assert float(row[9]) == pytest.approx(np.corrcoef([2, 8, 4], [2, 16, 8])[0, 1], abs=0.01)
