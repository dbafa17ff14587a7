"""The search's memory model (pipeline/memory.py): its arithmetic on hand-computed cases, against
the variables a real supernet and its optimizers allocate, --memory_limit parsing, --dry_run and
the refusal of a search that does not fit."""
import re
import subprocess
import types

import pytest

from configs import experiment
from configs.cli import UsageError
from pipeline import memory
from pipeline.memory import DenseShape, MemoryLimitError, MemoryReport, model_estimate
from tests.fixtures import random_dataset_dir, run_module

VOCAB = [10, 20, 5]  # 35 rows
DENSE = DenseShape(trainable=100, non_trainable=10, arch=6, first_order=True)


# ------------------------------------------------------------------ arithmetic, by hand
def test_widths_per_lookup():
    assert memory.table_widths(3, (2, 8), "weight_sharing") == [8, 8, 8]
    assert memory.table_widths(3, (2, 8), "separate") == [10, 10, 10]
    assert memory.table_widths(26, (2, 8, 16, 24, 32), "separate") == [82] * 26
    with pytest.raises(ValueError):
        memory.table_widths(3, (2, 8), "shared")


def test_weight_sharing_with_lazy_adam_slots():
    est = model_estimate("ws", VOCAB, memory.table_widths(3, (2, 8), "weight_sharing"), DENSE,
                         "lazy_adam")
    # tables 35 x 8 x 4 = 1120; first order 35 x 4 = 140; slots 2 x (1120 + 140) = 2520;
    # alpha 6 x (1 + 2) x 4 = 72; backbone 100 x 3 x 4 = 1200; BN statistics 10 x 4 = 40
    assert list(est.parts.values()) == [1120, 140, 2520, 72, 1200, 40]
    assert est.total == 5092
    assert est.required == 6365  # ceil(5092 x 1.25)
    assert est.rows == 35 and est.width == "8"


def test_separate_with_lazy_adam_slots():
    est = model_estimate("sep", VOCAB, memory.table_widths(3, (2, 8), "separate"), DENSE,
                         "lazy_adam")
    # tables 35 x 10 x 4 = 1400; first order 140; slots 2 x 1540 = 3080; 72 + 1200 + 40
    assert est.total == 1400 + 140 + 3080 + 72 + 1200 + 40 == 5932
    assert est.required == 7415


def test_without_optimizer_slots_and_other_optimizers():
    ws = memory.table_widths(3, (2, 8), "weight_sharing")
    bare = model_estimate("weights only", VOCAB, ws, DENSE, None)
    # tables 1120 + first order 140 + alpha 24 + backbone 400 + statistics 40
    assert bare.total == 1120 + 140 + 24 + 400 + 40 == 1724
    sgd = model_estimate("sgd", VOCAB, ws, DENSE, "sgd")
    assert sgd.total == 1120 + 140 + 0 + 72 + 1200 + 40
    adagrad = model_estimate("adagrad", VOCAB, ws, DENSE, "adagrad")
    assert adagrad.total == 1120 + 140 + 1260 + 72 + 1200 + 40
    adam = model_estimate("adam", VOCAB, ws, DENSE, "adam")  # + 3 dense table-sized temporaries
    assert adam.total == 5092 + 3 * 1260
    no_first = model_estimate("fm-less", VOCAB, ws, DenseShape(100, 10, 6, first_order=False),
                              "lazy_adam")
    assert no_first.total == 1120 + 2 * 1120 + 72 + 1200 + 40
    with pytest.raises(ValueError, match="unknown embedding optimizer"):
        model_estimate("x", VOCAB, ws, DENSE, "rmsprop")


