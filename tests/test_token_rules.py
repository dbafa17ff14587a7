"""The one number grammar of numeric fields (configs.features.NUMBER_RE) in the Python token rule
and in the Beam job: only ASCII numbers are numbers. (The graph side and the Python/graph probe
comparison are in tests/test_export.py.)"""
import glob
import json
import os
import re

import pytest

from configs.features import NUMBER_RE, dataset_spec, numeric_token
from preprocessing import run as run_mod
from preprocessing.formats import MalformedRecord, line_parser

INMEM = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
NON_ASCII = ["\u0663", "\uff13", "\u0967\u0968", "\U0001d7d1", "1e\u0663", "\u0663.5"]


@pytest.mark.parametrize("text", NON_ASCII + ["inf", "-Infinity", "nan", "0x10", "1__0", "1e999",
                                              "1 0", "\u00b2"])
def test_not_an_ascii_finite_number_raises(text):
    with pytest.raises(ValueError):
        numeric_token(text)


@pytest.mark.parametrize(
    "text,token",
    [
        ("1_000", "L47"),
        (" 3 ", "L1"),
        ("\u00a0-0.5\u3000", "-1"),
        ("+.5e-3", "0"),
        ("1e-999", "0"),
        ("2.", "2"),
        ("", "__missing__"),
    ],
)
def test_ascii_numbers(text, token):
    assert numeric_token(text) == token
    assert text.strip() == "" or re.fullmatch(NUMBER_RE, text.strip())


def _row(label, i1):
    return "\t".join([str(label), i1] + [""] * 12 + ["c", "x"] + [""] * 24)


def test_row_parser_dead_letters_non_ascii_digits():
    parser = line_parser(dataset_spec("criteo"))
    assert parser(_row(1, "3"), 1)[0][0] == "L1"
    for text in NON_ASCII:
        with pytest.raises(MalformedRecord, match="field I1: non-numeric value"):
            parser(_row(1, text), 1)


def test_beam_job_dead_letters_non_ascii_digits(tmp_path):
    """Both of the job's paths (the column-wise chunk reader and the row parser its flagged
    lines go to) treat non-ASCII digits as malformed, as the SavedModel treats them as missing."""
    rows = [_row(i % 2, str(i % 5)) for i in range(300)]
    bad_lines = {}
    for k, text in enumerate(NON_ASCII):
        line = 10 + 40 * k
        rows[line - 1] = _row(1, text)
        bad_lines[line] = text
    (tmp_path / "in.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    res = run_mod.run(["--dataset", "criteo", "--input", str(tmp_path / "in.txt"), "--output",
                       str(tmp_path / "out"), "--max_bad_fraction", "0.1", *INMEM])
    dead = [json.loads(ln) for f in glob.glob(str(tmp_path / "out" / "deadletter" / "*"))
            for ln in open(f, encoding="utf-8")]
    assert {d["line"]: d["raw"].split("\t")[1] for d in dead} == bad_lines
    assert all("field I1" in d["reason"] for d in dead)
    assert res.stats["rows_deadlettered"] == len(NON_ASCII)
    vocab = (tmp_path / "out" / "vocab" / "I1.txt").read_text().split("\n")
    assert sorted(t.split("\t")[0] for t in vocab if t) == ["0", "1", "2", "L1"]
    assert os.path.exists(tmp_path / "out" / "schema.json")
