"""Tests for models.lazy_adam.LazyAdam: sparse rows match Keras Adam, untouched rows stay
bitwise."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.lazy_adam import LazyAdam

REPO_ROOT = Path(__file__).resolve().parents[1]
VOCAB, DIM = 12, 3


def _table(seed=0, rows=VOCAB, dim=DIM):
    init = np.random.default_rng(seed).normal(size=(rows, dim)).astype("float32")
    return tf.Variable(init, name="table")


def _slices(values, ids, rows=VOCAB):
    values = tf.constant(values, tf.float32)
    dense_shape = tf.constant([rows, values.shape[1]], tf.int64)
    return tf.IndexedSlices(values, tf.constant(ids, tf.int64), dense_shape)


def _slots(opt, var):
    i = opt._get_variable_index(var)
    return opt._momentums[i].numpy(), opt._velocities[i].numpy()


def _tape_grad(var, ids, weights):
    """IndexedSlices gradient of sum(gather(var, ids) * weights), as a real embedding lookup
    gives."""
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(var, ids) * weights)
    grad = tape.gradient(loss, var)
    assert isinstance(grad, tf.IndexedSlices)
    return grad


def test_matches_keras_adam_on_rows_touched_every_step():
    rng = np.random.default_rng(1)
    ids = tf.constant([2, 5, 7, 5])
    lazy_var, dense_var = _table(), _table()
    lazy, dense = LazyAdam(learning_rate=0.05), keras.optimizers.Adam(learning_rate=0.05)
    for _ in range(6):
        weights = tf.constant(rng.normal(size=(4, DIM)), tf.float32)
        lazy.apply_gradients([(_tape_grad(lazy_var, ids, weights), lazy_var)])
        dense.apply_gradients(
            [(tf.convert_to_tensor(_tape_grad(dense_var, ids, weights)), dense_var)]
        )
    rows = [2, 5, 7]
    np.testing.assert_allclose(lazy_var.numpy()[rows], dense_var.numpy()[rows], atol=1e-6, rtol=0)
    for lazy_slot, dense_slot in zip(_slots(lazy, lazy_var), _slots(dense, dense_var)):
        np.testing.assert_allclose(lazy_slot[rows], dense_slot[rows], atol=1e-6, rtol=0)
    # Every touched element really moved.
    assert np.abs(lazy_var.numpy()[rows] - _table().numpy()[rows]).min() > 1e-3
    assert int(lazy.iterations.numpy()) == 6


def test_untouched_rows_and_their_slots_stay_bitwise_equal():
    var = _table()
    lazy = LazyAdam(learning_rate=0.1)
    lazy.apply_gradients([(_slices(np.ones((3, DIM)), [1, 4, 9]), var)])
    before_var = var.numpy().copy()
    before_m, before_v = (s.copy() for s in _slots(lazy, var))
    lazy.apply_gradients([(_slices(np.full((1, DIM), 2.0), [4]), var)])
    m, v = _slots(lazy, var)
    untouched = [r for r in range(VOCAB) if r != 4]
    np.testing.assert_array_equal(var.numpy()[untouched], before_var[untouched])
    np.testing.assert_array_equal(m[untouched], before_m[untouched])
    np.testing.assert_array_equal(v[untouched], before_v[untouched])
    assert not np.array_equal(var.numpy()[4], before_var[4])
    assert not np.array_equal(m[4], before_m[4])
    # Dense Adam moves rows 1 and 9 on the second step (momentum): the check above is meaningful.
    dense_var = _table()
    dense = keras.optimizers.Adam(learning_rate=0.1)
    dense.apply_gradients(
        [(tf.convert_to_tensor(_slices(np.ones((3, DIM)), [1, 4, 9])), dense_var)]
    )
    row_1 = dense_var.numpy()[1].copy()
    dense.apply_gradients([(tf.convert_to_tensor(_slices(np.full((1, DIM), 2.0), [4])), dense_var)])
    assert not np.array_equal(dense_var.numpy()[1], row_1)


def test_duplicate_indices_equal_dense_adam_with_summed_gradient():
    values = np.arange(5 * DIM, dtype="float32").reshape(5, DIM) / 10.0 - 0.7
    ids = [3, 0, 3, 3, 0]
    lazy_var, dense_var = _table(), _table()
    lazy, dense = LazyAdam(learning_rate=0.01), keras.optimizers.Adam(learning_rate=0.01)
    summed = np.zeros((VOCAB, DIM), "float32")
    np.add.at(summed, ids, values)
    for _ in range(3):
        lazy.apply_gradients([(_slices(values, ids), lazy_var)])
        dense.apply_gradients([(tf.constant(summed), dense_var)])
    np.testing.assert_allclose(lazy_var.numpy(), dense_var.numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(
        _slots(lazy, lazy_var)[1], _slots(dense, dense_var)[1], atol=1e-6, rtol=0
    )
    # Applying duplicates without summing (last write wins) would give a different m.
    expected_m = 0.1 * values[[0, 2, 3], 0].sum() * (1 + 0.9 + 0.81)
    assert abs(_slots(lazy, lazy_var)[0][3, 0] - expected_m) < 1e-5


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_deduplicate_sums_in_input_order_with_first_seen_ids(index_dtype):
    from models.lazy_adam import _deduplicate

    rng = np.random.default_rng(4)
    # 3,000 rows onto 50 ids, values of mixed magnitude: float32 sums that depend on the order
    ids = rng.integers(0, 50, size=3000).astype(index_dtype)
    values = (rng.normal(size=(3000, 2, 3)) * 10.0 ** rng.integers(-4, 4, size=(3000, 1, 1)))
    values = values.astype("float32")
    grad = tf.IndexedSlices(tf.constant(values), tf.constant(ids),
                            tf.constant([50, 2, 3], tf.int64))
    out = _deduplicate(grad)
    first_seen = list(dict.fromkeys(ids.tolist()))
    expected = np.zeros((len(first_seen), 2, 3), "float32")
    np.add.at(expected, [first_seen.index(i) for i in ids.tolist()], values)  # in input order
    assert out.indices.numpy().tolist() == first_seen
    assert out.indices.dtype == grad.indices.dtype
    np.testing.assert_array_equal(out.values.numpy(), expected)  # bitwise
    np.testing.assert_array_equal(out.dense_shape.numpy(), [50, 2, 3])


@pytest.mark.parametrize("amsgrad", [False, True])
def test_dense_gradient_variables_behave_exactly_like_keras_adam(amsgrad):
    rng = np.random.default_rng(2)
    lazy_var, dense_var = _table(3), _table(3)
    lazy = LazyAdam(learning_rate=0.02, amsgrad=amsgrad)
    dense = keras.optimizers.Adam(learning_rate=0.02, amsgrad=amsgrad)
    for _ in range(4):
        grad = tf.constant(rng.normal(size=(VOCAB, DIM)), tf.float32)
        lazy.apply_gradients([(grad, lazy_var)])
        dense.apply_gradients([(grad, dense_var)])
    np.testing.assert_array_equal(lazy_var.numpy(), dense_var.numpy())


def test_amsgrad_sparse_matches_dense_on_touched_rows():
    rng = np.random.default_rng(3)
    lazy_var, dense_var = _table(), _table()
    lazy = LazyAdam(learning_rate=0.05, amsgrad=True)
    dense = keras.optimizers.Adam(learning_rate=0.05, amsgrad=True)
    for scale in (3.0, 0.1, 0.1, 2.0):  # shrinking gradients make v_hat differ from v
        values = rng.normal(size=(2, DIM)) * scale
        lazy.apply_gradients([(_slices(values, [6, 1]), lazy_var)])
        dense.apply_gradients([(tf.convert_to_tensor(_slices(values, [6, 1])), dense_var)])
    np.testing.assert_allclose(lazy_var.numpy(), dense_var.numpy(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("clip", [{"global_clipnorm": 0.5}, {"clipnorm": 0.5}, {"clipvalue": 0.3}])
def test_clipping_uses_summed_rows_like_dense_gradient(clip):
    values = np.array([[0.4, -0.3, 0.2], [0.5, 0.1, -0.6], [0.9, 0.0, 0.1]], "float32")
    ids = [2, 8, 2]
    dense_grad = tf.convert_to_tensor(_slices(values, ids))
    other = tf.constant([[0.3, 0.4]], tf.float32)
    lazy_var, dense_var = _table(), _table()
    lazy_w, dense_w = tf.Variable(tf.ones([1, 2])), tf.Variable(tf.ones([1, 2]))
    lazy = LazyAdam(learning_rate=0.1, **clip)
    dense = keras.optimizers.Adam(learning_rate=0.1, **clip)
    for _ in range(2):
        lazy.apply_gradients([(_slices(values, ids), lazy_var), (other, lazy_w)])
        dense.apply_gradients([(dense_grad, dense_var), (other, dense_w)])
    np.testing.assert_allclose(lazy_var.numpy(), dense_var.numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(lazy_w.numpy(), dense_w.numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(
        _slots(lazy, lazy_var)[0], _slots(dense, dense_var)[0], atol=1e-7, rtol=0
    )


def _graph_reads_whole_table(optimizer, rows=997, dim=5):
    """True if the traced apply step has any op producing a [rows, dim] tensor (a dense pass)."""
    var = tf.Variable(tf.zeros([rows, dim]))
    optimizer.build([var])
    grad = _slices(np.ones((2, dim)), [3, 5], rows=rows)

    @tf.function
    def step(values, ids):
        optimizer.apply_gradients([(tf.IndexedSlices(values, ids, grad.dense_shape), var)])

    graph = step.get_concrete_function(grad.values, grad.indices).graph
    shapes = []

    def collect(g):
        for op in g.get_operations():
            shapes.extend(
                tuple(out.shape.as_list()) if out.shape.rank else () for out in op.outputs
            )
        for func in g._functions.values():  # nested function bodies (cond branches, etc.)
            if getattr(func, "graph", None) is not None:
                collect(func.graph)

    collect(graph)
    step(grad.values, grad.indices)
    return (rows, dim) in shapes


def test_sparse_step_never_materialises_the_whole_table():
    assert not _graph_reads_whole_table(LazyAdam(learning_rate=0.1))
    assert _graph_reads_whole_table(keras.optimizers.Adam(learning_rate=0.1))


def _train_step_shapes(sparse_read: bool, rows=991, dim=7):
    table = keras.Variable(np.zeros((rows, dim), "float32"))
    opt = LazyAdam(learning_rate=0.1)
    opt.build([table])

    @tf.function
    def step(ids):
        with tf.GradientTape() as tape:
            rows_read = tf.gather(table.value if sparse_read else table, ids)
            loss = tf.reduce_sum(rows_read)
        opt.apply_gradients([(tape.gradient(loss, table), table)])

    graph = step.get_concrete_function(tf.TensorSpec([None], tf.int32)).graph
    step(tf.constant([1, 5, 5]))
    assert float(tf.reduce_sum(table)) == pytest.approx(-0.1 * 2 * dim, rel=1e-5)
    return {tuple(out.shape.as_list()) for op in graph.get_operations() for out in op.outputs
            if out.shape.rank is not None}


def test_train_step_with_sparse_read_lookup_stays_sparse():
    # tf.gather(keras_variable.value, ids) is a ResourceGather: no [rows, dim] tensor anywhere.
    assert (991, 7) not in _train_step_shapes(sparse_read=True)
    # tf.gather(keras_variable, ids) reads the whole table first (and, once a scatter has put the
    # variable in copy-on-read mode, copies it every step): the lookup the trainer must avoid.
    assert (991, 7) in _train_step_shapes(sparse_read=False)


def _two_optimizer_model(seed=0):
    rng = np.random.default_rng(seed)
    table = keras.Variable(rng.normal(size=(VOCAB, DIM)).astype("float32"), name="table")
    kernel = keras.Variable(rng.normal(size=(2 * DIM, 1)).astype("float32"), name="kernel")
    return table, kernel


def _loss(table, kernel, ids, labels):
    emb = tf.reshape(tf.gather(table, ids), [-1, 2 * DIM])
    logits = tf.matmul(emb, kernel)[:, 0]
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits))


def test_tf_function_step_with_second_optimizer_matches_two_dense_adams():
    ids = tf.constant([[1, 4], [4, 9], [1, 1], [9, 6]])
    rng = np.random.default_rng(5)
    label_batches = [tf.constant(rng.integers(0, 2, size=4), tf.float32) for _ in range(5)]

    table, kernel = _two_optimizer_model()
    emb_opt, dense_opt = LazyAdam(learning_rate=0.05), keras.optimizers.Adam(learning_rate=0.02)
    grad_types = []

    @tf.function
    def step(labels):
        with tf.GradientTape() as tape:
            loss = _loss(table, kernel, ids, labels)
        g_table, g_kernel = tape.gradient(loss, [table, kernel])
        grad_types.append(type(g_table))
        emb_opt.apply_gradients([(g_table, table)])
        dense_opt.apply_gradients([(g_kernel, kernel)])
        return loss

    ref_table, ref_kernel = _two_optimizer_model()
    ref_emb = keras.optimizers.Adam(learning_rate=0.05)
    ref_dense = keras.optimizers.Adam(learning_rate=0.02)
    for labels in label_batches:
        step(labels)
        with tf.GradientTape() as tape:
            loss = _loss(ref_table, ref_kernel, ids, labels)
        g_table, g_kernel = tape.gradient(loss, [ref_table, ref_kernel])
        ref_emb.apply_gradients([(tf.convert_to_tensor(g_table), ref_table)])
        ref_dense.apply_gradients([(g_kernel, ref_kernel)])
    # Optimizers are built on the first trace (variable creation makes tf.function trace twice).
    assert grad_types and set(grad_types) == {tf.IndexedSlices}
    np.testing.assert_allclose(table.numpy(), ref_table.numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(kernel.numpy(), ref_kernel.numpy(), atol=1e-6, rtol=0)
    untouched = [0, 2, 3, 5, 7, 8, 10, 11]
    np.testing.assert_array_equal(
        table.numpy()[untouched], _two_optimizer_model()[0].numpy()[untouched]
    )
    assert int(emb_opt.iterations.numpy()) == 5 and int(dense_opt.iterations.numpy()) == 5


def test_get_config_round_trips_and_is_registered():
    opt = LazyAdam(learning_rate=0.003, beta_1=0.8, beta_2=0.99, epsilon=1e-6, amsgrad=True,
                   global_clipnorm=2.0, name="emb_adam")
    assert keras.saving.get_registered_name(LazyAdam) == "autodim>LazyAdam"
    config = opt.get_config()
    restored = keras.optimizers.deserialize(json.loads(json.dumps(keras.optimizers.serialize(opt))))
    assert type(restored) is LazyAdam
    assert restored.get_config() == config
    hyper = (restored.beta_1, restored.beta_2, restored.epsilon, restored.amsgrad)
    assert hyper == (0.8, 0.99, 1e-6, True)
    assert restored.global_clipnorm == 2.0 and restored.name == "emb_adam"
    assert LazyAdam.from_config(config).get_config() == config


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weight_decay": 0.01}, "weight_decay"),
        ({"weight_decay": 0.0}, "weight_decay"),
        ({"use_ema": True}, "use_ema"),
        ({"gradient_accumulation_steps": 4}, "gradient_accumulation_steps"),
        ({"loss_scale_factor": 128.0}, "loss_scale_factor"),
        ({"beta_1": 1.0}, "beta_1.*1.0"),
        ({"beta_2": "x"}, "beta_2.*'x'"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"amsgrad": 1}, "amsgrad"),
    ],
)
def test_rejects_unsupported_or_invalid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LazyAdam(**kwargs)


def test_checkpoint_restore_gives_identical_continued_updates(tmp_path):
    rng = np.random.default_rng(7)
    grads = [(rng.normal(size=(3, DIM)), rng.integers(0, VOCAB, size=3)) for _ in range(5)]

    var = _table()
    opt = LazyAdam(learning_rate=0.03)
    for values, ids in grads[:2]:
        opt.apply_gradients([(_slices(values, ids), var)])
    path = tf.train.Checkpoint(table=var, optimizer=opt).save(str(tmp_path / "ckpt"))
    for values, ids in grads[2:]:
        opt.apply_gradients([(_slices(values, ids), var)])

    for build_first in (True, False):
        var2 = tf.Variable(tf.zeros([VOCAB, DIM]))
        opt2 = LazyAdam(learning_rate=0.03)
        if build_first:
            opt2.build([var2])
        tf.train.Checkpoint(table=var2, optimizer=opt2).restore(
            path
        ).assert_existing_objects_matched()
        assert int(opt2.iterations.numpy()) == 2
        for values, ids in grads[2:]:
            opt2.apply_gradients([(_slices(values, ids), var2)])
        np.testing.assert_array_equal(var2.numpy(), var.numpy())
        for restored, original in zip(_slots(opt2, var2), _slots(opt, var)):
            np.testing.assert_array_equal(restored, original)


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from models.lazy_adam import LazyAdam

    VOCAB, DIM, FIELDS, BATCH, STEPS = 40, 4, 3, 16, 4
    rng = np.random.default_rng(11)
    table0 = rng.normal(size=(VOCAB, DIM)).astype("float32")
    kernel0 = rng.normal(size=(FIELDS * DIM, 1)).astype("float32")
    ids = rng.integers(0, 12, size=(STEPS * BATCH, FIELDS)).astype("int32")  # many duplicates
    labels = rng.integers(0, 2, size=STEPS * BATCH).astype("float32")
    seen = []

    class Recording(LazyAdam):
        def update_step(self, gradient, variable, learning_rate):
            seen.append(type(gradient).__name__)
            return super().update_step(gradient, variable, learning_rate)

    def train(strategy):
        with strategy.scope():
            table = keras.Variable(table0, name="table")
            kernel = keras.Variable(kernel0, name="kernel")
            emb_opt = Recording(learning_rate=0.05)
            dense_opt = keras.optimizers.Adam(learning_rate=0.02)
            emb_opt.build([table])
            dense_opt.build([kernel])

        def replica_step(x, y):
            with tf.GradientTape() as tape:
                emb = tf.reshape(tf.gather(table, x), [-1, FIELDS * DIM])
                logits = tf.matmul(emb, kernel)[:, 0]
                per_example = tf.nn.sigmoid_cross_entropy_with_logits(y, logits)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=BATCH)
            g_table, g_kernel = tape.gradient(loss, [table, kernel])
            emb_opt.apply_gradients([(g_table, table)])
            dense_opt.apply_gradients([(g_kernel, kernel)])

        @tf.function
        def step(batch):
            strategy.run(replica_step, args=batch)

        data = tf.data.Dataset.from_tensor_slices((ids, labels)).batch(BATCH)
        for batch in strategy.experimental_distribute_dataset(data):
            step(batch)
        return table.numpy(), kernel.numpy(), int(emb_opt.iterations.numpy())

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    dist = train(mirrored)
    n_seen = len(seen)
    single = train(tf.distribute.get_strategy())
    print("RESULT " + json.dumps({
        "replicas": mirrored.num_replicas_in_sync,
        "mirrored_grad_types": sorted(set(seen[:n_seen])),
        "table_max_diff": float(np.abs(dist[0] - single[0]).max()),
        "kernel_max_diff": float(np.abs(dist[1] - single[1]).max()),
        "table_moved": float(np.abs(single[0] - table0).max()),
        "untouched_equal": bool(np.array_equal(dist[0][12:], table0[12:])),
        "iterations": [dist[2], single[2]],
    }))
    """
)


