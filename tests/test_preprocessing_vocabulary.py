"""The vocabulary pass: partial counts that leave a bundle early, sums per token shard, the min
count applied per shard before a field's survivors meet, and the per-field `max_vocab_size` cap
(top-k by count, ties by the token's UTF-8 bytes), from the DoFns up to whole runs."""
import collections
import dataclasses
import glob
import json
import os
import random

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from configs.features import MISSING_TOKEN, DataSchema, FieldSchema
from configs.loader import ConfigError
from configs.preprocess import PreprocessConfig, load_preprocess_config, resolve
from preprocessing import run as run_mod
from preprocessing import vocabulary
from preprocessing.columnar import RecordChunk

INMEM = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]


def _reference(counts: dict, min_count: int, cap):
    """What the vocabulary must be: the survivors ordered, then the first `cap`."""
    ordered = sorted(((t, n) for t, n in counts.items() if n >= min_count),
                     key=lambda tc: (-tc[1], tc[0].encode("utf-8")))
    return ordered if cap is None else ordered[:cap]


# ----------------------------------------------------------------------------- pure functions

def test_top_tokens_is_the_head_of_the_vocabulary_order():
    # ties at the cut: "b" < "c" < "é" (UTF-8 bytes); a count beats any token
    counts = [("c", 3), ("é", 3), ("a", 1), ("b", 3), ("zz", 7), ("Z", 1)]
    assert vocabulary.order_vocabulary(counts) == [("zz", 7), ("b", 3), ("c", 3), ("é", 3),
                                                   ("Z", 1), ("a", 1)]
    for k in range(1, 8):
        assert vocabulary.top_tokens(counts, k) == vocabulary.order_vocabulary(counts)[:k]
    assert vocabulary.top_tokens(counts, None) == vocabulary.order_vocabulary(counts)
    rng = random.Random(3)
    many = [(f"t{rng.randrange(10**6)}", rng.randrange(1, 6)) for _ in range(3000)]
    many = list(dict(many).items())
    assert vocabulary.top_tokens(many, 100) == vocabulary.order_vocabulary(many)[:100]


def test_count_fn_evicts_the_long_tail_early_and_loses_nothing():
    """With room for 300 entries, a stream of mostly-unique tokens leaves the bundle in partial
    counts (before finish_bundle), frequent tokens stay to be summed; the partials add up to the
    exact counts, each under its token's shard."""
    rng = random.Random(0)
    hot = [f"h{i}" for i in range(20)]
    rows = [((rng.choice(hot) if i % 2 else f"u{i}", "" if i % 5 == 0 else f"x{i % 3}"), 0.0)
            for i in range(20_000)]
    fn = vocabulary._CountTokensFn(2, max_entries=300, shards=8)
    fn.start_bundle()
    early = []
    for start in range(0, len(rows), 1000):  # RecordChunks of 1000 rows, as the job's
        early += fn.process(RecordChunk.from_records(rows[start:start + 1000]))
        assert sum(map(len, fn._counts)) < 300  # checked after every chunk
    late = [wv.value for wv in fn.finish_bundle()]
    assert early and late
    totals = [collections.Counter(), collections.Counter()]
    for (field, shard), part in early + late:
        assert all(vocabulary.token_shard(t, 8) == shard for t in part)
        totals[field].update(part)
    expected = [collections.Counter(r[0][f] for r in rows) for f in (0, 1)]
    expected[1][MISSING_TOKEN] = expected[1].pop("")  # RecordChunk's "" is __missing__
    assert totals == expected
    # the frequent tokens stayed in the bundle, summed there, until its end
    assert not any(t.startswith("h") or t.startswith("x") for _, part in early for t in part)


