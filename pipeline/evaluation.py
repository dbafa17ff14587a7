"""AUC and logloss on numpy arrays: exact (rank-based) AUC, and DeLong's covariance of several
models' AUCs on the same examples, which `pipeline.tuning` uses to tell a real validation gap
from noise. Pure numpy, so choosing among finished runs needs no TensorFlow."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def numpy_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U with average ranks for ties)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _midranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def numpy_logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probs, np.float64), eps, 1 - eps)
    y = np.asarray(labels, np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    boundaries = np.flatnonzero(np.diff(sorted_x)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [x.size]])
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def delong(labels: np.ndarray, scores: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(AUCs, covariance) of several models' scores on the same examples: DeLong, DeLong and
    Clarke-Pearson (1988), computed with midranks as in Sun and Xu (2014). The variance of the
    difference of models i and j is cov[i, i] + cov[j, j] - 2 cov[i, j]: the paired test."""
    labels = np.asarray(labels).astype(bool).reshape(-1)
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    m, n = pos.size, neg.size
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least two positives and two negatives, got {m} and {n}")
    aucs, v10, v01 = [], [], []
    for s in scores:
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        if s.size != labels.size:
            raise ValueError(f"{s.size} scores for {labels.size} labels")
        tx, ty = _midranks(s[pos]), _midranks(s[neg])
        tz = _midranks(np.concatenate([s[pos], s[neg]]))
        aucs.append((tz[:m].sum() - m * (m + 1) / 2.0) / (m * n))
        v10.append((tz[:m] - tx) / n)          # per positive: share of negatives scored below
        v01.append(1.0 - (tz[m:] - ty) / m)    # per negative: share of positives scored above
    v10, v01 = np.stack(v10), np.stack(v01)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return np.asarray(aucs), cov
