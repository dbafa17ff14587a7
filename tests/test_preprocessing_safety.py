"""The preprocessing job's safety rules: --overwrite replaces only a directory the job wrote,
damaged (truncated/corrupt) compressed input and empty input fail the job, leftovers of killed
runs are cleaned up (only the job's own), and outputs follow the umask."""
import bz2
import gzip
import json
import lzma
import os
import stat
import subprocess
import sys
import zlib

import pytest

from configs.features import DataSchema
from preprocessing import output
from preprocessing import run as run_mod

INMEM = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
MULTI = ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
         "--direct_num_workers=2"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _criteo_rows(n):
    return ["\t".join([str(i % 2), str(i % 97)] + [""] * 12 + [f"c{(i * 7919) % 50_000}", "x"]
                      + [""] * 24) for i in range(n)]


def _run(inp, out, *extra, runner=INMEM):
    return run_mod.run(["--dataset", "criteo", "--input", str(inp), "--data_dir", str(out),
                        *extra, *runner])


def _tree(directory):
    return sorted(os.path.relpath(os.path.join(r, n), directory)
                  for r, ds, fs in os.walk(directory) for n in ds + fs)


@pytest.fixture
def raw(tmp_path):
    path = tmp_path / "data" / "day0.txt"
    path.parent.mkdir()
    path.write_text("\n".join(_criteo_rows(300)) + "\n")
    return path


# ----------------------------------------------------------------------------- 1. --overwrite

def test_overwrite_refuses_the_input_folder_and_removes_nothing(raw, tmp_path):
    """The reported case: --output is the folder holding the input (and an unrelated file)."""
    folder = raw.parent
    (folder / "notes.txt").write_text("keep me")
    before = {p: (folder / p).read_bytes() for p in _tree(folder)}
    with pytest.raises(FileExistsError, match=rf"{folder}.*holds input file.*day0.txt"):
        _run(raw, folder, "--overwrite")  # (output.OutputRefused)
    assert {p: (folder / p).read_bytes() for p in _tree(folder)} == before
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p or ".old-" in p]
    # The CLI: a one-line error naming the directory, a failing exit code, nothing removed.
    proc = subprocess.run([sys.executable, "-m", "preprocessing.run", "--dataset", "criteo",
                           "--input", str(raw), "--output", str(folder), "--overwrite", *INMEM],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0
    assert f"refusing to overwrite {folder}" in proc.stderr and "input file" in proc.stderr
    assert {p: (folder / p).read_bytes() for p in _tree(folder)} == before


def test_overwrite_only_replaces_a_directory_the_job_wrote(raw, tmp_path):
    out = tmp_path / "out"
    _run(raw, out)
    assert (out / output.MARKER_FILE).is_file()
    assert output.read_marker(str(out))["job"] == output.MARKER_JOB
    # the job's own directory: replaced
    _run(raw, out, "--overwrite")
    assert DataSchema.load(out).splits["train"] > 0 and (out / output.MARKER_FILE).is_file()
    # with a file of someone else's in it: refused, nothing removed
    (out / "vocab" / "README").write_text("mine")
    with pytest.raises(output.OutputRefused, match=rf"{out}.*entries this job does not write "
                                                   r"\(vocab/README\)"):
        _run(raw, out, "--overwrite")
    assert (out / "vocab" / "README").read_text() == "mine" and (out / "schema.json").exists()
    # without the marker (e.g. any other directory): refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "schema.json").write_text("{}")
    with pytest.raises(output.OutputRefused, match=rf"{other}.*no {output.MARKER_FILE} marker"):
        _run(raw, other, "--overwrite")
    assert (other / "schema.json").read_text() == "{}"
    # a plain file or a symlink: refused
    (tmp_path / "afile").write_text("x")
    with pytest.raises(output.OutputRefused, match="not a directory"):
        _run(raw, tmp_path / "afile", "--overwrite")
    os.symlink(out, tmp_path / "link")
    with pytest.raises(output.OutputRefused, match="symbolic link"):
        _run(raw, tmp_path / "link", "--overwrite")
    assert (tmp_path / "afile").read_text() == "x" and (out / "schema.json").exists()
    # an empty directory holds nothing to lose: replaced
    (tmp_path / "empty").mkdir()
    _run(raw, tmp_path / "empty", "--overwrite")
    assert (tmp_path / "empty" / output.MARKER_FILE).is_file()
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p or ".old-" in p]


