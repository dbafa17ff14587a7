"""`python -m pipeline.run`: preprocess, search, retrain and evaluate in one command.

    python -m pipeline.run --dataset criteo --input 'logs/*.txt' --workdir runs/criteo \
        [--config FILE] [--preset NAME] [--set key=value ...] [--fde_dim 32] [--no_export]
        [--no_report]
        [--param_costs 0.01,0.05 [--cost_tolerance 0|1se] [--search_embeddings raw,ad2]]
        [--strategy multi_worker] [--search_seeds N|S1,S2,...]
        [--budget PARAMS | --budget_ratio R | --budget_bytes BYTES]
    python -m pipeline.run --demo [--rows 100000] --workdir runs/demo

Stages (each skipped when its output is already complete, so a rerun resumes; once WORKDIR/data
is complete, --dataset and --input may be left out):
  WORKDIR/data            the Beam job's output (unless data/schema.json exists)
  WORKDIR/search          the dimension search -> dims.json
  WORKDIR/retrain_autodim the searched dimensions retrained -> metrics.json
  WORKDIR/retrain_fde<D>  the FDE baseline (every field at D) -> metrics.json
  WORKDIR/exports         the AutoDim model as a TF Serving SavedModel
  WORKDIR/summary.json    AutoDim against FDE (and the planted truth, for --demo or --truth)
  WORKDIR/report          an HTML page of all of it (pipeline.report; --no_report skips it)
With --param_costs C1,C2,... the search and its retraining run once per parameter cost
(WORKDIR/search_cost<C>, WORKDIR/retrain_cost<C>) and the model with the best validation AUC is
kept, evaluated and exported (WORKDIR/param_cost_selection.json; pipeline/tuning.py).
--search_embeddings raw,ad2 searches every cost with each named search embedding as well
(WORKDIR/search_ad2_cost<C>, ...; the config's own embedding keeps the plain names).
--search_seeds 3 searches with three seeds (WORKDIR/search/seed<k>/) and retrains their consensus,
WORKDIR/search/dims.json (pipeline/consensus.py); summary.json records the seeds' correlations.
--budget / --budget_ratio / --budget_bytes (pipeline/budget.py) give the search a hard memory
budget: the retrained and exported model has the searched dimensions, which never exceed it, and
summary.json records the budget (dims.json's "budget"). A budget does not combine with
--param_costs (the budget fixes the size the costs would trade against AUC) or --search_seeds:
refused. Bad values are refused before anything runs; a budget below the smallest possible model
is refused as soon as the vocabularies are known (before the search writes anything; at once when
WORKDIR/data exists).
`--demo` first writes the built-in synthetic dataset (Criteo format, planted structure) to
WORKDIR/raw/.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from configs import fileio
from configs.cli import StrictArgumentParser, run_main
from configs.experiment import preset_for_dataset, resolve
from configs.features import SCHEMA_FILE, DataSchema
from configs.loader import ConfigError
from pipeline.flags import add_strategy_flag

DEMO_ROWS = 100_000


def run(args) -> dict:
    """The stages in order (each resumes); returns summary.json's contents."""
    from pipeline.retrain import retrain
    from pipeline.runtime import atomic_write_json
    from pipeline.search import format_dims

    costs, embeddings, tolerance = _tuning_options(args)  # checked before anything runs
    seeds = _seeds_option(args, costs)
    budget_sets = _budget_options(args, costs, seeds)
    work = fileio.path(args.workdir)
    if _writes_report(args, work):
        from pipeline.report import REPORT_DIR, check_output

        check_output(work / REPORT_DIR)  # a directory that is not our report: refused now
    strategy = _cluster_strategy(args, work, costs)
    data, truth = _prepare_data(args, work, writes=strategy is None or _is_chief())
    schema = DataSchema.load(data)
    if truth is not None and sorted(f["name"] for f in truth["fields"]) != sorted(
            schema.field_names):
        raise ConfigError(f"--truth {args.truth}: its fields are not the data's fields "
                          f"({', '.join(schema.field_names)})")
    preset = args.preset or ("synthetic" if args.demo else preset_for_dataset(schema.dataset))
    cfg = resolve(preset, args.config, args.set + budget_sets)
    from pipeline import budget as budget_lib

    budget_lib.resolve(cfg.search, [f.vocab_size for f in schema.fields], cfg.model.candidate_dims)
    if costs and budget_lib.requested(cfg.search):
        key = budget_lib.requested(cfg.search)[0]
        raise ConfigError(f"search.{key} (from --config or --set) and --param_costs do not "
                          f"combine: a budget fixes the size that the costs trade against AUC")
    if costs:
        autodim = _tuned_autodim(args, data, work, cfg, preset, costs, tolerance, embeddings)
    else:
        autodim = _autodim(args, data, work, cfg, preset, strategy, seeds)
    print(f"[4/5] retraining the FDE-{args.fde_dim} baseline")
    fde = retrain(str(data), f"fde:{args.fde_dim}", str(work / f"retrain_fde{args.fde_dim}"), cfg,
                  quiet=args.quiet, preset=preset, strategy=strategy)
    from pipeline import runtime

    if not runtime.is_chief():  # the chief exports and writes summary.json
        print(f"worker {runtime.worker_index()}: search and retrainings done; the chief exports "
              f"and writes {work / 'summary.json'}")
        return {}
    export_dir = None if args.no_export else _export(args, work, schema, autodim["retrain_dir"])
    summary = _summary(schema, preset, work, autodim, fde, export_dir, truth)
    atomic_write_json(work / "summary.json", summary)
    print(format_dims(autodim["dims"]))
    print(report(summary, args.fde_dim))
    if _writes_report(args, work):
        from pipeline.report import write_report

        print(f"report: {write_report(work)}")
    elif not args.no_report:
        print(f"report: not written for a remote workdir (python -m pipeline.report --run DIR "
              f"on a local copy of {work})")
    return summary


