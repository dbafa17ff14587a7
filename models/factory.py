"""Builds search-stage and re-training CTR models from names (the configs' vocabulary)."""
from __future__ import annotations

from typing import Sequence

from configs.experiment import BACKBONES as BACKBONE_NAMES
from configs.experiment import MLP_INPUTS
from models.backbones.autoint import AutoInt
from models.backbones.dcn_v2 import DCNv2
from models.backbones.deepfm import DeepFM
from models.backbones.fm import FM
from models.backbones.ipnn import IPNN
from models.backbones.nfm import NFM
from models.backbones.wide_deep import WideDeep
from models.ctr_model import CTRModel
from models.mixed_embedding import MixedDimEmbedding
from models.search_embedding import AutoDimEmbedding

# name -> (backbone class, whether the model adds a first-order term by default). The defaults
# follow pytorch-fm (the paper's code base): FM, W&D (the wide part), DeepFM, NFM and AutoInt have
# a linear term; PNN and DCN do not. The names are configs.experiment.BACKBONES (what a config may
# choose, checked before TensorFlow is imported); this registry maps each to its class.
BACKBONES = {
    "fm": (FM, True),
    "wide_deep": (WideDeep, True),
    "deepfm": (DeepFM, True),
    "nfm": (NFM, True),
    "ipnn": (IPNN, False),
    "autoint": (AutoInt, True),
    "dcn_v2": (DCNv2, False),
}
if tuple(BACKBONES) != BACKBONE_NAMES:
    raise ImportError(f"models.factory.BACKBONES {list(BACKBONES)} differ from "
                      f"configs.experiment.BACKBONES {list(BACKBONE_NAMES)}")


def _registered(backbone: str) -> tuple[type, bool]:
    """BACKBONES[backbone]; an unknown name -> ValueError listing the known ones."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; known backbones: {sorted(BACKBONES)}")
    return BACKBONES[backbone]


def build_backbone(backbone: str, **backbone_kwargs):
    """A backbone layer by registry name; unknown names or arguments -> ValueError."""
    cls, _ = _registered(backbone)
    try:
        return cls(**backbone_kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"backbone {backbone!r}: bad arguments {sorted(backbone_kwargs)}: "
                         f"{err}") from err


def _first_order(name: str, first_order: bool | None) -> bool:
    return _registered(name)[1] if first_order is None else first_order


def build_search_model(
    backbone: str,
    vocab_sizes: Sequence[int],
    candidate_dims: Sequence[int] | Sequence[Sequence[int]] = (2, 8, 16, 24, 32),
    lookup: str = "weight_sharing",
    unify: str = "linear",
    candidate_norm: str = "batchnorm_affine",
    first_order: bool | None = None,
    seed: int | None = None,
    **backbone_kwargs,
) -> CTRModel:
    """AutoDimEmbedding + backbone (search stage)."""
    use_first_order = _first_order(backbone, first_order)
    embedding = AutoDimEmbedding(
        vocab_sizes, candidate_dims, lookup=lookup, unify=unify, candidate_norm=candidate_norm,
        seed=seed, name="embedding",
    )
    return CTRModel(embedding, build_backbone(backbone, name="backbone", **backbone_kwargs),
                    vocab_sizes, first_order=use_first_order, name=f"autodim_search_{backbone}")


def build_retrain_model(
    backbone: str,
    vocab_sizes: Sequence[int],
    dims: Sequence[int],
    unify: str = "linear",
    output_dim: int | None = None,
    first_order: bool | None = None,
    mlp_input: str = "unified",
    **backbone_kwargs,
) -> CTRModel:
    """MixedDimEmbedding with the chosen dims + backbone (re-training stage, or FDE baselines).

    `mlp_input="raw"` (see `CTRModel`) applies to backbones whose MLP reads the flattened
    embeddings (DeepFM, WideDeep) and is ignored for the others (`effective_mlp_input`). W&D with
    raw MLP input uses no unification, so it gets no projection weights.
    """
    use_first_order = _first_order(backbone, first_order)
    mlp_input = effective_mlp_input(backbone, mlp_input)
    if mlp_input == "raw":
        backbone_kwargs = dict(backbone_kwargs, mlp_input_dim=int(sum(dims)))
        if not BACKBONES[backbone][0].needs_unified_with_raw_mlp_input:
            unify = "zero_pad"
    embedding = MixedDimEmbedding(vocab_sizes, dims, output_dim=output_dim, unify=unify,
                                  name="embedding")
    return CTRModel(embedding, build_backbone(backbone, name="backbone", **backbone_kwargs),
                    vocab_sizes, first_order=use_first_order, mlp_input=mlp_input,
                    name=f"autodim_retrain_{backbone}")


def effective_mlp_input(backbone: str, mlp_input: str) -> str:
    """`mlp_input` if the backbone supports it, else "unified" (FM, NFM, IPNN, AutoInt, DCNv2)."""
    cls, _ = _registered(backbone)
    if mlp_input not in MLP_INPUTS:
        raise ValueError(f"mlp_input must be {' or '.join(map(repr, MLP_INPUTS))}, "
                         f"got {mlp_input!r}")
    return mlp_input if getattr(cls, "raw_mlp_input", False) else "unified"
