"""Dimensions that hold across seeds: the search run once per seed, the chosen dimensions compared
between seeds (Pearson and Spearman, the paper's stability measure) and a consensus dims.json.

    python -m pipeline.search --data_dir DIR --model_dir DIR --seeds 3      # search.seed + 0, 1, 2
    python -m pipeline.search --data_dir DIR --model_dir DIR --seeds 0,4,7  # these seeds
    python -m pipeline.run ... --search_seeds 3                             # WORKDIR/search

Layout: MODEL_DIR/seed<k>/ is seed k's ordinary search directory (resumable; a finished one, same
config, is skipped without loading TensorFlow's model), MODEL_DIR/config.json records the
multi-seed run (kind `search_seeds`: a single search's directory is refused and vice versa), and
MODEL_DIR/dims.json is the consensus, in the format `pipeline.retrain --dims` reads.

The consensus: per field the median of the seeds' dimensions; with an even number of seeds the
lower of the two middle ones (the smaller model, the side the parameter cost pushes towards). The
median of candidate dimensions is always one of the seeds' own choices, so it is a candidate.
`consensus` in dims.json records the seeds, the Pearson and Spearman correlation of the chosen
dimension vectors for every pair of seeds and their mean (null, with the reason, when one of the
two vectors is constant: a correlation is undefined there), and per field the seeds' dimensions
and their disagreement (max - min, and in candidate steps).

Devices: on a CPU, or one GPU, the seeds run one after another in this process. With two or more
visible GPUs each seed runs as its own `python -m pipeline.search` process that sees one GPU
(CUDA_VISIBLE_DEVICES), so it gets a single-device strategy on it; as many at once as there are
GPUs. (That path is exercised on the CPU by the tests, with device slots that hide every GPU.)
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from configs import fileio
from configs.cli import JobError, UsageError
from configs.loader import ConfigError, merge, to_dict

KIND = "search_seeds"
SEED_DIR = "seed{}"
# dims.json keys that are the same for every seed (the rest is recomputed or left out: a per-seed
# search's own metrics, budget records or validated moves do not describe the consensus)
_SHARED_KEYS = ("dataset", "schema_hash", "backbone", "variant", "lookup", "unify",
                "candidate_dims", "field_order", "schedule")


def parse_seeds(value, flag: str = "--seeds") -> int | list[int]:
    """`"3"` -> 3 (that many seeds from search.seed on), `"0,4,7"` -> [0, 4, 7]. Refuses fewer than
    two seeds, negative or non-integer values and repeated seeds, naming `flag`."""
    text = str(value).strip()
    items = [s.strip() for s in text.split(",")]
    try:
        numbers = [int(s) for s in items]
    except ValueError:
        raise UsageError(f"{flag} {value!r}: expected a number of seeds N >= 2 or a list of "
                         f"distinct non-negative seeds, e.g. {flag} 3 or {flag} 0,1,2") from None
    if "," not in text:
        n = numbers[0]
        if n < 2:
            raise UsageError(f"{flag} {value!r}: needs at least 2 seeds to compare (a single "
                             f"search is the command without {flag})")
        return n
    if len(numbers) < 2:
        raise UsageError(f"{flag} {value!r}: a list needs at least 2 seeds")
    negative = [n for n in numbers if n < 0]
    if negative:
        raise UsageError(f"{flag} {value!r}: seeds must be non-negative, got {negative[0]}")
    repeated = sorted({n for n in numbers if numbers.count(n) > 1})
    if repeated:
        raise UsageError(f"{flag} {value!r}: seed {repeated[0]} is given twice")
    return numbers


def seed_list(spec: int | list[int], base_seed: int) -> list[int]:
    """The seeds a parse_seeds result names: N -> base_seed + 0 .. N-1."""
    return list(spec) if isinstance(spec, list) else [base_seed + i for i in range(spec)]


def consensus_dim(dims, candidates) -> int:
    """The median of the seeds' dimensions; for an even count the lower middle one. A value that
    is not a candidate (never from a search) is snapped to the nearest candidate, the smaller on a
    tie."""
    values = sorted(int(d) for d in dims)
    if not values:
        raise ValueError("consensus_dim needs at least one dimension")
    median = values[(len(values) - 1) // 2]
    cands = sorted(int(c) for c in candidates or ())
    if cands and median not in cands:
        median = min(cands, key=lambda c: (abs(c - median), c))
    return median


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their mean rank (as Spearman's rho needs)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), float)
    ranks[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def pearson(a, b) -> float | None:
    """Pearson's r of two vectors; None when either is constant (r is undefined)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) != len(b):
        raise ValueError(f"vectors of different lengths: {len(a)} and {len(b)}")
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a, b) -> float | None:
    """Spearman's rho (Pearson's r of the tie-averaged ranks); None when either is constant."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return pearson(_ranks(a), _ranks(b))


def correlations(per_seed: dict[int, list[int]]) -> dict:
    """{"pearson": {"seedA/seedB": r, ..., "mean": m}, "spearman": {...}} over every pair of
    seeds (in the given order); an undefined pair is null and named under "undefined", the mean
    is over the defined pairs (null if none)."""
    seeds = list(per_seed)
    out: dict = {}
    for name, fn in (("pearson", pearson), ("spearman", spearman)):
        pairs = {}
        for i, s in enumerate(seeds):
            for t in seeds[i + 1:]:
                pairs[f"seed{s}/seed{t}"] = fn(per_seed[s], per_seed[t])
        defined = [v for v in pairs.values() if v is not None]
        out[name] = {**pairs, "mean": float(np.mean(defined)) if defined else None}
    constant = [f"seed{s}" for s in seeds if len(set(per_seed[s])) == 1]
    if constant:
        out["undefined"] = (f"{', '.join(constant)} chose the same dimension for every field: "
                            f"a correlation with a constant vector is undefined (null); the means "
                            f"are over the other pairs")
    return out


def consensus_record(records: dict[int, dict]) -> dict:
    """The consensus dims.json of the seeds' dims.json contents ({seed: record}, in seed order):
    per field the consensus dimension (`consensus_dim`), the mean of the seeds' probabilities, the
    parameters; at top level the shared keys of the seeds' records and `consensus`."""
    seeds = list(records)
    first = records[seeds[0]]
    for s in seeds[1:]:
        r = records[s]
        for key in ("schema_hash", "field_order", "candidate_dims", "backbone"):
            if r.get(key) != first.get(key):
                raise ConfigError(f"seed {s}'s dims.json has another {key} than seed {seeds[0]}'s "
                                  f"({r.get(key)!r} vs {first.get(key)!r}); the seeds must be "
                                  f"searches of one config on one dataset")
    names, cands = first["field_order"], first["candidate_dims"]
    dmax = max(cands)
    per_seed = {s: [int(records[s]["fields"][n]["dim"]) for n in names] for s in seeds}
    fields, disagreement = {}, {}
    for j, name in enumerate(names):
        dims = [per_seed[s][j] for s in seeds]
        d = consensus_dim(dims, cands)
        vocab = int(first["fields"][name]["vocab_size"])
        probs = np.mean([records[s]["fields"][name]["probabilities"] for s in seeds], axis=0)
        fields[name] = {"dim": d, "probabilities": [round(float(x), 6) for x in probs],
                        "vocab_size": vocab, "params": vocab * d, "full_params": vocab * dmax}
        steps = [cands.index(x) for x in dims if x in cands]
        disagreement[name] = {"dims": dims, "agree": len(set(dims)) == 1,
                              "disagreement": max(dims) - min(dims),
                              "candidate_steps": max(steps) - min(steps) if steps else None}
    params = sum(v["params"] for v in fields.values())
    full = sum(v["full_params"] for v in fields.values())
    record = {k: first[k] for k in _SHARED_KEYS if k in first}
    record.update({
        "config_hash": first.get("config_hash"), "fields": fields, "embedding_params": params,
        "full_embedding_params": full, "params_share": params / full if full else 0.0,
        "steps": first.get("steps"),
        "derivation": {"method": "consensus",
                       "seed_method": first.get("derivation", {}).get("method", "argmax"),
                       "rule": "per field the median of the seeds' dims (even count: the lower "
                               "middle one)"},
        "consensus": {"seeds": seeds, **correlations(per_seed), "fields": disagreement,
                      "seed_config_hashes": {f"seed{s}": records[s].get("config_hash")
                                             for s in seeds},
                      "seed_embedding_params": {f"seed{s}": records[s].get("embedding_params")
                                                for s in seeds}},
    })
    return record


