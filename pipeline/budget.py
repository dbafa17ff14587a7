"""A hard memory budget for the dimension search (`--budget`, `--budget_ratio`, `--budget_bytes`).

The budget is a number B of embedding parameters (sum over fields of vocab_size x dim, what
dims.json calls `embedding_params`), given directly (`search.budget`), as a share of the model with
every field at the largest candidate (`search.budget_ratio`) or in bytes of the serving dtype
(`search.budget_bytes`; the SavedModel serves float32 tables, SERVING_DTYPE_BYTES = 4).

During the search (`BudgetConstraint`): the search aims at T = TARGET_SHARE x B, the middle of
the 5% window under the budget, from both sides: g = log(E[P] / T), where
E[P] = sum_m vocab_m x E_softmax(alpha_m)[d] is the expected number of parameters under alpha's
probabilities. The architecture loss gets the augmented-Lagrangian term w x g with
w = mu + rho x g held constant in the gradient: the multiplier mu (a non-trainable variable,
checkpointed with the search) integrates the violation after every alpha update,
mu <- mu + lr x g (`search.budget_multiplier_lr`), and rho x g (PROPORTIONAL) reacts at once,
which damps the overshoot a pure integral has under Adam's fixed-size alpha steps. Both run in
cross-replica context on the (already all-reduced) alpha, so every replica holds the same mu.
The log makes the violation scale-free (a budget 5x under the start weighs like 5x over).
The constraint is an equality, E[P] = T, not E[P] <= T: mu and w go negative when alpha has
moved under the target, and then pull the large fields' probabilities back up. The budget is
memory the user has granted, and with a one-sided constraint the early pressure collapsed the
largest fields to the smallest candidate (the other branches then stop training), leaving the
argmax far under the budget and the fill scoring the larger branches on untrained weights
(docs/DESIGN.md, "A hard memory budget"). While the budget is set it replaces
`search.param_cost` (w is the cost's weight).

After the search (`fit_budget`, numpy): the derived dimensions (argmax, or the validated
derivation's) are scored on the first `search.derive_max_rows` validation rows with alpha set to
a hard one-hot (`pipeline.derive.OneHotEvaluator`), each architecture once.
- repair: while the architecture is over B, every field that has a smaller candidate is tried one
  candidate down; the move with the smallest validation-loss increase per parameter saved
  (mean paired per-example loss difference / parameters saved) is taken. The smallest model fits
  (budgets below it are refused before anything runs), so the result is never over B.
- fill: while the architecture is under FILL_BELOW x B, every field one candidate up that still
  fits is tried; the move with the largest validation-loss decrease per parameter added is taken
  if one lowers the mean loss at all (`z` = 0), else the move with the smallest increase per
  parameter ("improves": false): the budget is memory the user has granted, the result lands in
  [FILL_BELOW x B, B] unless no candidate step fits, and larger dimensions usually retrain no
  worse (docs/DESIGN.md, "Derivation"; under-filled budgets retrained below the FDE frontier:
  BENCHMARKS.md, "Memory budget"). When no field's next candidate fits, an exchange: one field up
  a candidate, paid for by shrinking another, taken only if it lowers the validation loss and
  adds parameters (`_best_exchange`; recorded with "exchange").
dims.json records both lists under "budget".
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

from configs.cli import UsageError
from configs.loader import ConfigError

SERVING_DTYPE_BYTES = 4  # the exported embedding tables are float32
TARGET_SHARE = 0.975  # the search aims at the middle of [0.95 B, B]
FILL_BELOW = 0.95  # fill while the result is under this share of the budget
PROPORTIONAL = 0.1  # rho: the penalty weight's immediate response to the violation
KEYS = ("budget", "budget_ratio", "budget_bytes")
FLAGS = {key: f"--{key}" for key in KEYS}


# ---------------------------------------------------------------------- flags and config
def parse_flag(flag: str, text: str) -> float | int:
    """The value of --budget (whole parameters), --budget_ratio (0 < R <= 1) or --budget_bytes
    (bytes, or with K/M/G/T); a UsageError naming the flag for anything else."""
    if flag == "--budget_bytes":
        from pipeline.memory import parse_bytes

        if str(text).strip().startswith("-"):
            raise UsageError(f"{flag}: must be more than 0 bytes, got {text!r}")
        return parse_bytes(text, flag)
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{flag}: expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{flag}: must be more than 0, got {text!r}")
    if flag == "--budget_ratio":
        if value > 1:
            raise UsageError(f"{flag}: a share of the largest model, in (0, 1], got {text!r}")
        return value
    if value != int(value):
        raise UsageError(f"{flag}: a whole number of embedding parameters, got {text!r}")
    return int(value)


def add_flags(parser) -> None:
    """--budget | --budget_ratio | --budget_bytes (mutually exclusive)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--budget", metavar="PARAMS",
                       help="embedding parameters the searched model may use (sum over fields of "
                            "vocab x dim); sets search.budget")
    group.add_argument("--budget_ratio", metavar="R",
                       help="the budget as a share (0 < R <= 1) of the model with every field at "
                            "the largest candidate; sets search.budget_ratio")
    group.add_argument("--budget_bytes", metavar="BYTES",
                       help=f"the budget in bytes of float32 embedding tables "
                            f"({SERVING_DTYPE_BYTES} bytes a parameter; K, M, G, T allowed); "
                            f"sets search.budget_bytes")


