"""Search and retraining on `tf.distribute.experimental.ParameterServerStrategy`
(`--strategy parameter_server`): embedding tables larger than one device, split by rows over
the parameter servers.

Every task of the cluster runs the same command with its own TF_CONFIG (`{"cluster": {"chief":
[...], "ps": [...], "worker": [...]}, "task": {"type": ..., "index": ...}}`). A "ps" or "worker"
task starts a `tf.distribute.Server` and serves until it is terminated (SIGTERM exits 0); the
"chief" is the coordinator: it builds the model under the strategy's scope (the tables as plain
tf.Variables sharded by `FixedShardsPartitioner(number of ps tasks)`, every other variable whole
on one ps, round-robin: `models._tables.table_partitioner`), dispatches the compiled training
calls to the workers with `ClusterCoordinator.schedule` on per-worker datasets (`dispatch`), and
runs everything else itself: evaluation, alpha's derivation, dims.json, checkpoints, summaries,
metrics and the exported model (`local_copy`).

Training is asynchronous: the workers' steps read and update the variables on the ps without
waiting for each other. A call of n steps is split over the workers; the controller joins them
before it evaluates or checkpoints. Each worker reads the whole training split in its own
shuffled order (the strategy gives every worker input pipeline 0: `per_worker_stream`).
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

import tensorflow as tf

from configs.loader import ConfigError

JOBS = ("chief", "ps", "worker")
LAYOUT_FILE = "layout.json"  # in a run's checkpoint directory: the variables' layout


def cluster_task(tf_config: str | None) -> tuple[str, int, int, int]:
    """(this task's type, its index, number of ps tasks, number of workers) of a TF_CONFIG value
    for a parameter-server cluster; ConfigError naming what is wrong."""
    example = ('{"cluster": {"chief": ["host0:port"], "ps": ["host1:port", "host2:port"], '
               '"worker": ["host3:port", "host4:port"]}, "task": {"type": "chief", "index": 0}}')
    from pipeline.strategy import parse_tf_config

    cluster, task = parse_tf_config(tf_config, "parameter_server", example)
    for job in cluster:
        if job not in JOBS:
            raise ConfigError(f"TF_CONFIG cluster job {job!r}: ParameterServerStrategy has "
                              f"{', '.join(JOBS)} tasks only")
    counts = {job: len(cluster.get(job) or []) for job in JOBS}
    if counts["chief"] != 1 or counts["ps"] < 1 or counts["worker"] < 1:
        raise ConfigError(f"TF_CONFIG cluster: --strategy parameter_server needs one chief, at "
                          f"least one ps and one worker task, got {counts}")
    kind, index = task.get("type"), task.get("index")
    if kind not in JOBS or not isinstance(index, int) or not 0 <= index < counts[kind]:
        raise ConfigError(f"TF_CONFIG task {task} is not one of the cluster's tasks "
                          f"({', '.join(f'{j}: {n}' for j, n in counts.items())})")
    return kind, index, counts["ps"], counts["worker"]


def make_strategy() -> tf.distribute.Strategy:
    """On the chief: the ParameterServerStrategy over TF_CONFIG's cluster (tables sharded over
    every ps task) with its ClusterCoordinator. On a ps or worker task: serves, never returns."""
    from models._tables import table_partitioner

    kind, index, num_ps, _ = cluster_task(os.environ.get("TF_CONFIG"))
    if kind != "chief":
        serve(kind, index)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    partitioner = tf.distribute.experimental.partitioners.FixedShardsPartitioner(num_ps)
    strategy = tf.distribute.experimental.ParameterServerStrategy(
        resolver, variable_partitioner=table_partitioner(partitioner))
    tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)
    return strategy


def serve(kind: str, index: int) -> None:
    """A ps or worker task: the TF_CONFIG cluster's server for this task, until SIGTERM (exit 0)
    or SIGINT. Workers run what the chief schedules; ps tasks hold the variables."""
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=kind, task_index=index,
                                  protocol=resolver.rpc_layer or "grpc", start=True)
    print(f"{kind} task {index} of the parameter-server cluster serving at {server.target} "
          f"(until terminated)", flush=True)

    def stop(signum, frame):
        print(f"{kind} task {index}: stopped by signal {signum}", flush=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # the server's threads are not joinable; nothing of this process is pending

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        time.sleep(3600)


def is_parameter_server(strategy) -> bool:
    return isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy)


def coordinator(strategy):
    """The strategy's ClusterCoordinator (one per strategy: the constructor returns it)."""
    return tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)


def _cluster_spec(strategy) -> tf.train.ClusterSpec:
    # the strategy keeps its resolver (the public `cluster_resolver` property is None for it)
    return (getattr(strategy, "_cluster_resolver", None) or strategy.cluster_resolver
            ).cluster_spec()


def num_ps(strategy) -> int:
    return int(_cluster_spec(strategy).num_tasks("ps"))


def num_workers(strategy) -> int:
    return int(_cluster_spec(strategy).num_tasks("worker"))


def split(units: int, parts: int) -> list[int]:
    """`units` as `parts` near-equal non-negative counts (the first ones one larger)."""
    base, extra = divmod(int(units), int(parts))
    return [base + (1 if i < extra else 0) for i in range(parts)]


def dispatch(strategy, fn, units: int, args_for):
    """Runs `fn(*args_for(units))`, a compiled call of `units` steps (or step groups), and returns
    its summed loss. Under a ParameterServerStrategy the units are split over the workers: one
    `ClusterCoordinator.schedule(fn, args_for(k))` per worker with k > 0, all joined, their
    losses summed (the workers' steps run concurrently and asynchronously)."""
    if not is_parameter_server(strategy):
        return fn(*args_for(units))
    coord = coordinator(strategy)
    values = [coord.schedule(fn, args=args_for(k))
              for k in split(units, num_workers(strategy)) if k]
    coord.join()
    return tf.constant(sum(float(v.fetch()) for v in values), tf.float32)