def format_consensus(record: dict) -> str:
    """The seeds' dimensions per field beside the consensus, and the correlations."""
    c = record["consensus"]
    seeds = c["seeds"]

    def show(x):
        return "n/a" if x is None else f"{x:.3f}"

    head = "  ".join(f"{'s' + str(s):>4}" for s in seeds)
    lines = [f"consensus of seeds {', '.join(map(str, seeds))} (median per field):",
             f"  {'field':<16} {head}  consensus  max-min"]
    for name in record["field_order"]:
        f = c["fields"][name]
        lines.append(f"  {name:<16} " + "  ".join(f"{d:>4}" for d in f["dims"])
                     + f"  {record['fields'][name]['dim']:>9}  {f['disagreement']:>7}")
    for kind in ("pearson", "spearman"):
        pairs = ", ".join(f"{k} {show(v)}" for k, v in c[kind].items() if k != "mean")
        lines.append(f"  {kind.capitalize()}: mean {show(c[kind]['mean'])} ({pairs})")
    if "undefined" in c:
        lines.append(f"  note: {c['undefined']}")
    lines.append(f"  consensus: {record['embedding_params']:,} embedding parameters "
                 f"({100 * record['params_share']:.1f}% of all fields at "
                 f"{max(record['candidate_dims'])})")
    return "\n".join(lines)


