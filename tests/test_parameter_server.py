"""Tables sharded over parameter servers (--strategy parameter_server): the plain-variable tables
against the Keras-weight ones in one process, the checks that need no cluster, and a loopback
cluster (a chief, two ps and two workers on 127.0.0.1) running a search, the retraining of its
dims and a resumed search."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.fixtures import REPO, random_split_data, read_json, write_dataset

VOCAB = [60, 50, 40, 30]
SEARCH = ["--preset", "synthetic", "--set", "search.batch_size=256",
          "--set", "search.pretrain_steps=20", "--set", "search.search_steps=40",
          "--set", "search.min_arch_updates=0", "--set", "search.checkpoint_every=20",
          "--set", "search.eval_every=30", "--quiet"]
RETRAIN = ["--preset", "synthetic", "--set", "retrain.batch_size=256",
           "--set", "retrain.max_epochs=2", "--quiet"]
TIMEOUT = 300


# ------------------------------------------------------------------ one process, no cluster
def _keras_and_plain_tables(vocab, widths, shards):
    """The same values in a Keras-weight FieldTables and in a plain one whose tables are
    ShardedVariables of `shards` parts (uneven when the rows do not divide)."""
    import keras
    import tensorflow as tf
    from tensorflow.python.distribute.sharded_variable import ShardedVariable

    from models._tables import FieldTables

    layer = keras.layers.Layer()
    keras_tables = FieldTables(vocab, widths, "test")
    keras_tables.create(layer, keras.initializers.RandomNormal(seed=1))
    plain = FieldTables(vocab, widths, "test")
    plain._create_plain(keras.layers.Layer(), "zeros", "embeddings")
    sharded = []
    for table in keras_tables.tables:
        value = np.asarray(table.numpy())
        sizes = [len(part) for part in np.array_split(np.arange(len(value)), shards)]
        parts = np.split(value, np.cumsum(sizes)[:-1])
        sharded.append(ShardedVariable([tf.Variable(p, name=f"part_{i}")
                                        for i, p in enumerate(parts)]))
    plain.tables = sharded
    return keras_tables, plain


def test_parameter_server_plain_tables_look_up_and_differentiate_as_keras_tables():
    import tensorflow as tf

    vocab, widths = [7, 5, 3, 4], [4, 2, 4, 2]
    keras_tables, plain = _keras_and_plain_tables(vocab, widths, shards=3)
    assert plain.plain and not keras_tables.plain
    assert len(plain.variables) == 3 * len(plain.tables)  # the optimizer sees the shards
    rng = np.random.default_rng(0)
    ids = tf.constant(np.stack([rng.integers(0, v, 16) for v in vocab], axis=1), tf.int32)
    for field_major in (False, True):
        for a, b in zip(keras_tables.lookup(ids, field_major), plain.lookup(ids, field_major)):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(keras_tables.lookup_fields(ids), plain.lookup_fields(ids)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    weights = [tf.constant(rng.normal(size=(16, w)), tf.float32) for w in widths]

    def loss(tables):
        return sum(tf.reduce_sum(rows * w) for rows, w in zip(tables.lookup_fields(ids), weights))

    with tf.GradientTape() as tape:
        expected_loss = loss(keras_tables)
    expected = tape.gradient(expected_loss, [t.value for t in keras_tables.tables])
    with tf.GradientTape() as tape:
        plain_loss = loss(plain)
    grads = tape.gradient(plain_loss, plain.variables)
    assert all(isinstance(g, tf.IndexedSlices) for g in grads)  # row-sparse, per shard
    assert float(plain_loss) == pytest.approx(float(expected_loss), rel=1e-6)
    per_table = iter(grads)
    for dense, table in zip(expected, plain.tables):
        parts = [tf.convert_to_tensor(next(per_table)) for _ in table.variables]
        np.testing.assert_allclose(tf.concat(parts, 0).numpy(), tf.convert_to_tensor(dense),
                                   rtol=1e-6, atol=1e-7)


def test_parameter_server_sharded_lookup_keeps_the_row_order():
    """Row i of a ShardedVariable of uneven parts (4 + 3 + 3 rows) is row i of the whole table
    through embedding_lookup; a plain gather of the concatenated parts is the reference."""
    import tensorflow as tf
    from tensorflow.python.distribute.sharded_variable import ShardedVariable

    table = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    sharded = ShardedVariable([tf.Variable(table[:4]), tf.Variable(table[4:7]),
                               tf.Variable(table[7:])])
    ids = tf.constant([[9, 0], [4, 7], [3, 6], [8, 1]])
    np.testing.assert_array_equal(tf.nn.embedding_lookup(sharded, ids).numpy(), table[ids])


def test_parameter_server_each_shard_draws_its_own_initial_rows():
    """Keras initializers repeat their numbers at every call: equal-sized shards must not start
    as copies of each other."""
    import keras
    from tensorflow.python.trackable.base import ShardInfo

    from models._tables import _per_shard_initial_value

    for init in (keras.initializers.RandomNormal(stddev=0.01),
                 keras.initializers.RandomUniform(seed=3)):
        fn = _per_shard_initial_value(init, (10, 3))
        first = fn(shard_info=ShardInfo(shape=(5, 3), offset=(0, 0))).numpy()
        second = fn(shard_info=ShardInfo(shape=(5, 3), offset=(5, 0))).numpy()
        assert first.shape == second.shape == (5, 3)
        assert not np.allclose(first, second)
        np.testing.assert_array_equal(  # the same shard draws the same rows again
            second, fn(shard_info=ShardInfo(shape=(5, 3), offset=(5, 0))).numpy())
    zeros = _per_shard_initial_value(keras.initializers.get("zeros"), (10, 1))
    assert not zeros(shard_info=ShardInfo(shape=(5, 1), offset=(5, 0))).numpy().any()


def test_parameter_server_partitioner_shards_only_the_tables():
    import tensorflow as tf

    from models._tables import sharding_tables, table_partitioner

    part = table_partitioner(tf.distribute.experimental.partitioners.FixedShardsPartitioner(2))
    shape = tf.TensorShape([1000, 16])
    assert part(shape, tf.float32) == [1, 1]  # a Dense kernel, an optimizer slot
    with sharding_tables():
        assert part(shape, tf.float32) == [2, 1]
    assert part(shape, tf.float32) == [1, 1]


@pytest.mark.parametrize("tf_config, message", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{not json", "TF_CONFIG is not JSON"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}',
     "needs one chief, at least one ps and one worker"),
    ('{"cluster": {"chief": ["c:0"], "ps": ["p:1"], "worker": ["w:2"]}, '
     '"task": {"type": "ps", "index": 1}}', "is not one of the cluster's tasks"),
    ('{"cluster": {"chief": ["c:0"], "ps": ["p:1"], "worker": ["w:2"], "evaluator": ["e:3"]}, '
     '"task": {"type": "chief", "index": 0}}', "cluster job 'evaluator'"),
])
def test_parameter_server_bad_tf_config_is_refused(tf_config, message):
    from configs.loader import ConfigError
    from pipeline.parameter_server import cluster_task

    with pytest.raises(ConfigError, match=message):
        cluster_task(tf_config)


def test_parameter_server_roles_and_split():
    from pipeline.parameter_server import cluster_task, split

    cluster = {"chief": ["c:0"], "ps": ["p:1", "p:2"], "worker": ["w:3", "w:4", "w:5"]}
    assert cluster_task(json.dumps({"cluster": cluster, "task": {"type": "ps", "index": 1}})) \
        == ("ps", 1, 2, 3)
    assert split(7, 3) == [3, 2, 2] and split(1, 2) == [1, 0]


def test_parameter_server_checkpoint_of_another_layout_is_refused(tmp_path):
    """A checkpoint written with tables over 2 ps tasks restores only with 2 ps tasks."""
    import tensorflow as tf

    from configs.loader import ConfigError
    from pipeline import runtime

    two = {"strategy": "parameter_server", "ps_tasks": 2, "table_shards": [], "table_devices": []}
    step = tf.Variable(3, dtype=tf.int64)
    runtime.Checkpointer(tmp_path / "ckpt", 2, layout=two, step=step).save(3)
    assert read_json(tmp_path / "ckpt" / "layout.json")["ps_tasks"] == 2
    for other, said in (({**two, "ps_tasks": 3}, "sharded over 3 ps tasks"),
                        (None, "whole variables")):
        with pytest.raises(ConfigError, match=f"sharded over 2 ps tasks.*{said}"):
            runtime.Checkpointer(tmp_path / "ckpt", 2, layout=other, step=step).restore_latest()
    assert runtime.Checkpointer(tmp_path / "ckpt", 2, layout=two, step=step).restore_latest()
    # and a checkpoint of whole variables does not restore into sharded tables
    runtime.Checkpointer(tmp_path / "whole", 2, step=step).save(1)
    with pytest.raises(ConfigError, match="whole variables.*sharded over 2 ps tasks"):
        runtime.Checkpointer(tmp_path / "whole", 2, layout=two, step=step).restore_latest()


def test_parameter_server_flags_and_pipeline_run_are_checked_first(tmp_path, capsys):
    from pipeline import run, search

    out = tmp_path / "m"
    assert search.main(["--data_dir", str(tmp_path), "--model_dir", str(out),
                        "--strategy", "parameter_server", "--logical_cpus", "2"]) == 2
    assert "do not combine" in capsys.readouterr().err
    work = tmp_path / "w"
    assert run.main(["--workdir", str(work), "--demo", "--strategy", "parameter_server"]) == 2
    assert "available in pipeline.search and pipeline.retrain only" in capsys.readouterr().err
    assert not out.exists() and not work.exists()


# ------------------------------------------------------------------ the loopback cluster
def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def ps_cluster(tmp_path_factory):
    """Two ps and two worker tasks started with the search's own command (each its TF_CONFIG),
    then three chiefs in turn against them: the search, the retraining of its dims, and the
    search again (resumed from its last checkpoint). The tasks are terminated at the end."""
    root = tmp_path_factory.mktemp("parameter_server")
    data = root / "data"
    ids, labels = random_split_data(6000, VOCAB, seed=3)
    write_dataset(data, ids, labels, VOCAB, shards=4)
    ports = _free_ports(5)
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"],
               "ps": [f"127.0.0.1:{p}" for p in ports[1:3]],
               "worker": [f"127.0.0.1:{p}" for p in ports[3:]]}

    def env(job, index):
        config = {"cluster": cluster, "task": {"type": job, "index": index}}
        return dict(os.environ, TF_CONFIG=json.dumps(config), TF_CPP_MIN_LOG_LEVEL="2",
                    PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")

    search = ["pipeline.search", "--data_dir", str(data), "--model_dir", str(root / "search"),
              *SEARCH, "--strategy", "parameter_server"]
    retrain = ["pipeline.retrain", "--data_dir", str(data), "--dims",
               str(root / "search" / "dims.json"), "--model_dir", str(root / "retrain"),
               *RETRAIN, "--strategy", "parameter_server"]
    servers = {}
    for job in ("ps", "worker"):
        for i in range(2):
            with open(root / f"{job}{i}.log", "w") as log:
                servers[f"{job}{i}"] = subprocess.Popen(
                    [sys.executable, "-m", *search], cwd=REPO, env=env(job, i), stdout=log,
                    stderr=subprocess.STDOUT)
    chiefs = {}
    try:
        for name, args in (("search", search), ("retrain", retrain), ("resumed", search)):
            proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env("chief", 0),
                                  capture_output=True, text=True, timeout=TIMEOUT)
            chiefs[name] = (proc.returncode, proc.stdout + proc.stderr)
            if proc.returncode:
                break
        alive = {k: p.poll() is None for k, p in servers.items()}
    finally:
        for p in servers.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in servers.values():
            try:
                p.wait(max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    logs = {k: (root / f"{k}.log").read_text() for k in servers}
    return {"root": root, "data": data, "chiefs": chiefs, "alive": alive,
            "exit": {k: p.returncode for k, p in servers.items()}, "logs": logs}


def test_parameter_server_search_and_retraining_on_a_loopback_cluster(ps_cluster):
    r = ps_cluster
    for name in ("search", "retrain", "resumed"):
        code, text = r["chiefs"][name]
        assert code == 0, f"{name}:\n{text[-4000:]}"
    # the ps and worker tasks served (the same command, their TF_CONFIG) until terminated
    assert all(r["alive"].values()), r["logs"]
    assert r["exit"] == {k: 0 for k in r["exit"]}, r["logs"]
    for text in r["logs"].values():
        assert "of the parameter-server cluster serving at" in text, text[-2000:]
    # the chief wrote the run: dims.json, its checkpoints with the tables' layout
    search_dir = r["root"] / "search"
    dims = read_json(search_dir / "dims.json")
    assert sorted(dims["fields"]) == [f"f{i}" for i in range(len(VOCAB))]
    layout = read_json(search_dir / "ckpt" / "layout.json")
    rows = sum(VOCAB)
    # the supernet's table (and the first-order one) in two row shards, one on each ps
    assert layout["ps_tasks"] == 2
    assert [[s[0] for s in t] for t in layout["table_shards"]] == [[rows // 2, rows // 2]] * 2
    for devices in layout["table_devices"]:
        assert sorted(d.split("/device:")[0] for d in devices) == [
            "/job:ps/replica:0/task:0", "/job:ps/replica:0/task:1"]
    assert "tables over 2 ps tasks: 90x32 on /job:ps" in r["chiefs"]["search"][1]
    # the resumed run restored the sharded checkpoint and derived the same dims from it
    assert "resumed at step 60" in r["chiefs"]["resumed"][1]
    again = read_json(search_dir / "dims.json")
    assert again["fields"] == dims["fields"]
    assert again["final_metrics"]["derived_valid_auc"] == dims["final_metrics"][
        "derived_valid_auc"]
    # the retraining learned the planted signal (one process reaches about 0.83 here)
    metrics = read_json(r["root"] / "retrain" / "metrics.json")
    assert metrics["test_auc"] > 0.75, metrics
    retrain_layout = read_json(r["root"] / "retrain" / "ckpt" / "layout.json")
    assert all(len(t) == 2 for t in retrain_layout["table_shards"])


def test_parameter_server_exported_model_holds_the_tables(ps_cluster):
    """model.keras (written on the chief from a local copy) predicts what was scored."""
    import keras

    import models.factory  # noqa: F401  (registers the custom layers)
    from configs.features import DataSchema
    from pipeline.retrain import predict_split

    r = ps_cluster
    assert r["chiefs"]["retrain"][0] == 0
    model = keras.saving.load_model(r["root"] / "retrain" / "model.keras")
    labels, probs = predict_split(model, r["data"], DataSchema.load(r["data"]), "test", 256)
    with np.load(r["root"] / "retrain" / "test_predictions.npz") as saved:
        np.testing.assert_allclose(saved["probabilities"], probs, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(saved["labels"], labels)
