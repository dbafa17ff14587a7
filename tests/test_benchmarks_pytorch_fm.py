"""benchmarks/pytorch_fm.py without torch: the clean skips, our side's timed retraining step on a
tiny fixture dataset, the exported batches, the alternation arithmetic and the whole run with a
stand-in for the pytorch-fm worker."""
from __future__ import annotations

import math
import re
import sys

import numpy as np
import pytest

from benchmarks import pytorch_fm
from tests.fixtures import random_dataset_dir

VOCAB = [30, 50, 7, 12]
LAST_LINE = re.compile(r"^fm_ratio=(\S+) wd_ratio=(\S+) deepfm_ratio=(\S+)$")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return random_dataset_dir(tmp_path_factory, "pytorch_fm", 1200, VOCAB, seed=3)


@pytest.fixture(autouse=True)
def no_torch_env(monkeypatch):
    monkeypatch.delenv(pytorch_fm.TORCH_PYTHON_ENV, raising=False)


def last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_skips_without_data(tmp_path, capsys):
    assert pytorch_fm.main([]) == 0
    assert last_line(capsys) == ("pytorch_fm: skipped: no --data_root (the directory holding "
                                 "movielens-100k/)")
    assert pytorch_fm.main(["--data_root", str(tmp_path)]) == 0
    assert last_line(capsys) == f"pytorch_fm: skipped: {tmp_path / 'movielens-100k'} not found"
    assert pytorch_fm.main(["--data_dir", str(tmp_path)]) == 0
    assert "is not a preprocessed data dir" in last_line(capsys)


def test_skips_without_a_pytorch_fm_python(tmp_path, capsys, monkeypatch):
    (tmp_path / "movielens-100k").mkdir()
    root = ["--data_root", str(tmp_path)]
    assert pytorch_fm.main(root) == 0
    assert "skipped: no pytorch-fm Python: pass --torch_python PATH or set " \
           "AUTODIM_TORCH_PYTHON" in last_line(capsys)
    missing = tmp_path / "nowhere" / "python"
    assert pytorch_fm.main([*root, "--torch_python", str(missing)]) == 0
    assert last_line(capsys) == f"pytorch_fm: skipped: --torch_python {missing} does not exist"
    # this project's own Python has neither torch nor torchfm (and must never get them); the
    # environment variable is read when the flag is absent
    monkeypatch.setenv(pytorch_fm.TORCH_PYTHON_ENV, sys.executable)
    assert pytorch_fm.main(root) == 0
    line = last_line(capsys)
    assert line.startswith(f"pytorch_fm: skipped: {sys.executable} cannot import numpy, torch "
                           f"and torchfm: ")
    assert "torch" in line.split(": ", 3)[-1]
    assert list(tmp_path.iterdir()) == [tmp_path / "movielens-100k"]  # nothing preprocessed


def test_bad_flags_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        pytorch_fm.main(["--models", "fm,nfm"])
    assert exc.value.code == 2
    assert "--models" in capsys.readouterr().err


