"""pipeline.predict never destroys or re-reads files: output == input, self-matching globs,
atomic output, damaged .gz input, the per-file labelled/unlabelled layout, unwritable output."""
from __future__ import annotations

import csv
import gzip
import json
import os
import zlib

import numpy as np
import pytest

from configs.features import dataset_spec
from pipeline import predict as predict_mod
from preprocessing.formats import MalformedRecord

HEADER = "row_id,source,line,probability,label"


def _quiet(*_):
    pass


@pytest.fixture(scope="module")
def raw_lines(served):
    with open(served[0], encoding="utf-8") as fh:
        return [line.rstrip("\n") for line in fh]


@pytest.fixture(scope="module")
def model(served):
    return str(served[3].parent)


def _run(model, inputs, output, capsys):
    """main() -> (exit code, stderr lines)."""
    code = predict_mod.main(["--model", model, "--input", inputs, "--output", str(output),
                             "--quiet"])
    return code, capsys.readouterr().err.strip().splitlines()


def _listing(d):
    return sorted(p.name for p in d.iterdir())


# ----------------------------------------------------------------------------- item 1

@pytest.mark.parametrize("how", ["same", "dotted", "symlink", "hardlink"])
def test_output_that_is_an_input_is_refused_before_writing(model, raw_lines, tmp_path, capsys,
                                                           how):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(raw_lines[:200]) + "\n", encoding="utf-8")
    before = src.read_bytes()
    output = {"same": src, "dotted": tmp_path / ".." / tmp_path.name / "in.txt",
              "symlink": tmp_path / "link.csv", "hardlink": tmp_path / "hard.csv"}[how]
    if how == "symlink":
        output.symlink_to(src)
    if how == "hardlink":
        os.link(src, output)
    listing = _listing(tmp_path)
    code, err = _run(model, str(src), output, capsys)
    assert code == 2
    assert len(err) == 1 and str(src) in err[0] and str(output) in err[0], err
    assert src.read_bytes() == before
    assert _listing(tmp_path) == listing  # nothing written, no rejects file, no temporary


# ----------------------------------------------------------------------------- item 2

def test_glob_never_reads_the_runs_own_files(model, raw_lines, tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "in.txt").write_text("\n".join(raw_lines[:20] + ["1\t2\t3"]) + "\n", encoding="utf-8")
    out = d / "scores.csv"
    rejects = d / ("scores.csv" + predict_mod.REJECTS_SUFFIX)
    notes = []
    first = predict_mod.predict(model, str(d / "*"), out, quiet=True, log=notes.append)
    assert first["files"] == 1 and first["scored"] == 20 and first["rejected"] == 1
    scores, rejected = out.read_bytes(), rejects.read_bytes()
    # A temporary left by a killed run is not read either.
    (d / ".scores.csv.tmp-deadbeef").write_text("junk\n", encoding="utf-8")
    for _ in range(2):  # run again (and again): the same result, nothing grows
        notes.clear()
        again = predict_mod.predict(model, f"{d}/*,{d}/.*", out, quiet=True, log=notes.append)
        assert again["files"] == 1 and again["scored"] == 20 and again["rejected"] == 1
        assert out.read_bytes() == scores and rejects.read_bytes() == rejected
        left_out = sorted(n.split("leaving out ")[1].split(",")[0] for n in notes
                          if "leaving out" in n)
        assert left_out == [str(d / ".scores.csv.tmp-deadbeef"), str(out), str(rejects)]
    # Named explicitly (or through a symlink), the output or its rejects file is refused.
    (d / "alias.jsonl").symlink_to(rejects)
    for named in (rejects, d / "alias.jsonl", out):
        code, err = _run(model, f"{d / 'in.txt'},{named}", out, capsys)
        assert code == 2 and len(err) == 1 and str(named) in err[0] and str(out) in err[0], err
        assert out.read_bytes() == scores and rejects.read_bytes() == rejected
    # A glob that matches nothing but the run's own files is a usage error.
    code, err = _run(model, str(d / "scores*"), out, capsys)
    assert code == 2 and "only this run's own output" in err[0]


# ----------------------------------------------------------------------------- item 3

def test_output_is_renamed_into_place_with_the_umask(model, raw_lines, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(raw_lines[:30]) + "\n", encoding="utf-8")
    out = tmp_path / "new" / "scores.csv"
    old = os.umask(0o027)
    try:
        predict_mod.predict(model, str(src), out, quiet=True, log=_quiet)
    finally:
        os.umask(old)
    assert _listing(out.parent) == ["scores.csv", "scores.csv" + predict_mod.REJECTS_SUFFIX]
    for p in out.parent.iterdir():
        assert p.stat().st_mode & 0o777 == 0o640, p
    assert out.read_text(encoding="utf-8").splitlines()[0] == HEADER
    # A previous predict output is replaced (a second run, and the file still follows the umask).
    predict_mod.predict(model, str(src), out, quiet=True, log=_quiet)
    assert len(out.read_text(encoding="utf-8").splitlines()) == 31