def overrides(args) -> list[str]:
    """The --set overrides of the budget flag given (clearing the other two budget keys, so a
    flag replaces a budget of the config file), or [] when none is."""
    for key in KEYS:
        text = getattr(args, key, None)
        if text is not None:
            value = parse_flag(FLAGS[key], text)
            return [f"search.{k}={value if k == key else 0}" for k in KEYS]
    return []


@dataclasses.dataclass(frozen=True)
class Budget:
    """A resolved budget: `params` = B, and what was asked for."""

    params: int
    key: str  # budget | budget_ratio | budget_bytes
    value: float
    smallest: int  # every field at its smallest candidate
    full: int  # every field at its largest candidate

    @property
    def flag(self) -> str:
        return FLAGS[self.key]

    def requested(self) -> dict:
        return {"flag": self.flag, "value": self.value}


def format_value(value: float) -> str:
    """A requested budget as given: 0.25, 1,000,000."""
    return f"{int(value):,}" if float(value) == int(value) else f"{value:g}"


def requested(search_cfg) -> tuple[str, float] | None:
    """(key, value) of the budget a search config sets, or None."""
    for key in KEYS:
        value = getattr(search_cfg, key)
        if value:
            return key, value
    return None


def resolve(search_cfg, vocab_sizes: Sequence[int], candidate_dims: Sequence[int]) -> Budget | None:
    """The budget of a search config on data with these vocabularies (None: no budget). A budget
    below the smallest possible model is a ConfigError naming the flag and that size."""
    asked = requested(search_cfg)
    if asked is None:
        return None
    key, value = asked
    v = np.asarray(vocab_sizes, np.int64)
    smallest = int(v.sum() * min(candidate_dims))
    full = int(v.sum() * max(candidate_dims))
    if key == "budget":
        params = int(value)
    elif key == "budget_ratio":
        params = int(math.floor(value * full))
    else:
        params = int(value) // SERVING_DTYPE_BYTES
    if params < smallest:
        size = f"{smallest:,} embedding parameters"
        if key == "budget_bytes":
            size += f" = {smallest * SERVING_DTYPE_BYTES:,} bytes as float32"
        elif key == "budget_ratio":
            size += f" = ratio {smallest / full:.4g}"
        raise ConfigError(
            f"{FLAGS[key]} (search.{key}) {format_value(value)}: below the smallest possible "
            f"model, {size} (every field at dim {min(candidate_dims)}); a budget of "
            f"{params:,} parameters cannot be met")
    return Budget(params, key, float(value), smallest, full)


