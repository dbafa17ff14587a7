"""Memory across a run (pipeline/runtime.py, pipeline/controller.py): every variable saved once in
a checkpoint, and checkpoints of the earlier layout still restore; the optimizer slots released
before the end of a retraining, which then restores and saves the model without copying its
tables; nothing of a retraining or search left alive once it returns."""
import gc
import tracemalloc
import weakref

import numpy as np
import pytest

from configs import experiment
from tests.fixtures import random_dataset_dir

VOCAB = [50, 30, 200, 20, 10, 100]
RETRAIN = ["retrain.batch_size=200", "retrain.max_epochs=1", "retrain.checkpoint_every=10",
           "retrain.steps_per_call=5"]
SEARCH = ["search.batch_size=200", "search.pretrain_steps=2", "search.search_steps=4",
          "search.steps_per_call=5", "search.checkpoint_every=100"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return random_dataset_dir(tmp_path_factory, "run_memory", 2000, VOCAB, seed=7)


def _retrain_task(data_dir, dims: int = 8, sets=()):
    from configs.features import DataSchema
    from pipeline.dims import load_dims
    from pipeline.retrain_task import RetrainTask
    from pipeline.strategy import make_strategy

    schema = DataSchema.load(data_dir)
    cfg = experiment.resolve("default", None, [*RETRAIN, *sets])
    dims = load_dims(f"fde:{dims}", schema, cfg.model.candidate_dims)
    return RetrainTask(make_strategy(), str(data_dir), schema, dims, cfg)


def _search_task(data_dir):
    from configs.features import DataSchema
    from pipeline.search import search_schedule
    from pipeline.search_task import SearchTask
    from pipeline.strategy import make_strategy

    schema = DataSchema.load(data_dir)
    cfg = experiment.resolve("default", None, SEARCH)
    return SearchTask(make_strategy(), str(data_dir), schema, cfg,
                      search_schedule(cfg, schema.splits["train"]))


def _trained(task, steps: int):
    """`steps` steps of the task's own calls (a search: pre-training, then alpha groups)."""
    task.start(0)
    step = 0
    while step < steps:
        end = task.phase_end(step)  # as the controller: a call never crosses a phase's end
        call = task.train(step, min(steps, end if end is not None else steps) - step)
        step = int(task.step.numpy())
        assert np.isfinite(float(call.loss_sum))
    return task


def _optimizers(task) -> dict:
    return {k: v for k, v in task.opts.trackables().items()}


def _state(task) -> dict:
    """Every value a resume must restore: the model's variables, each optimizer's variables
    (iterations, learning rate, slots), the step."""
    out = {f"model/{i}": np.array(v.numpy()) for i, v in enumerate(task.model.variables)}
    for name, opt in _optimizers(task).items():
        out.update({f"{name}/{i}": np.array(v.numpy()) for i, v in enumerate(opt.variables)})
    out["step"] = int(task.step.numpy())
    return out


def _nbytes(variables) -> int:
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)


@pytest.mark.parametrize("kind", ["retrain", "search"])
def test_a_checkpoint_holds_each_variable_once(small_data, tmp_path, kind):
    import tensorflow as tf

    from pipeline import runtime

    task = _trained(_retrain_task(small_data) if kind == "retrain" else _search_task(small_data),
                    3 if kind == "retrain" else 4)
    opts = _optimizers(task)
    assert len(opts) == (2 if kind == "retrain" else 3)
    path = runtime.Checkpointer(tmp_path / "ckpt", 1, **task.trackables()).save(3)
    listed = dict(tf.train.list_variables(path))
    assert not [k for k in listed if "_trainable_variables/" in k]
    reader = tf.train.load_checkpoint(path)
    saved = sum(reader.get_tensor(k).nbytes for k in listed if k != "_CHECKPOINTABLE_OBJECT_GRAPH")
    # the model, every optimizer's own variables (slots, iterations, learning rate), the step
    # and the checkpoint's save counter: nothing twice
    expected = (_nbytes(task.model.variables) + sum(_nbytes(o.variables) for o in opts.values())
                + 8 + 8)
    assert saved == expected
    if kind == "retrain":  # the FDE-8 table: itself and LazyAdam's two slots
        table = tuple(task.model.embedding_variables[0].shape)
        assert sum(tuple(shape) == table for shape in listed.values()) == 3


def _old_layout_checkpoint(task, directory, step: int) -> str:
    """A checkpoint as the pipeline wrote it before each variable was saved once: the Keras
    optimizers themselves (which track the model's variables too) beside the model."""
    import tensorflow as tf

    from pipeline import runtime

    objects = {"model": runtime.model_state(task.model), "step": task.step, **_optimizers(task)}
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(**objects), str(directory),
                                         max_to_keep=1)
    return manager.save(checkpoint_number=step)