def test_an_output_that_appears_during_the_run_keeps_the_finished_result(raw, tmp_path,
                                                                         monkeypatch):
    out = tmp_path / "out"
    real_commit = output.commit

    def someone_else_writes_first(tmp, dest, overwrite):
        os.makedirs(dest)
        (out / "theirs.txt").write_text("theirs")
        return real_commit(tmp, dest, overwrite)

    monkeypatch.setattr(output, "commit", someone_else_writes_first)
    with pytest.raises(FileExistsError, match=r"the finished output is kept in (\S+)") as info:
        _run(raw, out)
    done = info.value.args[0].rsplit(" ", 1)[1]
    assert os.path.basename(done).startswith("out.done-")
    assert DataSchema.load(done).splits["train"] > 0
    assert sorted(os.listdir(out)) == ["theirs.txt"]
    monkeypatch.setattr(output, "commit", real_commit)
    _run(raw, tmp_path / "out2")  # the next run (its leftover cleanup) keeps the result
    assert DataSchema.load(done).splits["train"] > 0


# ----------------------------------------------------------------------------- 2. damaged input

def _complete_lines(compressed: bytes) -> int:
    """Complete lines in the part of a (damaged) GZIP stream that decompresses."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    data = b""
    for i in range(0, len(compressed), 512):
        try:
            data += d.decompress(compressed[i:i + 512])
        except zlib.error:
            break
    return data.count(b"\n")


@pytest.fixture
def gz_data():
    return gzip.compress(("\n".join(_criteo_rows(2000)) + "\n").encode(), mtime=0)


def test_truncated_gzip_fails_naming_file_and_lines(gz_data, tmp_path):
    path = tmp_path / "in" / "day0.txt.gz"
    path.parent.mkdir()
    path.write_bytes(gz_data[:len(gz_data) // 2])
    expected = _complete_lines(path.read_bytes())
    assert 0 < expected < 2000
    out = tmp_path / "out"
    # default runner (multi-process workers): the worker's error surfaces as JobFailed
    with pytest.raises(run_mod.JobFailed) as info:
        _run(path, out, runner=MULTI)
    msg = str(info.value)
    assert msg.startswith(f"damaged input file {path}: truncated")
    assert f"after {expected:,} complete lines were read; no output written to {out}" in msg
    assert "Traceback" not in msg
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_corrupt_gzip_fails_naming_file_and_lines(gz_data, tmp_path):
    data = bytearray(gz_data)
    middle = len(data) // 2
    data[middle:middle + 40] = bytes((b * 37 + 11) % 256 for b in data[middle:middle + 40])
    path = tmp_path / "bad.txt.gz"
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(run_mod.JobFailed, match=rf"^damaged input file {path}: .* after "
                                                r"[0-9,]+ complete lines were read; no output"):
        _run(path, out)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    # a complete file still reads in full
    good = tmp_path / "good.txt.gz"
    good.write_bytes(gz_data)
    assert _run(good, out, "--max_bad_fraction", "0.5").stats["rows_read"] == 2000


@pytest.mark.parametrize("suffix,compress", [(".bz2", bz2.compress), (".xz", lzma.compress)])
def test_bz2_and_xz_inputs_read_in_full_and_fail_when_truncated(suffix, compress, tmp_path):
    rows = _criteo_rows(500)
    data = compress(("\n".join(rows) + "\n").encode())
    path = tmp_path / f"day0.txt{suffix}"
    path.write_bytes(data)
    res = _run(path, tmp_path / "out", "--max_bad_fraction", "0.5")
    assert res.stats["rows_read"] == 500
    cut = tmp_path / f"cut.txt{suffix}"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(run_mod.JobFailed, match=rf"^damaged input file {cut}: "):
        _run(cut, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


# ----------------------------------------------------------------------------- 3. empty input

@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_input_fails(content, tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text(content)
    with pytest.raises(run_mod.JobFailed, match=rf"no data rows in {path}"):
        _run(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(os.listdir(tmp_path)) == ["empty.txt"]


def test_header_only_csv_fails(tmp_path):
    (tmp_path / "d.csv").write_text("y|a|n\n")
    cfg = tmp_path / "csv.yaml"
    cfg.write_text("dataset:\n  fields: [{name: a}, {name: n, kind: numeric}]\n"
                   "  columns: [y, a, n]\n  label_column: y\n  delimiter: '|'\n  header: true\n")
    with pytest.raises(run_mod.JobFailed, match=r"no data rows in .*d\.csv \(1 header"):
        run_mod.run(["--dataset", "csv", "--input", str(tmp_path / "d.csv"), "--output",
                     str(tmp_path / "out"), "--config", str(cfg), *INMEM])
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- 4. leftovers, umask

def _killed_run_tmp(out) -> str:
    """A `DIR.tmp-XXXXXXXX` as a run leaves it when killed: made by a process that is gone."""
    code = ("import sys; from preprocessing import output; "
            "print(output.make_temp(sys.argv[1]))")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, capture_output=True,
                          text=True, check=True)
    tmp = proc.stdout.strip()
    os.makedirs(os.path.join(tmp, "vocab"))
    open(os.path.join(tmp, "vocab", "C1.txt"), "w").write("a\t3\n")
    os.makedirs(os.path.join(tmp, "train", "beam-temp-part-0123abcd"))
    open(os.path.join(tmp, "train", "beam-temp-part-0123abcd", "f00"), "w").write("x")
    open(os.path.join(tmp, "_counts.json"), "w").write("{}")
    return tmp


def test_a_locked_leftover_whose_pid_looks_dead_is_kept(tmp_path):
    """A run in another container with the same host name (its own PID namespace) holds its
    directory's lock while its PID looks dead here: the cleanup keeps it."""
    out = tmp_path / "out"
    tmp = _killed_run_tmp(out)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from configs.cli import hold_directory; "
         "hold_directory(sys.argv[1]); print('held', flush=True); time.sleep(60)", tmp],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert output.clean_leftovers(str(out)) == [] and os.path.isdir(tmp)
    finally:
        holder.kill()
        holder.wait()
    assert output.clean_leftovers(str(out)) == [tmp] and not os.path.exists(tmp)


