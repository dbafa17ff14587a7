"""The per-field ablation benchmark: grid parsing, the table's arithmetic, a run end to end on a
small dataset (overrides applied, FDE beside them, finished runs reused) and its refusals."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks import ablation
from benchmarks.quality import frontier_auc
from tests.fixtures import random_dataset_dir, read_json

VOCAB = [40, 300, 12, 6]
FAST = ["retrain.batch_size=200", "retrain.max_epochs=2", "retrain.checkpoint_every=10",
        "retrain.steps_per_call=5"]


def test_grid_is_parsed_into_every_combination_and_bad_entries_are_refused():
    grid = ablation.parse_grid(["f1=16,8,8", "f0=2"])
    assert grid == [("f1", [8, 16]), ("f0", [2])]
    assert ablation.combinations(grid) == [{"f1": 8, "f0": 2}, {"f1": 16, "f0": 2}]
    assert ablation.combinations([]) == [{}]
    assert ablation.variant_label("fde:32", {}) == "fde32__as_is"
    assert ablation.variant_label("fde:32", {"f1": 8, "f0": 2}) == "fde32__f0=2__f1=8"
    # fields that run into their values stay apart (Criteo's C1..C26)
    assert ablation.variant_label("fde:32", {"C1": 16}) != ablation.variant_label(
        "fde:32", {"C11": 6}
    )
    assert ablation.base_label("runs/s{seed}/dims.json").startswith("dims_")
    for bad, message in (("f1", "expected FIELD=D1,D2"), ("f1=a", "must be integers"),
                         ("f1=", "one or more positive"), ("f1=0,8", "one or more positive")):
        with pytest.raises(ValueError, match=message):
            ablation.parse_grid([bad])
    with pytest.raises(ValueError, match="given twice"):
        ablation.parse_grid(["f1=8", "f1=16"])


def m(auc, params):
    return {"test_auc": auc, "params": params}


def test_table_gives_the_mean_point_and_the_per_seed_distances():
    # the seeds' own FDE curves differ: seed 0's is 0.75 at 200 params, seed 1's 0.71
    fde = {8: [m(0.70, 100), m(0.68, 100)], 32: [m(0.80, 400), m(0.74, 400)]}
    variants = {"fde:32 with a=8": [m(0.77, 200), m(0.72, 200)]}
    lines = ablation.summarise(fde, variants, (8, 32))
    row = [c.strip() for c in lines[-1].split("|")[1:-1]]
    assert row[0] == "fde:32 with a=8"
    assert row[1] == f"0.7450 ± {np.std([0.77, 0.72], ddof=1):.4f}"
    assert row[2] == "200" and row[3] == "50.0%"
    # mean frontier at 200 params: log-midpoint of (100, 0.69) and (400, 0.77) = 0.73
    assert float(row[4]) == pytest.approx(0.745 - 0.73, abs=1e-4)
    # per seed, each against its own curve: 0.77 - 0.75 = +0.02 and 0.72 - 0.71 = +0.01
    # (against the mean curve, or with the seeds crossed, these would be +0.04 / -0.01)
    gap, se = row[5].split(" ± ")
    assert float(gap) == pytest.approx(0.015, abs=1e-4)
    assert float(se) == pytest.approx(np.std([0.02, 0.01], ddof=1) / np.sqrt(2), abs=1e-4)
    assert [line.split("|")[1].strip() for line in lines[2:4]] == ["FDE-8", "FDE-32"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return random_dataset_dir(tmp_path_factory, "ablation_data", 3000, VOCAB, seed=11)


def test_ablation_runs_overrides_beside_fde_and_reuses_finished_runs(small_data, tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "table.md"
    args = [
        "--data_dir",
        str(small_data),
        "--grid",
        "f1=2,8",
        "--base",
        "fde:4",
        "--frontier",
        "4,8",
        "--backbone",
        "fm",
        "--seeds",
        "0",
        "--workdir",
        str(work),
        "--output",
        str(out),
        *[x for s in FAST for x in ("--set", s)],
    ]
    assert ablation.main(args) == 0
    seed_dir = work / "fixture" / "fm" / "seed0"
    runs = {d: read_json(seed_dir / "ablation" / f"fde4__f1={d}" / "metrics.json") for d in (2, 8)}
    fde = {d: read_json(seed_dir / f"fde{d}" / "metrics.json") for d in (4, 8)}
    for d, run in runs.items():
        assert run["dims"] == {"f0": 4, "f1": d, "f2": 4, "f3": 4}
        assert run["params"] == 4 * sum(VOCAB) + (d - 4) * VOCAB[1]
    table = out.read_text()
    assert "Command: `python -m benchmarks.ablation --data" in table
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines() if line.startswith("| F") or line.startswith("| fde")}
    assert rows["FDE-4"][0].startswith(f"{fde[4]['test_auc']:.4f}")
    row = rows["fde:4 with f1=8"]
    assert row[0].startswith(f"{runs[8]['test_auc']:.4f}")
    expected = runs[8]["test_auc"] - frontier_auc(
        [(fde[d]["params"], fde[d]["test_auc"]) for d in (4, 8)], runs[8]["params"])
    assert float(row[3]) == pytest.approx(expected, abs=1e-4)
    saved = read_json(out.with_suffix(".json"))
    assert saved["variants"]["fde:4 with f1=8"][0]["test_auc"] == runs[8]["test_auc"]
    # a rerun trains nothing: every run is finished, so the same table comes back
    stamps = {p: p.stat().st_mtime_ns for p in seed_dir.rglob("metrics.json")}
    capsys.readouterr()
    assert ablation.main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in seed_dir.rglob("metrics.json")} == stamps
    assert out.read_text().split("\n", 3)[3] == table.split("\n", 3)[3]
    # without --grid the base itself is retrained: fde:4 again, in its own directory, gives
    # FDE-4's result exactly (same seed and config: retraining is deterministic)
    same = [a for a in args if a not in ("--grid", "f1=2,8")]
    assert ablation.main(same) == 0
    again = read_json(seed_dir / "ablation" / "fde4__as_is" / "metrics.json")
    assert again["params"] == fde[4]["params"]
    assert again["test_auc"] == pytest.approx(fde[4]["test_auc"], abs=1e-9)
    row = [line for line in out.read_text().splitlines() if line.startswith("| fde:4 |")]
    assert row and row[0].split("|")[5].strip() == "+0.0000"


def test_a_dims_json_base_is_per_seed_and_keeps_its_search_backbone(small_data, tmp_path):
    import json

    from configs.features import DataSchema

    schema = DataSchema.load(small_data)
    dims = {"f0": 2, "f1": 16, "f2": 4, "f3": 8}
    base = tmp_path / "s0" / "dims.json"
    base.parent.mkdir()
    base.write_text(
        json.dumps(
            {
                "dataset": schema.dataset,
                "schema_hash": schema.schema_hash,
                "backbone": "fm",
                "fields": {k: {"dim": v} for k, v in dims.items()},
            }
        )
    )
    work = tmp_path / "work"
    args = ["--data_dir", str(small_data), "--base", str(tmp_path / "s{seed}" / "dims.json"),
            "--grid", "f2=32", "--frontier", "4,8", "--seeds", "0", "--workdir", str(work),
            *[x for s in FAST for x in ("--set", s)]]
    assert ablation.main(args) == 0
    # no --backbone: the search's (fm), not the default preset's
    runs = list((work / "fixture" / "fm" / "seed0" / "ablation").glob("dims_*__f2=32/metrics.json"))
    assert len(runs) == 1
    m = read_json(runs[0])
    assert m["backbone"] == "fm" and m["dims"] == {**dims, "f2": 32}


def test_bad_fields_bases_and_missing_data_are_refused_or_skipped(small_data, tmp_path, capsys):
    work = tmp_path / "work"
    base = ["--data_dir", str(small_data), "--workdir", str(work), "--seeds", "0"]
    assert ablation.main([*base, "--grid", "nope=8"]) == 2
    assert "no field 'nope'" in capsys.readouterr().err
    assert ablation.main([*base, "--grid", "f1=8", "--base", str(tmp_path / "s{seed}.json")]) == 2
    assert "s0.json" in capsys.readouterr().err
    assert not work.exists()  # nothing trained
    with pytest.raises(SystemExit):
        ablation.main([*base, "--grid", "f1=8", "--frontier", "8"])
    assert ablation.main(["--data_root", str(tmp_path / "absent"), "--grid", "user=8"]) == 0
    assert "skipped" in capsys.readouterr().out
