"""Run-directory plumbing shared by search and retraining: the resolved config on disk, atomic
JSON outputs, distributed input streams that can resume mid-stream, checkpointing, and where a
worker of a multi-worker run writes (`output_dir`)."""
from __future__ import annotations

import atexit
import copy
import gc
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from configs import fileio
from configs.cli import atomic_output
from configs.loader import ConfigError
from pipeline import input as input_lib

CONFIG_FILE = "config.json"


def atomic_write_json(path: str | Path, data: Any) -> Path | fileio.RemotePath:
    """Writes JSON so a reader never sees a half-written file (configs.cli.atomic_output,
    replacing an earlier version of the file; the mode follows the umask). A remote path is
    written under a temporary name and renamed over the file (fileio.write_atomic: not atomic
    on an object store, but never partial)."""
    path = fileio.path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(path, fileio.RemotePath):
        return fileio.write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    with atomic_output(path, "w", replace=True, encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
    return path


def save_npz(path, **arrays):
    """np.savez_compressed to a local or remote path (remote: built in memory, then written)."""
    path = fileio.path(path)
    if isinstance(path, Path):
        np.savez_compressed(path, **arrays)
        return path
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    return path


def load_npz(path):
    """np.load of an .npz file at a local or remote path (use it as a context manager)."""
    path = fileio.path(path)
    if isinstance(path, Path):
        return np.load(path)
    return np.load(io.BytesIO(path.read_bytes()))


# ------------------------------------------------------------------ workers of a cluster
class _Worker:
    """This process's role in a multi-worker run (pipeline.strategy): the chief writes the run's
    directories; any other worker writes under `temp_root`, a directory of its own that mirrors
    the absolute paths of the run's directories (a remote `scheme://rest` as
    `temp_root/REMOTE_MIRROR/scheme/rest`) and is removed when the process ends."""

    chief: bool = True
    index: int = 0
    temp_root: Path | None = None


_WORKER = _Worker()
REMOTE_MIRROR = "_remote"  # where a non-chief worker mirrors a remote run directory


def set_worker(chief: bool, index: int) -> None:
    """Registers this process as the chief, or as worker `index` writing to a temporary
    directory of its own (created now, removed at exit)."""
    _WORKER.chief, _WORKER.index = bool(chief), int(index)
    if not chief and _WORKER.temp_root is None:
        root = Path(tempfile.mkdtemp(prefix=f"autodim-worker{index}-"))
        _WORKER.temp_root = root
        atexit.register(shutil.rmtree, root, ignore_errors=True)


def is_chief() -> bool:
    """Whether this process writes the run's outputs (always, outside a multi-worker run)."""
    return _WORKER.chief


def worker_index() -> int:
    """This worker's position in the cluster (0 outside a multi-worker run)."""
    return _WORKER.index


def worker_temp_root() -> Path | None:
    """A non-chief worker's temporary directory (None for the chief)."""
    return _WORKER.temp_root


def output_dir(path: str | Path) -> Path | fileio.RemotePath:
    """Where this process writes what belongs at `path`: `path` itself for the chief; for any
    other worker the same absolute path under its temporary directory (so a subdirectory of a
    run's directory maps to the same subdirectory of the mapped one; a remote path maps to a
    local one, `temp_root/REMOTE_MIRROR/scheme/rest`)."""
    path = fileio.path(path)
    if _WORKER.temp_root is None:
        return path
    if isinstance(path, fileio.RemotePath):
        scheme, rest = str(path).split("://", 1)
        return _WORKER.temp_root / REMOTE_MIRROR / scheme / rest.strip("/")
    absolute = path.resolve()
    if absolute.is_relative_to(_WORKER.temp_root):
        return absolute
    return _WORKER.temp_root / absolute.relative_to(absolute.anchor)


def shared_dir(path: str | Path) -> Path | fileio.RemotePath:
    """The run's (the chief's) path of `path`, which may be an `output_dir`: what every worker
    reads when it resumes (checkpoints, the best weights of an earlier process, finished
    results)."""
    path = fileio.path(path)
    root = _WORKER.temp_root
    if root is None or isinstance(path, fileio.RemotePath):
        return path
    absolute = path.resolve()
    if absolute.is_relative_to(root / REMOTE_MIRROR):
        parts = absolute.relative_to(root / REMOTE_MIRROR).parts
        if parts:
            return fileio.path(f"{parts[0]}://" + "/".join(parts[1:]))
    if absolute.is_relative_to(root):
        return Path(absolute.anchor) / absolute.relative_to(root)
    return path


def prepare_model_dir(model_dir: str | Path, record: dict, rehash=None) -> Path:
    """Creates model_dir and writes config.json; refuses to resume a run made with another config
    or another dataset (the keys that differ are named). `rehash(stored_config_dict)`, when given,
    recomputes the stored run's config_hash from the config it recorded, so a run recorded under an
    older hash definition is compared by what it stored, not by the hash it wrote. A refusal over
    the config names the settings that differ ("search.learning_rate: 0.001 -> 0.01", from the
    stored config.json's "config" and the new one); with `rehash`, only those that enter the hash
    (config_differences)."""
    model_dir = fileio.path(model_dir)
    if not is_chief():  # checks the chief's run as the chief does; writes its own copy
        check_model_dir(model_dir, record, rehash)
        mine = output_dir(model_dir)
        mine.mkdir(parents=True, exist_ok=True)
        atomic_write_json(mine / CONFIG_FILE, record)
        return mine
    model_dir.mkdir(parents=True, exist_ok=True)
    check_model_dir(model_dir, record, rehash)
    atomic_write_json(model_dir / CONFIG_FILE, record)
    return model_dir


def check_model_dir(model_dir: str | Path, record: dict, rehash=None) -> None:
    """prepare_model_dir's refusal, without writing anything: ConfigError when model_dir's
    config.json records another run."""
    model_dir = fileio.path(model_dir)
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
    position of an interrupted run). Under a ParameterServerStrategy: an iterator on every
    worker (`pipeline.parameter_server.per_worker_stream`: each worker its own unseeded shuffle,
    so a resume does not skip)."""
    from pipeline import parameter_server

    if parameter_server.is_parameter_server(strategy):
        return parameter_server.per_worker_stream(strategy, data_dir, schema, split,
                                                  global_batch_size,
                                                  shuffle_buffer=shuffle_buffer)
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
    """One pass over `split` in file order, every record exactly once (under a
    ParameterServerStrategy read and scored on the chief)."""
    from pipeline import parameter_server

    if parameter_server.is_parameter_server(strategy):
        return parameter_server.eval_dataset(data_dir, schema, split, global_batch_size)

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
    return tf.train.Checkpoint(**_model_variables(model))


def _model_variables(model) -> dict:
    """model.variables by position, then (a parameter-server run) the tables that are plain
    tf.Variables outside Keras's weights (`models._tables.plain_tables`), as t00, t01, ..."""
    from models._tables import plain_tables

    out = {f"v{i:04d}": getattr(v, "value", v) for i, v in enumerate(model.variables)}
    out.update({f"t{i:02d}": t for i, t in enumerate(plain_tables(model))})
    return out


