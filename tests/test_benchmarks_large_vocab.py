"""benchmarks/large_vocab.py at tiny sizes: its dataset is the preprocessing job's format, and the
benchmark's table and last line carry figures that grow with the vocabulary. Also the export's
vocabulary reads that the benchmark made O(1) in memory (pipeline.export.count_vocab_tokens,
first_vocab_tokens)."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from benchmarks import large_vocab

LAST_LINE = re.compile(r"^step_5k_over_50=(\S+) latency_b2000_5k_over_50=(\S+) "
                       r"savedmodel_mb_5k=(\S+)$")


def test_label_names_sizes():
    assert [large_vocab.label(v) for v in (50, 2500, 10_000, 1_000_000, 10_000_000)] == \
        ["50", "2500", "10k", "1m", "10m"]


def test_dataset_is_the_preprocessing_jobs_format(tmp_path):
    from configs.features import MISSING_TOKEN, DataSchema, field_token
    from pipeline.input import make_dataset
    from preprocessing import output
    from preprocessing.vocabulary import order_vocabulary

    data_dir = tmp_path / "data"
    built = large_vocab.build_dataset(data_dir, 300, 2, train_rows=256, batch=64, eval_rows=120)
    schema = DataSchema.load(data_dir)
    assert schema == built["schema"]
    assert schema.field_names == ("num1", "num2", "cat1", "cat2", "cat3", "big1", "big2")
    assert [f.kind for f in schema.fields][:3] == ["numeric", "numeric", "categorical"]
    assert schema.vocab_sizes["big1"] == schema.vocab_sizes["big2"] == 301
    assert schema.splits == {"train": 256, "valid": 120, "test": 120}
    # only the entries the job writes, with its marker: --overwrite would accept it as the job's
    output.check_replaceable(str(data_dir))
    for f in schema.fields:
        lines = (data_dir / f.vocab_file).read_text(encoding="utf-8").splitlines()
        pairs = [(t, int(c)) for t, c in (line.split("\t") for line in lines)]
        assert len(pairs) == f.vocab_size - 1
        assert pairs == order_vocabulary(pairs)  # the job's id order, ties included
    assert schema.read_vocab(data_dir, "cat1")[0] == MISSING_TOKEN
    # the records, read by the training input pipeline, are the returned ids
    ids = np.concatenate([x.numpy() for x, _ in make_dataset(
        str(data_dir), schema, "test", 50, shuffle=False, repeat=False)])
    np.testing.assert_array_equal(ids, built["test_ids"])
    assert (ids[:, -2:] == 0).any() and ids[:, -2:].max() <= 300  # OOV ids, none beyond V
    # the raw test rows give those ids under the preprocessing token rules
    vocab = {f.name: {t: i + 1 for i, t in enumerate(schema.read_vocab(data_dir, f.name))}
             for f in schema.fields}
    got = [[vocab[f.name].get(field_token(f.kind, raw), 0) for f, raw in zip(schema.fields, row)]
           for row in built["test_raw"]]
    np.testing.assert_array_equal(np.array(got), built["test_ids"])
    assert 1 <= built["unique_per_batch"] <= 64


def test_export_vocabulary_reads_match_read_vocab(tmp_path):
    from configs.features import DataSchema
    from pipeline.export import count_vocab_tokens, first_vocab_tokens

    (tmp_path / "vocab").mkdir()
    schema = DataSchema("x", (), {}, 0.0, {}, "x")
    for text in ("", "a\t3\n", "a\t3\nb\t2", "a\t3\n\n", "a b\t5\nc\t1\nd\t1\n", "x\n" * 2500):
        (tmp_path / "vocab" / "f.txt").write_text(text, encoding="utf-8")
        tokens = schema.read_vocab(tmp_path, "f")
        assert count_vocab_tokens(tmp_path / "vocab" / "f.txt") == len(tokens), text[:20]
        for n in (1, 2, 8):
            assert first_vocab_tokens(tmp_path / "vocab" / "f.txt", n) == tokens[:n]


def test_benchmark_runs_and_figures_grow_with_the_vocabulary(tmp_path, capsys):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "mine.txt").write_text("not the benchmark's")
    code = large_vocab.main(["--vocab", "5000,50", "--fields", "1", "--steps", "6",
                             "--batch", "64", "--checkpoints", "2", "--repeat", "1",
                             "--calls_b1", "3", "--calls_b2000", "2", "--workdir", str(workdir)])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    header = next(i for i, line in enumerate(out) if line.split()[:2] == ["V", "ms/step"])
    columns = out[header].split()
    rows = [dict(zip(columns, line.split(), strict=True)) for line in out[header + 1:header + 3]]
    assert [int(r["V"]) for r in rows] == [50, 5000]  # sorted
    small, large = ({k: float(v) for k, v in r.items()} for r in rows)
    for r in (small, large):
        assert all(math.isfinite(v) and v >= 0 for v in r.values())
        assert r["ms/step"] > 0 and r["ckpt_s"] > 0 and r["export_s"] > 0 and r["load_s"] > 0
        assert 0 < r["b1_med_ms"] <= r["b1_p99_ms"]
        assert 0 < r["b2000_med_ms"] <= r["b2000_p99_ms"]
    # 4,950 more rows of 17 floats (the dim-16 table and the first-order one) in the large model:
    # its checkpoint holds them with LazyAdam's two slots, its SavedModel once
    assert large["ckpt_MB"] - small["ckpt_MB"] >= 3 * 4950 * 17 * 4 / 1e6 - 0.1
    assert large["savedmodel_MB"] - small["savedmodel_MB"] == pytest.approx(
        4950 * 17 * 4 / 1e6 + large["assets_MB"] - small["assets_MB"], abs=0.15)
    assert large["assets_MB"] > small["assets_MB"]
    match = LAST_LINE.match(out[-1])
    assert match, out[-1]
    step, latency, size = (float(g) for g in match.groups())
    assert step == pytest.approx(large["ms/step"] / small["ms/step"], rel=0.02, abs=0.002)
    assert latency == pytest.approx(large["b2000_med_ms"] / small["b2000_med_ms"], rel=0.02,
                                    abs=0.01)
    assert size == large["savedmodel_MB"]
    # its own temporary directory is gone; what was there before is untouched
    assert sorted(p.name for p in workdir.iterdir()) == ["mine.txt"]


def test_refuses_a_single_vocabulary(capsys):
    assert large_vocab.main(["--vocab", "1000"]) == 2
    assert "--vocab needs at least two sizes" in capsys.readouterr().err
