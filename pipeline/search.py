"""`python -m pipeline.search`: the AutoDim dimension search (the paper's Algorithm 1), its
schedule and its records (HParams, dims.json); the training is `pipeline.search_task`'s task run
by `pipeline.controller`.

Pre-training with alpha frozen at uniform, then alternating updates inside one compiled call:
every step a model-weight update on a training batch, every f steps an alpha update on a
validation batch (first-order DARTS). Writes `model_dir/dims.json` with the argmax dimensions
(`search.derive=argmax`, the paper's Eq. 13) or the argmax checked on validation rows
(`search.derive=validated`, `pipeline/derive.py`).

    python -m pipeline.search --data_dir DIR --model_dir DIR [--config FILE] [--preset NAME]
        [--set key=value ...] [--logical_cpus K | --strategy multi_worker|parameter_server]
        [--quiet] [--memory_limit BYTES] [--dry_run] [--seeds N | --seeds S1,S2,...]
        [--budget PARAMS | --budget_ratio R | --budget_bytes B]

A budget (`pipeline/budget.py`) makes the search respect a number of embedding parameters: a
Lagrangian penalty on the expected parameters under alpha during the search, then the derived
dimensions repaired on validation rows so that they never exceed it; dims.json's "budget" records
the budget, the achieved size and the repair steps.

Before it starts, the search prints its memory model (`pipeline/memory.py`: the supernet per
lookup, the retrained model, the SavedModel's vocabulary tables) and refuses to start (exit 2,
nothing written) when it does not fit the device (a GPU's total memory, the host's available
memory) or `--memory_limit`; `--dry_run` prints it and exits.

`--seeds N` (search.seed + 0 .. N-1) or `--seeds 0,4,7`: one search per seed in MODEL_DIR/seed<k>/,
their correlations and a consensus MODEL_DIR/dims.json (`pipeline/consensus.py`).
"""
from __future__ import annotations

import math
import sys

from configs import fileio
from configs.cli import StrictArgumentParser, UsageError, run_main
from configs.experiment import (
    BUDGET_KEYS,
    ExperimentConfig,
    preset_for_dataset,
    resolve,
    run_hash,
)
from configs.features import DataSchema
from configs.loader import ConfigError, to_dict
from pipeline import budget as budget_lib
from pipeline.flags import add_experiment_flags, add_memory_flags, make_cli_strategy

DIMS_FILE = "dims.json"