def _writes_report(args, work) -> bool:
    """Whether the run ends by writing WORKDIR/report (pipeline.report): not with --no_report,
    not for a remote workdir (the report directory is renamed into place, local only)."""
    return not args.no_report and not fileio.is_remote(work)


def _tuning_options(args):
    """--param_costs, --search_embeddings and --cost_tolerance, parsed and checked."""
    from pipeline.tuning import parse_costs, parse_embeddings, parse_tolerance

    costs = parse_costs(args.param_costs) if args.param_costs is not None else None
    embeddings = None
    if args.search_embeddings is not None:
        embeddings = parse_embeddings(args.search_embeddings)
        if costs is None:
            raise ConfigError("--search_embeddings needs --param_costs (e.g. --param_costs "
                              "0.01,0.05): the embeddings are searched at each cost")
    return costs, embeddings, parse_tolerance(args.cost_tolerance)


def _seeds_option(args, costs):
    """--search_seeds parsed (None without it); not combined with --param_costs or
    --strategy multi_worker."""
    if args.search_seeds is None:
        return None
    from pipeline.consensus import parse_seeds

    seeds = parse_seeds(args.search_seeds, "--search_seeds")
    if costs:
        raise ConfigError("--search_seeds and --param_costs do not combine (a consensus per cost, "
                          "each retrained, is not implemented): choose the cost first, then "
                          "--set search.param_cost=C --search_seeds N")
    if args.strategy == "multi_worker":
        raise ConfigError("--search_seeds and --strategy multi_worker do not combine: run "
                          "pipeline.search --set search.seed=K per seed on the cluster")
    return seeds


def _budget_options(args, costs, seeds) -> list[str]:
    """--budget / --budget_ratio / --budget_bytes as --set overrides, checked (not with
    --param_costs or --search_seeds)."""
    from pipeline import budget as budget_lib

    sets = budget_lib.overrides(args)
    flag = next((budget_lib.FLAGS[k] for k in budget_lib.KEYS if getattr(args, k) is not None),
                None)
    if sets and costs:
        raise ConfigError(f"{flag} and --param_costs do not combine: a budget fixes the size that "
                          f"the parameter costs trade against AUC; give one of them")
    if sets and seeds is not None:
        raise ConfigError(f"{flag} and --search_seeds do not combine yet (each seed's dims keep "
                          f"the budget, their per-field median need not): give one of them")
    return sets