def test_the_retrained_model_counts_one_restore_copy_of_its_largest_table():
    dense = DenseShape(trainable=100, non_trainable=10, arch=0, first_order=True)
    est = model_estimate("retrained", VOCAB, [8, 8, 4], dense, "lazy_adam", restore_copy=True)
    # tables: widths 8 and 4 are two variables, (10 + 20) x 8 x 4 = 960 and 5 x 4 x 4 = 80;
    # first order 35 x 4 = 140; the restore copy: the largest variable, 960; slots
    # 2 x (1040 + 140) = 2360; backbone 100 x 3 x 4 = 1200; BN statistics 10 x 4 = 40
    assert est.parts[memory.RESTORE_COPY] == 960
    assert list(est.parts.values()) == [1040, 140, 960, 2360, 1200, 40]
    assert est.total == 5740 and est.required == 7175  # ceil(5740 x 1.25)
    # the first-order table ([sum V, 1], one variable) when it is the largest: 101 x 4 = 404
    # against 1 x 2 x 4 = 8 and 100 x 1 x 4 = 400
    assert model_estimate("r", [1, 100], [2, 1], dense, None,
                          restore_copy=True).parts[memory.RESTORE_COPY] == 404
    assert memory.RESTORE_COPY not in model_estimate("s", VOCAB, [8, 8, 4], dense, None).parts


def test_activations_term():
    est = model_estimate("act", [4, 4], [8, 8], DenseShape(0, 0, 0, False), None, batch_size=10,
                         activation_width=memory.search_activation_width(2, (2, 8),
                                                                         "weight_sharing", (16,)))
    # floats per example: 2 fields x (8 + 2 x 8) + 2 x 16 = 80; 3 copies x 10 x 80 x 4 bytes
    assert est.parts["activations (batch 10)"] == 3 * 10 * 80 * 4


@pytest.mark.parametrize("lookup", ["weight_sharing", "separate"])
def test_matches_the_variables_a_real_supernet_allocates(lookup):
    """The model's state (everything but activations) equals the bytes of the supernet's and its
    three optimizers' variables, as SearchTask builds them."""
    import keras
    import numpy as np
    import tensorflow as tf

    from models.factory import build_search_model
    from pipeline.runtime import backbone_kwargs
    from pipeline.trainer import Optimizers, make_embedding_optimizer

    cfg = experiment.resolve("criteo", set_overrides=[f"model.lookup={lookup}",
                                                      "model.candidate_norm=batchnorm_affine",
                                                      "model.unify=linear"])
    vocab = [1000, 37, 5, 260]
    m = cfg.model
    model = build_search_model(m.backbone, vocab, candidate_dims=m.candidate_dims, lookup=lookup,
                               unify=m.unify, candidate_norm=m.candidate_norm, seed=0,
                               **backbone_kwargs(m))
    model(tf.zeros([2, len(vocab)], tf.int32), training=False)
    opts = Optimizers(dense=keras.optimizers.Adam(), embedding=make_embedding_optimizer(
        "lazy_adam", 1e-3), arch=keras.optimizers.Adam())
    opts.build(model)

    def nbytes(variables):
        return sum(int(np.prod(v.shape)) * 4 for v in variables)

    optimizer_scalars = {id(o.iterations) for o in (opts.dense, opts.embedding, opts.arch)}
    real = nbytes(model.variables) + sum(
        nbytes([v for v in o.variables if id(v) not in optimizer_scalars])
        for o in (opts.dense, opts.embedding, opts.arch))
    dense = memory.measure_search_dense(cfg, len(vocab), lookup)
    est = model_estimate(lookup, vocab, memory.table_widths(len(vocab), m.candidate_dims, lookup),
                         dense, "lazy_adam")
    assert abs(est.total - real) <= 64, (est.parts, real)  # learning-rate scalars aside
    assert est.parts["embedding tables"] == sum(vocab) * (32 if lookup == "weight_sharing"
                                                          else 82) * 4


# ------------------------------------------------------------------ sizes and the check
@pytest.mark.parametrize("text, value", [
    ("16G", 16 << 30), ("40GB", 40 << 30), ("40GiB", 40 << 30), ("512M", 512 << 20),
    ("512m", 512 << 20), ("1.5K", 1536), ("1000000", 1_000_000), ("2T", 2 << 40),
    ("64 MB", 64 << 20),
])
def test_parse_bytes(text, value):
    assert memory.parse_bytes(text) == value


