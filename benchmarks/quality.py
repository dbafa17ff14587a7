"""Quality benchmark: AutoDim against the FDE frontier, RaS and AutoDim-s on real datasets.

    python -m benchmarks.quality --data_root ../shared/data [--datasets movielens-100k,frappe]
        [--backbones fm,wide_deep,deepfm] [--seeds 0,1,2] [--workdir runs/quality]
        [--output FILE] [--samples criteo,avazu] [--frontier 8,16,32]

For each dataset (preprocessed once with the Beam job into WORKDIR/data/NAME), backbone and seed:
FDE at 8, 16 and 32 (the frontier), RaS (random dims over the candidates), AutoDim-s, AutoDim
(search, then retrain), AutoDim with `search.derive=validated` (`autodim_validated`: the same
seed's AutoDim search re-derived, then retrained, so the two rows differ only by the
derivation) and AutoDim with the parameter cost chosen on validation (`autodim_tuned`: a search
and retraining per `--tune_costs` value, the one at the preset's cost copied from the same
seed's `autodim` run; pipeline/tuning.py keeps the best validation AUC) and the consensus of the
seeds' `autodim` searches (`autodim_consensus`: per field the median of the --seeds' chosen dims,
pipeline/consensus.py, written to WORKDIR/NAME/BACKBONE/consensus_seeds<S1-S2-..>/dims.json and
retrained with each seed's retrain.seed; the searches are the `autodim` runs' own, run here first
when missing; the table below the main one gives the seeds' Pearson and Spearman). Criteo and Avazu
samples get one seed (they only show the pipeline runs on real logs; too small for quality
claims). Every run is resumable: rerunning the command skips finished runs. Writes a markdown
table (mean and std over seeds) to --output (default WORKDIR/quality.md; an existing file only if
this benchmark wrote it), with the command. Skips cleanly when --data_root does not exist.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import check_output, write_output
from configs.cli import StrictArgumentParser

FRONTIER = (8, 16, 32)
TITLE = "## Quality (benchmarks.quality)"
SEARCHED = ("ras", "autodim_s", "autodim", "autodim_validated", "autodim_tuned",
            "autodim_consensus")
TUNE_COSTS = (0.01, 0.05)
INPUTS = {
    "movielens-100k": "movielens-100k",
    "frappe": "frappe/*.libfm",
    "criteo": "criteo/train_rows_*.txt",
    "avazu": "avazu/train_head_rows_*.csv",
}


def data_root(path: str) -> Path | None:
    """The --data_root directory, or None after printing why the benchmark skips (absent)."""
    root = Path(path)
    if not root.is_dir():
        print(f"skipped: data root {root} does not exist (the licensed datasets are not part of "
              f"the repository)")
        return None
    return root


def preprocess(data_root: Path, work: Path, dataset: str) -> Path:
    from configs.features import SCHEMA_FILE
    from preprocessing import run as beam_job

    out = work / "data" / dataset
    if not (out / SCHEMA_FILE).exists():
        beam_job.run(["--dataset", dataset, "--input", str(data_root / INPUTS[dataset]),
                      "--data_dir", str(out)])
    return out


def one_run(data: Path, run_dir: Path, dataset: str, backbone: str, seed: int, method: str,
            extra_sets: list[str], tune_costs=TUNE_COSTS, tune_embeddings=None,
            tune_tolerance: float | str = 0.0, consensus_seeds=()) -> dict:
    from configs.experiment import preset_for_dataset, resolve
    from pipeline.retrain import retrain
    from pipeline.search import run_search

    sets = [f"model.backbone={backbone}", f"search.seed={seed}", f"retrain.seed={seed}",
            *extra_sets]
    if method == "autodim_s":
        sets.append("search.variant=autodim_s")
    if method == "autodim_validated":
        sets.append("search.derive=validated")
        reuse_search(run_dir)
    cfg = resolve(preset_for_dataset(dataset), None, sets)
    started = time.monotonic()
    if method.startswith("fde"):
        m = retrain(str(data), f"fde:{method[3:]}", str(run_dir), cfg, quiet=True)
    elif method == "ras":
        m = retrain(str(data), f"random:{seed}", str(run_dir), cfg, quiet=True)
    elif method == "autodim_tuned":
        from pipeline.tuning import tune_param_cost

        reuse_for_tuning(run_dir, cfg.search.param_cost, tune_costs)
        selection = tune_param_cost(str(data), run_dir, cfg, tune_costs, quiet=True,
                                    embeddings=tune_embeddings, tolerance=tune_tolerance)
        chosen = selection["candidates"][selection["chosen"]]
        m = json.loads((Path(chosen["retrain_dir"]) / "metrics.json").read_text(encoding="utf-8"))
        m["param_cost"] = chosen["param_cost"]
        m["search_embedding"] = chosen.get("search_embedding")
        m["candidates"] = [{k: c.get(k) for k in ("param_cost", "search_embedding",
                                                  "best_valid_auc", "test_auc", "params")}
                           for c in selection["candidates"]]
    elif method == "autodim_consensus":
        dims_file = consensus_dims(data, run_dir.parent.parent, dataset, backbone,
                                   consensus_seeds, extra_sets)
        m = retrain(str(data), str(dims_file), str(run_dir / "retrain"), cfg, quiet=True)
        c = json.loads(dims_file.read_text(encoding="utf-8"))["consensus"]
        m["consensus"] = {k: c[k] for k in ("seeds", "pearson", "spearman")}
    else:
        run_search(str(data), str(run_dir / "search"), cfg, quiet=True)
        m = retrain(str(data), str(run_dir / "search" / "dims.json"), str(run_dir / "retrain"),
                    cfg, quiet=True)
    m["wall_seconds"] = time.monotonic() - started
    return m


def consensus_dims(data: Path, backbone_dir: Path, dataset: str, backbone: str, seeds,
                   extra_sets: list[str]) -> Path:
    """The consensus dims.json of the seeds' `autodim` searches (BACKBONE_DIR/seed<k>/autodim/
    search, searched here first when missing, exactly as the `autodim` run would)."""
    from configs.experiment import preset_for_dataset, resolve
    from pipeline.consensus import consensus_record
    from pipeline.runtime import atomic_write_json
    from pipeline.search import run_search

    if len(seeds) < 2:
        raise SystemExit("autodim_consensus needs at least two --seeds")
    target = backbone_dir / f"consensus_seeds{'-'.join(map(str, seeds))}" / "dims.json"
    records = {}
    for seed in seeds:
        search_dir = backbone_dir / f"seed{seed}" / "autodim" / "search"
        if not (search_dir / "dims.json").exists():
            cfg = resolve(preset_for_dataset(dataset), None, [
                f"model.backbone={backbone}", f"search.seed={seed}", f"retrain.seed={seed}",
                *extra_sets])
            run_search(str(data), str(search_dir), cfg, quiet=True)
        records[seed] = json.loads((search_dir / "dims.json").read_text(encoding="utf-8"))
    record = consensus_record(records)
    if not target.exists() or json.loads(target.read_text(encoding="utf-8")) != record:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(target, record)
    return target


def reuse_search(run_dir: Path) -> bool:
    """autodim_validated re-derives the same seed's finished `autodim` search instead of searching
    again: that search directory is copied (the derive settings are not part of the run hash, so
    run_search resumes after the last step and only derives), which pairs the two rows exactly.
    Returns whether a search was copied."""
    source, target = run_dir.parent / "autodim" / "search", run_dir / "search"
    if not (source / "dims.json").exists() or target.exists():
        return False
    shutil.copytree(source, target)
    return True


def reuse_for_tuning(run_dir: Path, preset_cost: float, costs) -> bool:
    """autodim_tuned's candidate at the preset's own cost is the same seed's finished `autodim`
    run (search and retraining; the same config, so they resume as finished): copied, not run
    again. Returns whether it was copied."""
    from pipeline.tuning import cost_label

    if preset_cost not in costs:
        return False
    label = cost_label(preset_cost)
    source = run_dir.parent / "autodim"
    pairs = [(source / "search", run_dir / f"search_cost{label}"),
             (source / "retrain", run_dir / f"retrain_cost{label}")]
    if not all((s / name).exists() for (s, _), name in zip(pairs, ("dims.json", "metrics.json"))):
        return False
    if any(target.exists() for _, target in pairs):
        return False
    for source_dir, target in pairs:
        shutil.copytree(source_dir, target)
    return True


def frontier_auc(points: list[tuple[float, float]], params: float) -> float:
    """FDE AUC linearly interpolated in log(params) (flat beyond the ends)."""
    pts = sorted(points)
    xs = np.log([p for p, _ in pts])
    ys = [a for _, a in pts]
    return float(np.interp(np.log(params), xs, ys))


def summarise(results: dict, frontier_dims=FRONTIER) -> list[str]:
    """results[(dataset, backbone)][method] = list of metrics over seeds -> markdown lines."""
    methods = tuple(f"fde{d}" for d in frontier_dims) + SEARCHED
    widest = max(frontier_dims)
    lines = ["| dataset | backbone | method | test AUC | logloss | Params | "
             f"% of FDE-{widest} | "
             "vs FDE frontier | dims (seed 0; fields A-Z) | dims Pearson across seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (dataset, backbone), by_method in results.items():
        fde_max = np.mean([m["params"] for m in by_method.get(f"fde{widest}", [])] or [np.nan])
        frontier = [(np.mean([m["params"] for m in by_method[f"fde{d}"]]),
                     np.mean([m["test_auc"] for m in by_method[f"fde{d}"]]))
                    for d in frontier_dims if by_method.get(f"fde{d}")]
        for method in methods:
            runs = by_method.get(method)
            if not runs:
                continue
            auc = np.array([m["test_auc"] for m in runs])
            ll = np.array([m["test_logloss"] for m in runs])
            params = float(np.mean([m["params"] for m in runs]))
            vs = ""
            if len(frontier) >= 2 and not method.startswith("fde"):
                vs = f"{auc.mean() - frontier_auc(frontier, params):+.4f}"
            # by field name: a fresh retraining lists its dims in schema order, a resumed one
            # (metrics.json, written with sorted keys) alphabetically
            dims = runs[0].get("dims", {})
            dims_text = " ".join(str(dims[k]) for k in sorted(dims)) if method in SEARCHED else ""
            corr = ""
            if method == "autodim_consensus":
                mean = runs[0]["consensus"]["pearson"]["mean"]
                corr = "n/a (constant dims)" if mean is None else f"{mean:.2f} (its seeds')"
            elif len(runs) > 1 and method in ("autodim", "autodim_s", "autodim_validated",
                                              "autodim_tuned"):
                vecs = [np.array([m["dims"][k] for k in sorted(m["dims"])], float) for m in runs]
                cs = [np.corrcoef(a, b)[0, 1] for i, a in enumerate(vecs) for b in vecs[i + 1:]
                      if a.std() > 0 and b.std() > 0]
                corr = f"{np.mean(cs):.2f}" if cs else "n/a (constant dims)"
            lines.append(
                f"| {dataset} | {backbone} | {method} | {auc.mean():.4f} ± {auc.std():.4f} | "
                f"{ll.mean():.4f} ± {ll.std():.4f} | {params:,.0f} | "
                f"{100 * params / fde_max:.1f}% | "
                f"{vs} | {dims_text} | {corr} |"
            )
    return lines + consensus_table(results, frontier_dims)


def consensus_table(results: dict, frontier_dims=FRONTIER) -> list[str]:
    """The single searches (`autodim`, one per seed), their consensus and the tuned choice, each
    as test AUC @ Params (distance to the FDE frontier at its own Params), with the seeds' mean
    Pearson and Spearman of the chosen dims; empty without autodim_consensus runs."""
    rows = []
    for (dataset, backbone), by_method in results.items():
        runs = by_method.get("autodim_consensus")
        if not runs:
            continue
        frontier = [(np.mean([m["params"] for m in by_method[f"fde{d}"]]),
                     np.mean([m["test_auc"] for m in by_method[f"fde{d}"]]))
                    for d in frontier_dims if by_method.get(f"fde{d}")]
        cells = []
        for method in ("autodim", "autodim_consensus", "autodim_tuned"):
            got = by_method.get(method)
            if not got:
                cells.append("")
                continue
            auc = float(np.mean([m["test_auc"] for m in got]))
            params = float(np.mean([m["params"] for m in got]))
            gap = (f" ({auc - frontier_auc(frontier, params):+.4f})" if len(frontier) >= 2
                   else "")
            cells.append(f"{auc:.4f} @ {params:,.0f}{gap}")
        c = runs[0]["consensus"]

        def show(x):
            return "n/a" if x is None else f"{x:.2f}"

        pairs = " ".join(show(v) for k, v in c["pearson"].items() if k != "mean")
        rows.append(f"| {dataset} | {backbone} | {' | '.join(cells)} | "
                    f"{show(c['pearson']['mean'])} ({pairs}) | {show(c['spearman']['mean'])} |")
    if not rows:
        return []
    return ["", "Single searches, their consensus and the tuned choice: test AUC @ Params "
            "(distance to the FDE frontier at that Params); the seeds' dims correlations "
            "(mean over pairs; the pairs):", "",
            "| dataset | backbone | single search (autodim) | consensus | tuned | "
            "Pearson (pairs) | Spearman |", "|---|---|---|---|---|---|---|", *rows]


def main(argv=None) -> int:
    parser = StrictArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", default="../shared/data")
    parser.add_argument("--datasets", default="movielens-100k,frappe")
    parser.add_argument("--samples", default="criteo,avazu",
                        help="datasets run with one seed (pipeline check only); '' for none")
    parser.add_argument("--backbones", default="fm,wide_deep,deepfm")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=None,
                        help=f"default: the FDE frontier and {','.join(SEARCHED)}")
    parser.add_argument("--frontier", default=",".join(map(str, FRONTIER)),
                        help="FDE dimensions that make the frontier (the issue's 8,16,32; add 2,4 "
                             "to check small-dimension baselines)")
    parser.add_argument("--workdir", default="runs/quality")
    parser.add_argument("--output", default=None,
                        help="the markdown table (default: WORKDIR/quality.md); an existing file "
                             "is replaced only if this benchmark wrote it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config overrides for every run")
    parser.add_argument("--tune_costs", default=",".join(map(str, TUNE_COSTS)),
                        help="autodim_tuned: the search.param_cost values it chooses among on "
                             "validation AUC")
    parser.add_argument("--tune_embeddings", default="",
                        help="autodim_tuned: also search each cost with these named search "
                             "embeddings (e.g. raw,ad2; pipeline.run --search_embeddings); '' "
                             "for the preset's only")
    parser.add_argument("--tune_tolerance", default="0",
                        help="autodim_tuned: pipeline.run --cost_tolerance (an AUC margin, or "
                             "<K>se: the smallest candidate within K paired standard errors)")
    parser.add_alias("--data-root", "--data_root")
    parser.add_alias("--tune-costs", "--tune_costs")
    parser.add_alias("--tune-embeddings", "--tune_embeddings")
    parser.add_alias("--tune-tolerance", "--tune_tolerance")
    args = parser.parse_args(argv)
    from configs.loader import ConfigError
    from pipeline.tuning import parse_costs, parse_tolerance

    try:
        tune_costs = parse_costs(args.tune_costs)
    except ConfigError as exc:
        parser.error(str(exc).replace("--param_costs", "--tune_costs"))
    try:
        tune_tolerance = parse_tolerance(args.tune_tolerance)
    except ConfigError as exc:
        parser.error(str(exc).replace("--cost_tolerance", "--tune_tolerance"))
    tune_embeddings = None
    if args.tune_embeddings:
        from pipeline.tuning import parse_embeddings

        try:
            tune_embeddings = parse_embeddings(args.tune_embeddings)
        except ConfigError as exc:
            parser.error(str(exc).replace("--search_embeddings", "--tune_embeddings"))
    output = check_output(parser, args.output or Path(args.workdir) / "quality.md", TITLE)
    root = data_root(args.data_root)
    if root is None:
        return 0
    work = Path(args.workdir)
    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    try:
        frontier = tuple(sorted(int(d) for d in args.frontier.split(",") if d))
    except ValueError:
        parser.error(f"--frontier must be comma-separated ints, got {args.frontier!r}")
    if len(frontier) < 2 or min(frontier) < 1:
        parser.error(f"--frontier needs at least two positive dimensions, got {args.frontier!r}")
    known = tuple(f"fde{d}" for d in frontier) + SEARCHED
    methods = [m for m in (args.methods or ",".join(known)).split(",") if m]
    unknown = [m for m in methods if m not in known]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {list(known)}")
    plan = [(d, seeds) for d in args.datasets.split(",") if d]
    plan += [(d, seeds[:1]) for d in args.samples.split(",") if d]
    results: dict = {}
    for dataset, ds_seeds in plan:
        if not any(root.glob(INPUTS[dataset])):
            print(f"skipped {dataset}: no input under {root}")
            continue
        data = preprocess(root, work, dataset)
        for backbone in args.backbones.split(","):
            for seed in ds_seeds:
                for method in methods:
                    if method == "autodim_consensus" and len(ds_seeds) < 2:
                        continue  # one seed (the samples): nothing to agree on
                    run_dir = work / dataset / backbone / f"seed{seed}" / method
                    m = one_run(data, run_dir, dataset, backbone, seed, method, args.set,
                                tune_costs, tune_embeddings, tune_tolerance, ds_seeds)
                    results.setdefault((dataset, backbone), {}).setdefault(method, []).append(m)
                    print(f"{dataset} {backbone} seed {seed} {method}: test AUC "
                          f"{m['test_auc']:.4f} logloss {m['test_logloss']:.4f} params "
                          f"{m['params']:,} ({m['wall_seconds']:.0f}s)", flush=True)
    command = "python -m benchmarks.quality " + " ".join(
        shlex.quote(a) for a in (argv or sys.argv[1:])
    )
    table = summarise(results, frontier)
    text = [
        TITLE,
        "",
        f"Command: `{command}`",
        "",
        "AUC/logloss: mean ± std over seeds on the test split; Params: the paper's metric "
        "(embedding parameters of the chosen dimensions); 'vs FDE frontier': AUC minus the "
        f"FDE-{'/'.join(map(str, frontier))} AUC interpolated (in log params) at the method's "
        "Params.",
        "",
        *table,
        "",
    ]
    write_output(output, text)
    write_output(work / "results.json", [json.dumps(
        {f"{d}|{b}": v for (d, b), v in results.items()}, indent=1, default=str)])
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
