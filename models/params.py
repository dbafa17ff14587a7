"""The paper's Params metric and a per-group parameter report of a built CTRModel."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def embedding_params(vocab_sizes: Sequence[int], dims: Sequence[int]) -> int:
    """sum_m vocab_m * d_m: the paper's Params (embedding parameters of the chosen dims)."""
    if len(vocab_sizes) != len(dims):
        raise ValueError(f"embedding_params: {len(vocab_sizes)} vocab_sizes but {len(dims)} dims")
    return int(sum(int(v) * int(d) for v, d in zip(vocab_sizes, dims)))


def _count(variables) -> int:
    return int(sum(int(np.prod(v.shape)) for v in variables))


def parameter_report(model) -> dict[str, int]:
    """Trainable parameter counts of a built CTRModel, by group (variables matched by identity).

    - embedding: the embedding tables (a search model's full candidate tables; for per-field
      candidate lists with `lookup="separate"` that includes the padded columns it allocates);
    - transform: unification weights/biases (and the search model's per-candidate BN scale);
    - first_order: the first-order table and bias;
    - architecture: alpha (search models only);
    - mlp_and_interaction: every other trainable variable;
    - total: all trainable parameters.
    """
    if not model.built:
        raise ValueError(
            "parameter_report: the model is not built; call it on a batch or build it first"
        )
    trainable = list(model.trainable_variables)
    groups = {
        "embedding": list(model.embedding.embedding_variables),
        "transform": list(getattr(model.embedding, "transform_variables", [])),
        "first_order": list(model.first_order.trainable_variables)
        if model.first_order is not None
        else [],
        "architecture": list(model.arch_variables),
    }
    seen = {id(v) for vs in groups.values() for v in vs}
    report = {name: _count(vs) for name, vs in groups.items()}
    report["mlp_and_interaction"] = _count(v for v in trainable if id(v) not in seen)
    report["total"] = _count(trainable)
    return report