@pytest.mark.parametrize("text", ["abc", "16X", "", "G", "-1G", "0", "0G", "1e9", "16 G B"])
def test_parse_bytes_refuses_naming_the_flag(text):
    with pytest.raises(UsageError, match="--memory_limit"):
        memory.parse_bytes(text)


def _report(**kw):
    ws = model_estimate("ws", VOCAB, [8, 8, 8], DENSE, "lazy_adam")
    sep = model_estimate("sep", VOCAB, [10, 10, 10], DENSE, "lazy_adam")
    base = dict(search={"weight_sharing": ws, "separate": sep}, lookup="separate", retrain=[],
                vocab=(0, 0, 0), candidate_dims=(2, 8), vocab_sizes=tuple(VOCAB))
    return MemoryReport(**{**base, **kw})


def test_check_against_the_limit_and_the_device():
    _report(limit=7415).check()  # exactly the need fits
    with pytest.raises(MemoryLimitError) as err:
        _report(limit=7414).check()
    msg = str(err.value)
    assert "7,415 B" in msg and "--memory_limit 7,414 B" in msg
    assert "model.candidate_dims" in msg and "model.lookup=weight_sharing (needs 6,365 B" in msg
    assert "min_count" in msg and "more memory" in msg
    # 132 bytes per row, 1312 fixed: 7414 / 1.25 - 1312 leaves 34.99 rows; a cap of 18 tokens
    # keeps 10 + 19 + 5 = 34 rows
    assert "dataset.default_max_vocab_size 18 fits" in msg
    assert _report().vocab_cap(7415) >= 19 and _report().vocab_cap(2000) is None
    _report(available=7415).check()
    with pytest.raises(MemoryLimitError, match="CPU memory available"):
        _report(available=7000, available_source="/proc/meminfo MemAvailable").check()
    # a GPU keeps GPU_RUNTIME_RESERVE free
    with pytest.raises(MemoryLimitError, match="GPU memory"):
        _report(device="GPU", available=memory.GPU_RUNTIME_RESERVE + 7000).check()
    _report(device="GPU", available=memory.GPU_RUNTIME_RESERVE + 7415).check()
    # K logical CPUs hold K replicas in one host's memory
    assert _report(replicas=3).need == 3 * 7415
    with pytest.raises(MemoryLimitError):
        _report(replicas=3, limit=3 * 7415 - 1).check()
    _report(available=None).check()  # unknown device memory: not checked


def test_meminfo_and_nvidia_smi(tmp_path, monkeypatch):
    info = tmp_path / "meminfo"
    info.write_text("MemTotal: 100 kB\nMemFree: 10 kB\nMemAvailable:    2048 kB\n")
    assert memory.meminfo_available(str(info)) == 2048 * 1024
    assert memory.meminfo_available(str(tmp_path / "absent")) is None

    def fake_run(cmd, **kw):
        assert cmd[0] == "nvidia-smi"
        assert "memory.total" in cmd[1]  # not memory.free: TF reserves it once started
        return types.SimpleNamespace(
            stdout="0, GPU-aa, 15000\n1, GPU-bb, 3000\n2, GPU-cc, 40000\n")

    monkeypatch.setattr(memory.subprocess, "run", fake_run)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert memory.nvidia_smi_total() == 3000 << 20
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert memory.nvidia_smi_total() == 15000 << 20
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-cc")  # schedulers that set UUIDs
    assert memory.nvidia_smi_total() == 40000 << 20
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-unknown")  # unmatched: every GPU counts
    assert memory.nvidia_smi_total() == 3000 << 20

    def missing(cmd, **kw):
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(memory.subprocess, "run", missing)
    assert memory.nvidia_smi_total() is None
    assert issubclass(subprocess.CalledProcessError, subprocess.SubprocessError)


