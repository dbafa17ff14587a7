"""Test fixtures that build datasets in the exact layout the Beam job writes.

`write_dataset` writes schema.json + GZIP TFRecord shards straight from id arrays (fast, for
runtime tests); `planted_dataset` runs the real generator and the real Beam job (in-process
runner) on synthetic rows with planted structure.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from configs.features import SPLITS, DataSchema, FieldSchema


def write_dataset(data_dir: Path, ids: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                  vocab_sizes: list[int], names: list[str] | None = None, shards: int = 2,
                  dataset: str = "fixture") -> DataSchema:
    """ids[split]: int [rows, M]; labels[split]: float [rows]. Records keep array order in shard
    round-robin (with shards=1, file order is array order)."""
    import tensorflow as tf

    names = names or [f"f{i}" for i in range(len(vocab_sizes))]
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        out = data_dir / split
        out.mkdir(exist_ok=True)
        writers = [tf.io.TFRecordWriter(str(out / f"part-{i:05d}-of-{shards:05d}.tfrecord.gz"),
                                        options="GZIP") for i in range(shards)]
        for r, (row, y) in enumerate(zip(ids[split], labels[split])):
            feat = {n: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
                    for n, v in zip(names, row)}
            feat["label"] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(y)]))
            writers[r % shards].write(tf.train.Example(
                features=tf.train.Features(feature=feat)).SerializeToString())
        for w in writers:
            w.close()
    schema = DataSchema(
        dataset=dataset,
        fields=tuple(FieldSchema(n, "categorical", int(v), 1) for n, v in zip(names, vocab_sizes)),
        splits={s: int(len(labels[s])) for s in SPLITS},
        label_rate=float(np.mean(labels["train"])), config={"fixture": True},
        config_hash="fixture")
    schema.save(data_dir)
    (data_dir / "vocab").mkdir(exist_ok=True)
    for n, v in zip(names, vocab_sizes):
        (data_dir / "vocab" / f"{n}.txt").write_text(
            "".join(f"t{i}\t{v - i}\n" for i in range(1, v)), encoding="utf-8")
    return schema


def random_dataset_dir(tmp_path_factory, name: str, rows: int, vocab_sizes: list[int],
                       seed: int) -> Path:
    """A preprocessed dataset of `random_split_data` rows in a fresh temp directory."""
    d = tmp_path_factory.mktemp(name)
    ids, labels = random_split_data(rows, vocab_sizes, seed=seed)
    write_dataset(d, ids, labels, vocab_sizes)
    return d


def random_split_data(rows: int, vocab_sizes: list[int], seed: int = 0, signal_fields=(0, 1)):
    """Random ids; labels depend on the first `signal_fields` through a random table."""
    rng = np.random.default_rng(seed)
    ids, labels = {}, {}
    tables = [rng.normal(0, 1.5, v) for v in vocab_sizes]
    for split, n in zip(SPLITS, (rows, rows // 8, rows // 8)):
        x = np.stack([rng.integers(0, v, n) for v in vocab_sizes], axis=1)
        logit = sum(tables[f][x[:, f]] for f in signal_fields) - 1.0
        ids[split] = x
        labels[split] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return ids, labels


def planted_dataset(workdir: Path, rows: int, seed: int = 1) -> tuple[Path, dict]:
    """Synthetic rows with planted structure -> the real Beam job (in-process) -> data dir."""
    from preprocessing import run as preprocess
    from preprocessing import synthetic

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    raw = workdir / "synthetic.tsv"
    truth = synthetic.generate(str(raw), rows, seed)
    data_dir = workdir / "data"
    preprocess.run(["--dataset", "criteo", "--input", str(raw), "--data_dir", str(data_dir),
                    "--runner", "DirectRunner", "--direct_running_mode", "in_memory"])
    return data_dir, truth


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def read_json(path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


REPO = Path(__file__).resolve().parents[1]


def run_module(module: str, args: list[str]):
    """`python -m module args` from the repository root, output captured."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def sigkill_after_checkpoint(module: str, args: list[str], ckpt_dir: Path, step: int,
                             timeout: float = 300) -> None:
    """Starts `python -m module args` and SIGKILLs it once a checkpoint >= `step` is on disk."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if any(int(p.stem.split("-")[1]) >= step for p in Path(ckpt_dir).glob("ckpt-*.index")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
