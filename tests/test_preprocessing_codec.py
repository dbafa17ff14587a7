"""The job's fast paths against their references: hand-encoded tf.train.Example bytes vs
TensorFlow's serialization, TFRecord framing vs Beam's, SplitAssigner vs split_index, the
FieldEncoder fast path vs the token rules of configs.features."""
import io
import random
import subprocess
import sys

import pytest

from configs.features import MISSING_TOKEN, categorical_token, dataset_spec, numeric_token
from preprocessing import example_codec
from preprocessing.formats import FieldEncoder, MalformedRecord, SplitAssigner, split_index

NAMES = ["I1", "I10", "C1", "C10", "C2", "a", "label2", "z\u00e9"]  # keys sharing prefixes


def _tf_example(names, ids, label):
    from tensorflow.core.example import example_pb2

    ex = example_pb2.Example()
    for name, i in zip(names, ids):
        ex.features.feature[name].int64_list.value.append(i)
    ex.features.feature["label"].float_list.value.append(label)
    return ex


@pytest.mark.parametrize("label", [0.0, 1.0, 0.5])
def test_example_bytes_equal_tensorflow_serialization(label):
    vocab = {name: [(f"t{j}", 1) for j in range(300)] for name in NAMES}
    if label == 0.5:  # ids needing 3-byte varints
        vocab["C1"] = [(f"t{j}", 1) for j in range(2 ** 14 + 5)]
    enc = example_codec.ExampleEncoder(NAMES, "label", vocab)
    rows = [("t0", "t126", "t127", "t299", "unknown", "t5", "t1", "t2"),  # ids 1, 127, 128, ...
            ("unknown",) * len(NAMES)]
    if label == 0.5:
        rows.append(("t0", "t0", f"t{2 ** 14 + 3}", "t0", "t0", "t0", "t0", "t0"))
    ids_of = {n: {t: i for i, (t, _) in enumerate(vocab[n], 1)} for n in NAMES}
    for tokens in rows:
        ids = [ids_of[n].get(tok, 0) for n, tok in zip(NAMES, tokens)]
        expected = _tf_example(NAMES, ids, label)
        got = enc.encode(tokens, label)
        assert got == expected.SerializeToString(deterministic=True)
        assert type(expected).FromString(got) == expected
    assert enc.encode_all([(rows[0], label)]) == [enc.encode(rows[0], label)]


def test_example_encoder_single_field_and_key_clash():
    enc = example_codec.ExampleEncoder(["x"], "label", {"x": ["a", "b"]})
    assert enc.encode(("b",), 1.0) == _tf_example(["x"], [2], 1.0).SerializeToString(
        deterministic=True)
    with pytest.raises(ValueError, match="distinct"):
        example_codec.ExampleEncoder(["label"], "label", {"label": []})


def test_varint():
    assert [example_codec.varint(n) for n in (0, 1, 127, 128, 300)] == [
        b"\x00", b"\x01", b"\x7f", b"\x80\x01", b"\xac\x02"]
    with pytest.raises(ValueError, match="negative"):
        example_codec.varint(-1)


def test_tfrecord_framing_equals_beam():
    from apache_beam.io.tfrecordio import _TFRecordUtil

    records = [b"", b"x", bytes(range(256)) * 3, b"x"]
    expected = io.BytesIO()
    for r in records:
        _TFRecordUtil.write_record(expected, r)
    framed = example_codec.TFRecordFramer().frame(records)
    assert framed == expected.getvalue()
    back = io.BytesIO(framed)
    assert [_TFRecordUtil.read_record(back) for _ in records] == records


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (1.0, 0.0, 0.0), (0.5, 0.0, 0.5),
                                       (0.3, 0.3, 0.4)])
def test_split_assigner_equals_split_index(fractions):
    for source, seed in (("part-000.txt", 7), ("d\u00e9j\u00e0.txt", 0)):
        assign = SplitAssigner(source, fractions, seed)
        got = [assign(i) for i in range(1, 5001)]
        assert got == [split_index(source, i, fractions, seed) for i in range(1, 5001)]
        assert assign.many(1, 5000).tolist() == got  # vectorized = per line
        far = 2 ** 40  # long line numbers
        assert assign.many(far, 50).tolist() == [split_index(source, i, fractions, seed)
                                                  for i in range(far, far + 50)]
        if 0.0 not in fractions:
            assert set(got) == {0, 1, 2}


def test_field_encoder_fast_path_equals_rules():
    spec = dataset_spec("criteo", {"fields": [{"name": "C2"}, {"name": "I1", "kind": "numeric"},
                                              {"name": "C1"}, {"name": "I2", "kind": "numeric"}]})
    columns = ("C1", "C2", "I1", "I2")
    enc = FieldEncoder(spec, columns)
    rng = random.Random(0)
    cats = ["a", "", " a", "b ", "a b", "x\ty", "\u00a0c", "d\u2003e", "f\r", "\u00e9", "0x1f"]
    nums = ["", "0", "3", " 7 ", "-1", "2.5", "100", "1e3"]
    for _ in range(2000):
        values = (rng.choice(cats), rng.choice(cats), rng.choice(nums), rng.choice(nums))
        expected = (categorical_token(values[1]), numeric_token(values[2]),
                    categorical_token(values[0]), numeric_token(values[3]))
        assert enc.tokens(values) == expected, values
    assert enc.tokens(("q", None, "", None)) == (MISSING_TOKEN,) * 2 + ("q", MISSING_TOKEN)
    with pytest.raises(MalformedRecord, match=r"field I1: non-numeric value 'zz'"):
        enc.tokens(("a", "b", "zz", "nan"))
    with pytest.raises(MalformedRecord, match=r"field I2: non-numeric value 'inf'"):
        enc.tokens(("a", "b", "1", "inf"))


def test_job_runs_without_tensorflow(tmp_path):
    """The Beam job (driver and in-process workers) never imports TensorFlow."""
    path = tmp_path / "in.txt"
    path.write_text("".join("\t".join([str(i % 2), str(i)] + [""] * 12 + [f"c{i % 3}"] * 26) + "\n"
                            for i in range(50)))
    code = ("import sys; from preprocessing import run; "
            f"run.run(['--dataset', 'criteo', '--input', {str(path)!r}, '--output', "
            f"{str(tmp_path / 'out')!r}, '--runner=DirectRunner', "
            "'--direct_running_mode=in_memory']); "
            "print('tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"
    assert (tmp_path / "out" / "schema.json").exists()


def test_int64_entries_equal_int64_entry_across_varint_lengths():
    """The encoder's fast table build gives int64_entry's bytes for ids of every varint length
    (1 to 6 bytes), long and non-ASCII keys included, with and without the shared table."""
    values = [0, 1, 127, 128, 129, 16383, 16384, 2 ** 21 - 1, 2 ** 21, 2 ** 28 - 1, 2 ** 28,
              2 ** 35, 2 ** 35 + 1] + list(range(1, 300))
    for key in ("C1", "user_id", "\u00e9t\u00e9", "k" * 200):
        want = [example_codec.int64_entry(key, v) for v in values]
        assert example_codec.int64_entries(key, values) == want
        example_codec._grow_varints(20000)
        assert example_codec.int64_entries(key, values) == want
    enc = example_codec.ExampleEncoder(["x"], "label", {"x": [f"t{i}" for i in range(20000)]})
    assert enc.encode(["t16383"], 1.0) == enc.encode_all([(["t16383"], 1.0)])[0]
    assert example_codec.int64_entry("x", 16384) in enc.encode(["t16383"], 1.0)