def test_field_vocabulary_fn_holds_at_most_twice_the_cap():
    fn = vocabulary._FieldVocabularyFn()
    rng = random.Random(1)
    acc, everything = fn.create_accumulator(), []
    for shard in range(30):
        part = [(f"s{shard}t{i}", rng.randrange(1, 50)) for i in range(40)]
        everything += part
        acc = fn.add_input(acc, (10, len(part), vocabulary.top_tokens(part, 10)))
        assert len(acc[2]) <= 20
    other = fn.add_input(fn.create_accumulator(), (10, 5, [("zz", 1000), ("zy", 1000)]))
    merged = fn.merge_accumulators([fn.create_accumulator(), acc, other])
    vocab, cut = fn.extract_output(merged)
    everything += [("zz", 1000), ("zy", 1000)]
    assert vocab == vocabulary.order_vocabulary(everything)[:10]
    assert cut == 30 * 40 + 5 - 10


# ----------------------------------------------------------------------------- the transform

def _counted_records(spec_counts: list[dict], seed: int = 0):
    """Records (one token per field) realising exact per-field token counts, shuffled."""
    columns = []
    for counts in spec_counts:
        column = [t for t, n in counts.items() for _ in range(n)]
        columns.append(column)
    rows = max(map(len, columns))
    rng = random.Random(seed)
    for column in columns:
        column += ["pad"] * (rows - len(column))  # "pad" is counted too
        rng.shuffle(column)
    return [(tuple(tokens), 0.0) for tokens in zip(*columns)]


def test_compute_vocabularies_min_count_then_cap_and_cut_counts():
    """Per field: min count first, then the top `cap` of the survivors; tokens below the min
    count are not "cut". Ties at the cap boundary are broken by the token's bytes."""
    rng = random.Random(5)
    big = {f"v{i:05d}": rng.choice([1, 1, 1, 2, 3, 4, 6]) for i in range(3000)}
    small = {"x": 5, "y": 4, "z": 4, "w": 2, "é": 4}
    fields = [big, small, dict(small), dict(small)]
    mins, caps = [3, 3, 1, 3], [50, 2, None, 10]
    records = _counted_records(fields)
    per_field = [collections.Counter(r[0][f] for r in records) for f in range(len(fields))]
    expected = {f"f{i}": _reference(per_field[i], mins[i], caps[i]) for i in range(len(fields))}
    # f1: survivors pad, x5, y4, z4, é4 (w is under the min count), cap 2 -> pad, x
    assert expected["f1"] == [("pad", len(records) - 19), ("x", 5)]
    cut = {f"vocab_cut/f{i}": sum(1 for n in per_field[i].values() if n >= mins[i])
           - len(expected[f"f{i}"]) for i in range(len(fields)) if caps[i] is not None}
    assert cut["vocab_cut/f0"] > 0 and cut["vocab_cut/f1"] == 3 and cut["vocab_cut/f3"] == 0

    p = test_pipeline.TestPipeline(argv=INMEM)
    chunks = [RecordChunk.from_records(records[i:i + 700]) for i in range(0, len(records), 700)]
    vocabs, cuts = (p | beam.Create(chunks) | vocabulary.ComputeVocabularies(
        [f"f{i}" for i in range(len(fields))], mins, caps, report_counts=True))
    assert_that(vocabs, equal_to([expected]), label="vocab")
    assert_that(cuts, equal_to(list(cut.items())), label="cut")
    # one by one records give the same, and no cap is the min-count vocabulary
    uncapped = (p | "Records" >> beam.Create(records)
                | "Uncapped" >> vocabulary.ComputeVocabularies(
                    [f"f{i}" for i in range(len(fields))], mins))
    assert_that(uncapped, equal_to([{f"f{i}": _reference(per_field[i], mins[i], None)
                                     for i in range(len(fields))}]), label="uncapped")
    p.run().wait_until_finish()


def test_compute_vocabularies_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="one min count and one max size per field"):
        vocabulary.ComputeVocabularies(["a", "b"], [1, 1], [5])


# ----------------------------------------------------------------------------- config

