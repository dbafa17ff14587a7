"""pipeline.run --truth: a synthetic dataset's planted truth is read and checked before anything
runs (the comparison itself is the demo's, tests/test_search.py and benchmarks.criteo_scale)."""

import json

import pytest

from pipeline import run as run_cli
from preprocessing import synthetic


def _argv(tmp_path, truth):
    raw = tmp_path / "raw.tsv"
    raw.write_text("")
    return ["--workdir", str(tmp_path / "w"), "--dataset", "criteo", "--input", str(raw),
            "--truth", str(truth), "--quiet"]


@pytest.mark.parametrize("content, message", [
    (None, "cannot be read"),
    ("{not json", "not JSON"),
    (json.dumps({"fields": [{"name": "C1"}]}), "not a ground truth file"),
    (json.dumps([1, 2]), "not a ground truth file"),
])
def test_bad_truth_is_refused_before_anything_runs(tmp_path, capsys, content, message):
    truth = tmp_path / "truth.json"
    if content is not None:
        truth.write_text(content)
    assert run_cli.main(_argv(tmp_path, truth)) == 2
    err = capsys.readouterr().err
    assert f"--truth {truth}" in err and message in err
    assert not (tmp_path / "w").exists()


def test_truth_with_demo_is_refused(tmp_path, capsys):
    truth = tmp_path / "truth.json"
    truth.write_text("{}")
    assert run_cli.main(["--workdir", str(tmp_path / "w"), "--demo", "--truth", str(truth)]) == 2
    assert "--truth is for synthetic --input files" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_a_generated_truth_is_accepted(tmp_path):
    out = tmp_path / "s.tsv"
    synthetic.generate(str(out), 50, 0)
    truth = run_cli._read_truth(str(out) + ".truth.json")
    assert len(truth["fields"]) == 39
    assert {f["name"] for f in truth["fields"] if f["informative"]} >= {"C3", "I1"}
