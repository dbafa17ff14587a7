"""Choosing the tf.distribute strategy: all visible GPUs mirrored, K logical CPUs for testing, or
several workers (MultiWorkerMirroredStrategy, configured by TF_CONFIG as on any cluster).

Logical CPU devices can only be configured before TensorFlow initialises its runtime, so call
`make_strategy` before creating any tensor.

Multi-worker (`kind="multi_worker"`): every worker runs the same command with its own TF_CONFIG
(`{"cluster": {"worker": [host:port, ...]}, "task": {"type": "worker", "index": i}}`, or a
"chief" job). Constructing the strategy waits until every worker is up (TensorFlow's barrier).
The chief (the "chief" task, else worker 0) writes the run's outputs; every other worker writes
its copies (checkpoints, best weights, summaries, which TensorFlow needs every worker to write
because a save may read variables through a collective) to a temporary directory removed when
the process ends, and resumes from the chief's checkpoints (`pipeline.runtime.output_dir`).

Parameter servers (`kind="parameter_server"`, `pipeline.parameter_server`): TF_CONFIG with
"chief", "ps" and "worker" tasks; the chief coordinates and writes everything, the others serve.
"""
from __future__ import annotations

import json
import os

import tensorflow as tf

from configs.loader import ConfigError

KINDS = ("auto", "multi_worker", "parameter_server")


def make_strategy(logical_cpus: int = 0, kind: str = "auto") -> tf.distribute.Strategy:
    """`kind="auto"`: MirroredStrategy over every visible GPU; the default strategy on a CPU-only
    machine; `logical_cpus=K` (K >= 2) splits the CPU into K logical devices and mirrors over them,
    which exercises the multi-replica code paths (loss scaling, synchronized BatchNorm, gradient
    all-reduce) without a GPU. `kind="multi_worker"`: MultiWorkerMirroredStrategy over the
    TF_CONFIG cluster (each worker's GPUs, else its CPU), this worker registered as chief or not
    (`pipeline.runtime.set_worker`). `kind="parameter_server"`: ParameterServerStrategy over the
    TF_CONFIG cluster on its chief; on a ps or worker task this serves and never returns
    (`pipeline.parameter_server`)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown strategy {kind!r}; known: {', '.join(KINDS)}")
    if logical_cpus < 0:
        raise ValueError(f"logical_cpus must be >= 0, got {logical_cpus}")
    if kind in ("multi_worker", "parameter_server"):
        if logical_cpus:
            raise ConfigError(f"--logical_cpus and --strategy {kind} do not combine: a worker "
                              f"uses its own GPUs (or its CPU)")
        if kind == "parameter_server":
            from pipeline import parameter_server

            return parameter_server.make_strategy()
        return _multi_worker()
    if logical_cpus >= 2:
        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
        except RuntimeError:
            pass  # already initialised: use whatever logical devices exist
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        if len(devices) < logical_cpus:
            raise RuntimeError(
                f"asked for {logical_cpus} logical CPUs but TensorFlow was initialised with "
                f"{len(devices)}; configure them before any TensorFlow op runs")
        return tf.distribute.MirroredStrategy(
            devices[:logical_cpus], cross_device_ops=tf.distribute.ReductionToOneDevice())
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def parse_tf_config(tf_config: str | None, kind: str, example: str) -> tuple[dict, dict]:
    """The "cluster" and "task" objects of a TF_CONFIG value for `--strategy kind`; a missing or
    malformed one is a ConfigError naming what is wrong (with `example`)."""
    if not tf_config:
        raise ConfigError(f"--strategy {kind} needs the TF_CONFIG environment variable "
                          f"(the cluster and this task, e.g. {example})")
    try:
        config = json.loads(tf_config)
    except ValueError as exc:
        raise ConfigError(f"TF_CONFIG is not JSON ({exc})") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ConfigError("TF_CONFIG needs a \"cluster\" and a \"task\" object")
    return cluster, task


def cluster_role(tf_config: str | None) -> tuple[bool, int, int]:
    """(chief, this task's index among the tasks that train, number of such tasks) of a TF_CONFIG
    value; a missing or malformed one is a ConfigError naming what is wrong."""
    cluster, task = parse_tf_config(
        tf_config, "multi_worker", '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
        '"task": {"type": "worker", "index": 0}}')
    kind, index = task.get("type"), task.get("index")
    jobs = [job for job in ("chief", "worker") if cluster.get(job)]
    if kind not in jobs or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ConfigError(f"TF_CONFIG task {task} is not one of the cluster's chief or worker "
                          f"tasks ({', '.join(f'{j}: {len(cluster[j])}' for j in jobs)})")
    for job in cluster:
        if job not in ("chief", "worker"):
            raise ConfigError(f"TF_CONFIG cluster job {job!r}: MultiWorkerMirroredStrategy "
                              f"trains on \"chief\" and \"worker\" tasks only")
    chief_tasks = len(cluster.get("chief") or [])
    position = index if kind == "chief" else chief_tasks + index
    total = chief_tasks + len(cluster.get("worker") or [])
    chief = kind == "chief" or (kind == "worker" and index == 0 and not chief_tasks)
    return chief, position, total


def _multi_worker() -> tf.distribute.Strategy:
    from pipeline import runtime

    chief, position, _ = cluster_role(os.environ.get("TF_CONFIG"))
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    runtime.set_worker(chief=chief, index=position)
    return strategy