def test_next_run_removes_only_the_jobs_own_leftovers(raw, tmp_path):
    out = tmp_path / "out"
    killed = [_killed_run_tmp(out), _killed_run_tmp(out)]
    assert all(os.path.basename(t).startswith("out.tmp-") for t in killed)
    keep = []

    def leftover_like(name, marker=None, extra=None):
        path = tmp_path / name
        path.mkdir()
        if marker is not None:
            (path / output.MARKER_FILE).write_text(json.dumps(marker))
        if extra:
            (path / extra).write_text("theirs")
        keep.append(path)

    dead = output.read_marker(killed[0])
    leftover_like("out.tmp-0123456z", dead)                     # not the job's name pattern
    leftover_like("out.tmp-0123456")                             # 7 hex digits
    leftover_like("out.tmp-deadbeef")                            # no marker
    leftover_like("out.tmp-feedf00d", {"job": "something else", "pid": dead["pid"],
                                       "host": dead["host"]})  # another job's marker
    leftover_like("out.tmp-0badc0de", dead, extra="notes.txt")   # a foreign file inside
    leftover_like("out.tmp-abcdef01", dict(dead, pid=os.getpid()))  # a running process
    leftover_like("out.tmp-abcdef02", dict(dead, host=dead["host"] + "-elsewhere"))
    leftover_like("other.tmp-abcdef03", dead)                    # another output's
    leftover_like("out.failed-abcdef04", dead)                   # dead letters are kept
    (tmp_path / "out.tmp-abcdef05").write_text("a file")
    _run(raw, out)
    assert not any(os.path.exists(t) for t in killed)
    assert all(p.exists() for p in keep) and (tmp_path / "out.tmp-abcdef05").exists()
    assert (tmp_path / "out.tmp-0badc0de" / "notes.txt").exists()
    assert DataSchema.load(out).splits["train"] > 0


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_outputs_follow_the_umask(raw, tmp_path, umask_022):
    out = tmp_path / "out"
    _run(raw, out)
    modes = {p: stat.S_IMODE(os.stat(out / p).st_mode) for p in _tree(out)}
    for name in ("schema.json", "stats.json", output.MARKER_FILE, "vocab/C1.txt", "vocab/I1.txt"):
        assert modes[name] == 0o644, name
    files = [p for p in modes if os.path.isfile(out / p)]
    assert any(p.startswith("train/part-") for p in files)
    assert {p: modes[p] for p in files if modes[p] != 0o644} == {}
    assert {p: modes[p] for p in modes if p not in files and modes[p] != 0o755} == {}


def test_atomic_write_json_follows_the_umask(tmp_path, umask_022):
    from pipeline.runtime import atomic_write_json

    path = atomic_write_json(tmp_path / "run" / "dims.json", {"a": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert json.loads(path.read_text()) == {"a": 1}
    os.umask(0o007)
    atomic_write_json(path, {"a": 2})
    assert stat.S_IMODE(path.stat().st_mode) == 0o660 and json.loads(path.read_text()) == {"a": 2}
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})
    assert sorted(os.listdir(path.parent)) == ["dims.json"]  # no temporary left behind
    assert json.loads(path.read_text()) == {"a": 2}