# ---------------------------------------------------------------------- the search's constraint
class BudgetConstraint:
    """The Lagrangian budget term of the architecture loss and its multiplier (create under the
    strategy's scope)."""

    def __init__(self, embedding, vocab_sizes: Sequence[int], budget: Budget,
                 multiplier_lr: float):
        import tensorflow as tf

        self.embedding = embedding
        self.budget = budget
        self.target = float(budget.params) * TARGET_SHARE
        self.lr = float(multiplier_lr)
        self.rho = PROPORTIONAL
        self._vocab = tf.constant(np.asarray(vocab_sizes, np.float32))
        self.multiplier = tf.Variable(0.0, dtype=tf.float32, trainable=False,
                                      name="budget_multiplier")

    def expected_params(self):
        """E[P] = sum_m vocab_m x E[d_m], differentiable in alpha."""
        import tensorflow as tf

        return tf.reduce_sum(self._vocab * self.embedding.expected_dims())

    def violation(self):
        """g = log(E[P] / T): > 0 over the target; g <= 0 is the constraint."""
        import tensorflow as tf

        return tf.math.log(self.expected_params() / self.target)

    def weight(self):
        """The penalty's weight mu + rho x g (the augmented Lagrangian's: the proportional term
        rho x g reacts at once, the multiplier mu integrates); negative under the target."""
        import tensorflow as tf

        mu = tf.convert_to_tensor(self.multiplier)
        return mu + self.rho * tf.stop_gradient(self.violation())

    def penalty(self):
        """weight x g, the weight held constant (neither mu nor rho x g is trained)."""
        import tensorflow as tf

        return tf.stop_gradient(self.weight()) * self.violation()

    def update(self) -> None:
        """Dual ascent after an alpha update, mu <- mu + lr x g (cross-replica
        context: alpha is the same on every replica, so is the new multiplier)."""
        import tensorflow as tf

        mu = tf.convert_to_tensor(self.multiplier)
        self.multiplier.assign(mu + self.lr * self.violation())

    def scalars(self) -> dict:
        """The TensorBoard scalars (eager)."""
        return {"budget/multiplier": float(self.multiplier.numpy()),
                "budget/expected_params": float(self.expected_params().numpy()),
                "budget/params": float(self.budget.params)}


# ---------------------------------------------------------------------- derivation (numpy)
def params_of(dims: Sequence[int], vocab_sizes: Sequence[int]) -> int:
    return int(sum(int(v) * int(d) for v, d in zip(vocab_sizes, dims, strict=True)))


def _step(candidates: Sequence[int], dim: int, up: bool) -> int | None:
    """The next candidate above (up) or below `dim`, or None."""
    others = [c for c in candidates if (c > dim if up else c < dim)]
    if not others:
        return None
    return min(others) if up else max(others)


def fit_budget(evaluate: Callable[[tuple], np.ndarray], start: Sequence[int],
               candidates: Sequence[Sequence[int]], vocab_sizes: Sequence[int], budget: int,
               names: Sequence[str], z: float = 0.0, fill: bool = True) -> dict:
    """Repairs `start` to at most `budget` parameters, then (`fill`) grows it towards the budget
    where the validation loss improves (module docstring). evaluate(dims tuple) -> per-example
    validation losses, the same rows every call. Returns {"dims", "repair", "fill",
    "evaluations"}."""
    from pipeline.derive import cached_losses, paired_difference

    losses, cache = cached_losses(evaluate)
    current = tuple(int(d) for d in start)
    smallest = tuple(min(c) for c in candidates)
    if params_of(smallest, vocab_sizes) > budget:
        raise ValueError(f"no architecture fits {budget:,} parameters (the smallest has "
                         f"{params_of(smallest, vocab_sizes):,})")
    repair, grown = [], []
    while params_of(current, vocab_sizes) > budget:
        best = None
        for m, cands in enumerate(candidates):
            to = _step(cands, current[m], up=False)
            if to is None:
                continue
            trial = current[:m] + (to,) + current[m + 1:]
            delta, _ = paired_difference(losses(trial), losses(current))
            saved = int(vocab_sizes[m]) * (current[m] - to)
            score = delta / saved
            if best is None or score < best[0]:
                best = (score, m, to, saved, delta)
        _, m, to, saved, delta = best
        repair.append({"field": names[m], "from": current[m], "to": to, "params_saved": saved,
                       "valid_loss_delta": delta})
        current = current[:m] + (to,) + current[m + 1:]
    while fill and params_of(current, vocab_sizes) < FILL_BELOW * budget:
        room = budget - params_of(current, vocab_sizes)
        best = best_any = None
        for m, cands in enumerate(candidates):
            to = _step(cands, current[m], up=True)
            if to is None or int(vocab_sizes[m]) * (to - current[m]) > room:
                continue
            trial = current[:m] + (to,) + current[m + 1:]
            delta, se = paired_difference(losses(trial), losses(current))
            added = int(vocab_sizes[m]) * (to - current[m])
            move = (delta / added, m, to, added, delta)
            if best_any is None or move[0] < best_any[0]:
                best_any = move
            if delta < -z * se and (best is None or move[0] < best[0]):
                best = move
        if best_any is None:  # no single step fits: an exchange, else as close as it gets
            swap = _best_exchange(losses, current, candidates, vocab_sizes, budget, z)
            if swap is None:
                break
            trial, s, m, delta, added = swap
            grown.append({"field": names[m], "from": current[m], "to": trial[m],
                          "params_saved": -added, "valid_loss_delta": delta, "improves": True,
                          "exchange": {"field": names[s], "from": current[s], "to": trial[s]}})
            current = trial
            continue
        _, m, to, added, delta = best if best is not None else best_any
        grown.append({"field": names[m], "from": current[m], "to": to, "params_saved": -added,
                      "valid_loss_delta": delta, "improves": best is not None})
        current = current[:m] + (to,) + current[m + 1:]
    assert params_of(current, vocab_sizes) <= budget
    return {"dims": list(current), "repair": repair, "fill": grown, "evaluations": len(cache)}


