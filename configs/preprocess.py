"""The typed configuration of the Beam preprocessing job (`python -m preprocessing.run --config`).

YAML example (every key optional; unknown keys are errors naming them):

    dataset:            # overrides of the dataset preset (DatasetSpec keys); all of it for `csv`
      default_min_count: 5
      default_max_vocab_size: 1000000   # the most tokens a field keeps; null (default): no cap
      # per field, as min_count: `fields` (the whole list) with {name: C3, max_vocab_size: 100000}
    split: {train: 0.8, valid: 0.1, test: 0.1, seed: 0}
    num_shards: {train: 0, valid: 0, test: 0}
    max_bad_fraction: 0.01
    compression_level: 3   # GZIP level of the TFRecords (1..9; 1-3 by ISA-L, faster)

`num_shards` 0 (the default) lets the runner decide (one file per worker bundle, no shuffle: the
job streams with flat memory on the DirectRunner); N > 0 writes exactly N files, which costs a
shuffle of that split (on the DirectRunner: the whole split held in memory).

The resolved config (the full DatasetSpec, not just the overrides) and its hash are written into
DIR/schema.json, so a model trained on the output can tell exactly how its inputs were made.
`max_vocab_size` keys left at null are left out of it, so configs without a cap keep the hash
they had before the option existed.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from configs.features import DatasetSpec, dataset_spec
from configs.loader import ConfigError, config_hash, from_dict, load_yaml, to_dict


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """Fractions of rows per split (must sum to 1) and the seed of the split hash."""

    train: float = 0.8
    valid: float = 0.1
    test: float = 0.1
    seed: int = 0

    def __post_init__(self):
        for name in ("train", "valid", "test"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"split.{name} must be in [0, 1], got {value}")
        if self.train <= 0.0:
            raise ConfigError(
                f"split.train must be > 0 (vocabularies come from it), got {self.train}"
            )
        total = self.train + self.valid + self.test
        if abs(total - 1.0) > 1e-9:
            raise ConfigError(f"split fractions must sum to 1, got {self.train} + {self.valid} + "
                              f"{self.test} = {total}")


@dataclasses.dataclass(frozen=True)
class ShardConfig:
    """Output files per split; 0 = decided by the runner (no shuffle)."""

    train: int = 0
    valid: int = 0
    test: int = 0

    def __post_init__(self):
        for name in ("train", "valid", "test"):
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(f"num_shards.{name} must be >= 0, got {value}")


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    dataset: dict[str, Any] = dataclasses.field(default_factory=dict)
    split: SplitConfig = SplitConfig()
    num_shards: ShardConfig = ShardConfig()
    max_bad_fraction: float = 0.01
    # GZIP level of the TFRecords. Levels 1-3 are written by ISA-L (the `isal` package, pinned in
    # requirements.txt; preprocessing.writing.gzip_class), others by zlib. Per row of the job's own
    # Criteo records (570 bytes framed; 1M synthetic rows, in process): ISA-L 3: 1.92 us, 134.9
    # bytes; ISA-L 2: 1.45 us, 145.7 bytes; zlib 2: 6.09 us, 124.8 bytes; zlib 3: 7.62 us, 105.9
    # bytes; zlib 6 (its default) about 20 us. TensorFlow reads them all at the same speed.
    compression_level: int = 3

    def __post_init__(self):
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if not 1 <= self.compression_level <= 9:
            raise ConfigError(f"compression_level must be in 1..9, got {self.compression_level}")


def load_preprocess_config(path: str | None, max_bad_fraction: float | None = None
                           ) -> PreprocessConfig:
    """Reads --config FILE (strict); a --max_bad_fraction given on the command line wins."""
    data = load_yaml(path) if path else {}
    cfg = from_dict(PreprocessConfig, data)
    if max_bad_fraction is not None:
        cfg = dataclasses.replace(cfg, max_bad_fraction=float(max_bad_fraction))
    return cfg


def resolve(dataset: str, cfg: PreprocessConfig) -> tuple[DatasetSpec, dict[str, Any], str]:
    """The dataset spec, the resolved config (JSON-able) and its hash."""
    spec = dataset_spec(dataset, cfg.dataset or None)
    resolved = {
        "dataset": _without_unset_caps(to_dict(spec)),
        "split": to_dict(cfg.split),
        "num_shards": to_dict(cfg.num_shards),
        "max_bad_fraction": cfg.max_bad_fraction,
        "compression_level": cfg.compression_level,
    }
    return spec, resolved, config_hash(resolved)


def _without_unset_caps(dataset: dict[str, Any]) -> dict[str, Any]:
    """The DatasetSpec dict without its null `max_vocab_size` keys (DatasetSpec reads them back
    as null)."""
    if dataset.get("default_max_vocab_size") is None:
        dataset.pop("default_max_vocab_size", None)
    for field in dataset["fields"]:
        if field.get("max_vocab_size") is None:
            field.pop("max_vocab_size", None)
    return dataset