def _cluster_strategy(args, work: Path, costs):
    """The strategy of `--strategy` (None: the default one), after the checks a multi-worker
    run needs before it waits for its workers: the data preprocessed already (a cluster
    preprocesses with the Beam job on its own runner), no --param_costs. `parameter_server` is
    refused: not wired here (the demo's stages, param-cost sweeps and tuning would each need
    the cluster's strategy); its search and retraining are pipeline.search and pipeline.retrain
    run on every task, the export pipeline.export on the retraining's model_dir."""
    if args.strategy == "parameter_server":
        raise ConfigError("--strategy parameter_server is available in pipeline.search and "
                          "pipeline.retrain only: run them on every task of the cluster (the "
                          "same command, each task's TF_CONFIG), then pipeline.export on the "
                          "retraining's model_dir (BUILD.md, 'Tables larger than one device')")
    if args.strategy != "multi_worker":
        return None
    if not (work / "data" / SCHEMA_FILE).exists():
        raise ConfigError(f"--strategy multi_worker trains on preprocessed data: {work / 'data'} "
                          f"holds none yet; run `python -m preprocessing.run ... --data_dir "
                          f"{work / 'data'}` (or pipeline.run without --strategy) first")
    if costs:
        raise ConfigError("--param_costs is not available with --strategy multi_worker; run "
                          "pipeline.search and pipeline.retrain per cost instead")
    from pipeline.flags import make_cli_strategy

    return make_cli_strategy(0, "multi_worker")


def _prepare_data(args, work: Path, writes: bool = True) -> tuple[Path, dict | None]:
    """WORKDIR/data (the demo's synthetic rows written and the Beam job run unless done) and,
    for --demo, the planted truth."""
    data = work / "data"
    if not args.demo and not (data / SCHEMA_FILE).exists() and not (args.dataset and args.input):
        raise ConfigError(f"--dataset and --input are required (or --demo): {data} holds no "
                          f"preprocessed data yet")
    if args.demo and args.truth:
        raise ConfigError("--truth is for synthetic --input files; --demo compares with the "
                          "truth of the rows it writes")
    truth = _read_truth(args.truth) if args.truth else None
    work.mkdir(parents=True, exist_ok=True)
    if args.demo and writes:  # a multi-worker run's other workers write nothing here

        raw = work / "raw" / "synthetic.tsv"
        truth_path = fileio.path(str(raw) + ".truth.json")
        if not truth_path.exists():
            raw.parent.mkdir(parents=True, exist_ok=True)
            print(f"[1/5] writing {args.rows:,} synthetic rows with planted structure to {raw}")
            _generate(raw, truth_path, args.rows, args.seed)
        truth = json.loads(truth_path.read_text(encoding="utf-8"))
        dataset, input_glob = "criteo", str(raw)
    else:
        dataset, input_glob = args.dataset, args.input
    if not (data / SCHEMA_FILE).exists():
        from preprocessing import run as preprocess

        print(f"[2/5] preprocessing {input_glob} ({dataset}) -> {data}")
        argv = ["--dataset", dataset, "--input", input_glob, "--data_dir", str(data)]
        if args.preprocess_config:
            argv += ["--preprocess_config", args.preprocess_config]
        res = preprocess.run(argv + list(args.beam_args))
        print(preprocess.summary(res))
    return data, truth


def _generate(raw, truth_path, rows: int, seed: int) -> None:
    """The demo's synthetic rows at `raw` (remote: written locally, then copied)."""
    from preprocessing import synthetic

    if not fileio.is_remote(raw):
        synthetic.generate(str(raw), rows, seed)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix=".autodim-demo-") as tmp:
        local = Path(tmp) / "synthetic.tsv"
        synthetic.generate(str(local), rows, seed)
        fileio.copy_file(local, raw)
        fileio.copy_file(str(local) + ".truth.json", truth_path)  # last: marks the rows done