def _best_exchange(losses, current: tuple, candidates, vocab_sizes, budget: int, z: float):
    """The fill's move when no field's next candidate fits: one field m one candidate up, paid for
    by another field s shrunk to its largest smaller candidate that makes the pair fit. Taken only
    if it lowers the mean validation loss (by more than z paired standard errors) and adds
    parameters (so the fill still ends); the largest loss decrease wins. Returns
    (dims after the exchange, s, m, delta, params added) or None."""
    from pipeline.derive import paired_difference

    used = params_of(current, vocab_sizes)
    best = None
    for m, cands in enumerate(candidates):
        m_to = _step(cands, current[m], up=True)
        if m_to is None:
            continue
        grow = int(vocab_sizes[m]) * (m_to - current[m])
        for s, s_cands in enumerate(candidates):
            if s == m:
                continue
            need = used + grow - budget  # parameters s must free
            fits = [c for c in s_cands if c < current[s]
                    and int(vocab_sizes[s]) * (current[s] - c) >= need]
            if not fits:
                continue
            s_to = max(fits)
            added = grow - int(vocab_sizes[s]) * (current[s] - s_to)
            if added <= 0:
                continue
            trial = tuple(s_to if i == s else m_to if i == m else d
                          for i, d in enumerate(current))
            delta, se = paired_difference(losses(trial), losses(current))
            if delta < -z * se and (best is None or delta < best[3]):
                best = (trial, s, m, delta, added)
    return best


def apply_dims(result: dict, dims: Sequence[int]) -> None:
    """Sets dims.json's per-field "dim" (and params, totals) to `dims`, in field order."""
    for name, d in zip(result["field_order"], dims, strict=True):
        f = result["fields"][name]
        f["dim"] = int(d)
        f["params"] = f["vocab_size"] * int(d)
    result["embedding_params"] = sum(f["params"] for f in result["fields"].values())
    full = result["full_embedding_params"]
    result["params_share"] = result["embedding_params"] / full if full else 0.0


def record(budget: Budget, achieved: int, fitted: dict, multiplier: float,
           expected: float) -> dict:
    """dims.json's "budget"."""
    return {"params": budget.params, "requested": budget.requested(), "achieved": int(achieved),
            "share_of_budget": achieved / budget.params,
            "bytes": int(achieved) * SERVING_DTYPE_BYTES, "smallest_params": budget.smallest,
            "full_params": budget.full, "target_share": TARGET_SHARE,
            "final_multiplier": float(multiplier), "final_expected_params": float(expected),
            "repair": fitted["repair"], "fill": fitted["fill"],
            "evaluations": fitted["evaluations"]}


def format_record(rec: dict) -> str:
    """The search log's lines about the budget."""
    req = rec["requested"]
    lines = [f"budget {rec['params']:,} embedding parameters ({req['flag']} "
             f"{format_value(req['value'])}): "
             f"achieved {rec['achieved']:,} = {100 * rec['share_of_budget']:.1f}% of the budget "
             f"({rec['bytes']:,} bytes as float32); multiplier {rec['final_multiplier']:.4g}, "
             f"expected params under alpha {rec['final_expected_params']:,.0f}"]
    for kind in ("repair", "fill"):
        for s in rec[kind]:
            ex = s.get("exchange")
            paid = f", {ex['field']} {ex['from']} -> {ex['to']}" if ex else ""
            lines.append(f"  {kind}: {s['field']} {s['from']} -> {s['to']}{paid} "
                         f"({s['params_saved']:+,} params saved, valid loss "
                         f"{s['valid_loss_delta']:+.5f})")
    return "\n".join(lines)
