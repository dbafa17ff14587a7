"""Run-directory plumbing shared by search and retraining: the resolved config on disk, atomic
JSON outputs, distributed input streams that can resume mid-stream, and checkpointing."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import tensorflow as tf

from configs.loader import ConfigError
from pipeline import input as input_lib

CONFIG_FILE = "config.json"


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Writes JSON so a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)
    return path


def prepare_model_dir(model_dir: str | Path, record: dict, rehash=None) -> Path:
    """Creates model_dir and writes config.json; refuses to resume a run made with another config
    or another dataset (the keys that differ are named). `rehash(stored_config_dict)`, when given,
    recomputes the stored run's config_hash from the config it recorded, so a run recorded under an
    older hash definition is compared by what it stored, not by the hash it wrote."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / CONFIG_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: invalid JSON ({exc}); remove it or use a new --model_dir") from None
        if rehash is not None and isinstance(old.get("config"), dict):
            try:
                old = {**old, "config_hash": rehash(old["config"])}
            except (KeyError, TypeError):
                pass  # a config this code cannot read: compared by its recorded hash
        changed = sorted(k for k in set(old) | set(record)
                         if k in ("config_hash", "schema_hash", "kind", "dims_hash")
                         and old.get(k) != record.get(k))
        if changed:
            raise ConfigError(
                f"{model_dir} holds a run with a different {', '.join(changed)} "
                f"({', '.join(f'{k}: {old.get(k)} -> {record.get(k)}' for k in changed)}); "
                f"use a new --model_dir to start a new run, or the same config to resume")
    atomic_write_json(path, record)
    return model_dir


def distributed_stream(strategy, data_dir, schema, split: str, global_batch_size: int, *,
                       seed: int, skip_batches: int = 0, shuffle: bool = True,
                       shuffle_buffer: int | None = None):
    """An endless, seeded, per-replica-batched stream of `split`, resuming after `skip_batches`
    global batches (the stream is deterministic for a seed, so skipping reproduces the exact
    position of an interrupted run)."""
    kwargs = {}
    if shuffle_buffer is not None:
        kwargs["shuffle_buffer"] = shuffle_buffer

    def dataset_fn(input_context: tf.distribute.InputContext):
        # make_dataset takes the global batch size and yields per-replica batches
        ds = input_lib.make_dataset(data_dir, schema, split, global_batch_size, shuffle=shuffle,
                                    repeat=True, seed=seed, input_context=input_context,
                                    drop_remainder=True, **kwargs)
        if skip_batches:
            # each global step takes one batch per replica fed by this pipeline
            per_pipeline = max(1, input_context.num_replicas_in_sync
                               // input_context.num_input_pipelines)
            ds = ds.skip(skip_batches * per_pipeline)
        return ds

    return strategy.distribute_datasets_from_function(dataset_fn)


def distributed_eval(strategy, data_dir, schema, split: str, global_batch_size: int):
    """One pass over `split` in file order, every record exactly once."""

    def dataset_fn(input_context: tf.distribute.InputContext):
        return input_lib.make_dataset(data_dir, schema, split, global_batch_size, shuffle=False,
                                      repeat=False, seed=None, input_context=input_context,
                                      drop_remainder=False)

    return strategy.distribute_datasets_from_function(dataset_fn)


def model_state(model) -> tf.train.Checkpoint:
    """Every variable of a Keras 3 model (weights, BatchNorm statistics and the random-generator
    states of Gumbel noise and dropout), keyed by position in `model.variables`.

    tf.train.Checkpoint(model=keras_model) is not enough with Keras 3: it tracks only part of the
    layer tree (measured: none of the MLP's BatchNorm statistics, none of the tables of a retrain
    model), and Keras keeps seed-generator states out of `model.weights`. The architecture is
    fixed by the run's config hash, so positions are stable; restores check every shape."""
    return tf.train.Checkpoint(**{f"v{i:04d}": getattr(v, "value", v)
                                  for i, v in enumerate(model.variables)})


class Checkpointer:
    """tf.train.CheckpointManager over the step, model, its RNG states and optimizers, with strict
    restores: resuming continues exactly where the run stopped."""

    def __init__(self, directory: str | Path, max_to_keep: int, **objects):
        self.directory = str(directory)
        if "model" in objects:
            objects["model"] = model_state(objects["model"])
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory,
                                                  max_to_keep=max_to_keep)

    def restore_latest(self) -> str | None:
        latest = self.manager.latest_checkpoint
        if latest:
            status = self.checkpoint.restore(latest)
            status.assert_existing_objects_matched()
        return latest

    def save(self, step: int) -> str:
        return self.manager.save(checkpoint_number=step)


def backbone_kwargs(model_cfg) -> dict:
    """The MLP settings of `model_cfg` for the backbones that have an MLP (all but FM)."""
    if model_cfg.backbone == "fm":
        return {}
    return {"hidden_units": tuple(model_cfg.mlp_units), "dropout": model_cfg.dropout}
