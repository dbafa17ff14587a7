"""Budget benchmark: AutoDim under a hard memory budget against the FDE frontier.

    python -m benchmarks.budget --data_root DATA_ROOT [--datasets movielens-100k,frappe]
        [--backbones fm,wide_deep,deepfm] [--seeds 0,1,2] [--budgets 0.1,0.25,0.5]
        [--frontier 2,4,8,16,32] [--workdir runs/quality] [--output runs/budget.md]

For each seed (all datasets and backbones of seed 0 first, then seed 1, ...), dataset and
backbone: FDE at every `--frontier` dimension (benchmarks.quality's `one_run`, in its workdir
layout, so a shared --workdir reuses FDE runs that benchmarks.quality finished) and AutoDim searched
with `search.budget_ratio` = each budget (a share of FDE at the largest candidate, 32: FDE-32),
then retrained. The table gives, per budget, the achieved embedding parameters (never above the
budget), the test AUC (mean ± std over the seeds run) and its difference from the FDE frontier
(FDE test AUC interpolated in log params at the achieved size, as benchmarks.quality's
'vs FDE frontier'). Resumable: finished runs are read back, not rerun. Skips cleanly without data.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import check_output, write_output
from configs.cli import StrictArgumentParser

BUDGETS = (0.1, 0.25, 0.5)
FRONTIER = (2, 4, 8, 16, 32)
TITLE = "## Memory budget (benchmarks.budget)"


def budget_label(ratio: float) -> str:
    return f"budget{round(100 * ratio):g}"


def fde_run(data: Path, run_dir: Path, dataset: str, backbone: str, seed: int, dim: int,
            extra_sets: list[str]) -> dict:
    """FDE-dim (benchmarks.quality's run, reused when finished)."""
    done = run_dir / "metrics.json"
    if done.exists():
        return json.loads(done.read_text(encoding="utf-8"))
    from benchmarks.quality import one_run

    return one_run(data, run_dir, dataset, backbone, seed, f"fde{dim}", extra_sets)


def budget_run(data: Path, run_dir: Path, dataset: str, backbone: str, seed: int, ratio: float,
               extra_sets: list[str]) -> dict:
    """A search with search.budget_ratio = ratio, retrained; its metrics with dims.json's
    "budget" under "budget"."""
    done = run_dir / "retrain" / "metrics.json"
    if not done.exists():
        from benchmarks.quality import one_run

        one_run(data, run_dir, dataset, backbone, seed, "autodim",
                [*extra_sets, f"search.budget_ratio={ratio}"])
    m = json.loads(done.read_text(encoding="utf-8"))
    dims = json.loads((run_dir / "search" / "dims.json").read_text(encoding="utf-8"))
    m["budget"] = dims["budget"]
    return m


def frontier_auc(points, params: float) -> float:
    from benchmarks.quality import frontier_auc as interp

    return interp(points, params)


def summarise(results: dict, budgets=BUDGETS, frontier_dims=FRONTIER) -> list[str]:
    """results[(dataset, backbone)] = {"fde<d>": [metrics per seed], "budget<pct>": [...]} ->
    markdown lines (one row per FDE dim and per budget)."""
    lines = ["| dataset | backbone | model | budget (params) | Params (share of budget) | "
             "test AUC | FDE frontier at Params | vs FDE frontier | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (dataset, backbone), by in results.items():
        frontier = [(float(np.mean([m["params"] for m in by[f"fde{d}"]])),
                     float(np.mean([m["test_auc"] for m in by[f"fde{d}"]])))
                    for d in frontier_dims if by.get(f"fde{d}")]
        for d in frontier_dims:
            runs = by.get(f"fde{d}")
            if runs:
                auc = np.array([m["test_auc"] for m in runs])
                lines.append(f"| {dataset} | {backbone} | FDE-{d} | – | "
                             f"{np.mean([m['params'] for m in runs]):,.0f} | "
                             f"{auc.mean():.4f} ± {auc.std():.4f} | – | – | {len(runs)} |")
        for ratio in budgets:
            runs = by.get(budget_label(ratio))
            if not runs:
                continue
            auc = np.array([m["test_auc"] for m in runs])
            params = float(np.mean([m["params"] for m in runs]))
            share = np.array([m["params"] / m["budget"]["params"] for m in runs])
            budget = runs[0]["budget"]["params"]
            front = vs = "–"
            if len(frontier) >= 2:
                f = frontier_auc(frontier, params)
                front, vs = f"{f:.4f}", f"{auc.mean() - f:+.4f}"
            lines.append(
                f"| {dataset} | {backbone} | AutoDim, {100 * ratio:g}% of FDE-{max(frontier_dims)}"
                f" | {budget:,} | {params:,.0f} ({100 * share.mean():.1f}%, max "
                f"{100 * share.max():.1f}%) | {auc.mean():.4f} ± {auc.std():.4f} | {front} | "
                f"{vs} | {len(runs)} |")
    return lines


def main(argv=None) -> int:
    parser = StrictArgumentParser(prog="python -m benchmarks.budget", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", required=True, help="holds movielens-100k/, frappe/")
    parser.add_argument("--datasets", default="movielens-100k,frappe")
    parser.add_argument("--backbones", default="fm,wide_deep,deepfm")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)),
                        help="shares of FDE at the largest candidate (0 < R <= 1)")
    parser.add_argument("--frontier", default=",".join(map(str, FRONTIER)),
                        help="FDE dimensions of the frontier")
    parser.add_argument("--workdir", default="runs/quality",
                        help="benchmarks.quality's layout (shared: FDE runs are reused)")
    parser.add_argument("--output", default="runs/budget.md", help="the markdown table")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config overrides for every run")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
        budgets = tuple(float(b) for b in args.budgets.split(",") if b)
        frontier = tuple(sorted(int(d) for d in args.frontier.split(",") if d))
    except ValueError:
        parser.error("--seeds, --budgets and --frontier are comma-separated numbers")
    if not budgets or any(not 0 < b <= 1 for b in budgets):
        parser.error(f"--budgets: shares in (0, 1], got {args.budgets!r}")
    if len(frontier) < 2 or min(frontier) < 1:
        parser.error(f"--frontier needs at least two positive dimensions, got {args.frontier!r}")
    from benchmarks.quality import INPUTS, data_root, preprocess

    check_output(parser, args.output, TITLE)
    root = data_root(args.data_root)
    if root is None:
        return 0
    work = Path(args.workdir)
    datasets = [d for d in args.datasets.split(",") if d]
    unknown = [d for d in datasets if d not in INPUTS]
    if unknown:
        parser.error(f"unknown datasets {unknown}; known: {sorted(INPUTS)}")
    present = []
    for dataset in datasets:
        if any(root.glob(INPUTS[dataset])):
            present.append(dataset)
        else:
            print(f"skipped {dataset}: no input under {root}")
    results: dict = {}
    for seed in seeds:  # every dataset and backbone at seed 0 first
        for dataset in present:
            data = preprocess(root, work, dataset)
            for backbone in args.backbones.split(","):
                base = work / dataset / backbone / f"seed{seed}"
                by = results.setdefault((dataset, backbone), {})
                for d in frontier:
                    t0 = time.monotonic()
                    m = fde_run(data, base / f"fde{d}", dataset, backbone, seed, d, args.set)
                    by.setdefault(f"fde{d}", []).append(m)
                    print(f"{dataset} {backbone} seed {seed} FDE-{d}: test AUC "
                          f"{m['test_auc']:.4f} params {m['params']:,} "
                          f"({time.monotonic() - t0:.0f}s)", flush=True)
                for ratio in budgets:
                    t0 = time.monotonic()
                    m = budget_run(data, base / budget_label(ratio), dataset, backbone, seed,
                                   ratio, args.set)
                    by.setdefault(budget_label(ratio), []).append(m)
                    print(f"{dataset} {backbone} seed {seed} budget {100 * ratio:g}%: test AUC "
                          f"{m['test_auc']:.4f} params {m['params']:,} of "
                          f"{m['budget']['params']:,} ({time.monotonic() - t0:.0f}s)",
                          flush=True)
                write_table(args, argv, results, budgets, frontier)
    print("\n".join(write_table(args, argv, results, budgets, frontier)))
    return 0


def write_table(args, argv, results, budgets, frontier) -> list[str]:
    """The markdown table so far, written atomically to --output (after every run group)."""
    command = "python -m benchmarks.budget " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    table = summarise(results, budgets, frontier)
    text = [TITLE, "", f"Command: `{command}`", "",
            "Test AUC: mean ± std over the seeds run; Params: embedding parameters of the "
            "retrained model (mean; share of the budget: mean and max over seeds); 'vs FDE "
            "frontier': AUC minus the FDE AUC interpolated in log params at Params.", "", *table,
            ""]
    write_output(Path(args.output), text)
    return table


if __name__ == "__main__":
    sys.exit(main())
