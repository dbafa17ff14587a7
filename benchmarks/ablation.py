"""Per-field ablation: dimensions with single fields changed, retrained against the FDE frontier.

    python -m benchmarks.ablation (--data_root ../shared/data --dataset frappe | --data DIR)
        [--grid user=8,16,32 --grid item=8,16,32] [--base fde:32 | --base 'runs/s{seed}/dims.json']
        [--backbone deepfm] [--seeds 0,1,2] [--frontier 8,16,32] [--workdir runs/quality]
        [--output FILE] [--set key=value ...]

Every combination of the --grid values is retrained as `pipeline.retrain --dims BASE --dim FIELD=D
...` (without --grid, BASE itself) once per seed (`{seed}` in BASE is replaced by the seed, so each
seed can start from its own search's dims.json), beside FDE at the --frontier dimensions with the
same seeds and settings. The FDE runs live where benchmarks.quality puts them
(WORKDIR/DATASET/BACKBONE/seedS/fdeD), so its finished runs are reused; the ablation's own runs go
to .../seedS/ablation/LABEL. Every run resumes or is skipped when finished.

The table: test AUC (mean ± std over seeds), Params, the distance to the FDE frontier at the mean
point (benchmarks.quality's measure) and the mean ± standard error of the per-seed distances
(each seed against its own FDE curve, which pairs away the seed's shared luck). With --output,
the table (and the command) go to that file and every run's metrics to the same name with
`.json`. With --data_root, skips cleanly when the dataset's files are absent.
"""
from __future__ import annotations

import argparse
import itertools
import re
import shlex
import sys
from pathlib import Path

import numpy as np

from benchmarks import check_output, write_output
from benchmarks.quality import FRONTIER, INPUTS, frontier_auc, one_run, preprocess
from configs.cli import StrictArgumentParser

TITLE = "## Per-field ablation"