def _cfg(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_preprocess_config(str(path))


@pytest.mark.parametrize("text, message", [
    ("dataset: {default_max_vocab_size: 0}\n",
     r"dataset criteo: default_max_vocab_size must be >= 1 \(or null: no cap\), got 0"),
    ("dataset: {default_max_vocab_size: -5}\n", r"default_max_vocab_size must be >= 1.*got -5"),
    ("dataset: {default_max_vocab_size: 2.5}\n",
     r"dataset\.default_max_vocab_size: .*expected an integer"),
    ("dataset: {default_max_vocab_size: true}\n", r"dataset\.default_max_vocab_size"),
    ("dataset: {default_max_vocab_size: many}\n", r"dataset\.default_max_vocab_size"),
    ("dataset: {fields: [{name: C3, max_vocab_size: 0}]}\n",
     r"field C3: max_vocab_size must be >= 1 \(or null: no cap\), got 0"),
    ("dataset: {fields: [{name: C3, max_vocab_size: -1}]}\n", r"field C3: max_vocab_size .*-1"),
    ("dataset: {fields: [{name: C3, max_vocab_size: .inf}]}\n",
     r"dataset\.fields\[0\]\.max_vocab_size"),
    ("dataset: {fields: [{name: C3, max_vocab_size: 1.5}]}\n",
     r"dataset\.fields\[0\]\.max_vocab_size"),
    ("dataset: {max_vocab_size: 10}\n", r"unknown config key\(s\) dataset\.max_vocab_size"),
])
def test_bad_max_vocab_size_refused_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        resolve("criteo", _cfg(tmp_path, text))


def test_max_vocab_size_default_and_per_field_override(tmp_path):
    cfg = _cfg(tmp_path, "dataset:\n  default_max_vocab_size: 100\n  fields:\n"
                         "    - {name: a, max_vocab_size: 5000}\n    - {name: b}\n"
                         "    - {name: c, kind: numeric, max_vocab_size: null}\n"
                         "  columns: [y, a, b, c]\n  label_column: y\n")
    spec, resolved, chash = resolve("csv", cfg)
    assert [spec.max_vocab_size(f) for f in spec.fields] == [5000, 100, 100]
    assert resolved["dataset"]["default_max_vocab_size"] == 100
    assert [f.get("max_vocab_size") for f in resolved["dataset"]["fields"]] == [5000, None, None]
    assert "max_vocab_size" not in resolved["dataset"]["fields"][1]
    uncapped = resolve("csv", _cfg(tmp_path, "dataset:\n  fields: [{name: a}, {name: b}, "
                                              "{name: c, kind: numeric}]\n"
                                              "  columns: [y, a, b, c]\n  label_column: y\n"))
    assert uncapped[2] != chash


def test_no_cap_keeps_the_config_and_schema_hashes():
    """Hashes from before max_vocab_size existed: data preprocessed again without a cap keeps
    its schema_hash, so dims.json and model_dirs of the earlier run still match."""
    assert resolve("criteo", PreprocessConfig())[2] == "c947c3fb7a816330"
    assert resolve("avazu", PreprocessConfig())[2] == "5e8c98289d39a290"
    resolved = resolve("criteo", PreprocessConfig())[1]
    assert "default_max_vocab_size" not in resolved["dataset"]
    assert all("max_vocab_size" not in f for f in resolved["dataset"]["fields"])
    schema = DataSchema(dataset="criteo", fields=(FieldSchema("I1", "numeric", 40, 10),
                                              FieldSchema("C1", "categorical", 1000, 10)),
                    splits={"train": 8, "valid": 1, "test": 1}, label_rate=0.25,
                    config={"a": 1}, config_hash="0123456789abcdef")
    assert schema.schema_hash == "55e2753dbd6ecf9a"
    capped = dataclasses.replace(schema, fields=(
        FieldSchema("I1", "numeric", 40, 10), FieldSchema("C1", "categorical", 1000, 10, 999)))
    assert capped.schema_hash != schema.schema_hash


# ----------------------------------------------------------------------------- whole runs

def _records(directory):
    import tensorflow as tf
    from tensorflow.core.example import example_pb2

    out = []
    for path in sorted(glob.glob(os.path.join(directory, "part-*.tfrecord.gz"))):
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            f = example_pb2.Example.FromString(raw).features.feature
            out.append({k: v.int64_list.value[0] for k, v in f.items() if k != "label"})
    return out


def test_job_caps_a_field_records_the_cap_and_maps_the_rest_to_oov(tmp_path):
    """csv rows, all training: field a capped at 3 (per field), b by the default 2 after a min
    count of 2, c (its own larger cap) not cut. Records of cut tokens get id 0."""
    rng = random.Random(2)
    a_counts = {"p": 9, "q": 7, "r": 7, "s": 7, "t": 2, "u": 1}  # r, s tie with q at the cap
    b_counts = {"k1": 5, "k2": 5, "k3": 1, "k4": 1}
    a = [t for t, n in a_counts.items() for _ in range(n)]
    b = [t for t, n in b_counts.items() for _ in range(n)]
    b += ["k5"] * (len(a) - len(b))
    rng.shuffle(a)
    rng.shuffle(b)
    rows = [f"{i % 2}|{x}|{y}|c{i % 4}\n" for i, (x, y) in enumerate(zip(a, b))]
    (tmp_path / "d.txt").write_text("".join(rows))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("split: {train: 1.0, valid: 0.0, test: 0.0}\n"
                   "dataset:\n  default_max_vocab_size: 2\n  fields:\n"
                   "    - {name: a, max_vocab_size: 3}\n    - {name: b, min_count: 2}\n"
                   "    - {name: c, max_vocab_size: 10}\n"
                   "  columns: [y, a, b, c]\n  label_column: y\n  delimiter: '|'\n")
    out = tmp_path / "out"
    res = run_mod.run(["--dataset", "csv", "--input", str(tmp_path / "d.txt"), "--data_dir",
                       str(out), "--preprocess_config", str(cfg), *INMEM])
    schema = DataSchema.load(out)
    assert schema.read_vocab(out, "a") == ["p", "q", "r"]
    # b: k5 (21), k1, k2 (5) survive the min count of 2, the cap keeps 2
    assert schema.read_vocab(out, "b") == ["k5", "k1"]
    assert schema.read_vocab(out, "c") == ["c0", "c1", "c2", "c3"]
    assert (out / "vocab" / "a.txt").read_text() == "p\t9\nq\t7\nr\t7\n"
    assert schema.vocab_sizes == {"a": 4, "b": 3, "c": 5}
    assert [(f.name, f.min_count, f.max_vocab_size) for f in schema.fields] == [
        ("a", 1, 3), ("b", 2, 2), ("c", 1, 10)]
    assert schema.config["dataset"]["default_max_vocab_size"] == 2
    stats = json.loads((out / "stats.json").read_text())
    assert stats["vocab_caps"] == {"a": {"max_vocab_size": 3, "tokens_cut": 3},
                                   "b": {"max_vocab_size": 2, "tokens_cut": 1},
                                   "c": {"max_vocab_size": 10, "tokens_cut": 0}}
    assert res.stats["vocab_caps"] == stats["vocab_caps"]
    assert "vocab caps: a=3 (3 cut)" in run_mod.summary(res)
    ids_a = {"p": 1, "q": 2, "r": 3}
    ids_b = {"k5": 1, "k1": 2}
    got = sorted((r["a"], r["b"]) for r in _records(out / "train"))
    assert got == sorted((ids_a.get(x, 0), ids_b.get(y, 0)) for x, y in zip(a, b))
    assert sum(1 for r in got if r[0] == 0) == 7 + 2 + 1  # s, t, u


def test_job_without_a_cap_records_no_caps(tmp_path):
    (tmp_path / "d.txt").write_text("".join(f"{i % 2}|t{i % 3}\n" for i in range(12)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset:\n  fields: [{name: a}]\n  columns: [y, a]\n  label_column: y\n"
                   "  delimiter: '|'\n")
    out = tmp_path / "out"
    res = run_mod.run(["--dataset", "csv", "--input", str(tmp_path / "d.txt"), "--data_dir",
                       str(out), "--preprocess_config", str(cfg), *INMEM])
    assert res.stats["vocab_caps"] == {}
    assert DataSchema.load(out).fields[0].max_vocab_size is None
    assert "vocab caps" not in run_mod.summary(res)
