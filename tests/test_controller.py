"""The one training loop (pipeline/controller.py) on a scripted task: call sizes, evaluation and
checkpoint intervals, phases, hooks, early stopping with best-weight restore, NaN, resume."""
import numpy as np
import pytest

from pipeline.controller import CallResult, Controller, EarlyStopping, Hook, LoopSettings, Task
from pipeline.errors import NonFiniteLossError


def _settings(**kw):
    base = dict(total_steps=20, steps_per_call=4, eval_every=6, checkpoint_every=5,
                keep_checkpoints=10, global_batch_size=8)
    return LoopSettings(**{**base, **kw})


class ScriptedTask(Task):
    """A task without data: each call advances the step, sets the model's weight to the new step
    (so restored weights tell which step they are from) and returns loss 1 per step (NaN when
    the call passes `nan_at`); evaluations return the scripted validation AUCs in turn."""

    def __init__(self, aucs=(), phase_end=None, group=1, nan_at=None):
        import keras
        import tensorflow as tf

        self.step_var = tf.Variable(0, dtype=tf.int64)
        self.model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
        self.aucs, self.evals = list(aucs), 0
        self.phase_end_at, self.group, self.nan_at = phase_end, group, nan_at
        self.calls, self.started = [], None

    @property
    def step(self):
        return self.step_var

    def trackables(self):
        return {"model": self.model, "step": self.step_var}

    def start(self, step):
        self.started = step

    def phase_end(self, step):
        return self.phase_end_at if self.phase_end_at and step < self.phase_end_at else None

    def train(self, step, budget):
        n = max(1, budget // self.group) * self.group
        self.calls.append((step, budget, n))
        self.step_var.assign_add(n)
        new = int(self.step_var.numpy())
        self.model.layers[0].kernel.assign([[float(new)]])
        bad = self.nan_at is not None and step < self.nan_at <= new
        return CallResult(n, float("nan") if bad else float(n), "train")

    def train_metrics(self):
        return {"loss": 0.5, "auc": 0.5}

    def evaluate(self):
        auc = self.aucs[self.evals] if self.evals < len(self.aucs) else 0.5
        self.evals += 1
        return {"loss": 1.0 - auc, "auc": auc}

    def describe(self, step, resumed):
        return f"scripted at {step}" + (" (resumed)" if resumed else "")

    def hparams(self):
        return {"kind": "scripted"}

    def eval_message(self, logs):
        return f"step {logs.step}: auc {logs.valid['auc']}"


class Recorder(Hook):
    """A hook that records what the controller tells it."""

    def __init__(self):
        self.events = []

    def begin(self, ctl):
        self.events.append(("begin", ctl.step, bool(ctl.resumed)))

    def after_evaluation(self, ctl, logs):
        self.events.append(("eval", logs.step))

    def end(self, ctl):
        self.events.append(("end", ctl.step))


def _saved_steps(model_dir):
    import tensorflow as tf

    state = tf.train.get_checkpoint_state(str(model_dir / "ckpt"))
    return [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths] if state else []


def test_calls_stop_at_every_boundary_and_evaluate_and_checkpoint_on_crossing(tmp_path):
    task, rec = ScriptedTask(), Recorder()
    ctl = Controller(task, tmp_path, _settings(), hooks=[rec], quiet=True)
    ctl.run()
    # at most 4 steps a call, never across a checkpoint (5) or evaluation (6) boundary
    assert [(s, n) for s, _, n in task.calls] == [
        (0, 4), (4, 1), (5, 1), (6, 4), (10, 2), (12, 3), (15, 3), (18, 2)]
    assert [e for e in rec.events if e[0] == "eval"] == [("eval", 6), ("eval", 12),
                                                           ("eval", 18), ("eval", 20)]
    assert _saved_steps(tmp_path) == [5, 10, 15, 20]
    assert rec.events[0] == ("begin", 0, False) and rec.events[-1] == ("end", 20)
    assert ctl.last_logs.step == 20 and ctl.trained_steps == 20 and task.started == 0
    for run in ("train", "valid", "hparams"):
        assert list((tmp_path / run).glob("events.out.tfevents.*")), run


def test_a_phase_end_bounds_the_calls_and_a_task_may_run_whole_groups(tmp_path):
    task = ScriptedTask(phase_end=3, group=4)
    Controller(task, tmp_path, _settings(total_steps=12, steps_per_call=8, eval_every=100,
                                         checkpoint_every=100), quiet=True).run()
    # pre-phase: one group of 4 asked for 3 steps (a task may overrun by less than a group,
    # as the search's alpha groups do); then groups of 4 up to the end
    assert [(s, b, n) for s, b, n in task.calls] == [(0, 3, 4), (4, 8, 8)]
    assert _saved_steps(tmp_path) == [12]


def test_early_stopping_stops_checkpoints_and_restores_the_best_weights(tmp_path):
    from pipeline.strategy import make_strategy

    task = ScriptedTask(aucs=[0.6, 0.7, 0.65, 0.69, 0.9])
    stop = EarlyStopping(make_strategy(), task.model, tmp_path, patience=2)
    rec = Recorder()
    ctl = Controller(task, tmp_path, _settings(total_steps=100, eval_every=4,
                                               checkpoint_every=50), hooks=[stop, rec], quiet=True)
    ctl.run()
    # evaluations at 4, 8 (best), 12, 16: two without improvement stop the run at step 16
    assert [e[1] for e in rec.events if e[0] == "eval"] == [4, 8, 12, 16]
    assert ctl.step == 16 and stop.stopped and stop.best_value == pytest.approx(0.7)
    assert _saved_steps(tmp_path) == [16]  # the stop is checkpointed
    # the best weights (written at step 8) are restored at the end, before later hooks run
    assert float(task.model.layers[0].kernel.numpy()[0, 0]) == 8.0

    # a rerun resumes with the stop state and trains nothing more
    again = ScriptedTask(aucs=[0.99])
    stop2 = EarlyStopping(make_strategy(), again.model, tmp_path, patience=2)
    ctl2 = Controller(again, tmp_path, _settings(total_steps=100, eval_every=4,
                                                 checkpoint_every=50), hooks=[stop2], quiet=True)
    assert ctl2.resumed and ctl2.step == 16 and again.started == 16
    ctl2.run()
    assert again.calls == [] and stop2.stopped and stop2.best_value == pytest.approx(0.7)
    assert float(again.model.layers[0].kernel.numpy()[0, 0]) == 8.0


def test_early_stopping_keeps_the_weights_when_the_last_evaluation_was_the_best(tmp_path):
    import shutil

    from pipeline.strategy import make_strategy

    class RemoveBest(Hook):
        """Ends before EarlyStopping: from then on a read of the best weights would fail."""

        def end(self, ctl):
            shutil.rmtree(tmp_path / "best")

    task = ScriptedTask(aucs=[0.6, 0.7, 0.8])
    stop = EarlyStopping(make_strategy(), task.model, tmp_path, patience=2)
    Controller(task, tmp_path, _settings(total_steps=12, eval_every=4, checkpoint_every=50),
               hooks=[RemoveBest(), stop], quiet=True).run()
    # the best was written at the last step, which the model holds: nothing to read back
    assert not stop.stopped and stop.best_value == pytest.approx(0.8)
    assert float(task.model.layers[0].kernel.numpy()[0, 0]) == 12.0


def test_a_nan_loss_stops_before_any_checkpoint_or_evaluation_of_that_call(tmp_path):
    task, rec = ScriptedTask(nan_at=11), Recorder()
    ctl = Controller(task, tmp_path, _settings(), hooks=[rec], quiet=True)
    with pytest.raises(NonFiniteLossError, match="by step 12.*last good checkpoint"):
        ctl.run()
    assert _saved_steps(tmp_path) == [5, 10]
    assert [e for e in rec.events if e[0] == "eval"] == [("eval", 6)]
    assert ("end", 12) not in rec.events


def test_a_resumed_run_continues_from_the_checkpoint_without_a_second_session(tmp_path):
    from tensorboard.plugins.hparams import metadata as hp_metadata

    from tests.test_summaries import read_events

    first = ScriptedTask(nan_at=13)  # stops after the checkpoint at step 10
    with pytest.raises(NonFiniteLossError):
        Controller(first, tmp_path, _settings(), quiet=True).run()
    task, rec = ScriptedTask(), Recorder()
    ctl = Controller(task, tmp_path, _settings(), hooks=[rec], quiet=True)
    assert ctl.resumed.endswith("ckpt-10") and task.started == 10
    assert float(task.model.layers[0].kernel.numpy()[0, 0]) == 10.0
    ctl.run()
    assert task.calls[0][0] == 10 and ctl.step == 20 and ctl.trained_steps == 10
    assert rec.events[0] == ("begin", 10, True)
    sessions = [v for _, v in read_events(tmp_path / "hparams")
                if v.tag == hp_metadata.SESSION_START_INFO_TAG]
    assert len(sessions) == 1
    np.testing.assert_equal(_saved_steps(tmp_path), [5, 10, 15, 20])


class SlowTask(ScriptedTask):
    """ScriptedTask whose calls take `seconds` of wall time each."""

    def __init__(self, seconds, **kw):
        super().__init__(**kw)
        self.seconds = seconds

    def train(self, step, budget):
        import time

        time.sleep(self.seconds)
        return super().train(step, budget)


def test_the_training_time_of_a_resumed_run_counts_every_process(tmp_path):
    first = SlowTask(0.05, nan_at=13)  # 3 calls (steps 0-12), the checkpoint at step 10
    with pytest.raises(NonFiniteLossError):
        Controller(first, tmp_path, _settings(), quiet=True).run()
    ctl = Controller(SlowTask(0.05), tmp_path, _settings(), quiet=True)
    assert 0.1 <= ctl.earlier_seconds < 5  # the time up to the checkpoint at step 10
    ctl.run()
    assert ctl.trained_steps == 10 and 0.1 <= ctl.process_seconds < 5
    assert ctl.train_seconds == pytest.approx(ctl.earlier_seconds + ctl.process_seconds)
    # a run resumed after its last step trains nothing and keeps the recorded time
    done = Controller(ScriptedTask(), tmp_path, _settings(), quiet=True)
    done.run()
    # (the time its last checkpoint recorded, before the run's last evaluation and hooks)
    assert done.trained_steps == 0
    assert ctl.earlier_seconds + 0.1 <= done.train_seconds <= ctl.train_seconds


def test_a_checkpoint_without_the_training_time_still_restores(tmp_path):
    import tensorflow as tf

    task = ScriptedTask()
    task.step_var.assign(10)
    task.model.layers[0].kernel.assign([[10.0]])
    from pipeline.runtime import model_state

    # what an earlier version saved: the task's state only
    tf.train.Checkpoint(model=model_state(task.model), step=task.step_var).write(
        str(tmp_path / "ckpt" / "ckpt-10"))
    (tmp_path / "ckpt" / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-10"\nall_model_checkpoint_paths: "ckpt-10"\n')
    again = ScriptedTask()
    ctl = Controller(again, tmp_path, _settings(), quiet=True)
    assert ctl.resumed.endswith("ckpt-10") and ctl.earlier_seconds == 0.0
    assert float(again.model.layers[0].kernel.numpy()[0, 0]) == 10.0
