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
`tolerance` is an AUC margin, or `<K>se` (`--cost_tolerance 1se`): every candidate's saved
validation predictions (retrain's valid_predictions.npz) are compared with the best one's by
DeLong's paired test, and a smaller model is kept unless it validates worse by more than K
standard errors of that paired difference -- "equal AUC" measured against the validation set's
own noise, which shrinks as the data grows.
Every stage resumes like a single search and retraining (finished ones are skipped).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from configs import fileio
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


def parse_tolerance(text: str | float) -> float | str:
    """`--cost_tolerance`: a number (an AUC margin, >= 0) or `<K>se` (K >= 0 standard errors of
    the paired validation AUC difference, DeLong): "0.001" -> 0.001, "1se" -> "1se"."""
    raw = str(text).strip()
    body = raw[:-2] if raw.lower().endswith("se") else raw
    try:
        value = float(body)
    except ValueError:
        raise ConfigError(f"--cost_tolerance must be a number or <K>se (e.g. 1se), got {raw!r}") \
            from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"--cost_tolerance must be >= 0, got {raw!r}")
    return f"{value:g}se" if body != raw else value


def se_multiple(tolerance: float | str) -> float | None:
    """K of a `<K>se` tolerance; None for a plain AUC margin."""
    return float(tolerance[:-2]) if isinstance(tolerance, str) else None


def paired_gaps(labels, scores: Sequence) -> tuple[list[float], list[float], list[float]]:
    """Each candidate's exact validation AUC, its gap to the best one, and the standard error of
    that gap (DeLong's paired test on the same validation examples; 0 for the best itself)."""
    from pipeline.evaluation import delong

    aucs, cov = delong(labels, scores)
    best = int(np.argmax(aucs))
    gaps = [float(aucs[best] - a) for a in aucs]
    ses = [float(math.sqrt(max(cov[best, best] + cov[i, i] - 2 * cov[best, i], 0.0)))
           for i in range(len(aucs))]
    return [float(a) for a in aucs], gaps, ses


def choose(candidates: Sequence[dict], tolerance: float | str = 0.0) -> int:
    """Index of the candidate to keep: the fewest `params` among those close to the best.

    With a number, close means `best_valid_auc` within `tolerance` of the highest. With `<K>se`,
    each candidate carries `valid_gap` (its exact validation AUC below the best's) and
    `valid_gap_se` (that gap's paired standard error), and close means gap <= K * se: the
    smaller model is kept unless validation shows it is worse beyond noise. Ties: the first."""
    if not candidates:
        raise ValueError("no candidates to choose from")
    k = se_multiple(tolerance)
    if k is None:
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        best = max(c["best_valid_auc"] for c in candidates)
        close = [i for i, c in enumerate(candidates) if c["best_valid_auc"] >= best - tolerance]
    else:
        if k < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        close = [i for i, c in enumerate(candidates) if c["valid_gap"] <= k * c["valid_gap_se"]]
    return min(close, key=lambda i: (candidates[i]["params"], i))


def valid_predictions(retrain_dir: str | Path, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) on the validation split at a retrained model's best weights:
    retrain's valid_predictions.npz, or, for a model_dir retrained before that file existed,
    recomputed once from its model.keras and saved."""
    from pipeline.retrain import VALID_PREDICTIONS_FILE

    path = fileio.path(retrain_dir) / VALID_PREDICTIONS_FILE
    if not path.exists():
        from configs.features import DataSchema
        from pipeline.export import load_keras_model
        from pipeline.retrain import save_valid_predictions

        schema = DataSchema.load(data_dir)
        save_valid_predictions(load_keras_model(fileio.path(retrain_dir)), data_dir, schema,
                               fileio.path(retrain_dir), 4096)
    from pipeline.runtime import load_npz

    with load_npz(path) as z:
        return z["labels"], z["probabilities"]


def tune_param_cost(data_dir: str, workdir: str | Path, cfg: ExperimentConfig,
                    costs: Sequence[float], *, tolerance: float | str = 0.0, quiet: bool = False,
                    preset: str | None = None, embeddings: Sequence[str] | None = None) -> dict:
    """Searches and retrains once per cost in `costs` (and per named search embedding in
    `embeddings`, if given), then chooses on validation AUC (see the module docstring). Returns
    the selection record (also written to WORKDIR/SELECTION_FILE): `candidates` (cost,
    embedding, directories, validation and test AUC, params, dims), `chosen` (its index),
    `tolerance` and `rule`."""
    from pipeline.retrain import retrain
    from pipeline.runtime import atomic_write_json
    from pipeline.search import run_search

    work = fileio.path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    records = []
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
        records.append({"param_cost": cost, "search_embedding": name,
                        "unify": cost_cfg.model.unify,
                        "candidate_norm": cost_cfg.model.candidate_norm,
                        "search_dir": str(search_dir),
                        "retrain_dir": str(retrain_dir),
                        "best_valid_auc": metrics["best_valid_auc"],
                        "test_auc": metrics["test_auc"], "test_logloss": metrics["test_logloss"],
                        "params": metrics["params"],
                        "dims": {n: dims["fields"][n]["dim"] for n in dims["field_order"]}})
    if se_multiple(tolerance) is not None:
        labels, scores = None, []
        for rec in records:
            y, p = valid_predictions(rec["retrain_dir"], data_dir)
            if labels is not None and not np.array_equal(y, labels):
                raise ConfigError(f"{rec['retrain_dir']}: its validation predictions are not of "
                                  f"the same validation split as the other candidates'")
            labels = y
            scores.append(p)
        aucs, gaps, ses = paired_gaps(labels, scores)
        for rec, auc, gap, se in zip(records, aucs, gaps, ses):
            rec.update(valid_auc_exact=auc, valid_gap=gap, valid_gap_se=se)
        rule = ("fewest embedding parameters among the candidates whose exact validation AUC is "
                "below the best's by at most `tolerance` standard errors of the paired "
                "difference (DeLong)")
    else:
        rule = "highest retrained validation AUC; within `tolerance` of it, the fewest embedding " \
               "parameters"
    chosen = choose(records, tolerance)
    selection = {"candidates": records, "chosen": chosen, "tolerance": tolerance, "rule": rule}
    atomic_write_json(work / SELECTION_FILE, selection)
    return selection


def format_selection(selection: dict) -> str:
    named = any(c.get("search_embedding") for c in selection["candidates"])
    paired = all("valid_gap_se" in c for c in selection["candidates"])
    head = f"{'embedding':>10} " if named else ""
    tail = f" {'gap / SE':>9}" if paired else ""
    lines = [f"{head}{'param cost':>10} {'valid AUC':>10} {'test AUC':>9} {'emb params':>11}{tail}"]
    for i, c in enumerate(selection["candidates"]):
        mark = "  <- chosen (validation)" if i == selection["chosen"] else ""
        emb = f"{c.get('search_embedding') or '':>10} " if named else ""
        gap = ""
        if paired:
            ratio = c["valid_gap"] / c["valid_gap_se"] if c["valid_gap_se"] > 0 else 0.0
            gap = f" {ratio:>9.2f}"
        lines.append(f"{emb}{cost_label(c['param_cost']):>10} {c['best_valid_auc']:>10.4f} "
                     f"{c['test_auc']:>9.4f} {c['params']:>11,}{gap}{mark}")
    if paired:
        lines.append(f"(gap / SE: validation AUC below the best's, in standard errors of the "
                     f"paired difference; tolerance {selection['tolerance']})")
    return "\n".join(lines)