def _is_chief() -> bool:
    from pipeline import runtime

    return runtime.is_chief()


def _autodim(args, data: Path, work: Path, cfg, preset: str, strategy=None,
             seeds=None) -> dict:
    """One search (or, with --search_seeds, one per seed and their consensus) and the
    retraining of its dimensions."""
    from pipeline import runtime
    from pipeline.retrain import retrain
    from pipeline.search import run_search

    search_dir, auto_dir = work / "search", work / "retrain_autodim"
    print(f"[3/5] searching dimensions (preset {preset}) -> {search_dir}")
    if seeds is not None:
        from pipeline.consensus import run_seeds, seed_list

        argv = (["--data_dir", str(data), "--preset", preset]
                + (["--config", args.config] if args.config else [])
                + [a for item in args.set for a in ("--set", item)])
        dims = run_seeds(str(data), str(search_dir), cfg, seed_list(seeds, cfg.search.seed),
                         quiet=args.quiet, preset=preset, cli_argv=argv)
    else:
        dims = run_search(str(data), str(search_dir), cfg, quiet=args.quiet, preset=preset,
                          strategy=strategy)
    print("[4/5] retraining the searched dimensions")
    # this worker's own dims.json (in a multi-worker run the chief's may still be being written)
    auto = retrain(str(data), str(runtime.output_dir(search_dir) / "dims.json"), str(auto_dir),
                   cfg, quiet=args.quiet, preset=preset, strategy=strategy)
    return {"dims": dims, "metrics": auto, "retrain_dir": auto_dir, "selection": None}


def _tuned_autodim(args, data: Path, work: Path, cfg, preset: str, costs, tolerance,
                   embeddings) -> dict:
    """A search and retraining per parameter cost (and search embedding), the best kept on
    validation (pipeline/tuning.py)."""
    from pipeline.tuning import format_selection, tune_param_cost

    print(f"[3-4/5] searching and retraining at each parameter cost "
          f"({', '.join(map(str, costs))}; preset {preset})"
          + (f" and search embedding ({', '.join(embeddings)})" if embeddings else "")
          + ", choosing on validation AUC")
    selection = tune_param_cost(str(data), work, cfg, costs, tolerance=tolerance,
                                quiet=args.quiet, preset=preset, embeddings=embeddings)
    print(format_selection(selection))
    chosen = selection["candidates"][selection["chosen"]]
    search_dir, auto_dir = fileio.path(chosen["search_dir"]), fileio.path(chosen["retrain_dir"])
    dims = json.loads((search_dir / "dims.json").read_text(encoding="utf-8"))
    auto = json.loads((auto_dir / "metrics.json").read_text(encoding="utf-8"))
    return {"dims": dims, "metrics": auto, "retrain_dir": auto_dir, "selection": selection}


def _export(args, work: Path, schema, auto_dir: Path) -> Path:
    """The AutoDim model as a TF Serving version (a rerun keeps the version already made)."""
    from pipeline.export import export

    name = "demo" if args.demo else schema.dataset
    latest = _latest_export(work / "exports" / name)
    if latest is not None and _exported_from(latest) == fileio.absolute(auto_dir):
        return latest  # a rerun: the model was exported already
    # first run, or --param_costs chose another model: a new version
    print(f"[5/5] exporting the AutoDim model -> {work / 'exports'}")
    return export(auto_dir, work / "exports", name)


def _read_truth(path: str) -> dict:
    """--truth: the planted ground truth `preprocessing.synthetic` wrote beside its rows."""
    try:
        truth = json.loads(fileio.path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"--truth {path}: cannot be read ({e.strerror or e})") from None
    except ValueError as e:
        raise ConfigError(f"--truth {path}: not JSON ({e})") from None
    fields = truth.get("fields") if isinstance(truth, dict) else None
    if not isinstance(fields, list) or not all(
            isinstance(f, dict) and {"name", "informative", "latent_dim"} <= f.keys()
            for f in fields):
        raise ConfigError(f"--truth {path}: not a ground truth file of preprocessing.synthetic "
                          f"(a 'fields' list of name / informative / latent_dim)")
    return truth