@pytest.mark.parametrize("kind", ["retrain", "search"])
@pytest.mark.parametrize("layout", ["old", "new"])
def test_a_resume_restores_weights_slots_and_iterations(small_data, tmp_path, kind, layout):
    import tensorflow as tf

    from pipeline import runtime

    def fresh():
        return _retrain_task(small_data) if kind == "retrain" else _search_task(small_data)

    trained = _trained(fresh(), 4)
    if layout == "old":
        path = _old_layout_checkpoint(trained, tmp_path / "ckpt", 4)
        assert [k for k in dict(tf.train.list_variables(path)) if "_trainable_variables/" in k]
    else:
        runtime.Checkpointer(tmp_path / "ckpt", 1, **trained.trackables()).save(4)
    want = _state(trained)
    assert want["step"] == 4
    for name, opt in _optimizers(trained).items():  # trained: slots and iterations are set
        assert int(opt.iterations.numpy()) >= 1, name
    task = fresh()
    before = _state(task)
    resumed = runtime.Checkpointer(tmp_path / "ckpt", 1, **task.trackables()).restore_latest()
    assert resumed.endswith("ckpt-4")
    got = _state(task)
    assert sorted(got) == sorted(want)
    changed = [k for k in want if not np.array_equal(np.asarray(before[k]), np.asarray(want[k]))]
    assert any(k.startswith("embedding_optimizer/") for k in changed)  # a real restore
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_a_restore_in_pieces_is_as_strict_as_a_whole_restore(small_data, tmp_path):
    from pipeline import runtime

    task = _trained(_retrain_task(small_data), 2)
    path = runtime.Checkpointer(tmp_path / "ckpt", 1, model=task.model, step=task.step).save(2)
    other = _retrain_task(small_data)  # also expects the optimizers' variables
    with pytest.raises(AssertionError, match="not bound to checkpointed values"):
        runtime.restore_in_pieces({"model": runtime.model_state(other.model),
                                   **other.opts.trackables()}, path)
    with pytest.raises(ValueError, match="shape"):  # another table shape
        runtime.restore_model_state(_retrain_task(small_data, dims=4).model, path)


def test_a_resume_reads_the_large_variables_one_at_a_time(small_data, tmp_path, monkeypatch):
    """A whole restore reads every tensor before assigning any (a second copy of every table
    and slot); restore_in_pieces reads small variables together and each large one alone."""
    from pipeline import runtime

    task = _trained(_retrain_task(small_data), 2)
    runtime.Checkpointer(tmp_path / "ckpt", 1, **task.trackables()).save(2)
    budget = 4000  # bytes: the table (410 x 8 floats, 13,120 B) and its slots are larger
    monkeypatch.setattr(runtime, "RESTORE_BATCH_BYTES", budget)
    batches = []
    original = runtime._restore_paths

    def recording(paths, prefix):
        batches.append([leaf for _, leaf in paths])
        original(paths, prefix)

    monkeypatch.setattr(runtime, "_restore_paths", recording)
    other = _retrain_task(small_data)
    runtime.Checkpointer(tmp_path / "ckpt", 1, **other.trackables()).restore_latest()
    expected = ([v.value for v in other.model.variables] + [other.step]
                + [v for o in _optimizers(other).values() for v in o.variables])
    restored = [id(leaf) for batch in batches for leaf in batch]
    assert sorted(restored.count(id(v)) for v in expected) == [1] * len(expected)
    large = [batch for batch in batches if sum(map(runtime._variable_bytes, batch)) > budget]
    assert large and all(len(batch) == 1 for batch in large)
    alone = {id(batch[0]) for batch in large}
    table = other.model.embedding_variables[0]
    slots = [v for v in other.opts.embedding.variables if tuple(v.shape) == tuple(table.shape)]
    assert len(slots) == 2 and runtime._variable_bytes(table) == 410 * 8 * 4
    assert all(id(v) in alone for v in [table.value, *slots])
    assert any(len(batch) > 1 for batch in batches)  # the small ones together
    np.testing.assert_array_equal(other.model.embedding_variables[0].numpy(),
                                  task.model.embedding_variables[0].numpy())


def test_slots_and_training_graphs_are_released_before_the_end_hooks(small_data, tmp_path):
    from pipeline.controller import Controller, EarlyStopping, Hook
    from pipeline.strategy import make_strategy

    class Probe(Hook):
        """Weak references to the optimizer slots' resources at the start; at `end`, which
        of them are still alive."""

        def begin(self, ctl):
            opts = _optimizers(ctl.task)
            self.refs = [weakref.ref(v.value.handle) for o in opts.values() for v in o.variables]
            # LazyAdam's m and v of the table and first-order table among them
            assert sum(len(v.shape) == 2 for v in opts["embedding_optimizer"].variables) == 4

        def end(self, ctl):
            gc.collect()
            self.alive = sum(r() is not None for r in self.refs)
            self.evaluated = ctl.task.evaluate()  # evaluation still works

    task = _retrain_task(small_data)
    stopping = EarlyStopping(make_strategy(), task.model, tmp_path, patience=5)
    probe = Probe()
    Controller(task, tmp_path, task.settings(), hooks=[stopping, probe], quiet=True).run()
    assert probe.alive == 0
    assert 0.0 <= probe.evaluated["auc"] <= 1.0