def parse_grid(items) -> list[tuple[str, list[int]]]:
    """["user=8,16", "item=32"] -> [("user", [8, 16]), ("item", [32])]; refuses bad entries."""
    out, seen = [], set()
    for item in items:
        name, sep, values = str(item).partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--grid {item!r}: expected FIELD=D1,D2,... e.g. --grid item=8,16,32")
        try:
            dims = [int(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--grid {item!r}: dimensions must be integers") from None
        if not dims or min(dims) < 1:
            raise ValueError(f"--grid {item!r}: needs one or more positive dimensions")
        if name in seen:
            raise ValueError(f"--grid {item!r}: field {name!r} is given twice")
        seen.add(name)
        out.append((name, sorted(set(dims))))
    return out


def combinations(grid) -> list[dict]:
    """Every combination of the grid's values, as {field: dim} override dicts; no grid gives the
    base itself ([{}])."""
    names = [n for n, _ in grid]
    return [dict(zip(names, values)) for values in itertools.product(*(v for _, v in grid))]


def base_label(base: str) -> str:
    """A directory-safe name for BASE: fde:32 -> fde32; a dims.json template -> dims_<hash>."""
    if base.startswith(("fde:", "random:")):
        return base.replace(":", "")
    import hashlib

    return "dims_" + hashlib.sha256(base.encode()).hexdigest()[:8]


def variant_label(base: str, overrides: dict) -> str:
    """The run directory of BASE with `overrides`: fde32__item=16__user=8 (fields sorted, so the
    grid's order does not matter; `=` keeps C1=16 apart from C11=6)."""
    text = base_label(base) + "__" + ("__".join(f"{k}={v}" for k, v in sorted(overrides.items()))
                                      or "as_is")
    return re.sub(r"[^A-Za-z0-9_.=-]", "-", text)


def summarise(fde: dict, variants: dict, frontier_dims=FRONTIER) -> list[str]:
    """fde[d] and variants[label] are lists of metrics over the same seeds, in seed order ->
    markdown lines (the FDE rows first, then the variants in the order given)."""
    seeds = range(len(fde[frontier_dims[0]]))
    mean_front = [(np.mean([m["params"] for m in fde[d]]), np.mean([m["test_auc"] for m in fde[d]]))
                  for d in frontier_dims]
    widest = mean_front[-1][0]
    lines = [f"| dims | test AUC | Params | % of FDE-{max(frontier_dims)} | "
             "vs frontier (mean point) | vs frontier (per seed, mean ± SE) |",
             "|---|---|---|---|---|---|"]
    rows = [(f"FDE-{d}", fde[d], False) for d in frontier_dims]
    rows += [(label, runs, True) for label, runs in variants.items()]
    for label, runs, compare in rows:
        auc = np.array([m["test_auc"] for m in runs])
        params = float(np.mean([m["params"] for m in runs]))
        at_mean = per_seed = ""
        if compare:
            at_mean = f"{auc.mean() - frontier_auc(mean_front, params):+.4f}"
            gaps = np.array([runs[s]["test_auc"] - frontier_auc(
                [(fde[d][s]["params"], fde[d][s]["test_auc"]) for d in frontier_dims],
                runs[s]["params"]) for s in seeds])
            se = gaps.std(ddof=1) / np.sqrt(len(gaps)) if len(gaps) > 1 else float("nan")
            per_seed = f"{gaps.mean():+.4f} ± {se:.4f}"
        std = auc.std(ddof=1) if len(auc) > 1 else 0.0
        lines.append(f"| {label} | {auc.mean():.4f} ± {std:.4f} | {params:,.0f} | "
                     f"{100 * params / widest:.1f}% | {at_mean} | {per_seed} |")
    return lines


def main(argv=None) -> int:
    parser = StrictArgumentParser(prog="python -m benchmarks.ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", default="../shared/data")
    parser.add_argument(
        "--dataset", default="frappe", help=f"with --data_root: one of {list(INPUTS)}"
    )
    parser.add_argument("--data_dir", help="an already preprocessed dataset directory (instead of "
                                       "--data_root/--dataset)")
    parser.add_argument("--base", default="fde:32",
                        help="dims the overrides start from: fde:D or a dims.json path "
                             "({seed} is replaced by each seed)")
    parser.add_argument("--grid", action="append", default=[], metavar="FIELD=D1,D2,...",
                        help="a field and the dimensions to try (repeatable: every combination; "
                             "none: BASE itself, e.g. each seed's own search beside the frontier)")
    parser.add_argument("--backbone", default=None,
                        help="default: a dims.json base's own search backbone (as pipeline.retrain)"
                             ", else the dataset preset's")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--frontier", default=",".join(map(str, FRONTIER)))
    parser.add_argument("--workdir", default="runs/quality")
    parser.add_argument("--output", help="write the markdown table (with the command) here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config overrides for every run (FDE included)")
    parser.add_alias("--data-root", "--data_root")
    parser.add_alias("--data", "--data_dir")
    args = parser.parse_args(argv)
    try:
        grid = parse_grid(args.grid)
        frontier = tuple(sorted(int(d) for d in args.frontier.split(",") if d.strip()))
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as exc:
        parser.error(str(exc) if "--grid" in str(exc) else f"--frontier/--seeds: {exc}")
    if len(frontier) < 2 or min(frontier) < 1:
        parser.error(f"--frontier needs at least two positive dimensions, got {args.frontier!r}")
    if not seeds:
        parser.error("--seeds is empty")
    if args.output:
        check_output(parser, args.output, TITLE)

    from configs.experiment import preset_for_dataset, resolve
    from configs.features import DataSchema
    from configs.loader import ConfigError
    from pipeline.dims import apply_dim_overrides, load_dims
    from pipeline.errors import NonFiniteLossError
    from pipeline.retrain import _search_backbone

    work = Path(args.workdir)
    if args.data_dir:
        data = Path(args.data_dir)
    else:
        root = Path(args.data_root)
        if args.dataset not in INPUTS:
            parser.error(f"--dataset {args.dataset!r}: one of {list(INPUTS)}")
        if not root.is_dir() or not any(root.glob(INPUTS[args.dataset])):
            print(f"skipped: no {args.dataset} input under {root} (the licensed datasets are not "
                  f"part of the repository)")
            return 0
        data = preprocess(root, work, args.dataset)
    try:
        schema = DataSchema.load(str(data))
        dataset = schema.dataset
        preset = preset_for_dataset(dataset)
        preset_model = resolve(preset, None, args.set).model
        combos = combinations(grid)
        # refuse a bad base or field for every seed before anything trains
        backbones = set()
        for seed in seeds:
            source = args.base.replace("{seed}", str(seed))
            try:
                base = load_dims(source, schema, preset_model.candidate_dims)
            except ConfigError as exc:
                raise ConfigError(str(exc).replace("--dims", "--base")) from None
            for combo in combos:
                apply_dim_overrides(base, combo, schema)
            backbones.add(_search_backbone(source, None, []))
        backbone = args.backbone
        if backbone is None:
            searched = backbones - {None}
            if len(searched) > 1:
                raise ConfigError(f"--base: the seeds' dims.json were searched with different "
                                  f"backbones {sorted(searched)}; pass --backbone")
            backbone = searched.pop() if searched else preset_model.backbone
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        fde, variants = _run_all(data, work, dataset, preset, backbone, seeds, frontier, combos,
                                 args)
    except (ConfigError, NonFiniteLossError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 3
    table = summarise(fde, variants, frontier)
    command = "python -m benchmarks.ablation " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    if args.output:
        from pipeline.runtime import atomic_write_json

        text = [f"{TITLE}: {dataset}, {backbone}, seeds "
                f"{','.join(map(str, seeds))}", "", f"Command: `{command}`", "", *table, ""]
        write_output(Path(args.output), text)
        atomic_write_json(Path(args.output).with_suffix(".json"),
                          {"command": command, "fde": fde, "variants": variants})
    print("\n".join(table))
    return 0


def _run_all(data, work: Path, dataset: str, preset: str, backbone: str, seeds, frontier, combos,
             args):
    """FDE at the frontier dims and every variant, per seed -> (fde[d], variants[name]) lists of
    metrics in seed order."""
    from configs.experiment import resolve
    from pipeline.retrain import retrain

    fde = {d: [] for d in frontier}
    variants = {}
    for seed in seeds:
        seed_dir = work / dataset / backbone / f"seed{seed}"
        for d in frontier:
            m = one_run(data, seed_dir / f"fde{d}", dataset, backbone, seed, f"fde{d}",
                        args.set)
            fde[d].append(m)
            print(f"seed {seed} FDE-{d}: test AUC {m['test_auc']:.4f} params {m['params']:,}",
                  flush=True)
        cfg = resolve(preset, None,
                      [f"model.backbone={backbone}", f"search.seed={seed}",
                       f"retrain.seed={seed}", *args.set])
        for combo in combos:
            label = variant_label(args.base, combo)
            m = retrain(str(data), args.base.replace("{seed}", str(seed)),
                        str(seed_dir / "ablation" / label), cfg, quiet=True, dim_overrides=combo)
            name = args.base + "".join(
                (" with " if i == 0 else ", ") + f"{k}={v}"
                for i, (k, v) in enumerate(combo.items())
            )
            variants.setdefault(name, []).append(m)
            print(f"seed {seed} {name}: test AUC {m['test_auc']:.4f} params {m['params']:,}",
                  flush=True)
    return fde, variants


if __name__ == "__main__":
    sys.exit(main())