def per_worker_stream(strategy, data_dir, schema, split_name: str, batch_size: int, *,
                      shuffle_buffer: int | None = None):
    """An endless shuffled stream of `split_name` on every worker (a PerWorkerValues of
    iterators to pass to `dispatch`'s calls, once `iter` is called on it); a step is one batch
    of `batch_size`.

    ParameterServerStrategy gives every worker's dataset function the same input context
    (pipeline 0 of 1) and no worker index, so the workers cannot take disjoint shares: each
    shuffles the whole split in its own order, the pattern ClusterCoordinator documents (an
    unseeded shuffle). The function is traced once on the chief, where the run's global seed
    (keras.utils.set_random_seed) would give every worker the same seeds, so it is traced
    without one (`_unseeded`): the shuffles' seeds are then drawn by each worker's kernels."""
    from pipeline import input as input_lib

    kwargs = {} if shuffle_buffer is None else {"shuffle_buffer": shuffle_buffer}

    def dataset_fn(input_context: tf.distribute.InputContext):
        return input_lib.make_dataset(data_dir, schema, split_name, batch_size, shuffle=True,
                                      repeat=True, seed=None, drop_remainder=True, **kwargs)

    def per_worker():
        return strategy.distribute_datasets_from_function(dataset_fn)

    with _unseeded():
        datasets = coordinator(strategy).create_per_worker_dataset(per_worker)
    return datasets


@contextlib.contextmanager
def _unseeded():
    """No global random seed while the block traces (TensorFlow's eager global seed, read
    through its context; restored afterwards, which also restarts its op-seed counter)."""
    from tensorflow.python.eager import context

    seed = context.global_seed()
    context.set_global_seed(None)
    try:
        yield
    finally:
        context.set_global_seed(seed)


def eval_dataset(data_dir, schema, split_name: str, batch_size: int) -> tf.data.Dataset:
    """One pass over `split_name` in file order, read and scored on the chief."""
    from pipeline import input as input_lib

    return input_lib.make_dataset(data_dir, schema, split_name, batch_size, shuffle=False,
                                  repeat=False, seed=None)


def layout(strategy, model) -> dict | None:
    """What a checkpoint of `model` needs of the cluster to restore: under a
    ParameterServerStrategy the number of ps tasks (each table is split into that many shards,
    and each shard has its own optimizer slots) and the shards' shapes; None otherwise (whole
    variables, on any number of devices)."""
    if not is_parameter_server(strategy):
        return None
    from models._tables import plain_tables

    tables = plain_tables(model)
    return {"strategy": "parameter_server", "ps_tasks": num_ps(strategy),
            "table_shards": [[list(v.shape) for v in _parts(t)] for t in tables],
            "table_devices": [[v.device for v in _parts(t)] for t in tables]}


def _parts(table) -> list:
    return list(getattr(table, "variables", [table]))


def format_layout(record: dict) -> str:
    """The log line of a layout: each table's shards, their shapes and devices."""
    tables = "; ".join(
        " + ".join(f"{rows}x{width} on {device.split('/device:')[0]}"
                   for (rows, width), device in zip(shapes, devices))
        for shapes, devices in zip(record["table_shards"], record["table_devices"]))
    return f"tables over {record['ps_tasks']} ps tasks: {tables}"


def describe_layout(record: dict | None) -> str:
    if not record:
        return "whole variables (--strategy auto or multi_worker)"
    return f"tables sharded over {record['ps_tasks']} ps tasks (--strategy parameter_server)"


def check_layout(stored: dict | None, current: dict | None, checkpoint: str) -> None:
    """ConfigError when the checkpoint's variable layout is not this run's."""
    def key(record):
        return None if not record else (record.get("strategy"), record.get("ps_tasks"))

    if key(stored) != key(current):
        raise ConfigError(
            f"{checkpoint} was written with {describe_layout(stored)}; this run has "
            f"{describe_layout(current)}. A checkpoint restores only into the same layout: "
            f"resume with the same strategy and number of ps tasks, or use a new --model_dir")


def local_copy(model, build):
    """`build()`'s model (the same architecture with Keras-weight tables, built here outside the
    strategy's scope) holding `model`'s values: what the exported model.keras and the chief's
    predictions use, since a model's plain tables are not Keras weights. The tables are read
    whole (model.keras holds them whole anyway)."""
    from models._tables import FieldTables, plain_tables

    copy = build()
    tables_of = []
    for layer in copy._flatten_layers(include_self=True, recursive=True):
        helper = getattr(layer, "_tables", None)
        if isinstance(helper, FieldTables):
            tables_of.extend(helper.tables)
    table_ids = {id(v) for v in tables_of}
    others = [v for v in copy.variables if id(v) not in table_ids]
    sources = plain_tables(model)
    if len(others) != len(model.variables) or len(tables_of) != len(sources):
        raise RuntimeError(f"local_copy: the copy has {len(others)} variables and "
                           f"{len(tables_of)} tables, the model {len(model.variables)} and "
                           f"{len(sources)}")
    for dst, src in list(zip(others, model.variables)) + list(zip(tables_of, sources)):
        if tuple(dst.shape) != tuple(src.shape):
            raise RuntimeError(f"local_copy: {dst.path} has shape {dst.shape}, its source "
                               f"{src.name} {src.shape}")
        dst.assign(tf.convert_to_tensor(src))
    return copy
