"""Run-directory plumbing shared by search and retraining: the resolved config on disk, atomic
JSON outputs, distributed input streams that can resume mid-stream, and checkpointing."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import tensorflow as tf

from configs.cli import atomic_output
from configs.loader import ConfigError
from pipeline import input as input_lib

CONFIG_FILE = "config.json"


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Writes JSON so a reader never sees a half-written file (configs.cli.atomic_output,
    replacing an earlier version of the file; the mode follows the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, "w", replace=True, encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
    return path


def prepare_model_dir(model_dir: str | Path, record: dict, rehash=None) -> Path:
    """Creates model_dir and writes config.json; refuses to resume a run made with another config
    or another dataset (the keys that differ are named). `rehash(stored_config_dict)`, when given,
    recomputes the stored run's config_hash from the config it recorded, so a run recorded under an
    older hash definition is compared by what it stored, not by the hash it wrote. A refusal over
    the config names the settings that differ ("search.learning_rate: 0.001 -> 0.01", from the
    stored config.json's "config" and the new one); with `rehash`, only those that enter the hash
    (config_differences)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / CONFIG_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}: invalid JSON ({exc}); remove it or use a new --model_dir"
            ) from None
        if rehash is not None and isinstance(old.get("config"), dict):
            try:
                old = {**old, "config_hash": rehash(old["config"])}
            except (KeyError, TypeError):
                pass  # a config this code cannot read: compared by its recorded hash
        changed = sorted(k for k in set(old) | set(record)
                         if k in ("config_hash", "schema_hash", "kind", "dims_hash")
                         and old.get(k) != record.get(k))
        if changed:
            keys = ""
            if "config_hash" in changed:
                diffs = config_differences(old.get("config"), record.get("config"), rehash)
                if diffs:
                    shown = diffs[:_MAX_SHOWN_DIFFS]
                    more = len(diffs) - len(shown)
                    keys = ("; the settings that differ: " + ", ".join(shown)
                            + (f" and {more} more" if more > 0 else ""))
                elif not isinstance(old.get("config"), dict):
                    keys = f"; {path} records no config to compare"
            raise ConfigError(
                f"{model_dir} holds a run with a different {', '.join(changed)} "
                f"({', '.join(f'{k}: {old.get(k)} -> {record.get(k)}' for k in changed)}){keys}; "
                f"use a new --model_dir to start a new run, or the same config to resume")
    atomic_write_json(path, record)
    return model_dir


_MAX_SHOWN_DIFFS = 20
_ABSENT = object()


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted.path: value} of a nested dict (lists are values)."""
    if not isinstance(data, dict):
        return {prefix: data}
    out = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(_leaves(value, path))
        else:
            out[path] = value
    return out


def _with_value(data: dict, path: str, value: Any) -> dict:
    """A copy of nested `data` with `path` set to `value` (removed for _ABSENT)."""
    out = copy.deepcopy(data)
    node = out
    parts = path.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if value is _ABSENT:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = copy.deepcopy(value)
    return out


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    return value if isinstance(value, str) else json.dumps(value)


def config_differences(old_config: Any, new_config: Any, rehash=None) -> list[str]:
    """The settings that differ between a stored run's config dict and a new one, as
    "dotted.key: old -> new" (sorted by key). With `rehash` (config dict -> the run's hash), a
    key whose change alone leaves the hash as it is (a setting the hash leaves out, e.g.
    POST_SEARCH_KEYS, or the search settings for a retraining) is not listed: it does not block
    resuming."""
    if not isinstance(old_config, dict) or not isinstance(new_config, dict):
        return []
    old_leaves, new_leaves = _leaves(old_config), _leaves(new_config)
    base = None
    if rehash is not None:
        try:
            base = rehash(old_config)
        except (KeyError, TypeError, ValueError):
            base = None  # a config this code cannot hash: every difference is listed
    out = []
    for key in sorted(set(old_leaves) | set(new_leaves)):
        before, after = old_leaves.get(key, _ABSENT), new_leaves.get(key, _ABSENT)
        if before == after:
            continue
        if base is not None:
            try:
                if rehash(_with_value(old_config, key, after)) == base:
                    continue
            except (KeyError, TypeError, ValueError):
                pass
        out.append(f"{key}: {_show(before)} -> {_show(after)}")
    return out


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
