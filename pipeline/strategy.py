"""Choosing the tf.distribute strategy: all visible GPUs mirrored, or K logical CPUs for testing.

Logical CPU devices can only be configured before TensorFlow initialises its runtime, so call
`make_strategy` before creating any tensor.
"""
from __future__ import annotations

import tensorflow as tf


def make_strategy(logical_cpus: int = 0) -> tf.distribute.Strategy:
    """MirroredStrategy over every visible GPU; the default strategy on a CPU-only machine;
    `logical_cpus=K` (K >= 2) splits the CPU into K logical devices and mirrors over them, which
    exercises the multi-replica code paths (loss scaling, synchronized BatchNorm, gradient
    all-reduce) without a GPU."""
    if logical_cpus < 0:
        raise ValueError(f"logical_cpus must be >= 0, got {logical_cpus}")
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
