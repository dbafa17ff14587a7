"""The conventions every CLI shares (configs/cli.py): strict flags with suggestions, Beam flags
passed through only when Beam defines them, deprecated aliases, documented exit codes, one-line
errors, complete --help, atomic outputs that follow the umask."""
from __future__ import annotations

import importlib
import io
import os

import pytest

from configs import cli

# Every CLI module and one complete, valid-looking argument list for it.
CLIS = {
    "preprocessing.run": ["--dataset", "criteo", "--input", "x", "--data_dir", "d"],
    "preprocessing.synthetic": ["--output", "x.tsv", "--rows", "5"],
    "pipeline.run": ["--workdir", "w"],
    "pipeline.search": ["--data_dir", "d", "--model_dir", "m"],
    "pipeline.retrain": ["--data_dir", "d", "--model_dir", "m", "--dims", "fde:4"],
    "pipeline.export": ["--model_dir", "m", "--export_dir", "e"],
    "pipeline.predict": ["--model", "m", "--input", "x", "--output", "o.csv"],
    "pipeline.report": ["--run", "d", "--output", "o"],
    "benchmarks.quality": [],
    "benchmarks.ablation": [],
    "benchmarks.transfer": [],
    "benchmarks.search_step": [],
    "benchmarks.preprocess": [],
    "benchmarks.serving": [],
    "benchmarks.sparse_update": [],
    "benchmarks.embedding_step": [],
}


def _main(module: str):
    return importlib.import_module(module).main