def test_ours_side_times_pipeline_retrains_fde32_step(data, tmp_path):
    import tensorflow as tf

    from configs.features import DataSchema
    from models.lazy_adam import LazyAdam

    schema = DataSchema.load(data)
    strategy = tf.distribute.get_strategy()
    side = pytorch_fm.OursSide(strategy, data, schema, "deepfm", batch=100)
    model = side.task.model
    assert list(model.embedding.dims) == [32] * len(VOCAB)
    assert model.embedding.unify == "zero_pad" and not model.embedding.kernels
    assert model.mlp_input == "raw"  # the retrain preset's MLP input
    assert isinstance(side.task.opts.embedding, LazyAdam)
    assert side.task.cfg.retrain.batch_size == 100
    assert side.mlp_units == (128, 128) and side.dropout == pytest.approx(0.2)
    first = side.block(15)  # whole calls of retrain.steps_per_call = 10
    assert first["steps"] == 20 and side.step == 20
    assert int(side.task.runner.step.numpy()) == 20
    assert first["seconds"] > 0 and first["cpu"] > 0
    assert 0.3 < first["loss"] < 1.0  # mean log loss of a fresh model on ~balanced labels
    # fed from memory by exported batches (what the torch side trains on)
    batches = tmp_path / "b.npz"
    pytorch_fm.export_batches(strategy, data, schema, 100, 3, batches)
    fed = pytorch_fm.OursSide(strategy, data, schema, "wide_deep", batch=100, batches=batches)
    ids, labels = next(fed.task.train_it)
    with np.load(batches) as b:
        np.testing.assert_array_equal(ids.numpy(), b["ids"][0])
        np.testing.assert_array_equal(labels.numpy(), b["labels"][0])
    assert fed.block(10)["steps"] == 10 and int(fed.task.runner.step.numpy()) == 10
    second = side.block(10)
    assert second["steps"] == 10 and int(side.task.runner.step.numpy()) == 30
    assert math.isfinite(second["loss"])
    # the default retrain.unify=linear projects FM's (and DeepFM's) fields, never W&D's
    linear = pytorch_fm.OursSide(strategy, data, schema, "fm", batch=100, unify="linear")
    assert len(linear.task.model.embedding.kernels) == 1
    assert linear.task.model.embedding.kernels[0].shape == (len(VOCAB), 32, 32)
    assert pytorch_fm.has_projection("fm", "linear") and pytorch_fm.has_projection(
        "deepfm", "linear")
    assert not pytorch_fm.has_projection("wide_deep", "linear")
    assert not pytorch_fm.has_projection("deepfm", "zero_pad")


def test_export_batches_are_training_batches_of_our_stream(data, tmp_path):
    import tensorflow as tf

    from configs.features import DataSchema

    schema = DataSchema.load(data)
    path = tmp_path / "b.npz"
    n = pytorch_fm.export_batches(tf.distribute.get_strategy(), data, schema, 100, 50, path)
    assert n == 12  # capped at the 1,200 training rows
    with np.load(path) as b:
        ids, labels = b["ids"], b["labels"]
    assert ids.shape == (12, 100, len(VOCAB)) and ids.dtype == np.int32
    assert labels.shape == (12, 100) and labels.dtype == np.float32
    assert ((ids >= 0) & (ids < np.array(VOCAB))).all()
    assert set(np.unique(labels)) <= {0.0, 1.0}
    assert len({row.tobytes() for row in ids.reshape(-1, len(VOCAB))}) > 1000  # not one batch


class FakeSide:
    """Stands in for both sides: fixed seconds per step."""

    def __init__(self, seconds_per_step: float, policy: str = "default"):
        self.seconds_per_step, self.wait_policy = seconds_per_step, policy
        self.calls: list = []
        self.closed = False

    def block(self, *args):
        steps = args[-1]
        self.calls.append(args)
        return {"seconds": self.seconds_per_step * steps, "cpu": 0.5 * self.seconds_per_step
                * steps, "loss": 0.5, "steps": steps}

    def close(self):
        self.closed = True


def test_rounds_alternate_and_keep_the_faster_torch_worker(capsys):
    ours = {("fm", "zero_pad"): FakeSide(0.001), ("fm", "linear"): FakeSide(0.004),
            ("deepfm", "zero_pad"): FakeSide(0.010)}
    torch_sides = [FakeSide(0.003, "default"), FakeSide(0.002, "PASSIVE")]
    out = pytorch_fm.run_rounds(ours, torch_sides, steps=10, rounds=3, warmup=1, batch=100)
    fm = out[("fm", "zero_pad")]
    assert fm["ours"] == pytest.approx([100_000.0] * 3)  # 100 examples / 1 ms
    assert fm["torch"] == pytest.approx([50_000.0] * 3)  # the faster worker
    assert fm["ratio"] == pytest.approx([2.0] * 3) and fm["policy"] == ["PASSIVE"] * 3
    assert out[("fm", "linear")]["ratio"] == pytest.approx([0.5] * 3)
    assert out[("deepfm", "zero_pad")]["ratio"] == pytest.approx([0.2] * 3)
    assert fm["ours_cpu"] == pytest.approx([0.5] * 3)  # ms per step
    # 1 warm-up + 3 timed blocks each; each torch worker runs every model once per round
    assert len(ours[("fm", "zero_pad")].calls) == 4
    assert [c[0] for c in torch_sides[0].calls] == ["fm", "deepfm"] * 4
    assert not any(s.closed for s in torch_sides) and "left out" not in capsys.readouterr().out