def search_schedule(cfg, train_rows: int) -> dict:
    """Step counts of the two phases and the effective alpha-update period f."""
    s = cfg.search
    steps_per_epoch = max(1, math.ceil(train_rows / s.batch_size))
    pretrain = s.pretrain_steps or int(round(s.pretrain_epochs * steps_per_epoch))
    search = s.search_steps or int(round(s.search_epochs * steps_per_epoch))
    f = s.arch_update_every
    if s.variant == "autodim" and s.min_arch_updates and search > 0:
        if search // f < s.min_arch_updates:
            f = max(1, search // s.min_arch_updates)
    if s.variant == "autodim":
        search = int(math.ceil(search / f) * f)
    updates = search // f if s.variant == "autodim" else search
    arch_lr = s.arch_learning_rate
    if s.arch_lr_budget and updates:
        arch_lr = max(arch_lr, s.arch_lr_budget / updates)
    return {"steps_per_epoch": steps_per_epoch, "pretrain_steps": pretrain,
            "search_steps": search, "arch_update_every": f, "arch_updates": updates,
            "arch_learning_rate": arch_lr}


def memory_report(data_dir: str, schema: DataSchema, cfg: ExperimentConfig, strategy,
                  memory_limit: int | None = None):
    """`pipeline.memory`'s report of this search on `strategy`'s devices."""
    from pipeline import memory

    device, replicas, available, source = memory.device_memory(strategy)
    try:  # a multi-worker run: the replicas of this worker share its host
        local = len(strategy.extended.worker_devices)
    except (AttributeError, RuntimeError):
        local = replicas
    return memory.build_report(schema, cfg, data_dir, limit=memory_limit, replicas=replicas,
                               device=device, available=available, available_source=source,
                               host_replicas=min(local, replicas) or replicas)


def run_search(data_dir: str, model_dir: str, cfg: ExperimentConfig, *, logical_cpus: int = 0,
               quiet: bool = False, preset: str | None = None, strategy=None,
               memory_limit: int | None = None, dry_run: bool = False) -> dict | None:
    """Runs (or resumes) a search and returns the dims.json contents. First prints the memory
    model and refuses (MemoryLimitError, nothing written) a search that would not fit the
    device or `memory_limit` bytes; `dry_run`: prints it (stdout) and returns None."""
    from pipeline import runtime
    from pipeline.controller import Controller
    from pipeline.memory import MemoryLimitError
    from pipeline.search_task import AlphaLogging, Derivation, SearchTask
    from pipeline.strategy import make_strategy

    schema = DataSchema.load(data_dir)
    if schema.splits.get("train", 0) <= 0 or schema.splits.get("valid", 0) <= 0:
        raise ConfigError(f"{data_dir}: the search needs non-empty train and valid splits, "
                          f"schema.json has {schema.splits}")
    strategy = strategy or make_strategy(logical_cpus)
    from pipeline import budget as budget_lib

    # refused (ConfigError naming the flag and the smallest model) before anything is written
    budget_lib.resolve(cfg.search, [f.vocab_size for f in schema.fields], cfg.model.candidate_dims)
    report = memory_report(data_dir, schema, cfg, strategy, memory_limit)
    if dry_run:
        try:
            report.check()
            verdict = "the search fits"
        except MemoryLimitError as exc:
            verdict = f"the search would be refused: {exc}"
        print(f"{report.format()}\n  {verdict}", flush=True)
        return None
    from pipeline import parameter_server

    print(report.format(), file=sys.stderr, flush=True)
    if parameter_server.is_parameter_server(strategy):
        # the model's figures are for one device; here the tables and their slots are split
        print(f"  --strategy parameter_server: the tables and their optimizer slots are split "
              f"by rows over {parameter_server.num_ps(strategy)} ps tasks (not checked against "
              f"this host)", file=sys.stderr, flush=True)
    else:
        report.check()
    record = {"kind": "search", "preset": preset, "config": to_dict(cfg),
              "config_hash": run_hash(cfg), "schema_hash": schema.schema_hash,
              "data_dir": fileio.absolute(data_dir)}
    # the stored config is re-hashed (and its differing keys named) with the same run_hash
    model_dir = runtime.prepare_model_dir(model_dir, record, rehash=run_hash)
    task = SearchTask(strategy, data_dir, schema, cfg, search_schedule(cfg, schema.splits["train"]),
                      preset=preset)
    derivation = Derivation(task, model_dir)
    Controller(task, model_dir, task.settings(), hooks=[AlphaLogging(task), derivation],
               quiet=quiet).run()
    result = derivation.result
    del task, derivation  # the supernet is freed before a retraining in this process starts
    runtime.collect_garbage()
    return result


def search_embedding_name(model_cfg) -> str:
    """The SEARCH_EMBEDDINGS name of a model config's search embedding ("custom" if none)."""
    from configs.experiment import SEARCH_EMBEDDINGS

    for name, settings in SEARCH_EMBEDDINGS.items():
        if all(getattr(model_cfg, k) == v for k, v in settings.items()):
            return name
    return "custom"


def search_hparams(cfg: ExperimentConfig, sched: dict, schema: DataSchema,
                   preset: str | None) -> dict:
    """The settings of a search that its HParams session records: what it searched with (backbone,
    search embedding, candidates), the parameter cost and the temperature/alpha schedule that
    shape alpha (the effective alpha learning rate and update period of `search_schedule`)."""
    m, s = cfg.model, cfg.search
    hparams = {
        "kind": "search", "dataset": schema.dataset, "preset": preset or "",
        "backbone": m.backbone, "search_embedding": search_embedding_name(m),
        "lookup": m.lookup, "unify": m.unify, "candidate_norm": m.candidate_norm,
        "candidate_dims": ",".join(str(d) for d in m.candidate_dims), "variant": s.variant,
        "param_cost": s.param_cost, "param_cost_weighting": s.param_cost_weighting,
        "temperature": s.temperature, "temperature_min": s.temperature_min,
        "arch_lr_budget": s.arch_lr_budget, "min_arch_updates": s.min_arch_updates,
        "arch_learning_rate": float(sched["arch_learning_rate"]),
        "arch_update_every": int(sched["arch_update_every"]),
        "learning_rate": s.learning_rate, "batch_size": s.batch_size, "seed": s.seed,
        "derive": s.derive,
    }
    for key in BUDGET_KEYS:
        if getattr(s, key):
            hparams[key] = getattr(s, key)
            hparams["budget_multiplier_lr"] = s.budget_multiplier_lr
    if s.temperature == "paper":  # the decay only shapes the paper's schedule
        hparams["temperature_decay"] = s.temperature_decay
    return hparams


def dims_record(schema: DataSchema, cfg: ExperimentConfig, probs, chosen, sched, step,
                derivation: dict | None = None) -> dict:
    """dims.json: per field the derived "dim" (what retraining reads) and alpha's probabilities;
    `chosen` are the argmax dims. A validated `derivation` (pipeline.derive) supplies the dims and
    each field also records its "argmax_dim"."""
    derivation = derivation or {"method": "argmax"}
    validated = derivation["method"] == "validated"
    dmax = max(cfg.model.candidate_dims)
    fields = {}
    for fs, p, a in zip(schema.fields, probs, chosen, strict=True):
        d = int(derivation["dims"][fs.name]) if validated else int(a)
        fields[fs.name] = {"dim": d, "probabilities": [round(float(x), 6) for x in p],
                           "vocab_size": fs.vocab_size, "params": fs.vocab_size * d,
                           "full_params": fs.vocab_size * dmax}
        if validated:
            fields[fs.name]["argmax_dim"] = int(a)
    params = sum(v["params"] for v in fields.values())
    full = sum(v["full_params"] for v in fields.values())
    return {"dataset": schema.dataset, "schema_hash": schema.schema_hash,
            "config_hash": run_hash(cfg), "backbone": cfg.model.backbone,
            "variant": cfg.search.variant, "lookup": cfg.model.lookup, "unify": cfg.model.unify,
            "candidate_dims": list(cfg.model.candidate_dims),
            "field_order": list(schema.field_names),
            "fields": fields, "embedding_params": params, "full_embedding_params": full,
            "params_share": params / full if full else 0.0, "steps": step, "schedule": sched,
            "derivation": derivation}


def format_dims(result: dict) -> str:
    method = result.get("derivation", {}).get("method", "argmax")
    how = "" if method == "argmax" else f", {method}"
    lines = [f"chosen dimensions ({result['embedding_params']:,} embedding parameters, "
             f"{100 * result['params_share']:.1f}% of all fields at {max(result['candidate_dims'])}"
             f"{how}):"]
    for name in result["field_order"]:
        v = result["fields"][name]
        moved = (f"  (argmax {v['argmax_dim']})"
                 if v.get("argmax_dim", v["dim"]) != v["dim"] else "")
        lines.append(f"  {name:<16} dim {v['dim']:>3}  vocab {v['vocab_size']:>9,}  "
                     f"p=[{' '.join(f'{x:.2f}' for x in v['probabilities'])}]{moved}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = StrictArgumentParser(prog="python -m pipeline.search", description=__doc__)
    add_experiment_flags(parser)
    add_memory_flags(parser)
    parser.add_argument("--seeds", metavar="N|S1,S2,...",
                        help="search once per seed (N: search.seed + 0..N-1; or a list) in "
                             "MODEL_DIR/seed<k>/, report the Pearson/Spearman correlation of the "
                             "chosen dims between seeds and write the per-field median as "
                             "MODEL_DIR/dims.json (pipeline/consensus.py)")
    budget_lib.add_flags(parser)
    args = parser.parse_args(argv)

    def body():
        from pipeline.memory import parse_bytes

        seeds = _seeds_option(args)  # checked before anything runs
        budget_sets = budget_lib.overrides(args)  # a bad budget is refused before anything
        limit = None if args.memory_limit is None else parse_bytes(args.memory_limit)
        # the strategy must precede any TensorFlow op
        strategy = make_cli_strategy(args.logical_cpus, args.strategy)
        schema = DataSchema.load(args.data_dir)
        preset = args.preset or preset_for_dataset(schema.dataset)
        cfg = resolve(preset, args.config, args.set + budget_sets)
        budget_lib.resolve(cfg.search, [f.vocab_size for f in schema.fields],
                           cfg.model.candidate_dims)  # before TensorFlow starts
        if seeds is not None:
            from pipeline.consensus import run_seeds, seed_list

            argv = (["--data_dir", args.data_dir, "--preset", preset]
                    + (["--config", args.config] if args.config else [])
                    + [a for item in args.set for a in ("--set", item)])
            run_seeds(args.data_dir, args.model_dir, cfg, seed_list(seeds, cfg.search.seed),
                      quiet=args.quiet, preset=preset, strategy=strategy, memory_limit=limit,
                      dry_run=args.dry_run, cli_argv=argv)
            return
        run_search(args.data_dir, args.model_dir, cfg, quiet=args.quiet, preset=preset,
                   strategy=strategy, memory_limit=limit, dry_run=args.dry_run)

    return run_main(body)


def _seeds_option(args):
    """--seeds parsed (None without it); refused with a cluster --strategy."""
    if args.seeds is None:
        return None
    from pipeline.consensus import parse_seeds

    seeds = parse_seeds(args.seeds, "--seeds")
    if args.strategy in ("multi_worker", "parameter_server"):
        raise UsageError(f"--seeds and --strategy {args.strategy} do not combine: run one "
                         f"{args.strategy} search per seed (--set search.seed=K)")
    return seeds


if __name__ == "__main__":
    sys.exit(main())