def restore_model_state(model, prefix: str) -> None:
    """Restores every variable of `model` from `prefix`, a checkpoint written as
    tf.train.Checkpoint(model=model_state(model)), a few variables at a time
    (restore_in_pieces): no second copy of the model's tables."""
    restore_in_pieces({"model": model_state(model)}, prefix)


# A restore reads at most this many bytes of small variables at once (a larger one alone).
RESTORE_BATCH_BYTES = 16 << 20


def restore_in_pieces(objects: dict, prefix: str) -> None:
    """What `tf.train.Checkpoint(**objects).restore(prefix).assert_existing_objects_matched()`
    does, without its memory peak: that restore reads every tensor of the checkpoint before it
    assigns any, i.e. a second copy of every table and optimizer slot. Here the variables are
    restored in batches of up to RESTORE_BATCH_BYTES, a larger one alone, each through a
    checkpoint object holding only the path from the root to it (object-based restores match
    by names), so at most one large variable's new value exists beside the model (measured,
    resuming a finished retraining at 3 fields x 1M rows x 16, whose fresh run peaks at 1340
    MB: process peak 1662 MB, against 2670 MB reading the earlier 4x checkpoint whole). Strict
    as the whole restore: a variable the checkpoint lacks, or of another shape, raises."""
    leaves, seen = [], set()

    def walk(obj, path):
        if id(obj) in seen:  # shared (an optimizer's slot is in two of its lists): once
            return
        seen.add(id(obj))
        children = tf.train.TrackableView.children(obj)
        if not children:
            leaves.append((path, obj))
        for name, child in children.items():
            walk(child, path + (name,))

    for name, obj in objects.items():
        walk(obj, (name,))
    batch, size = [], 0
    for path, leaf in leaves:
        nbytes = _variable_bytes(leaf)
        if batch and size + nbytes > RESTORE_BATCH_BYTES:
            _restore_paths(batch, prefix)
            batch, size = [], 0
        batch.append((path, leaf))
        size += nbytes
    if batch:
        _restore_paths(batch, prefix)


