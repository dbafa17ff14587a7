"""AutoDimEmbedding under MirroredStrategy on two logical CPUs equals the single-device layer.

Logical devices must be configured before TensorFlow initialises, so the check runs in a fresh
interpreter.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from models.search_embedding import AutoDimEmbedding

results = {}
# one strategy: collective keys are per instance
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
vocab = [6, 5, 7]
rng = np.random.default_rng(0)
ids = np.stack([rng.integers(0, v, 8) for v in vocab], axis=1).astype(np.int32)
for lookup, unify in [("weight_sharing", "linear"), ("separate", "zero_pad"),
                      ("weight_sharing", "zero_pad")]:
    kwargs = dict(candidate_dims=(2, 4, 8), lookup=lookup, unify=unify, seed=5)
    single = AutoDimEmbedding(vocab, **kwargs)
    single.build((None, 3))
    single.alpha.assign(rng.normal(0, 1, (3, 3)).astype(np.float32))
    with strategy.scope():
        mirrored = AutoDimEmbedding(vocab, **kwargs)
        mirrored.build((None, 3))
    mirrored.set_weights(single.get_weights())
    expected = single(tf.constant(ids), training=True).numpy()  # same seed -> same Gumbel noise
    halves = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(ids[4 * ctx.replica_id_in_sync_group:
                                    4 * (ctx.replica_id_in_sync_group + 1)]))

    @tf.function
    def train_step(x):
        return strategy.run(lambda i: mirrored(i, training=True), args=(x,))

    local = strategy.experimental_local_results(train_step(halves))
    got = np.concatenate([t.numpy() for t in local])
    eval_expected = single(tf.constant(ids)).numpy()
    eval_got = mirrored(tf.constant(ids)).numpy()
    results[f"{lookup}/{unify}"] = {
        "train_diff": float(np.abs(got - expected).max()),
        "eval_diff": float(np.abs(eval_got - eval_expected).max()),
        "moving_diff": float(np.abs(mirrored.moving_mean.numpy()
                                    - single.moving_mean.numpy()).max()),
        "scale": float(np.abs(expected).max()),
    }
print("RESULT " + json.dumps(results))
"""


def test_mirrored_two_cpus_match_single_device(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    results = json.loads(lines[-1][len("RESULT "):])
    assert len(results) == 3
    for name, r in results.items():
        assert r["scale"] > 0.01, name
        assert r["train_diff"] < 1e-5, (
            name,
            r,
        )  # synchronised batch statistics over the global batch
        assert r["eval_diff"] < 1e-5, (name, r)  # identical moving statistics afterwards
        assert r["moving_diff"] < 1e-6, (name, r)
