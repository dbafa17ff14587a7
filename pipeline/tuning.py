"""The search's parameter cost chosen on validation data: one search and retraining per cost.

`search.param_cost` trades AUC for embedding memory, and the best trade is data-dependent: on
Frappe, whose FDE AUC rises with every dimension, the presets' 0.05 leaves W&D below the FDE
frontier and 0.01 puts it above; on MovieLens-100k 0.05 does as well with fewer parameters
(BENCHMARKS.md, "Quality"). A user would try a few costs and keep the model that validates best;
`tune_param_cost` does that:

    WORKDIR/search_cost<c>    the search with search.param_cost = c -> dims.json
    WORKDIR/retrain_cost<c>   its dimensions retrained -> metrics.json (best_valid_auc)
    WORKDIR/param_cost_selection.json   every candidate and the choice

With `embeddings` (`pipeline.run --search_embeddings raw,ad2`; configs.experiment
SEARCH_EMBEDDINGS) every cost is searched with each named search embedding too. A candidate whose
embedding is the config's own keeps the plain directory names above; the others are
`search_<name>_cost<c>` / `retrain_<name>_cost<c>`.

The choice (`choose`) reads only the validation split: the highest retrained validation AUC;
among the candidates within `tolerance` of it, the one with the fewest embedding parameters.
Every stage resumes like a single search and retraining (finished ones are skipped).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from configs.experiment import SEARCH_EMBEDDINGS, ExperimentConfig
from configs.loader import ConfigError, merge

SELECTION_FILE = "param_cost_selection.json"


def parse_costs(text: str) -> tuple[float, ...]:
    """"0.01,0.05" -> (0.01, 0.05); each a finite number >= 0, no repeats."""
    costs = []
    for item in text.split(","):
        item = item.strip()
        try:
            cost = float(item)
        except ValueError:
            raise ConfigError(f"--param_costs: {item!r} is not a number (expected e.g. "
                              f"0.01,0.05)") from None
        if not math.isfinite(cost) or cost < 0:
            raise ConfigError(f"--param_costs: {item!r} must be a finite number >= 0")
        if cost in costs:
            raise ConfigError(f"--param_costs: {item!r} is given twice")
        costs.append(cost)
    if not costs:
        raise ConfigError("--param_costs: no costs given")
    return tuple(costs)


def parse_embeddings(text: str) -> tuple[str, ...]:
    """"raw,ad2" -> ("raw", "ad2"); each a name in SEARCH_EMBEDDINGS, no repeats."""
    names = []
    for item in text.split(","):
        item = item.strip()
        if item not in SEARCH_EMBEDDINGS:
            raise ConfigError(f"--search_embeddings: unknown {item!r}; known: "
                              f"{', '.join(SEARCH_EMBEDDINGS)}")
        if item in names:
            raise ConfigError(f"--search_embeddings: {item!r} is given twice")
        names.append(item)
    return tuple(names)


def _is_own_embedding(cfg: ExperimentConfig, name: str) -> bool:
    return all(getattr(cfg.model, k) == v for k, v in SEARCH_EMBEDDINGS[name].items())


def cost_label(cost: float) -> str:
    """The directory suffix of a cost: 0.05 -> "0.05", 0.0 -> "0"."""
    return f"{cost:g}"


def choose(candidates: Sequence[dict], tolerance: float = 0.0) -> int:
    """Index of the candidate (retrain metrics: `best_valid_auc`, `params`) to keep: the fewest
    params among those whose validation AUC is within `tolerance` of the best (ties: the first)."""
    if not candidates:
        raise ValueError("no candidates to choose from")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    best = max(c["best_valid_auc"] for c in candidates)
    close = [i for i, c in enumerate(candidates) if c["best_valid_auc"] >= best - tolerance]
    return min(close, key=lambda i: (candidates[i]["params"], i))


def tune_param_cost(data_dir: str, workdir: str | Path, cfg: ExperimentConfig,
                    costs: Sequence[float], *, tolerance: float = 0.0, quiet: bool = False,
                    preset: str | None = None, embeddings: Sequence[str] | None = None) -> dict:
    """Searches and retrains once per cost in `costs` (and per named search embedding in
    `embeddings`, if given), then chooses on validation AUC (see the module docstring). Returns
    the selection record (also written to WORKDIR/SELECTION_FILE): `candidates` (cost,
    embedding, directories, validation and test AUC, params, dims), `chosen` (its index),
    `tolerance` and `rule`."""
    from pipeline.retrain import retrain
    from pipeline.runtime import atomic_write_json
    from pipeline.search import run_search

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    candidates, records = [], []
    grid = [(name, cost) for name in (embeddings or (None,)) for cost in costs]
    for name, cost in grid:
        label = cost_label(cost)
        cost_cfg = merge(cfg, {"search": {"param_cost": cost}})
        prefix = ""
        if name is not None:
            cost_cfg = merge(cost_cfg, {"model": SEARCH_EMBEDDINGS[name]})
            prefix = "" if _is_own_embedding(cfg, name) else f"{name}_"
        search_dir = work / f"search_{prefix}cost{label}"
        retrain_dir = work / f"retrain_{prefix}cost{label}"
        if not quiet:
            what = f"param cost {label}" + (f", search embedding {name}" if name else "")
            print(f"{what}: search -> {search_dir}, retrain -> {retrain_dir}")
        dims = run_search(data_dir, str(search_dir), cost_cfg, quiet=quiet, preset=preset)
        metrics = retrain(data_dir, str(search_dir / "dims.json"), str(retrain_dir), cost_cfg,
                          quiet=quiet, preset=preset)
        candidates.append(metrics)
        records.append({"param_cost": cost, "search_embedding": name,
                        "unify": cost_cfg.model.unify,
                        "candidate_norm": cost_cfg.model.candidate_norm,
                        "search_dir": str(search_dir),
                        "retrain_dir": str(retrain_dir),
                        "best_valid_auc": metrics["best_valid_auc"],
                        "test_auc": metrics["test_auc"], "test_logloss": metrics["test_logloss"],
                        "params": metrics["params"],
                        "dims": {n: dims["fields"][n]["dim"] for n in dims["field_order"]}})
    chosen = choose(candidates, tolerance)
    selection = {"candidates": records, "chosen": chosen, "tolerance": tolerance,
                 "rule": "highest retrained validation AUC; within `tolerance` of it, the "
                         "fewest embedding parameters"}
    atomic_write_json(work / SELECTION_FILE, selection)
    return selection


def format_selection(selection: dict) -> str:
    named = any(c.get("search_embedding") for c in selection["candidates"])
    head = f"{'embedding':>10} " if named else ""
    lines = [f"{head}{'param cost':>10} {'valid AUC':>10} {'test AUC':>9} {'emb params':>11}"]
    for i, c in enumerate(selection["candidates"]):
        mark = "  <- chosen (validation)" if i == selection["chosen"] else ""
        emb = f"{c.get('search_embedding') or '':>10} " if named else ""
        lines.append(f"{emb}{cost_label(c['param_cost']):>10} {c['best_valid_auc']:>10.4f} "
                     f"{c['test_auc']:>9.4f} {c['params']:>11,}{mark}")
    return "\n".join(lines)