def _variable_bytes(obj) -> int:
    shape, dtype = getattr(obj, "shape", None), getattr(obj, "dtype", None)
    try:
        return int(np.prod(tuple(shape))) * tf.as_dtype(dtype).size
    except (TypeError, ValueError):
        return 0  # not a variable: a container without children


def _restore_paths(paths: list, prefix: str) -> None:
    """Restores the leaves of `paths` ([(names from the root, leaf)]) from `prefix`."""
    tree: dict = {}
    for path, leaf in paths:
        node = tree
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = leaf

    def build(node):
        return tf.train.Checkpoint(**{name: build(child) if isinstance(child, dict) else child
                                      for name, child in node.items()})

    build(tree).read(prefix).expect_partial().assert_existing_objects_matched()


class OptimizerState(tf.__internal__.tracking.Trackable):
    """A Keras optimizer as the checkpoint sees it, minus the variables it updates.

    Keras 3 optimizers track the variables they train (`_trainable_variables`): the model's Keras
    variables, which to tf.train.Checkpoint are other objects than the tf.Variables inside them
    that `model_state` saves, so each table was written twice (the checkpoint of a retraining
    was 4x its tables instead of 3x: table and two Adam slots). This keeps every other child
    under the optimizer's own names (`_iterations`, `_learning_rate`, `_variables/<i>` for the
    slots), so checkpoints written with the optimizer itself restore into it: their
    `_trainable_variables` entries are left unread (the model's `model/v...` entries hold the
    same values)."""

    EXCLUDED = ("_trainable_variables",)

    def __init__(self, optimizer):
        self._maybe_initialize_trackable()
        self._optimizer = optimizer

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        children = self._optimizer._trackable_children(save_type, **kwargs)
        return {name: child for name, child in children.items() if name not in self.EXCLUDED}


def _checkpointed(value):
    """What the checkpoint tracks for one of Checkpointer's objects (optimizers: OptimizerState)."""
    import keras

    return OptimizerState(value) if isinstance(value, keras.optimizers.Optimizer) else value