def seed_config(cfg, seed: int):
    """The config with search.seed = seed."""
    return merge(cfg, {"search": {"seed": seed}})


def _finished(seed_dir, cfg) -> dict | None:
    """The seed's dims.json when its search finished with exactly this config (else None: the
    search is run, which resumes, re-derives or refuses as a single search does)."""
    dims_file, config_file = seed_dir / "dims.json", seed_dir / "config.json"
    if not (dims_file.exists() and config_file.exists()):
        return None
    try:
        stored = json.loads(config_file.read_text(encoding="utf-8"))
        dims = json.loads(dims_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if stored.get("config") != json.loads(json.dumps(to_dict(cfg))):
        return None
    return dims


def gpu_slots() -> list[str]:
    """The CUDA_VISIBLE_DEVICES value for each visible GPU (honouring one already set)."""
    import tensorflow as tf

    n = len(tf.config.list_physical_devices("GPU"))
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [s for s in given.split(",") if s.strip()] if given else [str(i) for i in range(n)]
    return ids[:n]


def run_seeds(data_dir: str, model_dir: str, cfg, seeds: list[int], *, preset: str | None = None,
              quiet: bool = False, strategy=None, memory_limit: int | None = None,
              dry_run: bool = False, cli_argv: list[str] | None = None,
              device_slots: list[str] | None = None) -> dict | None:
    """Searches once per seed (MODEL_DIR/seed<k>/, finished seeds skipped) and writes the
    consensus MODEL_DIR/dims.json; returns its contents. `cli_argv` (the pipeline.search flags
    that give `cfg`: --data_dir, --preset, --config, --set ...) lets each seed run as its own
    process, one per entry of `device_slots` (CUDA_VISIBLE_DEVICES values; default: one per
    visible GPU when there are two or more and no `strategy` was given); else the seeds run in
    this process one after another."""
    from configs.experiment import run_hash
    from configs.features import DataSchema
    from pipeline import runtime
    from pipeline.search import DIMS_FILE, run_search

    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise UsageError(f"the seeds must be at least two distinct values, got {seeds}")
    from pipeline.budget import requested

    budget = requested(cfg.search)
    if budget is not None:  # refused before any seed runs
        raise UsageError(f"search.{budget[0]}: a budget and several seeds do not combine yet "
                         f"(each seed's dims keep the budget, their per-field median need not); "
                         f"search with the budget once per seed (--set search.seed=K)")
    schema = DataSchema.load(data_dir)
    root = fileio.path(model_dir)
    if dry_run:  # every seed has the same memory model
        return run_search(data_dir, str(root / SEED_DIR.format(seeds[0])), seed_config(cfg,
                          seeds[0]), quiet=quiet, preset=preset, strategy=strategy,
                          memory_limit=memory_limit, dry_run=True)
    pending = [s for s in seeds
               if _finished(root / SEED_DIR.format(s), seed_config(cfg, s)) is None]
    if device_slots is None and strategy is None and cli_argv is not None and len(pending) > 1:
        slots = gpu_slots()
        device_slots = slots if len(slots) >= 2 else None
    processes = bool(pending and device_slots and cli_argv is not None)
    if not processes and pending:  # refused before anything is written, as a single search is
        from pipeline.search import memory_report
        from pipeline.strategy import make_strategy

        strategy = strategy or make_strategy(0)
        memory_report(data_dir, schema, cfg, strategy, memory_limit).check()
    record = {"kind": KIND, "preset": preset, "config": to_dict(cfg),
              "config_hash": run_hash(cfg), "schema_hash": schema.schema_hash,
              "data_dir": fileio.absolute(data_dir), "seeds": seeds}
    # a single search's directory (kind `search`) is refused: its dims.json is not replaced
    runtime.prepare_model_dir(root, record, rehash=run_hash)
    records: dict[int, dict] = {}
    for s in seeds:
        if s not in pending:
            print(f"seed {s}: finished search in {root / SEED_DIR.format(s)}, skipped",
                  flush=True)
            records[s] = _finished(root / SEED_DIR.format(s), seed_config(cfg, s))
    todo = pending
    if processes:
        _run_processes(root, todo, cli_argv, device_slots, quiet, memory_limit)
        for s in todo:
            records[s] = json.loads((root / SEED_DIR.format(s) / DIMS_FILE).read_text(
                encoding="utf-8"))
    else:
        for i, s in enumerate(todo):
            print(f"seed {s} ({i + 1} of {len(todo)} to search) -> {root / SEED_DIR.format(s)}",
                  flush=True)
            records[s] = run_search(data_dir, str(root / SEED_DIR.format(s)),
                                    seed_config(cfg, s), quiet=quiet, preset=preset,
                                    strategy=strategy, memory_limit=memory_limit)
    result = consensus_record({s: records[s] for s in seeds})
    runtime.atomic_write_json(root / DIMS_FILE, result)
    print(format_consensus(result), flush=True)
    return result


def _run_processes(root, seeds: list[int], cli_argv: list[str], slots: list[str], quiet: bool,
                   memory_limit: int | None) -> None:
    """Each seed as `python -m pipeline.search` in its own process seeing one device slot, as many
    at once as there are slots; a failed seed fails the run (its exit code and log named)."""
    pending, running, failed = list(seeds), {}, []
    repo = str(Path(__file__).resolve().parents[1])  # the child imports this very code
    path = os.environ.get("PYTHONPATH")
    env_base = dict(os.environ, PYTHONPATH=repo + (os.pathsep + path if path else ""))
    while pending or running:
        while pending and len(running) < len(slots):
            free = [i for i in range(len(slots)) if i not in running.values()]
            seed = pending.pop(0)
            seed_dir = root / SEED_DIR.format(seed)
            argv = [*cli_argv, "--model_dir", str(seed_dir), "--set", f"search.seed={seed}",
                    "--quiet"]
            if memory_limit is not None:
                argv += ["--memory_limit", str(memory_limit)]
            # its output: MODEL_DIR/seed<k>.log (a remote MODEL_DIR: this process's own)
            log = None if fileio.is_remote(root) else Path(str(root)) / f"seed{seed}.log"
            print(f"seed {seed} -> {seed_dir} (process on CUDA_VISIBLE_DEVICES={slots[free[0]]!r}"
                  + (f", log {log})" if log else ")"), flush=True)
            with (open(log, "a", encoding="utf-8") if log else contextlib.nullcontext()) as out:
                proc = subprocess.Popen([sys.executable, "-m", "pipeline.search", *argv],
                                        env={**env_base,
                                             "CUDA_VISIBLE_DEVICES": slots[free[0]]},
                                        stdout=out, stderr=subprocess.STDOUT if out else None)
            running[proc] = free[0]
            proc.seed, proc.log = seed, log
        for proc in list(running):
            if proc.poll() is not None:
                del running[proc]
                if proc.returncode != 0:
                    failed.append((proc.seed, proc.returncode, proc.log))
        if running:
            try:
                next(iter(running)).wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
    if failed:
        seed, code, log = failed[0]
        raise JobError(f"the search of seed {seed} failed (exit {code}; its output: {log})"
                       + (f" and {len(failed) - 1} more seed(s)" if len(failed) > 1 else ""))
