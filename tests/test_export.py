"""pipeline.export and the TF token rules of pipeline.token_ops: graph/Python agreement, skew
against the Beam job's ids and the Keras model, portability (fresh process, saved_model_cli),
warm-up requests, versioning and errors."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from configs.features import MISSING_TOKEN, DataSchema, categorical_token, numeric_token
from pipeline import export as export_mod
from pipeline import serving_client, token_ops
from tests.serving_fixtures import (
    EDGE_CATEGORICAL,
    EDGE_NUMERIC,
    field_names,
    read_ids,
    test_split_rows,
)

VENV_BIN = Path(sys.executable).parent


def py_numeric(raw):
    try:
        return numeric_token(raw)
    except ValueError:
        return MISSING_TOKEN


def _boundary_values():
    values = []
    for k in range(1, 60):
        b = math.exp(math.sqrt(k))
        values += [b, math.nextafter(b, 0), math.nextafter(b, math.inf)]
    return [repr(v) for v in values]


NUMERIC_CASES = [
    "", " ", "\t3\n", "abc", "nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1e400", "0x10",
    "1_000", "1__0", "_1", "1_", "1._5", "1.", ".5", ".", "+", "-", "e5", "1e", "1e5", "1E-5",
    "2", "2.0", "2.5", "3", "-0", "-0.5", "-1", "-2", "-3.7", "1e30", "-1e30", "+.5e-3",
    "1.7976931348623157e308", "4.9e-324", "-9223372036854775808", "-9223372036854775807.5",
    "9" * 40, "12 34", "\u00a012\u3000", "1,5", "0.1e1_0",
] + [str(i) for i in range(-5, 3000)] + _boundary_values() + [
    repr(float(v)) for v in np.random.default_rng(0).lognormal(3.0, 4.0, 3000)]
CATEGORICAL_CASES = ["", " ", "a\tb", " x ", "\u00a0y\u2003", "\x1cz\x1f", "a\nb", "a\rb", "日本",
                     "\x85q", "68fd1e64", "\x0b", "tab\t\tx"]


def test_log_bucket_thresholds_are_exact():
    t = token_ops.log_bucket_thresholds(40)
    for k, v in enumerate(t, 1):
        assert token_ops._log_bucket(v) == k
        assert token_ops._log_bucket(math.nextafter(v, 0)) == k - 1
    assert token_ops.max_log_bucket(["L3", "L17", "2", MISSING_TOKEN, "Lx"]) == 17


def test_tf_numeric_token_equals_python_rule():
    thresholds = tf.constant(token_ops.log_bucket_thresholds(token_ops.MIN_EXACT_BUCKETS),
                             tf.float64)
    got = [t.decode() for t in
           token_ops.tf_numeric_token(tf.constant(NUMERIC_CASES), None, thresholds).numpy()]
    mismatches = [(raw, g, py_numeric(raw)) for raw, g in zip(NUMERIC_CASES, got, strict=True)
                  if g != py_numeric(raw) and not py_numeric(raw).startswith("-1000")]
    assert mismatches == []
    # Documented differences: below -2**63 without a table the token is unseen (-> OOV id 0).
    assert got[NUMERIC_CASES.index("-1e30")] == token_ops.UNSEEN_TOKEN
    assert got[NUMERIC_CASES.index("abc")] == MISSING_TOKEN
    assert got[NUMERIC_CASES.index("1_000")] == "L47"
    assert got[NUMERIC_CASES.index("2.5")] == "L0" and got[NUMERIC_CASES.index("3")] == "L1"
    assert got[NUMERIC_CASES.index("-0.5")] == "-1"


# Probes for the one number grammar (configs.features.NUMBER_RE): non-ASCII digits (which
# Python's float() accepts), underscores, hex and other bases, inf/nan spellings, whitespace
# (inner, outer, Unicode), signs and exponents, overflow and underflow.
NON_ASCII_NUMBER_PROBES = [
    "\u0663", "\uff13", "\u0967\u0968", "\U0001d7d1", "\u0663.\u0665", "1e\u0663", "\u06f3",
    "\u07c3", "\uff11\uff10\uff10", "-\u0663", "\u0661\u066b\u0665", "1\u0660", "\u00b2", "\u00bd",
    "\u216b", "\uff0d1", "\uff0b1", " \u0663 ", "\u00a0\uff13\u3000", "\u0e53", "\u1813",
]
NUMBER_PROBES = NON_ASCII_NUMBER_PROBES + [
    "1_000", "1__000", "_1", "1_", "1_.5", "1._5", "1.5_", "1e1_0", "1e_10", "1_e10", "0.1e1_0",
    "-1_0", "0x10", "0X1F", "0b1", "0o7", "0x1p3", "1j",
    "inf", "+inf", "-inf", "INF", "Infinity", "-Infinity", "infinity", "nan", "-nan", "NaN",
    "+nan", "snan",
    "1e999", "-1e999", "1e308", "1.8e308", "1e-999", "-1e-999", "4.9e-324", "2.4e-324",
    " 5 ", "\t5\n", "\u00a05\u3000", "\x1c5\x1f", "\u200b5", "\ufeff5", "5 5", "5\x00", "1 000",
    "+5", "-5", "++5", "+-5", "-+5", "+", "-", "1e+5", "1E-5", "1e", "e1", "E5", ".", "+.", ".e1",
    "1.e1", "-.5", "1.5e", "1.5e+", "0.5", "007", "-007.500", "1,000", "1.2.3", "2", "2.0",
    "2.0000000000000001", "3", "-0", "-0.0", "+0", "1" * 320, "0." + "0" * 400 + "1",
]


def test_number_probes_python_and_graph_agree():
    """Train/serve skew: the Python rule (preprocessing) and the graph rule (SavedModel) give the
    same token for every probe; a ValueError (dead letter) in Python is MISSING in the graph."""
    thresholds = tf.constant(token_ops.log_bucket_thresholds(token_ops.MIN_EXACT_BUCKETS),
                             tf.float64)
    got = [t.decode() for t in
           token_ops.tf_numeric_token(tf.constant(NUMBER_PROBES), None, thresholds).numpy()]
    assert [(p, g, py_numeric(p)) for p, g in zip(NUMBER_PROBES, got, strict=True)
            if g != py_numeric(p)] == []
    for probe in NON_ASCII_NUMBER_PROBES + ["inf", "nan", "0x10", "1e999", "1__000", "5 5"]:
        with pytest.raises(ValueError):
            numeric_token(probe)
    assert [numeric_token(p) for p in ("1_000", " 5 ", "1e-999", "+5", ".5", "1.")] == [
        "L47", "L2", "0", "L2", "0", "1"]


def test_tf_numeric_token_huge_negative_table():
    tokens = [numeric_token("-1e30"), numeric_token("-1e300"), "L3", "abc"]
    huge = token_ops.huge_negative_tokens(tokens)
    assert sorted(huge.values()) == sorted(tokens[:2])
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(list(huge), tf.int64), tf.constant(list(huge.values()))),
        token_ops.UNSEEN_TOKEN)
    raw = ["-1e30", "-1e300", "-1e200", "-5"]
    got = [t.decode() for t in token_ops.tf_numeric_token(tf.constant(raw), table).numpy()]
    assert got == [numeric_token("-1e30"), numeric_token("-1e300"), token_ops.UNSEEN_TOKEN, "-5"]


def test_tf_categorical_token_equals_python_rule():
    got = [t.decode() for t in
           token_ops.tf_categorical_token(tf.constant(CATEGORICAL_CASES)).numpy()]
    assert got == [categorical_token(c) for c in CATEGORICAL_CASES]


# ----------------------------------------------------------------------------- skew vs Beam

@pytest.fixture(scope="module")
def loaded(served):
    return tf.saved_model.load(str(served[3]))


def _columns(rows):
    names = field_names()
    return {n: tf.constant([r[i] for r in rows]) for i, n in enumerate(names)}


def _python_ids(data_dir, rows):
    schema = DataSchema.load(data_dir)
    vocab = {f.name: {t: i + 1 for i, t in enumerate(schema.read_vocab(data_dir, f.name))}
             for f in schema.fields}
    out = []
    for row in rows:
        ids = []
        for f, raw in zip(schema.fields, row, strict=True):
            token = py_numeric(raw) if f.kind == "numeric" else categorical_token(raw)
            ids.append(vocab[f.name].get(token, 0))
        out.append(ids)
    return np.array(out, np.int64)


def test_transform_ids_equal_beam_ids_on_test_split(served, loaded):
    raw, data, _, _ = served
    rows = test_split_rows(raw)
    values = [r[1] for r in rows]
    ids = loaded.signatures["transform"](**_columns(values))["ids"].numpy()
    beam_ids, _ = read_ids(data, "test")
    assert ids.shape == beam_ids.shape == (len(rows), 39)
    # Same multiset of id rows (the job's output order is not the input order) ...
    assert np.array_equal(np.unique(ids, axis=0, return_counts=True)[1],
                          np.unique(beam_ids, axis=0, return_counts=True)[1])
    assert np.array_equal(np.unique(ids, axis=0), np.unique(beam_ids, axis=0))
    # ... and row by row the Python token rules + vocabulary give the same ids.
    assert np.array_equal(ids, _python_ids(data, values))
    # The fixture's edge rows are in the test split; unseen values gave OOV ids.
    n_edge = sum(1 for _, v, _ in rows if "never-seen-token" in v or " padded " in v)
    assert n_edge > 0 and (ids == 0).any() and (ids > 0).any()


def test_savedmodel_probabilities_equal_keras_on_tfrecords(served, loaded):
    import keras

    import models.factory  # noqa: F401

    raw, data, model_dir, version = served
    # The fixture's model is a unified-input DeepFM: the export folded its projections into the
    # first MLP layer (models/folding.py), so this also checks the folding end to end.
    info = json.loads((version / "assets.extra" / "export.json").read_text())
    assert info["folded_mlp_input"] is True
    values = [r[1] for r in test_split_rows(raw)]
    out = loaded.signatures["serving_default"](**_columns(values))
    ids = loaded.signatures["transform"](**_columns(values))["ids"].numpy()
    beam_ids, _ = read_ids(data, "test")
    model = keras.saving.load_model(model_dir / "model.keras")
    keras_probs = model.predict_proba(tf.constant(beam_ids, tf.int32)).numpy()
    order_sm = np.lexsort(ids.T[::-1])
    order_beam = np.lexsort(beam_ids.T[::-1])
    np.testing.assert_array_equal(ids[order_sm], beam_ids[order_beam])
    np.testing.assert_allclose(out["probability"].numpy()[order_sm], keras_probs[order_beam],
                               atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["probability"].numpy(),
                               1 / (1 + np.exp(-out["logit"].numpy())), atol=1e-6)
    assert np.std(keras_probs) > 1e-3  # the model is trained: outputs differ between rows


def test_edge_values_through_savedmodel(served, loaded):
    _, data, _, _ = served
    edge = list(EDGE_NUMERIC) + ["abc", "nan", "inf", "1e400", "0x1"]
    n = len(edge)
    rows = [[edge[k]] * 13 + [EDGE_CATEGORICAL[k % len(EDGE_CATEGORICAL)]] * 26
            for k in range(n)]
    out = loaded.signatures["transform"](**_columns(rows))
    ids, tokens = out["ids"].numpy(), out["tokens"].numpy()
    assert np.array_equal(ids, _python_ids(data, rows))
    missing_id = ids[edge.index(""), 0]
    for bad in ("abc", "nan", "inf", "1e400", "0x1", "  "):
        assert tokens[edge.index(bad), 0].decode() == MISSING_TOKEN
        assert ids[edge.index(bad), 0] == missing_id
    assert tokens[edge.index("-1e30"), 0].decode() == numeric_token("-1e30")
    unseen = EDGE_CATEGORICAL.index("never-seen-token")
    assert tokens[unseen, 13].decode() == "never-seen-token"
    probs = loaded.signatures["serving_default"](**_columns(rows))["probability"].numpy()
    assert probs.shape == (n,) and np.all((probs > 0) & (probs < 1))


def test_tf_example_signature_matches_default(served, loaded):
    raw, _, _, _ = served
    values = [r[1] for r in test_split_rows(raw)][:20]
    names = field_names()
    serialized = []
    for row in values:
        feats = {n: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode()]))
                 for n, v in zip(names, row, strict=True) if v != ""}  # absent feature = missing
        serialized.append(tf.train.Example(
            features=tf.train.Features(feature=feats)).SerializeToString())
    got = loaded.signatures["serving_tf_example"](examples=tf.constant(serialized))
    want = loaded.signatures["serving_default"](**_columns(values))
    np.testing.assert_allclose(got["probability"].numpy(), want["probability"].numpy(), atol=1e-7)
    two = tf.train.Example(features=tf.train.Features(feature={
        "C7": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"a", b"b"]))}))
    with pytest.raises(tf.errors.InvalidArgumentError, match="C7"):
        loaded.signatures["serving_tf_example"](examples=tf.constant([two.SerializeToString()]))
    wrong = tf.train.Example(features=tf.train.Features(feature={
        "I3": tf.train.Feature(int64_list=tf.train.Int64List(value=[3]))}))
    with pytest.raises(tf.errors.InvalidArgumentError, match="I3"):
        loaded.signatures["serving_tf_example"](examples=tf.constant([wrong.SerializeToString()]))


def test_bad_requests_name_the_field(loaded):
    fn = loaded.signatures["serving_default"]
    good = {n: tf.constant(["1", "2"]) for n in field_names()}
    bad = dict(good, C5=tf.constant(["x"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="field C5"):
        fn(**bad)
    missing = {k: v for k, v in good.items() if k != "I4"}
    with pytest.raises(TypeError, match="I4"):
        fn(**missing)
    # A wrong dtype is refused by the signature (its message gives the input position only);
    # the client-side check names the field.
    with pytest.raises(tf.errors.InvalidArgumentError, match="string tensor"):
        fn(**dict(good, C9=tf.constant([1, 2])))
    with pytest.raises(serving_client.RequestError, match="field C9"):
        serving_client.check_request(dict({k: ["1", "2"] for k in good}, C9=[1, 2]), field_names())


# ----------------------------------------------------------------------------- portability

_FRESH = r"""
import json, sys
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
rows = json.loads(sys.argv[2])
names = sorted(rows[0])
out = m.signatures["serving_default"](**{n: tf.constant([r[n] for r in rows]) for n in names})
ids = m.signatures["transform"](**{n: tf.constant([r[n] for r in rows]) for n in names})["ids"]
print(json.dumps({"p": out["probability"].numpy().tolist(), "ids": ids.numpy().tolist(),
                  "mods": sorted(k for k in sys.modules if k.split(".")[0] in
                                 ("configs", "models", "pipeline", "preprocessing", "keras"))}))
