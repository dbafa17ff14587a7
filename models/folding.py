"""Folding a re-trained model's per-field projections into its first MLP layer (for serving).

A re-trained DeepFM or W&D with `mlp_input="unified"` feeds its MLP the projected embeddings
concat_m(x_m W_m + b_m) (`unify="linear"`) or the zero-padded ones. The first MLP layer is linear,
so Dense(K, c) of that concatenation equals Dense(K', c') of the raw embeddings concat_m(x_m) with

    K'_m = W_m K_m      c' = c + sum_m b_m K_m          (zero_pad: K'_m = the first d_m rows of K_m)

where K_m is the block of K's rows that reads field m. `fold_mlp_input` returns a new
`mlp_input="raw"` model computing the same logits (to float rounding) with a first layer of
sum d_m instead of M * E inputs, and, for W&D, no projections at all. pipeline.export serves the
folded model, so a mixed-dimension model trained as the paper does serves faster than FDE.
"""
from __future__ import annotations

import numpy as np

from models.ctr_model import CTRModel
from models.factory import BACKBONES, build_retrain_model
from models.mixed_embedding import MixedDimEmbedding


def can_fold(model) -> bool:
    """True for a unified-input re-training model whose backbone's MLP reads the flat embeddings
    and whose fields are not all already at the output width without projection."""
    if not isinstance(model, CTRModel) or model.mlp_input != "unified":
        return False
    emb, backbone = model.embedding, model.backbone
    if not isinstance(emb, MixedDimEmbedding) or not getattr(backbone, "raw_mlp_input", False):
        return False
    return emb.unify == "linear" or sum(emb.dims) < len(emb.dims) * emb.output_dim


def fold_mlp_input(model: CTRModel) -> CTRModel:
    """A `mlp_input="raw"` copy of `model` (see the module docstring) with folded weights."""
    if not can_fold(model):
        raise ValueError(
            f"fold_mlp_input: {type(model).__name__} {getattr(model, 'name', '')!r} has no "
            f"foldable unified MLP input (needs a MixedDimEmbedding re-training model with "
            f"DeepFM or WideDeep and mlp_input='unified')"
        )
    emb, backbone = model.embedding, model.backbone
    name = next(n for n, (cls, _) in BACKBONES.items() if isinstance(backbone, cls))
    mlp = backbone.mlp
    folded = build_retrain_model(
        name, emb.vocab_sizes, emb.dims, unify=emb.unify, output_dim=emb.output_dim,
        first_order=model.first_order is not None, mlp_input="raw",
        hidden_units=list(mlp.hidden_units), dropout=mlp.dropout, batchnorm=mlp.batchnorm,
    )
    folded(np.zeros((1, len(emb.vocab_sizes)), np.int64), training=False)
    out_dim = emb.output_dim
    for src, dst in zip(emb.embedding_variables, folded.embedding.embedding_variables):
        dst.assign(src.value)
    if folded.embedding.transform_variables:  # DeepFM's FM term still reads the unified embeddings
        for src, dst in zip(emb.transform_variables, folded.embedding.transform_variables):
            dst.assign(src.value)
    if model.first_order is not None:
        for src, dst in zip(model.first_order.variables, folded.first_order.variables):
            dst.assign(src.value)
    first, folded_first = mlp.dense_layers[0], folded.backbone.mlp.dense_layers[0]
    kernel = np.asarray(first.kernel.numpy(), np.float64)
    bias = np.asarray(first.bias.numpy(), np.float64)
    kernels = [np.asarray(k.numpy(), np.float64) for k in emb.kernels]
    biases = [np.asarray(b.numpy(), np.float64) for b in emb.biases]
    rows = []
    for m, (gi, j) in enumerate(emb._tables.slots):
        block = kernel[m * out_dim:(m + 1) * out_dim]  # [E, H]
        if emb.unify == "linear":
            rows.append(kernels[gi][j] @ block)
            bias = bias + biases[gi][j] @ block
        else:
            rows.append(block[:emb.dims[m]])
    folded_first.kernel.assign(np.concatenate(rows, axis=0).astype(np.float32))
    folded_first.bias.assign(bias.astype(np.float32))
    skip = {id(first.kernel), id(first.bias)}
    rest = [v for v in mlp.variables if id(v) not in skip]
    folded_rest = [v for v in folded.backbone.mlp.variables
                   if id(v) not in {id(folded_first.kernel), id(folded_first.bias)}]
    for src, dst in zip(rest, folded_rest):
        dst.assign(src.value)
    return folded
