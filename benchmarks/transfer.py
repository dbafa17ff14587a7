"""Transfer benchmark (the paper's Table 3): dimensions searched on one backbone, retrained on
others.

    python -m benchmarks.transfer --data_root DATA_ROOT [--datasets movielens-100k,frappe]
        [--search_backbones fm,deepfm] [--backbones wide_deep,deepfm,nfm,ipnn,autoint,dcn_v2]
        [--seeds 0,1,2] [--frontier 8,16,32] [--workdir runs/quality] [--output FILE]

For each seed, dataset and search backbone S: the dataset preset's AutoDim search on S (and its
retraining on S), exactly benchmarks.quality's `autodim` run, in the same layout
(WORKDIR/NAME/S/seedK/autodim); then every target backbone B retrained with those dimensions
(`pipeline.retrain --dims` of that search's dims.json, in WORKDIR/NAME/B/seedK/transfer_S; B = S
is S's own AutoDim run), against B at FDE-D for the --frontier dimensions (benchmarks.quality's
`fdeD` runs). The paper's Table 3 compares Model (here FDE at the widest frontier dimension, the
usual 32) with Model+AD (the FM-searched dimensions). Pointing --workdir at a benchmarks.quality
workdir reuses its finished searches and FDE runs; every run is resumable (rerunning the command
skips finished runs). Seeds run outermost, so every dataset's seed 0 is done before seed 1;
within a seed and dataset the widest FDE and the transfers run before the rest of the frontier.
Writes a markdown table (mean ± std over seeds, the paired AUC difference to FDE and the gap to
the FDE frontier) to --output (default WORKDIR/transfer.md), with the command. Skips cleanly
when --data_root does not exist. The per-run metrics go to WORKDIR/transfer.json.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import check_output, quality, write_output
from configs.cli import StrictArgumentParser

SEARCH_BACKBONES = ("fm", "deepfm")
TARGETS = ("wide_deep", "deepfm", "nfm", "ipnn", "autoint", "dcn_v2")
LABELS = {"fm": "FM", "wide_deep": "W&D", "deepfm": "DeepFM", "nfm": "NFM", "ipnn": "IPNN",
          "autoint": "AutoInt", "dcn_v2": "DCN-v2"}
TITLE = "## Transfer (benchmarks.transfer)"


def search_run(data: Path, work: Path, dataset: str, source: str, seed: int,
               extra_sets: list[str]) -> dict:
    """`source`'s AutoDim search of this seed and its own retraining: benchmarks.quality's
    `autodim` run (made if missing, read back if finished)."""
    return quality.one_run(data, work / dataset / source / f"seed{seed}" / "autodim", dataset,
                           source, seed, "autodim", extra_sets)


def transfer_retrain(data: Path, work: Path, dataset: str, source: str, target: str, seed: int,
                     extra_sets: list[str]) -> dict:
    """`target` retrained with the dimensions of `source`'s finished AutoDim search of this seed
    (`search_run`), in WORKDIR/NAME/target/seedK/transfer_source."""
    from configs.experiment import preset_for_dataset, resolve
    from pipeline.retrain import retrain

    dims = work / dataset / source / f"seed{seed}" / "autodim" / "search" / "dims.json"
    cfg = resolve(preset_for_dataset(dataset), None,
                  [f"model.backbone={target}", f"search.seed={seed}", f"retrain.seed={seed}",
                   *extra_sets])
    started = time.monotonic()
    m = retrain(str(data), str(dims),
                str(work / dataset / target / f"seed{seed}" / f"transfer_{source}"), cfg,
                quiet=True)
    m["wall_seconds"] = time.monotonic() - started
    return m


def row_label(target: str, row: str) -> str:
    """'fde32' -> 'FDE-32'; 'from_fm' -> 'NFM+AD (FM)' (the paper's Model+AD), '(own search)'
    when the target is the search backbone."""
    if row.startswith("fde"):
        return f"FDE-{row[3:]}"
    source = row[len("from_"):]
    own = " (own search)" if source == target else ""
    return f"{LABELS.get(target, target)}+AD ({LABELS.get(source, source)}){own}"


def _mean_std(values, sign: str = "") -> str:
    """Mean ± std over seeds; the mean alone for one seed."""
    a = np.asarray(values, float)
    return f"{a.mean():{sign}.4f}" + (f" ± {a.std():.4f}" if a.size > 1 else "")


def paired_delta(runs: list[dict], baseline: list[dict]) -> tuple[np.ndarray, int]:
    """Per seed present in both: AUC(run) - AUC(baseline); returns (deltas, wins)."""
    base = {m["seed"]: m["test_auc"] for m in baseline}
    deltas = np.array([m["test_auc"] - base[m["seed"]] for m in runs if m["seed"] in base])
    return deltas, int((deltas > 0).sum())


def summarise(results: dict, sources=SEARCH_BACKBONES, frontier_dims=quality.FRONTIER) -> list[str]:
    """results[(dataset, target)][row] = metrics over seeds (each with "seed"), row in fdeD and
    from_S -> markdown lines: the paper-shaped table (per target: FDE at the widest dimension,
    then +AD per search backbone; AUC and logloss per dataset) and the detailed table."""
    widest = max(frontier_dims)
    base_row = f"fde{widest}"
    transfer_rows = tuple(f"from_{s}" for s in sources)
    datasets = list(dict.fromkeys(d for d, _ in results))
    targets = list(dict.fromkeys(t for _, t in results))
    head = "| model | " + " | ".join(f"{d} AUC | {d} logloss" for d in datasets) + " |"
    lines = [head, "|---|" + "---|---|" * len(datasets)]
    for target in targets:
        for row in (base_row, *transfer_rows):
            cells, any_run = [], False
            for dataset in datasets:
                runs = results.get((dataset, target), {}).get(row)
                if not runs:
                    cells += ["", ""]
                    continue
                any_run = True
                cells += [_mean_std([m["test_auc"] for m in runs]),
                          _mean_std([m["test_logloss"] for m in runs])]
            if any_run:
                name = (f"{LABELS.get(target, target)} (FDE-{widest})" if row == base_row
                        else row_label(target, row))
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| dataset | backbone | dims | test AUC | logloss | Params | "
              f"% of FDE-{widest} | AUC - FDE-{widest} (paired) | above FDE-{widest} | "
              "vs FDE frontier | dims (seed 0) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (dataset, target), by_row in results.items():
        base = by_row.get(base_row, [])
        fde_max = np.mean([m["params"] for m in base]) if base else np.nan
        frontier = [(np.mean([m["params"] for m in by_row[f"fde{d}"]]),
                     np.mean([m["test_auc"] for m in by_row[f"fde{d}"]]))
                    for d in frontier_dims if by_row.get(f"fde{d}")]
        for row in (*(f"fde{d}" for d in frontier_dims), *transfer_rows):
            runs = by_row.get(row)
            if not runs:
                continue
            auc = np.array([m["test_auc"] for m in runs])
            params = float(np.mean([m["params"] for m in runs]))
            share = f"{100 * params / fde_max:.1f}%" if base else ""
            delta = wins = vs = dims_text = ""
            if row in transfer_rows:
                deltas, won = paired_delta(runs, base)
                if len(deltas):
                    delta = _mean_std(deltas, "+")
                    wins = f"{won}/{len(deltas)}"
                if len(frontier) >= 2:
                    vs = f"{auc.mean() - quality.frontier_auc(frontier, params):+.4f}"
                first = min(runs, key=lambda m: m["seed"])
                dims_text = " ".join(str(v) for v in first.get("dims", {}).values())
            lines.append(
                f"| {dataset} | {LABELS.get(target, target)} | {row_label(target, row)} | "
                f"{_mean_std(auc)} | {_mean_std([m['test_logloss'] for m in runs])} | "
                f"{params:,.0f} | {share} | {delta} | {wins} | {vs} | {dims_text} |")
    return lines


def _names(parser, flag: str, text: str, known) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"{flag}: unknown {unknown}; known: {list(known)}")
    if not names:
        parser.error(f"{flag} is empty")
    return names


def _ints(parser, flag: str, text: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s != ""]
    except ValueError:
        parser.error(f"{flag} must be comma-separated ints, got {text!r}")
    if not values:
        parser.error(f"{flag} is empty")
    return values


def main(argv=None) -> int:
    from configs.experiment import BACKBONES

    parser = StrictArgumentParser(prog="python -m benchmarks.transfer", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", default="../shared/data")
    parser.add_argument("--datasets", default="movielens-100k,frappe")
    parser.add_argument("--search_backbones", default=",".join(SEARCH_BACKBONES),
                        help="backbones whose AutoDim search provides the dimensions")
    parser.add_argument("--backbones", default=",".join(TARGETS),
                        help="backbones retrained with the searched dimensions and at FDE")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--frontier", default=",".join(map(str, quality.FRONTIER)),
                        help="FDE dimensions run per backbone; the widest is the paper's "
                             "'Model' row, two or more give the 'vs FDE frontier' column")
    parser.add_argument("--workdir", default="runs/quality",
                        help="a benchmarks.quality workdir: its searches and FDE runs are reused")
    parser.add_argument("--output", default=None, help="default: WORKDIR/transfer.md")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config overrides for every run")
    parser.add_alias("--data-root", "--data_root")
    parser.add_alias("--search-backbones", "--search_backbones")
    args = parser.parse_args(argv)
    datasets = _names(parser, "--datasets", args.datasets, quality.INPUTS)
    sources = _names(parser, "--search_backbones", args.search_backbones, BACKBONES)
    targets = _names(parser, "--backbones", args.backbones, BACKBONES)
    seeds = _ints(parser, "--seeds", args.seeds)
    frontier = tuple(sorted(set(_ints(parser, "--frontier", args.frontier))))
    if min(frontier) < 1:
        parser.error(f"--frontier dimensions must be positive, got {args.frontier!r}")
    work = Path(args.workdir)
    output = check_output(parser, args.output or work / "transfer.md", TITLE)
    root = quality.data_root(args.data_root)
    if root is None:
        return 0
    present = [d for d in datasets if any(root.glob(quality.INPUTS[d]))]
    for d in datasets:
        if d not in present:
            print(f"skipped {d}: no input under {root}")
    data = {d: quality.preprocess(root, work, d) for d in present}
    results: dict = {}
    for seed in seeds:
        for dataset in present:
            own = {s: search_run(data[dataset], work, dataset, s, seed, args.set)
                   for s in sources}
            # the widest FDE and the transfers first, the rest of the frontier after
            for phase in ("main", "frontier"):
                for target in targets:
                    by_row = results.setdefault((dataset, target), {})
                    fde = [max(frontier)] if phase == "main" else frontier[:-1]
                    for d in fde:
                        m = quality.one_run(data[dataset], work / dataset / target /
                                            f"seed{seed}" / f"fde{d}", dataset, target, seed,
                                            f"fde{d}", args.set)
                        by_row.setdefault(f"fde{d}", []).append({**m, "seed": seed})
                        _report(dataset, target, seed, f"FDE-{d}", m)
                    for source in sources if phase == "main" else ():
                        m = own[source] if target == source else transfer_retrain(
                            data[dataset], work, dataset, source, target, seed, args.set)
                        by_row.setdefault(f"from_{source}", []).append({**m, "seed": seed})
                        _report(dataset, target, seed, row_label(target, f"from_{source}"), m)
    command = "python -m benchmarks.transfer " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    table = summarise(results, sources, frontier)
    text = [TITLE, "", f"Command: `{command}`", "",
            f"Model (FDE-{max(frontier)}): the backbone with every field at dimension "
            f"{max(frontier)}; Model+AD (S): the backbone retrained with the dimensions S's "
            "AutoDim search chose (the same seed). AUC/logloss: mean ± std over seeds on the "
            "test split (the mean alone for one seed); Params: embedding parameters; the paired "
            "difference and 'above' count compare each seed with the same seed's FDE run"
            + ("; 'vs FDE frontier': AUC minus the "
               f"FDE-{'/'.join(map(str, frontier))} AUC interpolated (in log params) at the "
               "row's Params." if len(frontier) > 1 else "."), "", *table, ""]
    write_output(output, text)
    from pipeline.runtime import atomic_write_json

    atomic_write_json(work / "transfer.json", {f"{d}|{t}": v for (d, t), v in results.items()})
    print("\n".join(table))
    print(f"wrote {output}")
    return 0


def _report(dataset, target, seed, label, m) -> None:
    print(f"{dataset} {target} seed {seed} {label}: test AUC {m['test_auc']:.4f} logloss "
          f"{m['test_logloss']:.4f} params {m['params']:,} ({m['wall_seconds']:.0f}s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