@pytest.mark.parametrize("which", ["output", "rejects"])
def test_existing_file_not_written_by_predict_is_never_overwritten(model, raw_lines, tmp_path,
                                                                   capsys, which):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(raw_lines[:10]) + "\n", encoding="utf-8")
    out = tmp_path / "report.csv"
    victim = out if which == "output" else tmp_path / ("report.csv" + predict_mod.REJECTS_SUFFIX)
    victim.write_text("precious,data\n1,2\n", encoding="utf-8")
    code, err = _run(model, str(src), out, capsys)
    assert code == 2 and len(err) == 1 and str(victim) in err[0] and "refusing" in err[0], err
    assert victim.read_text(encoding="utf-8") == "precious,data\n1,2\n"
    assert _listing(tmp_path) == sorted(["in.txt", victim.name])


def test_a_file_that_appears_at_the_output_during_the_run_is_not_replaced(
        model, raw_lines, tmp_path, capsys, monkeypatch):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(raw_lines[:10]) + "\n", encoding="utf-8")
    out = tmp_path / "report.csv"
    real = predict_mod._score_files

    def meanwhile(*args, **kwargs):
        out.write_text("someone else's\n", encoding="utf-8")
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_mod, "_score_files", meanwhile)
    code, err = _run(model, str(src), out, capsys)
    assert code == 2 and "refusing to overwrite" in err[-1], err
    assert out.read_text(encoding="utf-8") == "someone else's\n"
    assert _listing(tmp_path) == ["in.txt", "report.csv"]


# ----------------------------------------------------------------------------- item 4

