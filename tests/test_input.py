"""pipeline.input: the tf.data reader of the Beam output layout."""
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from configs.features import DataSchema, FieldSchema
from pipeline import input as inp

FIELDS = ("I1", "C1", "C2", "C3")
REPO = Path(__file__).resolve().parents[1]


def _schema(fields=FIELDS, vocab=1000) -> DataSchema:
    return DataSchema(
        dataset="test",
        fields=tuple(FieldSchema(n, "categorical", vocab) for n in fields),
        splits={"train": 0},
        label_rate=0.5,
        config={},
        config_hash="h",
    )


def _example(ids: dict, label: float) -> bytes:
    feature = {k: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
               for k, v in ids.items()}
    feature["label"] = tf.train.Feature(float_list=tf.train.FloatList(value=[label]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_split(data_dir: Path, split: str, rows: np.ndarray, labels: np.ndarray, shards: int,
                fields=FIELDS) -> None:
    """Rows [N, M] round-robin into `shards` GZIP TFRecord files, the Beam job's layout (the
    records' feature keys written in reverse order, to show the reader orders by the schema)."""
    split_dir = data_dir / split
    split_dir.mkdir(parents=True)
    writers = [tf.io.TFRecordWriter(str(split_dir / f"part-{i:05d}-of-{shards:05d}.tfrecord.gz"),
                                    options="GZIP") for i in range(shards)]
    for n, (row, label) in enumerate(zip(rows, labels)):
        writers[n % shards].write(_example(dict(reversed(list(zip(fields, row)))), float(label)))
    for w in writers:
        w.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """train: 1000 rows in 4 shards; valid: 250 rows in 1 shard. Row n has ids
    (n, 10n + 1, 10n + 2, 10n + 3) so every id identifies its row and column."""
    root = tmp_path_factory.mktemp("prep")
    schema = _schema()
    for split, n, shards in (("train", 1000, 4), ("valid", 250, 1)):
        base = np.arange(n)
        rows = np.stack([base] + [10 * base + k for k in (1, 2, 3)], axis=1)
        write_split(root, split, rows, (base % 3 == 0).astype(np.float32), shards)
    schema.save(root)
    return root, DataSchema.load(root)


def _collect(ds):
    ids, labels = [], []
    for x, y in ds:
        ids.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(ids), np.concatenate(labels)


def test_batches_hold_the_written_ids_in_schema_order(data):
    root, schema = data
    ds = inp.make_dataset(str(root), schema, "train", 64, shuffle=False, repeat=False)
    assert ds.element_spec[0].dtype == tf.int32 and ds.element_spec[1].dtype == tf.float32
    first_ids, first_labels = next(iter(ds))
    assert first_ids.shape == (64, 4) and first_labels.shape == (64,)
    ids, labels = _collect(ds)
    n = ids[:, 0]
    np.testing.assert_array_equal(ids[:, 1:], np.stack([10 * n + k for k in (1, 2, 3)], axis=1))
    np.testing.assert_array_equal(labels, (n % 3 == 0).astype(np.float32))
    # schema order, not record order: a schema listing fields differently gets them so
    reordered = _schema(("C3", "I1"))
    x, _ = next(
        iter(inp.make_dataset(str(root), reordered, "train", 8, shuffle=False, repeat=False))
    )
    np.testing.assert_array_equal(x.numpy()[:, 0], 10 * x.numpy()[:, 1] + 3)


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_record_once_per_epoch(data, shuffle):
    root, schema = data
    ds = inp.make_dataset(str(root), schema, "train", 96, shuffle=shuffle, repeat=False, seed=1,
                          shuffle_buffer=300)
    ids, _ = _collect(ds)
    assert sorted(ids[:, 0].tolist()) == list(range(1000))
    if shuffle:  # records are mixed, not just whole chunks reordered (file neighbours differ by 4)
        assert np.mean(np.diff(ids[:, 0]) == 4) < 0.1
    else:
        assert np.mean(np.diff(ids[:, 0]) == 4) > 0.5


def test_repeat_gives_every_record_once_per_epoch(data):
    root, schema = data
    ds = inp.make_dataset(str(root), schema, "valid", 50, shuffle=True, repeat=True, seed=3,
                          shuffle_buffer=100)
    ids = np.concatenate([x.numpy()[:, 0] for x, _ in ds.take(15)])  # 3 epochs of 250
    for epoch in range(3):
        assert sorted(ids[250 * epoch:250 * (epoch + 1)].tolist()) == list(range(250))
    assert ids[:250].tolist() != ids[250:500].tolist()  # reshuffled each epoch


@pytest.mark.parametrize("split,expect_file_sharding", [("train", True), ("valid", False)])
def test_input_context_shards_cover_all_records(data, split, expect_file_sharding):
    root, schema = data
    total = {"train": 1000, "valid": 250}[split]
    seen = []
    for pid in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pid,
                                         num_replicas_in_sync=2)
        ds = inp.make_dataset(str(root), schema, split, 40, shuffle=True, repeat=False, seed=5,
                              input_context=ctx)
        batches = [x.numpy() for x, _ in ds]
        assert max(len(b) for b in batches) == 20  # per-replica batch of the global 40
        seen.append(np.concatenate(batches)[:, 0].tolist())
    counts = Counter(seen[0] + seen[1])
    assert sorted(counts) == list(range(total)) and set(counts.values()) == {1}
    if expect_file_sharding:  # 4 files: pipeline i reads files i, i + 2 (rows n with n % 4 in ...)
        assert {n % 4 for n in seen[0]} == {0, 2} and {n % 4 for n in seen[1]} == {1, 3}
    else:
        assert abs(len(seen[0]) - len(seen[1])) <= inp.CHUNK_RECORDS  # whole chunks
        assert seen[0] and seen[1]


def test_same_seed_same_order_other_seed_differs(data):
    root, schema = data

    def order(seed):
        ds = inp.make_dataset(str(root), schema, "train", 100, shuffle=True, repeat=False,
                              seed=seed, shuffle_buffer=500)
        return _collect(ds)[0][:, 0].tolist()

    assert order(7) == order(7)
    assert order(7) != order(8)


def test_drop_remainder_and_validation_stream(data):
    root, schema = data
    ds = inp.make_dataset(str(root), schema, "valid", 100, shuffle=False, repeat=False,
                          drop_remainder=True)
    assert [x.shape[0] for x, _ in ds] == [100, 100]
    assert ds.element_spec[0].shape.as_list() == [100, 4]
    stream = inp.validation_stream(str(root), schema, 100, seed=0)
    assert len([1 for _ in stream.take(7)]) == 7  # endless: more batches than one epoch holds


def test_missing_split_dir_and_empty_split_are_named(tmp_path, data):
    _, schema = data
    with pytest.raises(inp.InputError, match=f"{tmp_path}/test does not exist"):
        inp.make_dataset(str(tmp_path), schema, "test", 8, shuffle=False, repeat=False)
    (tmp_path / "test").mkdir()
    with pytest.raises(inp.InputError, match=r"no part-\*\.tfrecord\.gz files in .*test"):
        inp.make_dataset(str(tmp_path), schema, "test", 8, shuffle=False, repeat=False)


def test_schema_field_absent_from_records_is_named(data):
    root, _ = data
    schema = _schema(FIELDS + ("C9",))
    with pytest.raises(inp.InputError, match=r"schema field 'C9' is absent from the records of .*"
                                             r"part-00000-of-00004\.tfrecord\.gz"):
        inp.make_dataset(str(root), schema, "train", 8, shuffle=False, repeat=False)


def test_wrong_feature_type_and_oversized_vocab_are_named(tmp_path, data):
    root, schema = data
    split_dir = tmp_path / "train"
    split_dir.mkdir()
    with tf.io.TFRecordWriter(
        str(split_dir / "part-00000-of-00001.tfrecord.gz"), options="GZIP"
    ) as w:
        feature = {n: tf.train.Feature(int64_list=tf.train.Int64List(value=[1])) for n in FIELDS}
        feature["C2"] = tf.train.Feature(float_list=tf.train.FloatList(value=[1.0]))
        feature["label"] = tf.train.Feature(float_list=tf.train.FloatList(value=[0.0]))
        w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    with pytest.raises(inp.InputError, match=r"schema field 'C2' in .* is a float_list"):
        inp.make_dataset(str(tmp_path), schema, "train", 8, shuffle=False, repeat=False)
    with pytest.raises(inp.InputError, match="do not fit int32"):
        inp.make_dataset(str(root), _schema(vocab=2**31), "train", 8, shuffle=False, repeat=False)


def test_a_later_record_missing_a_field_fails_naming_it(tmp_path):
    """Only the first record is checked up front; a later bad record fails in parse_example with
    TF's message, which names the feature."""
    split_dir = tmp_path / "train"
    split_dir.mkdir()
    with tf.io.TFRecordWriter(
        str(split_dir / "part-00000-of-00001.tfrecord.gz"), options="GZIP"
    ) as w:
        w.write(_example(dict(zip(FIELDS, (1, 2, 3, 4))), 1.0))
        w.write(_example(dict(zip(FIELDS[:3], (1, 2, 3))), 1.0))
    ds = inp.make_dataset(str(tmp_path), _schema(), "train", 8, shuffle=False, repeat=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="C3"):
        _collect(ds)


def test_measure_examples_per_second(data):
    root, schema = data
    ds = inp.make_dataset(str(root), schema, "train", 50, shuffle=False, repeat=True)
    rate = inp.measure_examples_per_second(ds, steps=10, warmup=2)
    assert rate > 0
    finite = inp.make_dataset(str(root), schema, "valid", 100, shuffle=False, repeat=False)
    with pytest.raises(ValueError, match="warm-up"):
        inp.measure_examples_per_second(finite, steps=5, warmup=4)


_DISTRIBUTED = textwrap.dedent("""
    import sys, numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from configs.features import DataSchema
    from pipeline import input as inp
    root = sys.argv[1]
    schema = DataSchema.load(root)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    dist = inp.distributed_dataset(strategy, root, schema, "train", 40, shuffle=True,
                                   repeat=False, seed=2)
    seen, shapes = [], set()
    for ids, labels in dist:
        for x, y in zip(strategy.experimental_local_results(ids),
                        strategy.experimental_local_results(labels)):
            shapes.add((tuple(x.shape), tuple(y.shape)))
            seen.extend(x.numpy()[:, 0].tolist())
    print("REPLICAS", strategy.num_replicas_in_sync)
    print("SHAPES", sorted(shapes))
    print("ALL_ONCE", sorted(seen) == list(range(1000)))
""")


def test_distributed_dataset_under_mirrored_strategy(data, tmp_path):
    """In a subprocess: logical devices must be configured before TF initialises them."""
    root, _ = data
    script = tmp_path / "dist.py"
    script.write_text(_DISTRIBUTED)
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(script), str(root)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "REPLICAS 2" in out
    assert "SHAPES [((20, 4), (20,))]" in out  # 1000 rows = 25 global batches of 40, 20 per replica
    assert "ALL_ONCE True" in out


def test_distributed_dataset_rejects_indivisible_batch(data):
    root, schema = data
    strategy = tf.distribute.get_strategy()  # default strategy: 1 replica
    with pytest.raises(inp.InputError, match="does not exist"):
        inp.distributed_dataset(strategy, str(root), schema, "test", 8, shuffle=False, repeat=False)


class _TwoReplicas:
    num_replicas_in_sync = 2


def test_distributed_dataset_batch_must_divide(data):
    root, schema = data
    with pytest.raises(ValueError, match="not divisible by the 2 replicas"):
        inp.distributed_dataset(_TwoReplicas(), str(root), schema, "train", 41, shuffle=False,
                                repeat=False)
