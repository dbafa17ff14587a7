"""Typed configuration of the search and retraining runs, with named presets.

A run's config is resolved as: preset (by dataset, e.g. `movielens-100k`) <- YAML file (`--config`)
<- `--set key=value` overrides. Unknown keys are errors naming them. The resolved config is written
to `model_dir/config.json` and its hash goes into `dims.json`.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Literal

from configs.loader import (
    ConfigError,
    config_hash,
    from_dict,
    load_yaml,
    merge,
    parse_set_overrides,
    to_dict,
)

# The model choices, defined here once: models/ (the layers validating their arguments, the
# backbone registry) and pipeline/ import them from this module.
BACKBONES = ("fm", "wide_deep", "deepfm", "nfm", "ipnn", "autoint", "dcn_v2")
Lookup = Literal["weight_sharing", "separate"]
Unify = Literal["linear", "zero_pad"]
CandidateNorm = Literal["batchnorm", "batchnorm_affine", "none"]
MlpInput = Literal["raw", "unified"]
LOOKUPS: tuple[str, ...] = typing.get_args(Lookup)
UNIFIES: tuple[str, ...] = typing.get_args(Unify)
CANDIDATE_NORMS: tuple[str, ...] = typing.get_args(CandidateNorm)
MLP_INPUTS: tuple[str, ...] = typing.get_args(MlpInput)
EmbeddingOptimizer = Literal["lazy_adam", "adam"]  # search and retraining alike
Derive = Literal["argmax", "validated"]
DeriveDirection = Literal["up", "both"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The CTR model: backbone and search-time embedding (the paper's AD-1..AD-4 are the four
    combinations of `lookup` x `unify`; AD-2 = weight_sharing + linear)."""

    backbone: str = "deepfm"
    candidate_dims: tuple[int, ...] = (2, 8, 16, 24, 32)
    lookup: Lookup = "weight_sharing"
    unify: Unify = "linear"
    # "batchnorm" is the paper's (no affine); "batchnorm_affine" keeps candidates
    # magnitude-comparable without inflating inner products; "none" skips it. The dataclass
    # defaults are the paper's AD-2 shape (linear) with the affine BN; every adaptive preset
    # (default, the dataset presets, synthetic) searches with unify=zero_pad, candidate_norm=none.
    candidate_norm: CandidateNorm = "batchnorm_affine"
    mlp_units: tuple[int, ...] = (128, 128)
    dropout: float = 0.2

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ConfigError(f"model.backbone: unknown {self.backbone!r}; known: "
                              f"{', '.join(BACKBONES)}")
        dims = list(self.candidate_dims)
        if not dims or any(d <= 0 for d in dims) or dims != sorted(set(dims)):
            raise ConfigError(f"model.candidate_dims must be positive and strictly increasing, "
                              f"got {dims}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")


