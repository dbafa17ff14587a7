"""The transfer benchmark (the paper's Table 3): its table, its refusals, its clean skip, and one
tiny end-to-end run on synthetic data (search on FM, retrained on two other backbones, resumed)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import quality, transfer
from tests.fixtures import random_dataset_dir


def run(seed, auc, params, logloss=0.5, dims=None):
    return {"seed": seed, "test_auc": auc, "test_logloss": logloss, "params": params,
            "dims": dims or {}}


def cells(line):
    return [c.strip() for c in line.split("|")[1:-1]]


def test_table_has_the_papers_shape_and_pairs_each_seed_with_its_fde_run():
    results = {
        ("ml", "nfm"): {
            "fde8": [run(0, 0.70, 100), run(1, 0.72, 100)],
            "fde32": [run(0, 0.80, 400), run(1, 0.76, 400)],
            # seed 0: +0.01 over FDE-32, seed 1: +0.03
            "from_fm": [run(1, 0.79, 200, dims={"a": 8, "b": 2}),
                        run(0, 0.81, 200, dims={"a": 2, "b": 16})],
            "from_deepfm": [run(0, 0.75, 100, 0.6)],
        },
        ("frappe", "deepfm"): {
            "fde32": [run(0, 0.90, 800, 0.3)],
            "from_deepfm": [run(0, 0.89, 200, 0.31, {"x": 8})],
        },
    }
    lines = transfer.summarise(results, ("fm", "deepfm"), frontier_dims=(8, 32))
    split = lines.index("")
    paper, detail = lines[:split], lines[split + 1:]
    assert cells(paper[0]) == ["model", "ml AUC", "ml logloss", "frappe AUC", "frappe logloss"]
    rows = {cells(line)[0]: cells(line)[1:] for line in paper[2:]}
    assert list(rows) == ["NFM (FDE-32)", "NFM+AD (FM)", "NFM+AD (DeepFM)", "DeepFM (FDE-32)",
                          "DeepFM+AD (DeepFM) (own search)"]
    assert rows["NFM (FDE-32)"] == ["0.7800 ± 0.0200", "0.5000 ± 0.0000", "", ""]
    assert rows["NFM+AD (FM)"][0] == "0.8000 ± 0.0100"
    # one seed: the mean alone
    assert rows["DeepFM+AD (DeepFM) (own search)"] == ["", "", "0.8900", "0.3100"]
    by = {(c[0], c[2]): c for c in map(cells, detail[2:])}
    fm = by[("ml", "NFM+AD (FM)")]
    assert fm[3] == "0.8000 ± 0.0100" and fm[5] == "200" and fm[6] == "50.0%"
    assert fm[7] == "+0.0200 ± 0.0100" and fm[8] == "2/2"  # paired by seed, not by order
    # frontier at 200 params: log-midpoint of (100, 0.71) and (400, 0.78) = 0.745
    assert float(fm[9]) == pytest.approx(0.80 - 0.745, abs=1e-4)
    assert fm[10] == "2 16"  # seed 0's dims, whatever the order of the runs
    deep = by[("ml", "NFM+AD (DeepFM)")]
    assert deep[7] == "-0.0500" and deep[8] == "0/1" and deep[6] == "25.0%"
    assert by[("ml", "FDE-8")][7:10] == ["", "", ""]
    # one FDE point is no frontier: the column stays empty
    assert by[("frappe", "DeepFM+AD (DeepFM) (own search)")][9] == ""


def test_paired_delta_ignores_seeds_without_a_baseline():
    deltas, wins = transfer.paired_delta([run(0, 0.8, 1), run(2, 0.7, 1)],
                                         [run(0, 0.75, 1), run(1, 0.9, 1)])
    assert deltas.tolist() == pytest.approx([0.05]) and wins == 1


def test_skips_without_data_and_refuses_bad_flags_before_running(tmp_path, capsys):
    assert transfer.main(["--data_root", str(tmp_path / "absent"),
                          "--workdir", str(tmp_path / "w")]) == 0
    assert "skipped: data root" in capsys.readouterr().out
    assert not (tmp_path / "w").exists()
    root = tmp_path / "root"
    root.mkdir()
    foreign = tmp_path / "notes.md"
    foreign.write_text("my notes\n")
    bad = [(["--backbones", "wide_deep,mlp"], "--backbones: unknown ['mlp']"),
           (["--search_backbones", ""], "--search_backbones is empty"),
           (["--datasets", "movielens-1m"], "--datasets: unknown ['movielens-1m']"),
           (["--seeds", "0,x"], "--seeds must be comma-separated ints, got '0,x'"),
           (["--frontier", "0,32"], "--frontier dimensions must be positive"),
           (["--output", str(foreign)], f"--output {foreign} exists and was not written by")]
    for flags, message in bad:
        with pytest.raises(SystemExit) as exc:
            transfer.main(["--data_root", str(root), "--workdir", str(tmp_path / "w"), *flags])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
    assert foreign.read_text() == "my notes\n" and not (tmp_path / "w").exists()


TINY = ["search.batch_size=200", "search.pretrain_steps=4", "search.search_steps=12",
        "retrain.batch_size=200", "retrain.max_epochs=1", "model.mlp_units=[8]"]


def test_end_to_end_fm_dims_retrained_on_other_backbones_and_resumed(tmp_path_factory,
                                                                    monkeypatch, capsys):
    """One seed of synthetic data: FM's AutoDim search (quality's `autodim` run layout), NFM
    retrained with its dims and at FDE-2/4; a rerun trains nothing and writes the same table."""
    data = random_dataset_dir(tmp_path_factory, "transfer", 800, [40, 30, 20, 10], seed=4)
    root = tmp_path_factory.mktemp("root")
    (root / "raw.txt").write_text("x")
    work = tmp_path_factory.mktemp("work")
    monkeypatch.setitem(quality.INPUTS, "fixture", "raw.txt")
    monkeypatch.setattr(quality, "preprocess", lambda data_root, w, dataset: data)
    argv = ["--data_root", str(root), "--datasets", "fixture", "--search_backbones", "fm",
            "--backbones", "nfm", "--seeds", "0", "--frontier", "2,4",
            "--workdir", str(work), *[a for s in TINY for a in ("--set", s)]]
    assert transfer.main(argv) == 0
    out = (work / "transfer.md").read_text()
    assert out.startswith(transfer.TITLE) and "python -m benchmarks.transfer " in out
    searched = json.loads((work / "fixture" / "fm" / "seed0" / "autodim" / "search" /
                           "dims.json").read_text())
    metrics = {}
    for target in ("nfm",):
        m = json.loads((work / "fixture" / target / "seed0" / "transfer_fm" /
                        "metrics.json").read_text())
        assert m["backbone"] == target
        assert m["dims"] == {f: searched["fields"][f]["dim"] for f in m["dims"]}
        metrics[target] = m
        for d in (2, 4):
            fde = json.loads((work / "fixture" / target / "seed0" / f"fde{d}" /
                              "metrics.json").read_text())
            assert set(fde["dims"].values()) == {d}
    rows = {(c[1], c[2]): c for c in map(cells, out.splitlines()) if len(c) == 11}
    nfm = rows[("NFM", "NFM+AD (FM)")]
    assert nfm[3] == f"{metrics['nfm']['test_auc']:.4f}"
    assert nfm[5] == f"{metrics['nfm']['params']:,}" and nfm[9] != ""
    stamps = sorted((p, p.stat().st_mtime_ns) for p in work.rglob("metrics.json"))
    assert len(stamps) == 4  # fm's own run, NFM's transfer, FDE-2 and FDE-4
    capsys.readouterr()
    assert transfer.main(argv) == 0
    assert sorted((p, p.stat().st_mtime_ns) for p in work.rglob("metrics.json")) == stamps
    assert (work / "transfer.md").read_text() == out
    saved = json.loads((work / "transfer.json").read_text())
    assert np.isclose(saved["fixture|nfm"]["from_fm"][0]["test_auc"], metrics["nfm"]["test_auc"])