def test_vocab_tables_from_the_files(tmp_path_factory):
    from configs.features import DataSchema

    data = random_dataset_dir(tmp_path_factory, "vocab", 40, VOCAB, seed=0)
    schema = DataSchema.load(data)
    size = sum((data / "vocab" / f"f{i}.txt").stat().st_size for i in range(3))
    assert memory.vocab_files(schema, data) == (size, 32, 0)  # tokens: vocab_size - 1
    assert memory.vocab_table_bytes(size, 32) == 2 * size + 32 * memory.VOCAB_ENTRY_OVERHEAD
    (data / "vocab" / "f1.txt").unlink()
    assert memory.vocab_files(schema, data)[2] == 1


# ------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return random_dataset_dir(tmp_path_factory, "memory", 600, [50, 30, 200, 20], seed=3)


BASE = ["--preset", "default", "--quiet", "--set", "search.batch_size=100"]


def _needed(text):
    found = re.search(r"the search needs ([0-9,]+) B", text)
    assert found, text
    return int(found.group(1).replace(",", ""))


def test_dry_run_prints_the_model_and_creates_nothing(data, tmp_path):
    model_dir = tmp_path / "run"
    res = run_module("pipeline.search", ["--data_dir", str(data), "--model_dir", str(model_dir),
                                         "--dry_run", *BASE])
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    rows = 50 + 30 + 200 + 20
    assert "search supernet, lookup=weight_sharing" in out
    assert re.search(rf"embedding tables\s+{rows * 32 * 4:,} B", out)  # 300 x 32 floats
    assert re.search(rf"first-order table\s+{rows * 4:,} B", out)
    assert re.search(rf"embedding optimizer slots \(lazy_adam: 2\)\s+{2 * rows * 33 * 4:,} B",
                     out)
    assert "lookup=separate (not in use): 300 rows x 82 columns" in out
    assert "every field at 32 (largest candidate, upper bound)" in out
    assert re.search(rf"upper bound\): required .*, restore copy {rows * 32 * 4:,} B", out)
    assert "every field at 2 (FDE at the smallest candidate" in out
    assert "SavedModel vocabulary tables (serving): 296 tokens" in out
    assert "CPU memory available" in out and "the search fits" in out
    assert _needed(out) > rows * 32 * 4 * 3
    assert not model_dir.exists()


def test_search_below_its_need_is_refused(data, tmp_path):
    model_dir = tmp_path / "run"
    args = ["--data_dir", str(data), "--model_dir", str(model_dir), *BASE]
    dry = run_module("pipeline.search", [*args, "--dry_run", "--memory_limit", "1M"])
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "the search would be refused" in dry.stdout and not model_dir.exists()
    need = _needed(dry.stdout)
    res = run_module("pipeline.search", [*args, "--memory_limit", "1M"])
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr[-3000:]
    assert f"needs {need:,} B" in errors[0] and "--memory_limit 1,048,576 B (1.0 MiB)" in errors[0]
    assert "model.candidate_dims" in errors[0] and "search.batch_size" in errors[0]
    assert not model_dir.exists()


@pytest.mark.parametrize("value", ["lots", "16X", "0"])
def test_bad_memory_limit_is_a_usage_error(data, tmp_path, value):
    model_dir = tmp_path / "run"
    res = run_module("pipeline.search", ["--data_dir", str(data), "--model_dir", str(model_dir),
                                         "--memory_limit", value, *BASE])
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: --memory_limit: ")
    assert not model_dir.exists()


def test_search_within_its_limit_prints_the_model_and_runs(data, tmp_path):
    model_dir = tmp_path / "run"
    res = run_module("pipeline.search", [
        "--data_dir", str(data), "--model_dir", str(model_dir), "--memory_limit", "16GB", *BASE,
        "--set", "search.pretrain_steps=2", "--set", "search.search_steps=2"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "search supernet, lookup=weight_sharing" in res.stderr
    assert "--memory_limit: 17,179,869,184 B (16.0 GiB)" in res.stderr
    assert (model_dir / "dims.json").exists()