def test_mirrored_strategy_two_cpus_matches_single_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["replicas"] == 2
    assert result["mirrored_grad_types"] == ["IndexedSlices"]
    assert result["table_moved"] > 0.05
    assert result["table_max_diff"] < 1e-6
    assert result["kernel_max_diff"] < 1e-6
    assert result["untouched_equal"]
    assert result["iterations"] == [4, 4]


def test_benchmark_runs_and_prints_ratio_line(capsys):
    from benchmarks import sparse_update

    result = sparse_update.main(["--rows", "50,3000", "--steps", "2", "--warmup", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("lazy_3k_over_50=") and " dense_3k_over_50=" in lines[-1]
    assert set(result["medians_ms"]) == {
        (50, "dense"),
        (50, "lazy"),
        (3000, "dense"),
        (3000, "lazy"),
    }
    assert all(ms > 0 for ms in result["medians_ms"].values())
    assert "IndexedSlices" in lines[2]  # the table's gradient reached the optimizer sparse
    with pytest.raises(SystemExit):
        sparse_update.main(["--rows", "5000,5000"])
    lazy_only = sparse_update.main(["--rows", "50,3000", "--steps", "1", "--warmup", "1",
                                    "--optimizers", "lazy"])
    assert set(lazy_only["medians_ms"]) == {(50, "lazy"), (3000, "lazy")}
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("lazy_3k_over_50=") and last.endswith(" dense_3k_over_50=nan")
    with pytest.raises(SystemExit):
        sparse_update.main(["--optimizers", "sgd"])


def _run_lazy(rows, batches, small_table, monkeypatch, dim=4, lr=0.05):
    """LazyAdam on a [rows, dim] table over `batches` of (ids, values), compiled; with
    `small_table` False the sparse path is forced."""
    from models import lazy_adam

    if not small_table:
        monkeypatch.setattr(lazy_adam, "_small_table", lambda gradient, variable: False)
    var = keras.Variable(np.random.default_rng(0).normal(size=(rows, dim)).astype("float32"))
    opt = LazyAdam(learning_rate=lr)
    opt.build([var])

    @tf.function
    def step(ids, values):
        opt.apply_gradients([(tf.IndexedSlices(values, ids, tf.constant([rows, dim])), var)])

    graph = step.get_concrete_function(*batches[0]).graph
    for ids, values in batches:
        step(ids, values)
    monkeypatch.undo()
    i = opt._get_variable_index(var)
    types = {op.type for op in graph.get_operations()}
    return [var.numpy(), opt._momentums[i].numpy(), opt._velocities[i].numpy()], types


@pytest.mark.parametrize("index_dtype", [tf.int32, tf.int64])
def test_small_table_update_equals_the_sparse_one(monkeypatch, index_dtype):
    """A table with no more rows than the batch has lookups takes the compiled masked update:
    the same values as the sparse path (to float rounding: XLA may fuse a multiply-add), rows and
    moments not touched by any step bitwise unchanged."""
    rows, lookups, dim = 40, 64, 4
    rng = np.random.default_rng(3)
    batches = [(tf.constant(rng.integers(0, 30, size=lookups), index_dtype),  # rows 30+: never
                tf.constant(rng.normal(size=(lookups, dim)).astype("float32")))
               for _ in range(6)]
    small, small_ops = _run_lazy(rows, batches, True, monkeypatch)
    sparse, sparse_ops = _run_lazy(rows, batches, False, monkeypatch)
    assert "Unique" in sparse_ops and "Unique" not in small_ops  # the two paths were taken
    start = np.random.default_rng(0).normal(size=(rows, dim)).astype("float32")
    for got, want in zip(small, sparse):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(got[30:], want[30:])
    np.testing.assert_array_equal(small[0][30:], start[30:])
    assert not small[1][30:].any() and not small[2][30:].any()
    assert np.abs(small[0][:30] - start[:30]).max() > 0.1  # it did train


def test_small_table_path_only_when_rows_fit_the_static_lookups():
    from models.lazy_adam import _small_table

    table = tf.Variable(tf.zeros([10, 3]))

    def grad(ids):
        return tf.IndexedSlices(tf.zeros([1, 3]), ids, tf.constant([10, 3]))

    assert _small_table(grad(tf.zeros([10], tf.int32)), table)
    assert _small_table(grad(tf.zeros([64], tf.int32)), table)
    assert not _small_table(grad(tf.zeros([9], tf.int32)), table)
    seen = []
    tf.function(lambda ids: seen.append(_small_table(grad(ids), table))).get_concrete_function(
        tf.TensorSpec([None], tf.int32))
    assert seen == [False]  # an unknown number of lookups keeps the sparse path