BUDGET_KEYS = ("budget", "budget_ratio", "budget_bytes")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The dimension search (the paper's Algorithm 1, first-order DARTS).

    variant: `autodim` (alpha updated on validation batches every `arch_update_every` steps) or
      `autodim_s` (alpha updated together with the weights on the same training batch).
    pretrain_epochs / search_epochs: length in epochs of the training split; `*_steps` > 0
      overrides them with an exact number of steps.
    temperature: `paper` is max(0.01, 1 - 0.00005 t); `anneal` goes linearly from 1 to
      `temperature_min` over the search phase, so it anneals on data of any size.
    arch_learning_rate: Adam's step on alpha is about the learning rate per update whatever the
      gradient's size, so alpha can move at most ~lr x updates; `min_arch_updates` > 0 raises the
      update frequency (lowers f) on small data so at least that many alpha updates happen, and
      `arch_lr_budget` > 0 raises the alpha learning rate to budget / (number of alpha updates), so
      alpha can move `budget` logits over the search whatever the data size (0 = the paper's).
    param_cost: weight of a parameter-cost term in the architecture loss, param_cost x the mean
      over fields of E_softmax(alpha)[d] / d_max (`param_cost_weighting: params` weights each
      field by its share of the vocabulary, i.e. by real memory). Fields whose larger candidates do
      not lower the validation loss drift to small dimensions; 0 is the paper's objective.
    derive: how the dimensions are read off the trained supernet. `argmax` is the paper's Eq. 13
      (each field's most probable candidate). `validated` starts from the argmax and checks it on
      the first `derive_max_rows` validation rows (`pipeline/derive.py`): with alpha set to a hard
      one-hot, field by field (least decided first, by the margin between its two most probable
      candidates) the field's larger candidates (`derive_direction: up`; `both`: every other
      candidate) are evaluated and the per-example log losses compared in pairs; a larger
      dimension is taken only if its mean loss is lower by more than `derive_z` standard errors, a
      smaller one whenever its mean loss is not higher. Up to `derive_sweeps` passes over the
      fields (stopping early when one changes nothing). The searched alpha is left as it was;
      dims.json records both the argmax and the validated dimensions. These settings only
      post-process a finished search, so they are left out of the run hash (`run_hash`): changing
      them and rerunning a finished search re-derives without searching.
    """

    variant: Literal["autodim", "autodim_s"] = "autodim"
    batch_size: int = 2000
    learning_rate: float = 1e-3
    arch_learning_rate: float = 1e-3
    arch_update_every: int = 10
    min_arch_updates: int = 0
    pretrain_epochs: float = 2.0
    search_epochs: float = 13.0
    pretrain_steps: int = 0
    search_steps: int = 0
    temperature: Literal["paper", "anneal"] = "paper"
    temperature_min: float = 0.01
    temperature_decay: float = 0.00005
    arch_lr_budget: float = 0.0
    param_cost: float = 0.0
    param_cost_weighting: Literal["field", "params"] = "field"
    embedding_optimizer: EmbeddingOptimizer = "lazy_adam"
    steps_per_call: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    eval_every: int = 0  # steps between validation evaluations; 0 = once per epoch
    seed: int = 0
    shuffle_buffer: int = 100_000
    derive: Derive = "argmax"
    derive_max_rows: int = 50_000
    derive_z: float = 2.0
    derive_sweeps: int = 2
    derive_direction: DeriveDirection = "up"
    budget: int = 0
    budget_ratio: float = 0.0
    budget_bytes: int = 0
    budget_multiplier_lr: float = 0.01

    def __post_init__(self):
        checks = {
            "arch_lr_budget": self.arch_lr_budget >= 0, "param_cost": self.param_cost >= 0,
            "batch_size": self.batch_size > 0, "learning_rate": self.learning_rate > 0,
            "arch_learning_rate": self.arch_learning_rate > 0,
            "arch_update_every": self.arch_update_every >= 1,
            "min_arch_updates": self.min_arch_updates >= 0,
            "pretrain_epochs": self.pretrain_epochs >= 0, "search_epochs": self.search_epochs >= 0,
            "pretrain_steps": self.pretrain_steps >= 0, "search_steps": self.search_steps >= 0,
            "temperature_min": 0 < self.temperature_min <= 1,
            "temperature_decay": self.temperature_decay > 0,
            "steps_per_call": self.steps_per_call >= 1,
            "checkpoint_every": self.checkpoint_every >= 1,
            "keep_checkpoints": self.keep_checkpoints >= 1, "eval_every": self.eval_every >= 0,
            "shuffle_buffer": self.shuffle_buffer >= 1,
            "derive": self.derive in typing.get_args(Derive),
            "derive_max_rows": self.derive_max_rows >= 1,
            "derive_z": math.isfinite(self.derive_z) and self.derive_z >= 0,
            "derive_sweeps": self.derive_sweeps >= 1,
            "derive_direction": self.derive_direction in typing.get_args(DeriveDirection),
            "budget": self.budget >= 0, "budget_ratio": 0 <= self.budget_ratio <= 1,
            "budget_bytes": self.budget_bytes >= 0,
            "budget_multiplier_lr": self.budget_multiplier_lr > 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError("search: invalid value for " + ", ".join(
                f"{k}={getattr(self, k)!r}" for k in bad))
        budgets = [k for k in BUDGET_KEYS if getattr(self, k)]
        if len(budgets) > 1:
            raise ConfigError(f"search: {' and '.join(budgets)} are alternatives; set at most "
                              f"one (--budget, --budget_ratio, --budget_bytes)")


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """Retraining the discrete architecture (the paper's Algorithm 2)."""

    batch_size: int = 2000
    learning_rate: float = 1e-3
    unify: Unify = "linear"
    # DeepFM / W&D: the MLP reads the raw mixed-dim embeddings ([B, sum d]) instead of the unified
    # ones: same function class, cheaper MLP, and W&D needs no projection (models.ctr_model).
    mlp_input: MlpInput = "raw"
    max_epochs: float = 30.0
    patience: int = 2  # evaluations without validation-AUC improvement before stopping
    eval_every: int = 0  # steps between validation evaluations; 0 = once per epoch
    embedding_optimizer: EmbeddingOptimizer = "lazy_adam"
    steps_per_call: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    seed: int = 0
    shuffle_buffer: int = 100_000

    def __post_init__(self):
        if self.batch_size <= 0 or self.learning_rate <= 0 or self.max_epochs <= 0:
            raise ConfigError("retrain: batch_size, learning_rate and max_epochs must be > 0")
        if self.patience < 1 or self.steps_per_call < 1 or self.checkpoint_every < 1:
            raise ConfigError("retrain: patience, steps_per_call and checkpoint_every must be >= 1")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    model: ModelConfig = ModelConfig()
    search: SearchConfig = SearchConfig()
    retrain: RetrainConfig = RetrainConfig()


# Named presets. `paper` is the paper's recipe exactly; dataset presets start from the adaptive
# defaults that make the search work on data of that size (docs/DESIGN.md, "Making the search
# work").
# The parameter cost weights fields by vocabulary (real memory) on real data; the synthetic preset
# weights every field alike, so the search ranks fields by the planted importance that its test
# and the demo compare against (docs/DESIGN.md, "Making the search work on data of any size").
# The search embedding: zero-padded raw candidates (no per-candidate projection, no BatchNorm), so
# the supernet's mixed embedding is the shared row under a soft column mask and alpha's gradient is
# the value of each candidate's extra columns (docs/DESIGN.md, "Making the search work").
_ADAPTIVE = {"model": {"unify": "zero_pad", "candidate_norm": "none"},
             "search": {"temperature": "anneal", "min_arch_updates": 1000,
                        "arch_lr_budget": 3.0, "param_cost": 0.05,
                        "param_cost_weighting": "params"}}
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"model": {"candidate_norm": "batchnorm"}},
    "default": _ADAPTIVE,
    "criteo": _ADAPTIVE,
    "avazu": _ADAPTIVE,
    "synthetic": {"model": _ADAPTIVE["model"],
                  "search": {**_ADAPTIVE["search"], "param_cost_weighting": "field",
                             "pretrain_epochs": 1.0, "search_epochs": 3.0},
                  "retrain": {"max_epochs": 6.0}},
    "movielens-100k": _ADAPTIVE,
    "movielens-1m": _ADAPTIVE,
    "frappe": _ADAPTIVE,
}


def resolve(preset: str | None, config_file: str | None = None,
            set_overrides: list[str] | None = None) -> ExperimentConfig:
    """preset <- YAML file <- --set overrides."""
    cfg = ExperimentConfig()
    name = preset or "default"
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    cfg = merge(cfg, PRESETS[name])
    if config_file:
        cfg = merge(cfg, load_yaml(config_file))
    if set_overrides:
        cfg = merge(cfg, parse_set_overrides(set_overrides))
    return cfg


# Search settings that only post-process a finished search (how the dimensions are read off the
# trained supernet): changing them must neither refuse a resume nor change the hash of runs made
# before they existed.
POST_SEARCH_KEYS = ("derive", "derive_max_rows", "derive_z", "derive_sweeps", "derive_direction")


def run_hash(cfg: ExperimentConfig | dict) -> str:
    """config_hash of everything that determines the trained weights: the config without
    POST_SEARCH_KEYS, and without the budget keys when no budget is set (guards resuming a search
    or retraining run; for a run whose other settings are unchanged it equals the hash of the
    config before these keys existed). Accepts a config or its dict (a run's stored
    config.json)."""
    data = to_dict(cfg) if isinstance(cfg, ExperimentConfig) else dict(cfg)
    data["search"] = {k: v for k, v in data["search"].items() if k not in POST_SEARCH_KEYS}
    if not any(data["search"].get(k) for k in BUDGET_KEYS):  # no budget: the hash from before
        for k in (*BUDGET_KEYS, "budget_multiplier_lr"):  # the budget keys existed
            data["search"].pop(k, None)
    return config_hash(data)


# Named search embeddings (model overrides) that `pipeline.run --search_embeddings` chooses among
# on validation: `raw` is what the adaptive presets search with, `ad2` the paper's AD-2 with the
# affine BatchNorm (the presets before docs/DESIGN.md's search-embedding decision).
SEARCH_EMBEDDINGS: dict[str, dict[str, str]] = {
    "raw": {"unify": "zero_pad", "candidate_norm": "none"},
    "ad2": {"unify": "linear", "candidate_norm": "batchnorm_affine"},
}


# The model settings a retraining reads (the search-time embedding - lookup, unify, candidate_norm -
# and the whole search section only shape the dims it is given, which it records separately).
RETRAIN_MODEL_KEYS = ("backbone", "candidate_dims", "mlp_units", "dropout")


def retrain_hash(cfg: ExperimentConfig | dict) -> str:
    """config_hash of what determines a retraining's weights given its dims: `retrain` and
    RETRAIN_MODEL_KEYS. Search-only settings do not enter, so changing them (a preset's search
    embedding, `search.param_cost`) neither refuses nor repeats a finished FDE or RaS run. Accepts
    a config or its dict (a run's stored config.json), so runs recorded under `run_hash` are
    re-hashed from what they stored."""
    data = to_dict(cfg) if isinstance(cfg, ExperimentConfig) else cfg
    return config_hash({"model": {k: data["model"][k] for k in RETRAIN_MODEL_KEYS},
                        "retrain": data["retrain"]})


def preset_for_dataset(dataset: str) -> str:
    return dataset if dataset in PRESETS else "default"


__all__ = ["BACKBONES", "LOOKUPS", "UNIFIES", "CANDIDATE_NORMS", "MLP_INPUTS", "ModelConfig",
           "SearchConfig", "RetrainConfig", "ExperimentConfig", "PRESETS", "resolve",
           "preset_for_dataset", "from_dict", "run_hash", "retrain_hash", "POST_SEARCH_KEYS",
           "RETRAIN_MODEL_KEYS", "SEARCH_EMBEDDINGS", "BUDGET_KEYS"]
