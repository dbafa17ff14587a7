"""Shared fixtures of the export / predict / serving-client tests: a synthetic Criteo-format raw
file (plus hand-written edge rows) preprocessed by the real Beam job (in-process DirectRunner),
a briefly trained mixed-dim DeepFM saved as a retrain-style model_dir, and its export.
Everything is written under pytest's tmp_path_factory."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from configs.features import DataSchema

INMEM = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
ROWS = 1500
SEED = 3

# Hand-written edge rows (valid for the Beam job, so their ids can be compared with its output):
# numeric edge values in I1..I13, odd categorical values in C1..C26.
EDGE_NUMERIC = ["", "  ", " 7 ", "-3", "2", "2.5", "3", "1e30", "+4", "1_000", "-0", "0.0001",
                "-2.5", "12345678901234567890", "-1e30"]
EDGE_CATEGORICAL = ["", "   ", " padded ", "never-seen-token", "a b", "\u00a0nbsp\u00a0"]


def edge_rows() -> list[str]:
    rows = []
    for k in range(max(len(EDGE_NUMERIC), len(EDGE_CATEGORICAL))):
        ints = [EDGE_NUMERIC[(k + i) % len(EDGE_NUMERIC)] for i in range(13)]
        cats = [EDGE_CATEGORICAL[(k + i) % len(EDGE_CATEGORICAL)] for i in range(26)]
        rows.append("\t".join([str(k % 2)] + ints + cats))
    return rows


def write_raw(path: Path, rows: int = ROWS, seed: int = SEED, copies_of_edges: int = 20) -> Path:
    from preprocessing.synthetic import SyntheticGenerator, iter_blocks

    gen = SyntheticGenerator(seed)
    text = "".join(gen.to_tsv(b) for b in iter_blocks(rows, seed, gen))
    lines = text.splitlines()
    # Edge rows are repeated so some of their tokens reach min_count and get ids.
    lines += edge_rows() * copies_of_edges
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def preprocess(raw: Path, out: Path) -> Path:
    from preprocessing import run as run_mod

    run_mod.run(["--dataset", "criteo", "--input", str(raw), "--data_dir", str(out), *INMEM])
    return out


def mixed_dims(n: int) -> list[int]:
    """AutoDim-like dims: most fields small, a few wide."""
    pattern = [2, 4, 8, 2, 2, 4, 32, 2, 8, 24]
    return [pattern[i % len(pattern)] for i in range(n)]


def make_model_dir(data_dir: Path, model_dir: Path, dims=None, backbone="deepfm",
                   unify="linear", train_steps=30, seed=0) -> Path:
    """A retrain-style model_dir (model.keras + model_spec.json + metrics.json)."""
    import keras
    import tensorflow as tf

    from models.factory import build_retrain_model
    from pipeline import input as input_lib

    schema = DataSchema.load(data_dir)
    vocab_sizes = [f.vocab_size for f in schema.fields]
    dims = list(dims or mixed_dims(len(vocab_sizes)))
    output_dim = max(dims)
    keras.utils.set_random_seed(seed)
    model = build_retrain_model(backbone, vocab_sizes, dims, unify=unify, output_dim=output_dim,
                                hidden_units=(32, 16), dropout=0.0)
    model(tf.zeros([2, len(vocab_sizes)], tf.int32), training=False)
    if train_steps:
        model.compile(optimizer=keras.optimizers.Adam(0.01),
                      loss=keras.losses.BinaryCrossentropy(from_logits=True))
        ds = input_lib.make_dataset(str(data_dir), schema, "train", 64, shuffle=True,
                                    repeat=True, seed=seed)
        model.fit(ds, steps_per_epoch=train_steps, epochs=1, verbose=0)
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save(model_dir / "model.keras")
    spec = {"backbone": backbone, "vocab_sizes": vocab_sizes, "dims": dims, "unify": unify,
            "output_dim": output_dim, "mlp_units": [32, 16], "dropout": 0.0,
            "field_names": list(schema.field_names), "schema_hash": schema.schema_hash,
            "data_dir": str(Path(data_dir).resolve())}
    (model_dir / "model_spec.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
    (model_dir / "metrics.json").write_text(json.dumps({"dataset": schema.dataset}),
                                            encoding="utf-8")
    return model_dir


def read_ids(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All (ids [N, M], labels) the Beam job wrote for `split`."""
    from pipeline import input as input_lib

    schema = DataSchema.load(data_dir)
    ds = input_lib.make_dataset(str(data_dir), schema, split, 512, shuffle=False, repeat=False)
    ids, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(ids), np.concatenate(labels)


def test_split_rows(raw: Path) -> list[tuple[int, list[str], float]]:
    """(line_no, raw field values, label) of the raw lines the job put in the test split."""
    from configs.features import dataset_spec
    from preprocessing.formats import line_parser, split_index

    parser = line_parser(dataset_spec("criteo"))
    out = []
    with open(raw, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if split_index(raw.name, line_no, (0.8, 0.1, 0.1), 0) != 2:
                continue
            values, label = parser.split(line.rstrip("\n"), line_no)
            out.append((line_no, list(values[1:]), label))
    return out


test_split_rows.__test__ = False  # not a test


def build_served(root: Path):
    """(raw file, data_dir, model_dir, version dir) shared by the serving tests (conftest's
    session fixture `served` builds it once per test run)."""
    from pipeline.export import export

    raw = write_raw(root / "raw.txt")
    data = preprocess(raw, root / "data")
    model_dir = make_model_dir(data, root / "model")
    version = export(model_dir, root / "exports", log=lambda *_: None)
    return raw, data, model_dir, version


def field_names() -> list[str]:
    return [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