def _summary(schema, preset: str, work: Path, autodim: dict, fde: dict, export_dir,
             truth: dict | None) -> dict:
    """summary.json: AutoDim against FDE (and the planted truth, for --demo)."""
    auto, dims = autodim["metrics"], autodim["dims"]
    summary = {"dataset": schema.dataset, "preset": preset, "workdir": str(work),
               "autodim": _brief(auto), "fde": _brief(fde),
               "params_share_of_fde": auto["params"] / fde["params"] if fde["params"] else None,
               "auc_delta": auto["test_auc"] - fde["test_auc"],
               "dims": {n: dims["fields"][n]["dim"] for n in dims["field_order"]},
               "export": str(export_dir) if export_dir else None}
    if autodim["selection"] is not None:
        summary["param_cost_selection"] = autodim["selection"]
    if "consensus" in dims:  # --search_seeds: the seeds' agreement (per field: search/dims.json)
        c = dims["consensus"]
        summary["search_consensus"] = {k: c[k] for k in ("seeds", "pearson", "spearman",
                                                         "undefined") if k in c}
    if dims.get("budget"):
        b = dims["budget"]
        summary["budget"] = {"params": b["params"], "requested": b["requested"],
                             "achieved": auto["params"],
                             "share_of_budget": auto["params"] / b["params"],
                             "repair": b["repair"], "fill": b.get("fill", [])}
    if truth:
        summary["truth"] = {f["name"]: {"informative": f["informative"],
                                        "latent_dim": f["latent_dim"]} for f in truth["fields"]}
    return summary


def _latest_export(base: Path) -> Path | None:
    """The highest numbered version directory under `base` (TF Serving's layout), if any."""
    versions = [p for p in base.glob("[0-9]*") if p.is_dir() and p.name.isdigit()] \
        if base.exists() else []
    return max(versions, key=lambda p: int(p.name)) if versions else None