"""


def test_fresh_process_without_project_code(served, loaded, tmp_path):
    raw, _, _, version = served
    values = [r[1] for r in test_split_rows(raw)][:5]
    rows = [dict(zip(field_names(), v, strict=True)) for v in values]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    res = subprocess.run([sys.executable, "-c", _FRESH, str(version), json.dumps(rows)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert [m for m in got["mods"] if not m.startswith("keras")] == []
    want = loaded.signatures["serving_default"](**_columns(values))["probability"].numpy()
    np.testing.assert_allclose(got["p"], want, atol=1e-7)
    assert np.array_equal(got["ids"], loaded.signatures["transform"](**_columns(values))["ids"])


def test_saved_model_cli_show_and_run(served, loaded, tmp_path):
    _, _, _, version = served
    cli = str(VENV_BIN / "saved_model_cli")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    show = subprocess.run([cli, "show", "--dir", str(version), "--all"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert show.returncode == 0, show.stderr[-2000:]
    for sig in ("serving_default", "serving_tf_example", "transform"):
        assert f"signature_def['{sig}']" in show.stdout
    assert "inputs['C26'] tensor_info" in show.stdout
    assert "outputs['probability'] tensor_info" in show.stdout
    row = {n: ("3" if n.startswith("I") else "68fd1e64") for n in field_names()}
    row["I2"] = ""
    exprs = ";".join(f"{n}=[{v!r}]" for n, v in row.items())
    run = subprocess.run([cli, "run", "--dir", str(version), "--tag_set", "serve",
                          "--signature_def", "serving_default", "--input_exprs", exprs],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    want = loaded.signatures["serving_default"](
        **{n: tf.constant([v]) for n, v in row.items()})["probability"].numpy()[0]
    line = run.stdout[run.stdout.index("probability"):]
    got = float(line[line.index("[") + 1:line.index("]")])
    assert abs(got - want) < 1e-6


def test_warmup_requests_parse_and_run(served, loaded):
    from tensorflow_serving.apis import prediction_log_pb2

    raw, _, _, version = served
    info = json.loads((version / "assets.extra" / "export.json").read_text())
    assert info["warmup_source"].startswith("real rows from input file")
    records = list(tf.data.TFRecordDataset(
        str(version / "assets.extra" / export_mod.WARMUP_FILE)).as_numpy_iterator())
    assert len(records) == export_mod.DEFAULT_WARMUP_ROWS + 1
    first_values = None
    for k, data in enumerate(records):
        log = prediction_log_pb2.PredictionLog.FromString(data)
        request = log.predict_log.request
        assert request.model_spec.signature_name == "serving_default"
        inputs = {n: tf.constant(tf.make_ndarray(t)) for n, t in request.inputs.items()}
        assert sorted(inputs) == sorted(field_names())
        out = loaded.signatures["serving_default"](**inputs)
        size = 1 if k < len(records) - 1 else export_mod.DEFAULT_WARMUP_ROWS
        assert out["probability"].shape == (size,)
        if k == 0:
            first_values = [inputs[n].numpy()[0].decode() for n in field_names()]
    # The first request is the first line of the raw file.
    with open(raw, encoding="utf-8") as fh:
        assert first_values == fh.readline().rstrip("\n").split("\t")[1:]


def test_versions_increment_and_synthetic_warmup(served, tmp_path):
    _, data, model_dir, _ = served
    moved = tmp_path / "data"
    shutil.copytree(data, moved)
    stats = json.loads((moved / "stats.json").read_text())
    stats["input"] = str(tmp_path / "gone.txt")
    (moved / "stats.json").write_text(json.dumps(stats))
    exports = tmp_path / "exports"
    v1 = export_mod.export(model_dir, exports, "ctr", data_dir=moved, log=lambda *_: None)
    before = {p.relative_to(v1): p.read_bytes() for p in v1.rglob("*") if p.is_file()}
    v2 = export_mod.export(model_dir, exports, "ctr", data_dir=moved, warmup_rows=3,
                           log=lambda *_: None)
    assert (v1.name, v2.name) == ("1", "2")
    assert {p.relative_to(v1): p.read_bytes() for p in v1.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in (exports / "ctr").iterdir()) == ["1", "2"]  # no temp left
    info = json.loads((v2 / "assets.extra" / "export.json").read_text())
    assert info["warmup_source"].startswith("synthesised")
    # Synthetic row k uses each field's (k+1)-th most frequent token: its ids are k+1.
    from tensorflow_serving.apis import prediction_log_pb2

    m = tf.saved_model.load(str(v2))
    schema = DataSchema.load(moved)
    for k, data_ in enumerate(tf.data.TFRecordDataset(
            str(v2 / "assets.extra" / export_mod.WARMUP_FILE)).as_numpy_iterator()):
        if k == 3:
            break
        request = prediction_log_pb2.PredictionLog.FromString(data_).predict_log.request
        inputs = {n: tf.constant(tf.make_ndarray(t)) for n, t in request.inputs.items()}
        ids = m.signatures["transform"](**inputs)["ids"].numpy()[0]
        want = [k % (f.vocab_size - 1) + 1 if f.vocab_size > 1 else 0 for f in schema.fields]
        assert ids.tolist() == want


def test_errors_name_the_file(served, tmp_path, capsys):
    _, data, model_dir, _ = served
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(model_dir / "model_spec.json", broken)
    with pytest.raises(export_mod.ExportError, match="model.keras is missing"):
        export_mod.export(broken, tmp_path / "e")
    assert export_mod.main(["--model_dir", str(broken), "--export_dir", str(tmp_path / "e")]) == 2
    assert "model.keras" in capsys.readouterr().err
    no_spec = tmp_path / "nospec"
    no_spec.mkdir()
    shutil.copy(model_dir / "model.keras", no_spec)
    with pytest.raises(export_mod.ExportError, match="model_spec.json is missing"):
        export_mod.export(no_spec, tmp_path / "e")
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    spec = json.loads((other / "model_spec.json").read_text())
    spec["schema_hash"] = "0123456789abcdef"
    (other / "model_spec.json").write_text(json.dumps(spec))
    with pytest.raises(export_mod.ExportError, match="schema_hash mismatch"):
        export_mod.export(other, tmp_path / "e")
    assert not (tmp_path / "e").exists() or not any((tmp_path / "e").rglob("saved_model.pb"))
