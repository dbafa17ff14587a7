"""Validated derivation of the searched dimensions (`search.derive=validated`).

The paper derives each field's dimension as the argmax of its alpha (Eq. 13). Where two candidates
are nearly tied, the argmax is decided by noise or by the parameter-cost term rather than by the
validation loss. This module checks the argmax architecture against the data, using the trained
supernet as it is (no retraining):

- the first `derive_max_rows` validation rows are read once, in file order;
- an architecture is evaluated by setting alpha to a hard one-hot (logit `ONE_HOT_LOGIT` on the
  chosen candidate, 0 elsewhere; candidates a field does not have stay masked by the layer) and
  computing every row's binary log loss with `training=False` (moving BatchNorm statistics, no
  Gumbel noise, no dropout);
- coordinate descent from the argmax: fields in ascending order of their alpha margin (top-1 minus
  top-2 probability, the least decided first); the field's larger candidates (direction "up", the
  default; "both": every other candidate) are evaluated and compared with the current
  architecture on the same rows (paired per-example differences, their mean and standard error).
  A larger dimension is accepted only if significantly better (mean < -z x SE), a smaller one if
  not worse (mean <= 0); of the accepted ones the lowest mean loss wins and becomes the current
  architecture at once. Up to `derive_sweeps` passes, stopping after a pass without a move;
- alpha is restored exactly afterwards.

Every accepted move lowers the mean validation loss, or keeps it and lowers a dimension, so the
descent cannot cycle. Measured (docs/DESIGN.md, "Derivation"): smaller dimensions the
supernet scored as no worse often retrained worse, hence "up" by default. Cost: one pass over the
rows for the argmax architecture plus one per alternative tried, at most
1 + sweeps x sum_m (N_m - 1) passes (architectures seen before are not evaluated again).

The decision rule (`paired_difference`, `accepts`, `best_move`, `margin_order`,
`coordinate_descent`) is plain numpy; `derive_validated` is the TensorFlow side.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np

ONE_HOT_LOGIT = 30.0  # softmax weight of the other candidates: exp(-30) ~ 1e-13


# ---------------------------------------------------------------------- decision rule (numpy)
def paired_difference(candidate_loss, current_loss) -> tuple[float, float]:
    """Mean and standard error of the per-example loss difference candidate - current."""
    cand = np.asarray(candidate_loss, np.float64)
    cur = np.asarray(current_loss, np.float64)
    if cand.shape != cur.shape or cand.ndim != 1 or cand.size == 0:
        raise ValueError(f"paired losses need two equal-length non-empty vectors, got shapes "
                         f"{cand.shape} and {cur.shape}")
    diff = cand - cur
    mean = float(diff.mean())
    se = float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else math.inf
    return mean, se


def accepts(mean_diff: float, se: float, larger: bool, z: float) -> bool:
    """A larger dimension must be significantly better; a smaller one only not worse."""
    if larger:
        return mean_diff < -z * se
    return mean_diff <= 0.0


def best_move(current_dim: int, current_loss, alternatives: dict, z: float) -> dict | None:
    """The accepted alternative with the lowest mean loss ({"to", "mean_diff", "se"}), or None.

    alternatives: {dim: per-example losses on the same rows as current_loss}."""
    best = None
    for dim, loss in alternatives.items():
        if dim == current_dim:
            continue
        mean, se = paired_difference(loss, current_loss)
        if accepts(mean, se, dim > current_dim, z) and (best is None or mean < best["mean_diff"]):
            best = {"to": int(dim), "mean_diff": mean, "se": se}
    return best


def margin_order(probs) -> list[int]:
    """Field indices by ascending margin between the two largest probabilities (ties: field
    order). A field with a single candidate has margin 1."""
    p = np.asarray(probs, np.float64)
    if p.shape[1] < 2:
        return list(range(p.shape[0]))
    top = -np.sort(-p, axis=1)
    margins = top[:, 0] - top[:, 1]
    return [int(i) for i in np.argsort(margins, kind="stable")]


def cached_losses(evaluate: Callable[[tuple], np.ndarray]):
    """(losses, cache): `evaluate` memoised by architecture (each one evaluated once), as float64;
    len(cache) is the number of evaluations."""
    cache: dict[tuple, np.ndarray] = {}

    def losses(dims: tuple) -> np.ndarray:
        if dims not in cache:
            cache[dims] = np.asarray(evaluate(dims), np.float64)
        return cache[dims]
    return losses, cache


def coordinate_descent(evaluate: Callable[[tuple], np.ndarray], start: Sequence[int],
                       candidates: Sequence[Sequence[int]], order: Sequence[int], z: float,
                       sweeps: int, field_names: Sequence[str] | None = None,
                       direction: str = "both") -> dict:
    """Greedy field-by-field improvement of `start` under the paired test; `direction` "up"
    tries only larger dimensions than the current one, "both" every other candidate.

    evaluate(dims tuple) -> per-example losses (the same rows every call). Returns the final dims,
    the accepted moves in order, the number of evaluations, the sweeps run and both losses."""
    names = list(field_names) if field_names is not None else [str(i) for i in range(len(start))]
    losses, cache = cached_losses(evaluate)
    current = tuple(int(d) for d in start)
    start_loss = losses(current)
    moves, sweeps_run = [], 0
    for sweep in range(sweeps):
        sweeps_run += 1
        changed = False
        for m in order:
            here = losses(current)
            alternatives = {}
            for d in candidates[m]:
                if d != current[m] and (direction == "both" or d > current[m]):
                    alternatives[int(d)] = losses(current[:m] + (int(d),) + current[m + 1:])
            move = best_move(current[m], here, alternatives, z)
            if move is not None:
                se = move["se"] if math.isfinite(move["se"]) else None  # None: a single row
                moves.append({"field": names[m], "from": current[m], "to": move["to"],
                              "mean_diff": move["mean_diff"], "se": se, "sweep": sweep + 1})
                current = current[:m] + (move["to"],) + current[m + 1:]
                changed = True
        if not changed:
            break
    return {"dims": list(current), "moves": moves, "evaluations": len(cache),
            "sweeps": sweeps_run, "start_loss": float(start_loss.mean()),
            "final_loss": float(losses(current).mean())}


# ---------------------------------------------------------------------- TensorFlow side
def load_rows(
    data_dir: str, schema, max_rows: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first `max_rows` validation rows in file order: ids int32 [R, M], labels float32 [R]."""
    from pipeline import input as input_lib

    ds = input_lib.make_dataset(data_dir, schema, "valid", batch_size, shuffle=False,
                                repeat=False, seed=None)
    ids, labels, rows = [], [], 0
    for batch_ids, batch_labels in ds:
        ids.append(batch_ids.numpy())
        labels.append(batch_labels.numpy())
        rows += len(ids[-1])
        if rows >= max_rows:
            break
    if not ids:
        raise ValueError(f"{data_dir}: the valid split has no rows to validate the dimensions on")
    return np.concatenate(ids)[:max_rows], np.concatenate(labels)[:max_rows]