def _damaged_gz(path, lines, how):
    data = gzip.compress(("\n".join(lines) + "\n").encode("utf-8"))
    if how == "truncated":
        data = data[: len(data) // 2]
    else:  # corrupt deflate data in the middle, or a wrong CRC at the end
        data = bytearray(data)
        for k in range(len(data) // 2, len(data) // 2 + 64):
            data[k] ^= 0x5A
        data = bytes(data)
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_damaged_gzip_fails_in_one_line_without_output(model, raw_lines, tmp_path, capsys, how):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.txt").write_text("\n".join(raw_lines[:50]) + "\n", encoding="utf-8")
    bad = d / "b.txt.gz"
    data = _damaged_gz(bad, raw_lines[:1500], how)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "scores.csv"
    previous = (HEADER + "\r\n0,old,1,0.5,\r\n").encode()  # a previous good run
    out.write_bytes(previous)
    code, err = _run(model, str(d / "*"), out, capsys)
    assert code == 1
    assert len(err) == 1 and str(bad) in err[0] and " is damaged: " in err[0], err
    if how == "truncated":
        complete = zlib.decompressobj(wbits=31).decompress(data).count(b"\n")
        assert f"compressed stream ends after line {complete} (" in err[0], err
        assert 0 < complete < 1500
    # Nothing at the final paths but the previous output, untouched; no temporaries.
    assert _listing(out_dir) == ["scores.csv"]
    assert out.read_bytes() == previous


# ----------------------------------------------------------------------------- item 5

def test_labelled_or_not_is_decided_per_file_by_its_first_data_line(model, raw_lines, tmp_path):
    rows = raw_lines[:6]
    unlabelled = [r.split("\t", 1)[1] for r in rows]
    d = tmp_path / "in"
    d.mkdir()
    # A labelled file with a row that lost a column; an unlabelled file (blank first line) with
    # a labelled row.
    (d / "a.txt").write_text("\n".join(rows[:3] + [unlabelled[3]] + rows[4:]) + "\n",
                             encoding="utf-8")
    (d / "b.txt").write_text("\n".join(["", *unlabelled[:2], rows[2], *unlabelled[3:]]) + "\n",
                             encoding="utf-8")
    out = tmp_path / "scores.csv"
    counts = predict_mod.predict(model, str(d / "*"), out, quiet=True, log=_quiet)
    assert counts["scored"] == 10 and counts["rejected"] == 2 and counts["labelled"] == 5
    with open(out, newline="", encoding="utf-8") as fh:
        got = list(csv.DictReader(fh))
    by_line = {(r["source"][-5:], int(r["line"])): r for r in got}
    assert sorted(by_line) == [("a.txt", n) for n in (1, 2, 3, 5, 6)] + \
        [("b.txt", n) for n in (2, 3, 5, 6, 7)]
    assert all(by_line[("a.txt", n)]["label"] == rows[n - 1][0] for n in (1, 2, 3, 5, 6))
    assert all(by_line[("b.txt", n)]["label"] == "" for n in (2, 3, 5, 6, 7))
    # The same rows score the same with and without their label: no column shift.
    for a_line, b_line in ((1, 2), (2, 3), (5, 6), (6, 7)):
        assert float(by_line[("a.txt", a_line)]["probability"]) == pytest.approx(
            float(by_line[("b.txt", b_line)]["probability"]), abs=1e-7)
    rejects = [json.loads(x) for x in open(str(out) + predict_mod.REJECTS_SUFFIX,
                                           encoding="utf-8")]
    assert [(r["source"][-5:], r["line"]) for r in rejects] == [("a.txt", 4), ("b.txt", 4)]
    assert rejects[0]["reason"] == ("expected 40 tab-separated columns (labelled file, as its "
                                    "line 1), got 39")
    assert rejects[1]["reason"] == ("expected 39 tab-separated columns (unlabelled file, as its "
                                    "line 2), got 40")


AVAZU_ROW = ("10000094,1,14102117,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,"
             "a99f214a,ddd2926e,44956a24,1,2,15706,320,50,1722,0,35,-1,79")
FRAPPE_ROW = "1 204:1 4798:1 5041:1 5046:1 5053:1 5055:1 5058:1 5060:1 5073:1 5183:1"
CSV_SPEC = {"fields": [{"name": "a"}, {"name": "n", "kind": "numeric"}],
            "columns": ["y", "a", "n", "unused"], "label_column": "y", "delimiter": ";",
            "header": True, "positive_labels": ["yes"], "negative_labels": ["no"]}


def _drop_label(fmt, row):
    if fmt == "avazu":
        parts = row.split(",")
        return ",".join(parts[:1] + parts[2:])
    if fmt == "frappe":
        return row.split(" ", 1)[1]
    return row.split(";", 1)[1]


@pytest.mark.parametrize("fmt,row,full,unit", [
    ("avazu", AVAZU_ROW, 24, "comma-separated columns"),
    ("frappe", FRAPPE_ROW, 11, "whitespace-separated tokens"),
    ("csv", "yes;x;150;zz", 4, "';'-separated columns"),
])
def test_row_reader_layout_rule_for_every_line_format(fmt, row, full, unit):
    spec = dataset_spec(fmt, CSV_SPEC if fmt == "csv" else None)
    reader = predict_mod.RowReader(spec, list(spec.field_names))
    bare = _drop_label(fmt, row)
    first = 2 if fmt == "csv" else 1  # the csv header line is skipped
    if fmt == "csv":
        assert reader("y;a;n;unused", 1) is None
    values, label = reader(row, first)
    assert label == 1.0
    with pytest.raises(MalformedRecord, match=rf"^expected {full} {unit} \(labelled file, as its "
                                              rf"line {first}\), got {full - 1}$"):
        reader(bare, first + 1)
    reader.start_file()  # the next file decides again
    if fmt == "csv":
        assert reader("y;a;n;unused", 1) is None
    got, no_label = reader(bare, first)
    assert no_label is None and got == values
    with pytest.raises(MalformedRecord, match=rf"^expected {full - 1} {unit} \(unlabelled file, "
                                              rf"as its line {first}\), got {full}$"):
        reader(row, first + 1)
    reader.start_file()
    with pytest.raises(MalformedRecord, match=rf"^expected {full} {unit} \(labelled\) or "
                                              rf"{full - 1} \(unlabelled\), got 2$"):
        reader("a;b" if fmt == "csv" else ("a,b" if fmt == "avazu" else "a b"), 5)


# ----------------------------------------------------------------------------- item 6

@pytest.mark.parametrize("where,want_code", [("read-only directory", 1),
                                             ("parent is a file", 2)])
def test_unwritable_output_fails_in_one_line(model, raw_lines, tmp_path, capsys, monkeypatch,
                                             where, want_code):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(raw_lines[:10]) + "\n", encoding="utf-8")
    if where == "parent is a file":
        out = tmp_path / "in.txt" / "scores.csv"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        out = ro / "scores.csv"
        ro.chmod(0o555)
        if os.geteuid() == 0:  # root writes anyway: make the file creation fail as it would
            def refuse(final, created):
                raise PermissionError(13, "Permission denied", str(final))
            monkeypatch.setattr(predict_mod, "_create_temp", refuse)
    try:
        code, err = _run(model, str(src), out, capsys)
    finally:
        if where != "parent is a file":
            ro.chmod(0o755)
    assert code == want_code
    assert len(err) == 1 and str(out) in err[0], err
    if where == "read-only directory":  # a run-time failure
        assert err[0].startswith("error: cannot write --output "), err
    else:  # a wrong path argument: a usage error
        assert err[0].endswith(f"{src} is not a directory"), err
    assert not os.path.lexists(out)
    if where != "parent is a file":
        assert _listing(ro) == []
    np.testing.assert_equal(src.read_text(encoding="utf-8").count("\n"), 10)


# ----------------------------------------------------------------------------- progress

def test_progress_in_a_redirected_log_counts_bytes_and_rows(model, raw_lines, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(raw_lines[:300]) + "\n", encoding="utf-8")
    code = predict_mod.main(["--model", model, "--input", str(src), "--output",
                             str(tmp_path / "scores.csv")])
    err = capsys.readouterr().err
    assert code == 0
    assert "\r" not in err  # no carriage-return frames in a log
    size = src.stat().st_size
    last = [ln for ln in err.splitlines() if ln.startswith("predict ")][-1]
    # the last progress line: every byte of the input, as bytes, and the rows scored
    assert last.startswith(f"predict {size / 1000:.1f}k/{size / 1000:.1f}k B (100%)"), last
    assert "B/s" in last and "rows=300" in last and "steps" not in err