class Checkpointer:
    """tf.train.CheckpointManager over the step, model, its RNG states and optimizers, with strict
    restores: resuming continues exactly where the run stopped. Each variable is saved once
    (`model_state`, `OptimizerState`)."""

    def __init__(self, directory: str | Path, max_to_keep: int, *,
                 restore_from: str | Path | None = None, layout: dict | None = None,
                 optional: dict | None = None, **objects):
        """Saves to `directory`; restores the latest checkpoint of `restore_from` (default:
        `directory`; a multi-worker run's other workers restore the chief's). `layout`
        (`pipeline.parameter_server.layout`: tables sharded over N ps tasks) is written beside
        the checkpoints, and a checkpoint of another layout is refused (ConfigError).
        `optional` objects are saved too but restored only where the checkpoint has them
        (bookkeeping that checkpoints of earlier versions lack), the others strictly."""
        self.directory = str(directory)
        self.layout = layout
        self.restore_from = str(restore_from or directory)
        if "model" in objects:
            objects["model"] = model_state(objects["model"])
        self.objects = {name: _checkpointed(value) for name, value in objects.items()}
        self.optional = dict(optional or {})
        self.checkpoint = tf.train.Checkpoint(**self.objects, **self.optional)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory,
                                                  max_to_keep=max_to_keep)

    def restore_latest(self) -> str | None:
        """Restores the latest checkpoint, a few variables at a time (restore_in_pieces)."""
        if self.restore_from == self.directory:
            latest = self.manager.latest_checkpoint
        else:
            latest = tf.train.latest_checkpoint(self.restore_from)
        if latest:
            from pipeline import parameter_server

            path = fileio.path(self.restore_from) / parameter_server.LAYOUT_FILE
            stored = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
            parameter_server.check_layout(stored, self.layout, latest)
            restore_in_pieces(self.objects, latest)
            if self.optional:
                tf.train.Checkpoint(**self.optional).read(latest).expect_partial()
        return latest

    def save(self, step: int) -> str:
        if self.manager is None:
            raise RuntimeError(f"the checkpointer of {self.directory} was closed")
        saved = self.manager.save(checkpoint_number=step)
        if self.layout is not None:
            from pipeline import parameter_server

            path = fileio.path(self.directory) / parameter_server.LAYOUT_FILE
            if not path.exists():
                atomic_write_json(path, self.layout)
        return saved

    def close(self) -> None:
        """Drops the references to what it checkpoints (the optimizers among them), so that their
        memory can be freed once training is over; `save` then raises."""
        self.objects = self.optional = self.checkpoint = self.manager = None


# ------------------------------------------------------------------ releasing traced graphs
_CUSTOM_GRADIENT_PREFIX = "CustomGradient-"


def gradient_registrations() -> frozenset:
    """The names in TensorFlow's gradient registry now (see release_gradient_registrations)."""
    from tensorflow.python.framework import ops

    return frozenset(ops.gradient_registry.list())


def release_gradient_registrations(before: frozenset) -> int:
    """Removes the `tf.custom_gradient` functions registered since `before`; returns how many.

    Tracing a `@tf.custom_gradient` function into a graph registers its gradient closure in
    TensorFlow's process-global gradient registry under a new name, "CustomGradient-<uid>", and
    nothing ever removes it. The closure holds tensors of the traced graph, the graph holds its
    captures, and the captures are the handles of the variables the graph used: every traced
    training call would keep its model's tables and optimizer slots alive after the run
    (measured while the FM interaction had one: RSS after each of three retrain() calls in one
    process at 3 fields x 1M rows x 16, 1501 -> 2172 -> 2869 MB; with the registrations dropped
    1313 -> 1327 -> 1332 MB). The models use none now (`models.backbones.fm`); this keeps a
    future one, or a backbone of a user's, from holding a run's memory. A registration is only
    read when a gradient is taken through that graph, so once a run's training is over (and at
    its end) they are dropped."""
    from tensorflow.python.framework import ops

    table = ops.gradient_registry._registry  # no public way to unregister
    stale = [name for name in list(table)
             if name.startswith(_CUSTOM_GRADIENT_PREFIX) and name not in before]
    for name in stale:
        table.pop(name, None)
    return len(stale)


