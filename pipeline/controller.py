"""The one outer training loop (Orbit's `Controller`), which a task (search, retraining) supplies
with its compiled steps and evaluation: several steps per compiled call, evaluation every N steps,
a checkpoint every M, TensorBoard summaries, progress, the NaN stop, resume from the latest
checkpoint, and hooks (early stopping, what a task does after an evaluation and at the end).

    task = SearchTask(...)                       # a `Task`: model, optimizers, step functions
    ctl = Controller(task, model_dir, LoopSettings(...), hooks=[AlphaLogger(...), ...])
    ctl.run()                                    # train to the end (or until a hook stops it)

A `Task` is Orbit's Trainer and Evaluator in one: `train(step, budget)` runs one compiled call of
about `budget` steps and returns its summed loss; `evaluate()` scores the validation split. A
`Hook` adds checkpointed state (`trackables`) and acts at `begin`, `after_evaluation` (which may
ask to stop, `should_stop`) and `end`, in the order the hooks are given.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

from configs import fileio


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """How the loop runs: its length, the steps per compiled call, the evaluation and checkpoint
    intervals (in steps), the checkpoints kept and the global batch size (for examples/second)."""

    total_steps: int
    steps_per_call: int
    eval_every: int
    checkpoint_every: int
    keep_checkpoints: int
    global_batch_size: int


@dataclasses.dataclass
class CallResult:
    """What one compiled call did: the steps it ran, their summed loss (a tensor, read once by the
    NaN check) and the phase name the progress display shows."""

    steps: int
    loss_sum: Any
    phase: str


@dataclasses.dataclass
class EvalLogs:
    """One evaluation: the step, the training metrics since the last one, the validation metrics,
    the training throughput and whatever hooks add for the log line (`notes`)."""

    step: int
    train: dict
    valid: dict
    examples_per_second: float
    notes: dict = dataclasses.field(default_factory=dict)


class Task:
    """What the controller drives (Orbit's Trainer + Evaluator). Subclasses build their model,
    optimizers and `runner` (a `pipeline.trainer.StepRunner`) under the strategy's scope, and
    define `trackables`, `start`, `train`, `describe`, `hparams` and `eval_message`."""

    runner = None  # pipeline.trainer.StepRunner: the step counter, metrics and evaluation
    eval_ds = None  # the distributed validation pass (set by `start`)

    @property
    def step(self):
        return self.runner.step

    def trackables(self) -> dict:
        """What the checkpoint holds besides the hooks' state: the model, optimizers, step."""
        raise NotImplementedError

    def start(self, step: int) -> None:
        """Creates the input streams, positioned at `step` (the restored step on a resume)."""
        raise NotImplementedError

    def phase_end(self, step: int) -> int | None:
        """The step at which the phase running at `step` ends (a call never crosses it)."""
        return None

    def train(self, step: int, budget: int) -> CallResult:
        """One compiled call of about `budget` (>= 1) steps."""
        raise NotImplementedError

    def train_metrics(self) -> dict:
        return self.runner.read_train_metrics()

    def evaluate(self) -> dict:
        return self.runner.evaluate(self.eval_ds)

    def train_scalars(self) -> dict:
        """Further scalars for the train run at each evaluation (learning rates, temperature)."""
        return {}

    def progress_values(self) -> dict:
        """Further values for the progress display after each call."""
        return {}

    def describe(self, step: int, resumed: str | None) -> str:
        """The log line that opens the run."""
        raise NotImplementedError

    def hparams(self) -> dict:
        """The run's HParams session (written once, when the run starts fresh)."""
        raise NotImplementedError

    def eval_message(self, logs: EvalLogs) -> str:
        """The log line of one evaluation."""
        raise NotImplementedError

    def release_training(self) -> None:
        """Called once, when training is over (before the hooks' `end`): drops what only training
        needs (the optimizers and their slots, the compiled training calls, the training input
        streams) so the end of the run does not hold it beside what it allocates. Evaluation
        keeps working."""


class Hook:
    """An addition to the loop. Every method is optional."""

    def trackables(self) -> dict:
        """State the checkpoint must hold so a resumed run continues exactly."""
        return {}

    def begin(self, ctl: Controller) -> None:
        """After the restore, before the first call (`ctl.resumed` tells whether it resumed)."""

    def after_evaluation(self, ctl: Controller, logs: EvalLogs) -> None:
        """After each evaluation's summaries, before its log line."""

    def should_stop(self) -> bool:
        """Asked before every call: True ends training (a checkpoint is written first)."""
        return False

    def end(self, ctl: Controller) -> None:
        """After training (also when a resumed run had nothing left to train)."""


class Controller:
    """Runs a task's compiled calls to `settings.total_steps`, evaluating and checkpointing at
    the intervals (and at the last step, or when a hook stops training). Constructing it
    restores the latest checkpoint in `model_dir/ckpt`, opens the progress display and the
    `train`, `valid` and `hparams` summary runs, and starts the task's input streams."""

    def __init__(self, task: Task, model_dir: str | Path, settings: LoopSettings, *,
                 hooks: Sequence[Hook] = (), quiet: bool = False):
        import tensorflow as tf

        from pipeline import runtime, summaries
        from pipeline.progress import Progress

        # the gradient functions traced from here on are dropped when training ends (and at the
        # end of `run`): see runtime.release_gradient_registrations
        self._registrations = runtime.gradient_registrations()
        self.task, self.settings, self.hooks = task, settings, list(hooks)
        self.model_dir = fileio.path(model_dir)
        state = dict(task.trackables())
        for hook in self.hooks:
            state.update(hook.trackables())
        # a multi-worker run's other workers save to their own directory (runtime.output_dir)
        # and resume from the chief's checkpoints
        from pipeline import parameter_server

        strategy = getattr(task, "strategy", None)
        layout = (parameter_server.layout(strategy, task.runner.model)
                  if parameter_server.is_parameter_server(strategy) else None)
        # the training time of the processes before this one, saved with each checkpoint
        self._seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.checkpointer = runtime.Checkpointer(
            self.model_dir / "ckpt", settings.keep_checkpoints,
            restore_from=runtime.shared_dir(self.model_dir / "ckpt"), layout=layout,
            optional={"train_seconds": self._seconds}, **state)
        self.resumed = self.checkpointer.restore_latest()
        self.earlier_seconds = float(self._seconds.numpy())
        self.step = int(task.step.numpy())
        self.progress = Progress(settings.total_steps, quiet=quiet)
        self.log(task.describe(self.step, self.resumed))
        if layout is not None:
            self.log(parameter_server.format_layout(layout))
        task.start(self.step)
        self.writers = {k: tf.summary.create_file_writer(str(self.model_dir / k))
                        for k in ("train", "valid", summaries.HPARAMS_RUN)}
        if not self.resumed:  # once per run: the HParams session
            summaries.write_hparams(self.writers[summaries.HPARAMS_RUN], task.hparams())
        self.last_logs: EvalLogs | None = None
        self.trained_steps = 0  # in this process (a resumed run counts from its restart)
        self.process_seconds = 0.0  # training time in this process
        self.train_seconds = self.earlier_seconds  # ... and in every process of the run
        self._started = time.monotonic()
        for hook in self.hooks:
            hook.begin(self)

    def log(self, message: str) -> None:
        self.progress.log(message)

    def run(self) -> None:
        """Trains, releases what only training needed (`release_training`), then runs the hooks'
        `end` in order. Whatever way it ends, the gradient functions traced during the run are
        unregistered, so the run's graphs, and the variables they captured, can be freed once
        its objects are dropped."""
        try:
            self._started = time.monotonic()
            self.train()
            self.progress.close()
            self.process_seconds = time.monotonic() - self._started
            self.train_seconds = self.earlier_seconds + self.process_seconds
            self.release_training()
            for hook in self.hooks:
                hook.end(self)
            self.flush()
        finally:
            self._release_graphs()

    def release_training(self) -> None:
        """After the last training call (its checkpoint written): the task drops its optimizers,
        compiled training calls and input streams, the checkpointer its references, and the
        traced training graphs are unregistered, so the optimizer slots (two tables' worth with
        Adam) are freed before the hooks restore the best weights, score and save the model."""
        self.task.release_training()
        self.checkpointer.close()
        self._release_graphs()

    def _release_graphs(self) -> None:
        from pipeline import runtime

        runtime.release_gradient_registrations(self._registrations)
        runtime.collect_garbage()

    def _stopping(self) -> bool:
        return any(hook.should_stop() for hook in self.hooks)

    def _limit(self, step: int) -> int:
        """The step the next call must not pass: the end, the next evaluation or checkpoint, or
        the end of the task's phase."""
        s = self.settings
        limit = min(s.total_steps, _next_multiple(step, s.eval_every),
                    _next_multiple(step, s.checkpoint_every))
        phase_end = self.task.phase_end(step)
        return limit if phase_end is None else min(limit, phase_end)

    def train(self) -> None:
        """Compiled calls until the last step or a hook's stop; one host read of the loss per
        call (the NaN check), evaluation and checkpoint when a call crosses their interval."""
        from pipeline.trainer import check_finite

        s, step = self.settings, self.step
        while step < s.total_steps and not self._stopping():
            budget = min(s.steps_per_call, self._limit(step) - step)
            t0 = time.monotonic()
            call = self.task.train(step, budget)
            prev, step = step, int(self.task.step.numpy())
            self.step = step
            check_finite(call.loss_sum, step, self.checkpointer.directory)
            self.trained_steps += call.steps
            rate = call.steps * s.global_batch_size / max(time.monotonic() - t0, 1e-9)
            self.progress.update(step, call.phase, loss=float(call.loss_sum) / call.steps,
                                 **self.task.progress_values())
            last = step >= s.total_steps
            if _crossed(prev, step, s.eval_every) or last:
                self.evaluate(step, rate)
            if _crossed(prev, step, s.checkpoint_every) or last or self._stopping():
                self._seconds.assign(self.earlier_seconds + time.monotonic() - self._started)
                self.checkpointer.save(step)

    def evaluate(self, step: int, examples_per_second: float) -> EvalLogs:
        """Reads (and resets) the training metrics, scores the validation split, writes both
        runs' scalars, runs the hooks' `after_evaluation` and logs the task's line."""
        from pipeline import summaries

        train, valid = self.task.train_metrics(), self.task.evaluate()
        summaries.write_scalars(self.writers["train"], step, {
            "loss": train["loss"], "auc": train["auc"], **self.task.train_scalars(),
            "examples_per_second": examples_per_second})
        summaries.write_scalars(self.writers["valid"], step, {"loss": valid["loss"],
                                                              "auc": valid["auc"]})
        logs = EvalLogs(step, train, valid, examples_per_second)
        for hook in self.hooks:
            hook.after_evaluation(self, logs)
        self.last_logs = logs
        self.log(self.task.eval_message(logs))
        return logs

    def flush(self) -> None:
        for writer in self.writers.values():
            writer.flush()


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


def _crossed(prev: int, step: int, every: int) -> bool:
    return step // every > prev // every


class EarlyStopping(Hook):
    """Stops after `patience` evaluations without a higher validation `metric` (AUC), saves the
    model's every variable at each new best (model_dir/best/weights) and restores that best at
    the end. The best value and the count of evaluations without improvement are checkpointed
    (as `best_auc` and `bad_evals`), so a resumed run keeps counting."""

    def __init__(self, strategy, model, directory: str | Path, patience: int,
                 metric: str = "auc"):
        import tensorflow as tf

        from pipeline import runtime

        self.patience, self.metric = int(patience), metric
        with strategy.scope():
            self.best = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_auc")
            self.bad_evals = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_evals")
        self._model = model
        self._weights = tf.train.Checkpoint(model=runtime.model_state(model))
        self._prefix = str(fileio.path(directory) / "best" / "weights")
        self._best_step: int | None = None  # the step of the best written in this process

    def trackables(self) -> dict:
        return {"best_auc": self.best, "bad_evals": self.bad_evals}

    def after_evaluation(self, ctl: Controller, logs: EvalLogs) -> None:
        value = logs.valid[self.metric]
        improved = value > float(self.best.numpy())
        if improved:
            self.best.assign(value)
            self.bad_evals.assign(0)
            self._weights.write(self._prefix)
            self._best_step = logs.step
        else:
            self.bad_evals.assign_add(1)
        logs.notes["improved"] = improved

    def should_stop(self) -> bool:
        return self.stopped

    @property
    def stopped(self) -> bool:
        return int(self.bad_evals.numpy()) >= self.patience

    @property
    def best_value(self) -> float:
        return float(self.best.numpy())

    def end(self, ctl: Controller) -> None:
        """Restores the best weights (every variable the model has), a few variables at a time
        and each large one alone (runtime.restore_model_state: no second copy of the tables).
        Nothing to restore when the best was written at the last step in this process: the
        model holds it. A best written by an earlier process is read from the run's directory
        (in a multi-worker run, the chief's: the other workers' copies went with their
        processes); one written in this process from this worker's own copy, which the chief
        may still be writing in its directory."""
        from pipeline import runtime

        if self._best_step is not None and self._best_step == ctl.step:
            return
        prefix = self._prefix
        if self._best_step is None:
            prefix = str(runtime.shared_dir(fileio.path(prefix).parent) / fileio.path(prefix).name)
        runtime.restore_model_state(self._model, prefix)