def test_a_worker_slower_than_half_the_other_in_warm_up_is_left_out(capsys):
    ours = {("fm", "zero_pad"): FakeSide(0.001)}
    torch_sides = [FakeSide(0.0105, "default"), FakeSide(0.005, "PASSIVE")]
    out = pytorch_fm.run_rounds(ours, torch_sides, steps=10, rounds=2, warmup=2, batch=100)
    assert torch_sides[0].closed and not torch_sides[1].closed
    assert len(torch_sides[0].calls) == 2 and len(torch_sides[1].calls) == 4
    assert out[("fm", "zero_pad")]["ratio"] == pytest.approx([5.0, 5.0])
    assert ("pytorch-fm worker with OpenMP wait policy default left out: examples/s in warm-up "
            "against the fastest worker's: fm 9,524/20,000") in capsys.readouterr().out


def test_whole_run_with_a_stand_in_worker(data, capsys, monkeypatch):
    """main() end to end on the fixture data: ours timed for real, the pytorch-fm worker
    replaced by a fixed-rate stand-in; the last line holds ours / pytorch-fm."""
    made = []

    class StandIn(FakeSide):
        def __init__(self, python, batches, field_dims, models, threads, mlp_dims, dropout,
                     log, wait_policy=None):
            super().__init__(0.5 if wait_policy else 0.25, wait_policy or "default")
            with np.load(batches) as b:
                self.ids = b["ids"]
            self.field_dims, self.models, self.mlp = field_dims, models, mlp_dims
            self.info = {"torch": "stand-in", "torchfm": "stand-in"}
            made.append(self)

    monkeypatch.setattr(pytorch_fm, "torch_python_problem", lambda python: None)
    monkeypatch.setattr(pytorch_fm, "TorchSide", StandIn)
    code = pytorch_fm.main(["--data_dir", str(data), "--torch_python", "stand-in", "--batch",
                            "100", "--steps", "10", "--rounds", "2", "--warmup", "1",
                            "--batches", "3", "--no_linear"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(made) == 2 and all(s.closed for s in made)
    assert made[0].field_dims == VOCAB and made[0].models == list(pytorch_fm.MODELS)
    assert made[0].mlp == (128, 128) and made[0].ids.shape == (3, 100, len(VOCAB))
    match = LAST_LINE.match(out[-1])
    assert match, out[-1]
    table = [line for line in out if re.match(r"^(fm|wide_deep|deepfm)\s", line)]
    labels = [line[:24].strip() for line in table]
    assert labels == ["fm", "fm +input", "wide_deep", "wide_deep +input", "deepfm",
                      "deepfm +input"]
    rows = {label: line for label, line in zip(labels, table) if " " not in label}
    for name, ratio in zip(("fm", "wide_deep", "deepfm"), match.groups()):
        cols = rows[name].split()
        ours, torch = float(cols[1].replace(",", "")), float(cols[2].replace(",", ""))
        assert torch == pytest.approx(100 / 0.25, rel=1e-3)  # the faster stand-in
        # a constant torch rate: the median ratio is the median ours rate over it
        assert float(ratio) == pytest.approx(ours / torch, rel=2e-3)
        assert rows[name].rstrip().endswith("default 2/2")
        assert float(cols[-3]) > 0  # cpu ratio
        assert float(cols[6]) >= float(cols[3]) - 0.01  # the fastest blocks' ratio