def collect_garbage() -> None:
    """gc.collect(): a dropped model, optimizer or graph is in reference cycles, and the memory it
    holds (TensorFlow's buffers) is invisible to the collector's thresholds, so without this the
    next run's tables could be allocated before the last run's are freed."""
    gc.collect()


# ------------------------------------------------------------------ saving a Keras model
def save_keras_model(model, path: str | Path) -> Path:
    """model.save(path): the same `.keras` zip (metadata.json, config.json, model.weights.h5),
    written without a copy of any weight in host memory.

    Keras's own save converts each variable with `np.array(variable)`, two copies of it (the
    variable's `numpy()`, then the array's), and, whenever psutil says the weights fit in
    memory, builds the HDF5 file in memory and copies that into the zip (measured: the scoring
    hook at the end of a retraining at 3 fields x 1M rows x 16, 204 MB of tables, peaked 387
    MB above its start; +1 MB with this). Here the weights store hands HDF5 a view of each
    variable's TensorFlow buffer (`_TensorView`), and the HDF5 file is written on disk and
    streamed into the zip, as Keras does when memory is short. This follows
    `keras.src.saving.saving_lib._save_model_to_fileobj` of the pinned Keras (3.15.1); the
    functions it uses are Keras-internal, and `tests/test_retrain.py` loads what it writes.
    Written beside `path` and renamed, so a reader never sees half a model. A remote `path`:
    staged in a local temporary directory, then copied to a temporary name beside `path` and
    renamed (fileio.write_atomic's guarantee)."""
    from keras.src.saving import saving_lib as lib

    class ViewingH5Store(lib.H5IOStore):
        def __setitem__(self, key, value):
            super().__setitem__(key, _TensorView(value))

    path = fileio.path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remote = isinstance(path, fileio.RemotePath)
    config_json, metadata_json = lib._serialize_model_as_json(model)
    with tempfile.TemporaryDirectory(dir=None if remote else path.parent, prefix=".save-") as tmp:
        weights_path = Path(tmp) / lib._VARS_FNAME_H5
        staged = Path(tmp) / path.name
        with zipfile.ZipFile(staged, "w") as archive:
            archive.writestr(lib._METADATA_FILENAME, metadata_json)
            archive.writestr(lib._CONFIG_FILENAME, config_json)
            weights = ViewingH5Store(weights_path, mode="w")
            assets = None
            try:
                assets = lib.DiskIOStore(lib._ASSETS_DIRNAME, archive=archive, mode="w")
                lib._save_state(model, weights_store=weights, assets_store=assets,
                                inner_path="", visited_saveables=set())
            finally:
                weights.close()
                if assets is not None:
                    assets.close()
            archive.write(weights_path, lib._VARS_FNAME_H5)
        if remote:
            weights_path.unlink()
            fileio.put_file(staged, path)
        else:
            os.replace(staged, path)
    return path


class _TensorView:
    """A variable as `np.array` sees it in `save_keras_model`'s weights store: a read-only view
    of the tensor TensorFlow reads (`np.asarray` of an EagerTensor shares its buffer), returned
    as the copy numpy asks for (numpy >= 2 takes `__array__(copy=True)`'s result as it is).
    The store only writes it to the HDF5 file."""

    def __init__(self, value):
        self.value = value

    def __array__(self, dtype=None, copy=None):
        value = self.value
        if isinstance(value, tf.Variable) or hasattr(value, "__tf_tensor__"):
            value = tf.convert_to_tensor(value)
        array = np.asarray(value)
        return array if dtype is None else array.astype(dtype, copy=False)


def backbone_kwargs(model_cfg) -> dict:
    """The MLP settings of `model_cfg` for the backbones that have an MLP (all but FM)."""
    if model_cfg.backbone == "fm":
        return {}
    return {"hidden_units": tuple(model_cfg.mlp_units), "dropout": model_cfg.dropout}