def _exported_from(version_dir: Path) -> str | None:
    """The retrain model_dir an export was made from (its assets.extra export info)."""
    from pipeline.export import EXPORT_INFO

    try:
        info = json.loads((version_dir / "assets.extra" / EXPORT_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info.get("model_dir") if isinstance(info, dict) else None


def _brief(m: dict) -> dict:
    return {k: m[k] for k in ("test_auc", "test_logloss", "params", "best_valid_auc",
                              "train_seconds", "dims_source")}


def report(summary: dict, fde_dim: int) -> str:
    a, f = summary["autodim"], summary["fde"]
    lines = []
    if "truth" in summary:
        t = summary["truth"]
        info = [n for n in summary["dims"] if t[n]["informative"]]
        noise = [n for n in summary["dims"] if not t[n]["informative"]]
        lines.append("chosen dimension vs planted truth (latent dim; 0 = noise field):")
        lines.append("  informative: " + "  ".join(
            f"{n}={summary['dims'][n]}({t[n]['latent_dim']})" for n in info))
        avg_i = sum(summary["dims"][n] for n in info) / max(len(info), 1)
        avg_n = sum(summary["dims"][n] for n in noise) / max(len(noise), 1)
        lines.append(f"  mean dim: informative fields {avg_i:.1f}, noise fields {avg_n:.1f}")
    lines.append(f"{'model':<12} {'test AUC':>9} {'logloss':>9} {'emb params':>12}")
    for label, m in (("AutoDim", a), (f"FDE-{fde_dim}", f)):
        lines.append(f"{label:<12} {m['test_auc']:>9.4f} {m['test_logloss']:>9.4f} "
                     f"{m['params']:>12,}")
    share = summary["params_share_of_fde"]
    lines.append(f"AutoDim uses {100 * share:.1f}% of FDE-{fde_dim}'s embedding parameters, "
                 f"AUC {summary['auc_delta']:+.4f}")
    if "search_consensus" in summary:
        c = summary["search_consensus"]

        def show(x):
            return "n/a" if x is None else f"{x:.2f}"

        lines.append(f"AutoDim: the consensus of seeds {', '.join(map(str, c['seeds']))}; their "
                     f"dims' Pearson {show(c['pearson']['mean'])}, Spearman "
                     f"{show(c['spearman']['mean'])} (mean over pairs)")
    if summary.get("budget"):
        from pipeline.budget import format_value

        b = summary["budget"]
        lines.append(f"budget {b['params']:,} embedding parameters ({b['requested']['flag']} "
                     f"{format_value(b['requested']['value'])}): the model uses "
                     f"{b['achieved']:,} = {100 * b['share_of_budget']:.1f}% of it")
    if summary.get("export"):
        lines.append(f"SavedModel: {summary['export']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from configs.experiment import PRESETS
    from configs.features import DATASETS

    parser = StrictArgumentParser(prog="python -m pipeline.run", description=__doc__, beam=True)
    parser.add_argument("--workdir", required=True, help="the run's directory (resumable)")
    parser.add_argument("--demo", action="store_true", help="use the built-in synthetic dataset")
    parser.add_argument("--rows", type=int, default=DEMO_ROWS, help="synthetic rows for --demo")
    parser.add_argument("--seed", type=int, default=1, help="synthetic data seed for --demo")
    parser.add_argument("--truth", help="the planted ground truth of synthetic --input "
                        "(`preprocessing.synthetic` writes OUTPUT.truth.json): summary.json and "
                        "the report compare the chosen dimensions with it")
    parser.add_argument("--dataset", choices=sorted(DATASETS) + ["csv"], help="format of --input")
    parser.add_argument("--input", help="raw log files: a glob, a directory or tfds:NAME")
    parser.add_argument("--preprocess_config", help="YAML PreprocessConfig for the Beam job")
    parser.add_argument("--config", help="experiment YAML overriding the preset's values")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="experiment preset (default: the dataset's own, else default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one experiment config value (repeatable)")
    parser.add_argument("--fde_dim", type=int, default=32, help="the FDE baseline's dimension")
    parser.add_argument("--no_export", action="store_true", help="skip the SavedModel export")
    parser.add_argument("--no_report", action="store_true",
                        help="do not write WORKDIR/report (pipeline.report's HTML page)")
    parser.add_argument("--param_costs", metavar="C1,C2,...",
                        help="search and retrain once per search.param_cost and keep the model "
                             "with the best validation AUC (pipeline/tuning.py)")
    parser.add_argument("--cost_tolerance", default="0",
                        help="with --param_costs: among the candidates whose validation AUC is "
                             "within this of the best, keep the fewest embedding parameters; a "
                             "number (AUC) or <K>se, K standard errors of the paired validation "
                             "AUC difference (DeLong), e.g. 1se")
    parser.add_argument("--search_embeddings", metavar="NAME1,NAME2",
                        help="with --param_costs: also search each cost with each named search "
                             "embedding (raw: zero_pad + no normalisation, the presets'; ad2: "
                             "linear + batchnorm_affine) and keep the best validated model")
    parser.add_argument("--search_seeds", metavar="N|S1,S2,...",
                        help="search once per seed (N: search.seed + 0..N-1; or a list) in "
                             "WORKDIR/search/seed<k>/ and retrain the consensus (per field the "
                             "median dim; pipeline/consensus.py)")
    parser.add_argument("--quiet", action="store_true", help="no progress display, only log lines")
    add_strategy_flag(parser)
    from pipeline import budget as budget_lib

    budget_lib.add_flags(parser)
    args, beam_args = parser.parse_args(argv)
    args.beam_args = beam_args
    if args.fde_dim < 1:
        parser.error(f"--fde_dim must be >= 1, got {args.fde_dim}")
    if args.rows < 1:
        parser.error(f"--rows must be >= 1, got {args.rows}")
    return run_main(lambda: run(args) and None)


if __name__ == "__main__":
    sys.exit(main())