class OneHotEvaluator:
    """Per-example validation losses of the supernet with alpha set to a hard one-hot.

    The model is called with training=False in cross-replica context: the search embedding
    all-reduces only when training, so this works unchanged for a model built under a
    MirroredStrategy (variables are read from their primary copy, assignments reach every copy)."""

    def __init__(self, model, ids: np.ndarray, labels: np.ndarray, batch_size: int):
        import tensorflow as tf

        from pipeline.trainer import per_example_loss

        self.model = model
        self.embedding = model.embedding
        self.rows = int(len(labels))
        self.batches = [(tf.constant(ids[i:i + batch_size]), tf.constant(labels[i:i + batch_size]))
                        for i in range(0, self.rows, batch_size)]
        spec = (tf.TensorSpec([None, ids.shape[1]], tf.int32), tf.TensorSpec([None], tf.float32))

        @tf.function(input_signature=spec)
        def batch_losses(batch_ids, batch_labels):
            return per_example_loss(batch_labels, model(batch_ids, training=False))

        self._batch_losses = batch_losses
        self._dims = self.embedding.candidate_dims_matrix  # [M, N], 0 = no such candidate
        self.calls = 0

    def one_hot_logits(self, dims: Sequence[int]) -> np.ndarray:
        if len(dims) != self._dims.shape[0]:
            raise ValueError(f"expected {self._dims.shape[0]} dims, got {list(dims)}")
        hit = self._dims == np.asarray(dims, np.float32)[:, None]
        missing = [m for m in range(len(dims)) if not hit[m].any()]
        if missing:
            raise ValueError(f"dims {list(dims)}: fields {missing} have no such candidate "
                             f"(candidates {self.embedding.field_candidates})")
        return np.where(hit, ONE_HOT_LOGIT, 0.0).astype(np.float32)

    def __call__(self, dims: Sequence[int]) -> np.ndarray:
        self.embedding.alpha.assign(self.one_hot_logits(dims))
        self.calls += 1
        return np.concatenate([self._batch_losses(i, y).numpy() for i, y in self.batches])


def derive_validated(model, data_dir: str, schema, search_cfg,
                     log: Callable[[str], None] | None = None) -> dict:
    """Runs the validated derivation on a trained search model and returns its record. The
    model's alpha is the same, bit for bit, afterwards."""
    started = time.monotonic()
    emb = model.embedding
    names = list(schema.field_names)
    probs = np.asarray(emb.probabilities())
    argmax = emb.chosen_dims()
    ids, labels = load_rows(data_dir, schema, search_cfg.derive_max_rows, search_cfg.batch_size)
    evaluator = OneHotEvaluator(model, ids, labels, search_cfg.batch_size)
    saved = np.array(emb.alpha.numpy(), copy=True)
    try:
        result = coordinate_descent(evaluator, argmax, emb.field_candidates, margin_order(probs),
                                    search_cfg.derive_z, search_cfg.derive_sweeps, names,
                                    search_cfg.derive_direction)
    finally:
        emb.alpha.assign(saved)
    record = {
        "method": "validated",
        "argmax_dims": dict(zip(names, (int(d) for d in argmax))),
        "dims": dict(zip(names, (int(d) for d in result["dims"]))),
        "moves": result["moves"], "evaluations": result["evaluations"],
        "sweeps": result["sweeps"], "rows": evaluator.rows, "z": search_cfg.derive_z,
        "direction": search_cfg.derive_direction,
        "argmax_valid_logloss": result["start_loss"], "valid_logloss": result["final_loss"],
        "seconds": time.monotonic() - started,
    }
    if log:
        log(format_derivation(record))
    return record


def format_derivation(record: dict) -> str:
    """A short summary of a validated derivation for the log."""
    moves = record["moves"]
    lines = [f"validated derivation: {len(moves)} move(s) in {record['sweeps']} sweep(s), "
             f"{record['evaluations']} evaluations of {record['rows']:,} validation rows, "
             f"{record['seconds']:.1f}s; one-hot valid logloss {record['argmax_valid_logloss']:.5f}"
             f" (argmax) -> {record['valid_logloss']:.5f}"]
    for mv in moves:
        se = "n/a" if mv["se"] is None else f"{mv['se']:.5f}"
        lines.append(f"  {mv['field']}: {mv['from']} -> {mv['to']} (loss diff "
                     f"{mv['mean_diff']:+.5f} +- {se}, sweep {mv['sweep']})")
    return "\n".join(lines)