def test_the_end_of_a_retraining_copies_no_table(tmp_path_factory, tmp_path, monkeypatch):
    """Restoring the best weights and saving model.keras: what numpy allocates (tracemalloc)
    stays far below one copy of the table (Keras' own save made two)."""
    import keras
    import tensorflow as tf

    from pipeline import controller
    from pipeline.retrain import retrain

    rows = 200_000
    data = random_dataset_dir(tmp_path_factory, "wide", 1600, [rows, 30, 20], seed=3)
    table = rows * 8 * 4
    peaks = {}

    def traced(name, fn):
        def wrapper(self, ctl):
            if name == "restore":
                self._best_step = None  # restore even when the last evaluation was the best
            tracemalloc.start()
            try:
                return fn(self, ctl)
            finally:
                peaks[name] = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
        return wrapper

    from pipeline.retrain_task import TestScoring

    monkeypatch.setattr(controller.EarlyStopping, "end",
                        traced("restore", controller.EarlyStopping.end))
    monkeypatch.setattr(TestScoring, "end", traced("scoring", TestScoring.end))
    cfg = experiment.resolve("default", None, [*RETRAIN, "retrain.batch_size=400"])
    retrain(str(data), "fde:8", str(tmp_path / "m"), cfg, quiet=True)
    assert peaks["restore"] < table / 4, peaks
    assert peaks["scoring"] < table / 4, peaks
    model = keras.saving.load_model(tmp_path / "m" / "model.keras")
    restored = tf.train.load_checkpoint(str(tmp_path / "m" / "best" / "weights"))
    np.testing.assert_array_equal(
        model.embedding_variables[0].numpy(),
        restored.get_tensor("model/v0000/.ATTRIBUTES/VARIABLE_VALUE"))


def _handles(variables) -> list:
    return [weakref.ref(v.value.handle) for v in variables]


def test_nothing_of_a_retraining_stays_alive_after_it_returns(small_data, tmp_path, monkeypatch):
    """A traced training graph captures the tables and slots; one that stayed reachable after
    retrain() returned (a tf.custom_gradient's registry entry, a reference cycle) would add each
    retraining's tables and slots to the process."""
    from pipeline import retrain_task
    from pipeline.retrain import retrain

    refs = []
    init = retrain_task.RetrainTask.__init__

    def recording(self, *args, **kwargs):
        init(self, *args, **kwargs)
        refs.append(_handles(self.model.embedding_variables)
                    + _handles(v for v in self.opts.embedding.variables if len(v.shape) == 2))

    monkeypatch.setattr(retrain_task.RetrainTask, "__init__", recording)
    cfg = experiment.resolve("default", None, RETRAIN)
    for k in range(2):
        retrain(str(small_data), "fde:8", str(tmp_path / str(k)), cfg, quiet=True)
        gc.collect()
        assert [r() is None for r in refs[k]] == [True] * 6, k


def test_nothing_of_a_search_stays_alive_after_it_returns(small_data, tmp_path, monkeypatch):
    from pipeline import search_task
    from pipeline.search import run_search

    refs = []
    init = search_task.SearchTask.__init__

    def recording(self, *args, **kwargs):
        init(self, *args, **kwargs)
        refs.extend(_handles(self.model.embedding_variables + self.model.arch_variables)
                    + _handles(v for o in _optimizers(self).values() for v in o.variables
                               if len(v.shape) == 2))

    monkeypatch.setattr(search_task.SearchTask, "__init__", recording)
    run_search(str(small_data), str(tmp_path / "search"),
               experiment.resolve("default", None, SEARCH), quiet=True)
    gc.collect()
    assert refs and [r() is None for r in refs] == [True] * len(refs)


def test_custom_gradient_registrations_of_a_run_are_released():
    """A tf.custom_gradient traced in a run registers a process-global entry holding its graph;
    release_gradient_registrations removes exactly those registered since `before`."""
    import tensorflow as tf

    from pipeline import runtime

    before = runtime.gradient_registrations()

    @tf.custom_gradient
    def doubled(x):
        return 2.0 * x, lambda upstream: 2.0 * upstream

    @tf.function
    def grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = doubled(x)
        return tape.gradient(y, x)

    assert float(grad(tf.constant(3.0))) == 2.0
    added = runtime.gradient_registrations() - before
    assert added and all(name.startswith("CustomGradient-") for name in added)
    assert runtime.release_gradient_registrations(before) == len(added)
    assert runtime.gradient_registrations() - before == frozenset()
