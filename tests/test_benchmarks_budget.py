"""benchmarks.budget's table and frontier logic on fake runs, and its clean skip."""
import numpy as np
import pytest

from benchmarks import budget as bench


def _fde(params, auc):
    return {"params": params, "test_auc": auc}


def _auto(params, auc, budget):
    return {"params": params, "test_auc": auc, "budget": {"params": budget}}


def test_the_table_compares_each_budget_with_the_frontier_at_its_size():
    results = {("ml", "fm"): {
        "fde2": [_fde(1000, 0.70), _fde(1000, 0.72)],
        "fde8": [_fde(4000, 0.78), _fde(4000, 0.78)],
        "fde32": [_fde(16000, 0.80), _fde(16000, 0.80)],
        "budget10": [_auto(1500, 0.75, 1600), _auto(1580, 0.77, 1600)],
        "budget50": [_auto(7900, 0.80, 8000), _auto(7700, 0.81, 8000)],
    }}
    lines = bench.summarise(results, budgets=(0.1, 0.25, 0.5), frontier_dims=(2, 8, 32))
    rows = {line.split(" | ")[2]: line for line in lines[2:]}
    assert set(rows) == {"FDE-2", "FDE-8", "FDE-32", "AutoDim, 10% of FDE-32",
                         "AutoDim, 50% of FDE-32"}  # no 25% runs: no row
    # 10%: mean params 1540, frontier 0.71 -> 0.78 over log(1000)..log(4000)
    f10 = 0.71 + 0.07 * np.log(1540 / 1000) / np.log(4)
    cells = rows["AutoDim, 10% of FDE-32"].split(" | ")
    assert cells[3] == "1,600" and cells[4] == "1,540 (96.2%, max 98.8%)"
    assert cells[5] == "0.7600 ± 0.0100"
    assert cells[6] == f"{f10:.4f}" and cells[7] == f"{0.76 - f10:+.4f}"
    f50 = 0.78 + 0.02 * np.log(7800 / 4000) / np.log(4)
    cells = rows["AutoDim, 50% of FDE-32"].split(" | ")
    assert cells[7] == f"{0.805 - f50:+.4f}"
    assert rows["FDE-2"].split(" | ")[5] == "0.7100 ± 0.0100"


def test_budget_labels_and_a_missing_data_root(tmp_path, capsys):
    assert [bench.budget_label(r) for r in (0.1, 0.25, 0.5)] == [
        "budget10", "budget25", "budget50"]
    out = tmp_path / "table.md"
    assert bench.main(["--data_root", str(tmp_path / "none"), "--output", str(out)]) == 0
    assert "skipped" in capsys.readouterr().out and not out.exists()
    with pytest.raises(SystemExit):
        bench.main(["--data_root", str(tmp_path), "--budgets", "0.1,1.5"])
