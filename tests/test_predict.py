"""pipeline.predict: batch scoring of raw files with an exported SavedModel."""
from __future__ import annotations

import csv
import gzip
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from pipeline import predict as predict_mod
from tests.serving_fixtures import field_names


def _raw_lines(raw, n):
    with open(raw, encoding="utf-8") as fh:
        return [next(fh).rstrip("\n") for _ in range(n)]


@pytest.fixture(scope="module")
def inputs(served, tmp_path_factory):
    raw = served[0]
    lines = _raw_lines(raw, 12)
    d = tmp_path_factory.mktemp("predict_in")
    # Line 1 is labelled, so a.txt is a labelled file: its 39-column lines 2 and 7 are rejects.
    a = [lines[0], lines[1].split("\t", 1)[1],      # labelled, then unlabelled (39 columns)
         "", "7\t" + lines[2].split("\t", 1)[1],    # blank, bad label (line 4)
         "1\t2\t3",                                  # wrong column count (line 5)
         lines[3], lines[4].split("\t", 1)[1], lines[5]]
    (d / "a.txt").write_text("\n".join(a) + "\n", encoding="utf-8")
    with gzip.open(d / "b.txt.gz", "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines[6:12]) + "\n")
    return d, lines


def _read(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_order_labels_and_rejects(served, inputs, tmp_path):
    version = served[3]
    d, lines = inputs
    out = tmp_path / "scores.csv"
    counts = predict_mod.predict(version.parent, str(d / "*"), out, batch_size=3, quiet=True,
                                 log=lambda *_: None)
    assert counts["scored"] == 9 and counts["rejected"] == 4 and counts["blank"] == 1
    assert counts["labelled"] == 9
    rows = _read(out)
    want_order = [("a.txt", n) for n in (1, 6, 8)] + [("b.txt.gz", n) for n in range(1, 7)]
    assert [(r["source"].rsplit("/", 1)[1], int(r["line"])) for r in rows] == want_order
    assert [int(r["row_id"]) for r in rows] == list(range(9))
    assert [r["label"] for r in rows[:3]] == [lines[0][0], lines[3][0], lines[5][0]]
    # Probabilities are those of the SavedModel on the same raw values.
    loaded = tf.saved_model.load(str(version))
    raw_rows = [lines[i].split("\t")[1:] for i in (0, 3, 5)] + \
        [lines[i].split("\t")[1:] for i in range(6, 12)]
    want = loaded.signatures["serving_default"](**{
        n: tf.constant([r[k] for r in raw_rows]) for k, n in enumerate(field_names())})
    got = np.array([float(r["probability"]) for r in rows])
    np.testing.assert_allclose(got, want["probability"].numpy(), atol=1e-6)
    rejects = [json.loads(x) for x in
               open(str(out) + predict_mod.REJECTS_SUFFIX, encoding="utf-8")]
    assert [(r["line"], r["reason"][:9]) for r in rejects] == [
        (2, "expected "), (4, "bad label"), (5, "expected "), (7, "expected ")]
    assert rejects[0]["source"].endswith("a.txt") and rejects[2]["raw"] == "1\t2\t3"
    assert "expected 40 tab-separated columns" in rejects[0]["reason"]
    assert rejects[0]["reason"].endswith("got 39")


def test_newest_version_and_explicit_version(served, inputs, tmp_path):
    d, _ = inputs
    base = tmp_path / "model"
    shutil.copytree(served[3], base / "1")
    shutil.copytree(served[3], base / "10")
    (base / "9").mkdir()  # not a SavedModel: ignored
    c = predict_mod.predict(base, str(d / "a.txt"), tmp_path / "o.csv", quiet=True,
                            log=lambda *_: None)
    assert c["version_dir"].endswith("/10")
    c = predict_mod.predict(base, str(d / "a.txt"), tmp_path / "o.csv", version=1, quiet=True,
                            log=lambda *_: None)
    assert c["version_dir"].endswith("/1")
    with pytest.raises(predict_mod.PredictError, match="no version 3"):
        predict_mod.resolve_version(base, 3)
    with pytest.raises(predict_mod.PredictError, match="no files match"):
        predict_mod.predict(base, str(tmp_path / "none*.txt"), tmp_path / "o.csv", quiet=True)


def test_cli_and_dataset_override(served, inputs, tmp_path, capsys):
    d, _ = inputs
    out = tmp_path / "cli.csv"
    code = predict_mod.main(["--model", str(served[3].parent), "--input", str(d / "a.txt"),
                             "--output", str(out), "--dataset", "criteo", "--quiet"])
    assert code == 0
    assert "3 rows scored" in capsys.readouterr().err
    assert len(_read(out)) == 3
    code = predict_mod.main(["--model", str(served[3].parent), "--input", str(d / "a.txt"),
                             "--output", str(out), "--dataset", "movielens-1m", "--quiet"])
    assert code == 2 and "has no field(s) ['I1'" in capsys.readouterr().err