def _refused(module, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        _main(module)(argv)
    assert exc.value.code == cli.EXIT_USAGE
    return capsys.readouterr().err


@pytest.mark.parametrize("module", sorted(CLIS))
def test_every_cli_refuses_an_unknown_flag_naming_it(module, capsys):
    err = _refused(module, CLIS[module] + ["--no-such-flag", "1"], capsys)
    assert "--no-such-flag: unknown flag" in err


@pytest.mark.parametrize("module,argv,flag,near", [
    # the cases that used to run with defaults (exit 0)
    ("pipeline.run", ["--workdir", "w", "--fde-dim", "8"], "--fde-dim", "--fde_dim"),
    ("pipeline.run", ["--workdir", "w", "--no-export"], "--no-export", "--no_export"),
    ("preprocessing.run", CLIS["preprocessing.run"] + ["--confg", "X"], "--confg",
     "--preprocess_config"),
    ("preprocessing.run", CLIS["preprocessing.run"] + ["--max-bad-fraction", "0.5"],
     "--max-bad-fraction", "--max_bad_fraction"),
    ("pipeline.search", CLIS["pipeline.search"] + ["--model-dir", "m"], "--model-dir",
     "--model_dir"),
    ("pipeline.predict", CLIS["pipeline.predict"] + ["--batchsize", "8"], "--batchsize",
     "--batch_size"),
    # no abbreviations: argparse's default would have taken --fde as --fde_dim
    ("pipeline.run", ["--workdir", "w", "--fde", "8"], "--fde", "--fde_dim"),
])
def test_a_misspelt_flag_is_refused_with_the_closest_known_one(module, argv, flag, near, capsys):
    err = _refused(module, argv, capsys)
    assert f"{flag}: unknown flag; did you mean {near}?" in err


def test_unknown_flags_are_refused_before_missing_required_ones(capsys):
    err = _refused("preprocessing.run", ["--confg", "X"], capsys)
    assert "--confg: unknown flag" in err and "required" not in err


@pytest.mark.parametrize("module", ["preprocessing.run", "pipeline.run"])
def test_beam_flags_pass_through_and_only_beams(module, capsys):
    parser_argv = CLIS[module] + ["--runner", "DirectRunner", "--direct_num_workers=1",
                                  "--direct_running_mode", "in_memory"]
    mod = importlib.import_module(module)
    if module == "preprocessing.run":
        args, beam = mod.parse_args(parser_argv)
        assert args.data_dir == "d"
    else:  # pipeline.run parses inside main; check through the shared parser instead
        parser = cli.StrictArgumentParser(prog="p", beam=True)
        parser.add_argument("--workdir")
        args, beam = parser.parse_args(parser_argv)
        assert args.workdir == "w"
    assert beam == ["--runner", "DirectRunner", "--direct_num_workers=1",
                    "--direct_running_mode", "in_memory"]
    # a Beam-looking flag Beam does not define is refused, not discarded with a warning
    err = _refused(module, CLIS[module] + ["--runner", "DirectRunner", "--num_wrokers", "2"],
                   capsys)
    assert "--num_wrokers: unknown flag; did you mean --num_workers?" in err


def test_deprecated_spellings_still_work_and_say_the_new_name(capsys):
    from preprocessing import run as prun

    args, beam = prun.parse_args(["--dataset", "criteo", "--input", "x", "--output", "d",
                                  "--config", "c.yaml"])
    assert (args.data_dir, args.preprocess_config, beam) == ("d", "c.yaml", [])
    err = capsys.readouterr().err
    assert "--output is deprecated; use --data_dir" in err
    assert "--config is deprecated; use --preprocess_config" in err


@pytest.mark.parametrize("module", sorted(CLIS))
def test_help_lists_every_flag_and_the_exit_codes(module, capsys):
    with pytest.raises(SystemExit) as exc:
        _main(module)(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes: 0 success, 1 the job failed" in out
    for flag in CLIS[module][::2]:
        if flag.startswith("--"):
            assert flag in out


@pytest.mark.parametrize("module", ["preprocessing.run", "pipeline.run"])
def test_help_of_the_beam_clis_lists_the_datasets_and_beams_flags(module, capsys):
    with pytest.raises(SystemExit):
        _main(module)(["--help"])
    out = capsys.readouterr().out
    for dataset in ("criteo", "avazu", "frappe", "movielens-100k", "movielens-1m", "csv"):
        assert dataset in out
    for flag in ("--runner", "--project", "--temp_location", "--setup_file", "--flink_master",
                 "--direct_num_workers"):
        assert flag in out
    assert "any other unknown flag is refused" in out


@pytest.mark.parametrize("exc,code", [
    (cli.UsageError("bad flag"), 2),
    (FileNotFoundError(2, "No such file or directory", "x/schema.json"), 2),
    (FileExistsError("out exists"), 2),
    (cli.JobError("too many bad rows"), 1),
    (PermissionError(13, "Permission denied", "ro/out.csv"), 1),
    (OSError(28, "No space left on device", "big.csv"), 1),
    (cli.NumericFailure("loss became nan"), 3),
])
def test_reported_errors_are_one_line_with_the_documented_exit_code(exc, code, capsys):
    def body():
        raise exc

    assert cli.run_main(body) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    if isinstance(exc, OSError) and exc.filename:
        assert exc.filename in err and exc.strerror in err


def test_project_errors_map_to_the_documented_codes():
    from configs.loader import ConfigError
    from pipeline.errors import NonFiniteLossError
    from pipeline.export import ExportError
    from pipeline.predict import PredictError
    from preprocessing.job import InputError
    from preprocessing.run import JobFailed

    assert [cli.exit_code(e("x")) for e in (ConfigError, ExportError, PredictError, InputError)] \
        == [2, 2, 2, 2]
    assert cli.exit_code(JobFailed("x")) == 1
    assert cli.exit_code(NonFiniteLossError("x")) == 3


def test_a_bug_keeps_its_traceback():
    with pytest.raises(KeyError):
        cli.run_main(lambda: {}["missing"])


def test_search_exit_code_for_a_missing_data_dir(tmp_path, capsys):
    from pipeline import search

    assert search.main(["--data_dir", str(tmp_path / "none"), "--model_dir",
                        str(tmp_path / "m"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "schema.json" in err and err.count("\n") == 1


def test_atomic_output_follows_the_umask_and_leaves_nothing_on_failure(tmp_path):
    old = os.umask(0o027)
    try:
        with cli.atomic_output(tmp_path / "a.txt") as fh:
            fh.write("x")
        with pytest.raises(RuntimeError), cli.atomic_output(tmp_path / "b.txt") as fh:
            fh.write("partial")
            raise RuntimeError("killed")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_text() == "x"
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with pytest.raises(FileExistsError), cli.atomic_output(tmp_path / "c.txt") as fh:
        (tmp_path / "c.txt").write_text("someone else's")
        fh.write("mine")
    assert (tmp_path / "c.txt").read_text() == "someone else's"


def test_synthetic_never_overwrites(tmp_path, capsys):
    from preprocessing import synthetic

    out = tmp_path / "s.tsv"
    out.write_text("precious\n")
    assert synthetic.main(["--output", str(out), "--rows", "10"]) == 2
    assert out.read_text() == "precious\n"
    assert "exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tsv"]


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_in_a_log_has_no_carriage_returns():
    from pipeline.progress import Progress

    stream = io.StringIO()
    progress = Progress(100, stream=stream, log_every=0.0)
    for step in range(0, 101, 10):
        progress.update(step, "pretrain" if step < 50 else "search", loss=0.25)
    progress.log("done")
    progress.close()
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[-2].startswith("search 100/100 step (100%)") and "loss=0.2500" in lines[-2]
    assert lines[-1] == "done" and len(lines) == 11  # 10 updates after the first, one log line


def test_progress_quiet_prints_only_log_lines():
    from pipeline.progress import Progress

    stream = _Tty()
    progress = Progress(10, quiet=True, stream=stream)
    progress.update(0, "retrain")
    progress.update(10, "retrain", loss=1.0)
    progress.log("only this")
    progress.close()
    assert stream.getvalue() == "only this\n"


def test_progress_on_a_terminal_shows_bytes_as_bytes():
    from pipeline.progress import Progress

    stream = _Tty()
    progress = Progress(5_000_000, stream=stream, unit="B", unit_scale=True)
    progress.update(0, "predict")
    progress.update(5_000_000, "predict", rows=12345)
    progress.close()
    text = stream.getvalue()
    assert "5.00M/5.00M" in text and "B/s" in text and "rows=12,345" in text
    assert "steps/s" not in text


def test_a_bad_beam_value_is_one_usage_error_of_this_command(capsys):
    err = _refused("preprocessing.run", CLIS["preprocessing.run"] + ["--num_workers", "abc"],
                   capsys)
    assert "python -m preprocessing.run: error: Beam pipeline option: argument --num_workers: " \
           "invalid int value: 'abc'" in err
    assert len(err) < 3000  # this command's usage, not Beam's 8 KB one


def test_the_end_of_flags_separator_is_refused_by_name(capsys):
    err = _refused("pipeline.search", CLIS["pipeline.search"] + ["--", "x"], capsys)
    assert "'--' (end of flags) is not supported" in err
