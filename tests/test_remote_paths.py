"""Remote paths (`gs://`-style) end to end, on TensorFlow's in-memory file system `ram://`.

`ram://` lives in this process's memory, so everything runs in one process: the Beam job
(in-process DirectRunner, through `RamFileSystem`, a Beam FileSystem for the scheme `ram` that
behaves as an object store: no directories, listing by prefix), then search, retraining, export
and prediction with every directory on `ram://`. A path handed to pathlib would become a local
`ram:/...` directory in the working directory: the tests run in an empty one and check it
stays empty."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from apache_beam.io.filesystem import (
    CompressedFile,
    CompressionTypes,
    FileMetadata,
    FileSystem,
)

from configs import fileio
from tests.fixtures import REPO

gfile = tf.io.gfile


class RamFileSystem(FileSystem):
    """Beam's view of TensorFlow's `ram://` (registered by its scheme when this module is
    imported), as an object store: files only, a "directory" is a prefix."""

    @classmethod
    def scheme(cls):
        return "ram"

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/")] + [p.strip("/") for p in paths])

    def split(self, path):
        head, _, tail = path.rpartition("/")
        return head, tail

    def mkdirs(self, path):
        pass

    def has_dirs(self):
        return False

    def _files(self, prefix):
        top = prefix if gfile.isdir(prefix) else prefix.rpartition("/")[0]
        if not gfile.isdir(top):
            return []
        out = []
        for root, _, files in gfile.walk(top):
            out += [f"{root.rstrip('/')}/{f}" for f in files]
        return sorted(f for f in out if f.startswith(prefix))

    def _list(self, dir_or_prefix):
        for f in self._files(dir_or_prefix):
            yield FileMetadata(f, gfile.stat(f).length)

    def _open(self, path, mode, compression_type):
        compression_type = FileSystem._get_compression_type(path, compression_type)
        raw = gfile.GFile(path, mode)
        if "w" in mode:
            raw.write(b"")  # GFile creates a file at its first write: an empty one too
        if compression_type == CompressionTypes.UNCOMPRESSED:
            return raw
        return CompressedFile(raw, compression_type=compression_type)

    def create(self, path, mime_type="application/octet-stream",
               compression_type=CompressionTypes.AUTO):
        gfile.makedirs(path.rpartition("/")[0])
        return self._open(path, "wb", compression_type)

    def open(self, path, mime_type="application/octet-stream",
             compression_type=CompressionTypes.AUTO):
        return self._open(path, "rb", compression_type)

    def copy(self, source_file_names, destination_file_names):
        for src, dst in zip(source_file_names, destination_file_names):
            gfile.makedirs(dst.rpartition("/")[0])
            gfile.copy(src, dst, overwrite=True)

    def rename(self, source_file_names, destination_file_names):
        for src, dst in zip(source_file_names, destination_file_names):
            gfile.makedirs(dst.rpartition("/")[0])
            gfile.rename(src, dst, overwrite=True)
            self._drop_empty(src.rpartition("/")[0])

    def _drop_empty(self, directory):
        """An object store has no empty directories (and ram:// lists `DIR.x` as a child
        `.x` of DIR: its listing matches by string prefix)."""
        while directory.count("/") > 2 and gfile.isdir(directory) and \
                not any(files for _, _, files in gfile.walk(directory)):
            gfile.rmtree(directory)
            directory = directory.rpartition("/")[0]

    def exists(self, path):  # an object store: only files exist
        return gfile.exists(path) and not gfile.isdir(path)

    def size(self, path):
        return gfile.stat(path).length

    def last_updated(self, path):
        return gfile.stat(path).mtime_nsec / 1e9

    def checksum(self, path):
        return str(self.size(path))

    def metadata(self, path):
        return FileMetadata(path, self.size(path), self.last_updated(path))

    def delete(self, paths):
        for p in paths:
            if p.endswith("/") or gfile.isdir(p):
                if gfile.isdir(p.rstrip("/")):
                    gfile.rmtree(p.rstrip("/"))
                self._drop_empty(p.rstrip("/").rpartition("/")[0])
            elif gfile.exists(p):
                gfile.remove(p)
                self._drop_empty(p.rpartition("/")[0])


# ------------------------------------------------------------------ the path module
def test_remote_paths_keep_their_scheme():
    p = fileio.path("gs://bucket//run/")
    assert isinstance(p, fileio.RemotePath) and str(p) == "gs://bucket/run"
    assert str(p / "ckpt" / "x.json") == "gs://bucket/run/ckpt/x.json"
    assert (p / "a.json").name == "a.json" and str((p / "a.json").parent) == "gs://bucket/run"
    assert str(p.with_name("other")) == "gs://bucket/other"
    assert fileio.absolute("gs://b/x") == "gs://b/x"
    assert fileio.is_remote("ram://x") and not fileio.is_remote("/tmp/x")
    assert not fileio.is_remote("fde:8") and not fileio.is_remote("C:/x")
    local = fileio.path("some/dir")
    assert type(local) is type(fileio.path(os.getcwd())) and str(local) == "some/dir"
    assert fileio.absolute("some/dir") == os.path.join(os.getcwd(), "some/dir")
    with pytest.raises(TypeError):
        open(p)  # not os.PathLike: never a local `gs:` file


def test_remote_file_operations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = fileio.path("ram://fileio-unit/d")
    assert not root.exists() and not root.is_dir()
    with pytest.raises(FileNotFoundError):
        (root / "x" / "y").mkdir()
    (root / "x").mkdir(parents=True)
    (root / "x").mkdir(parents=True, exist_ok=True)
    with pytest.raises(FileExistsError):
        (root / "x").mkdir()
    fileio.write_atomic(root / "x" / "a.json", '{"a": 1}\n')
    fileio.write_atomic(root / "x" / "a.json", '{"a": 2}\n')  # replaces
    (root / "x" / "b.txt").write_text("t1\nt2\n")
    assert json.loads((root / "x" / "a.json").read_text()) == {"a": 2}
    assert [e.name for e in (root / "x").iterdir()] == ["a.json", "b.txt"]
    assert [e.name for e in (root / "x").glob("*.txt")] == ["b.txt"]
    assert (root / "x" / "a.json").is_file() and (root / "x").is_dir()
    with (root / "x" / "b.txt").open("r", encoding="utf-8") as fh:
        assert list(fh) == ["t1\n", "t2\n"]
    assert fileio.size(root / "x" / "b.txt") == 6
    assert fileio.glob("ram://fileio-unit/d/x/*.json") == ["ram://fileio-unit/d/x/a.json"]
    local = tmp_path / "copy"
    fileio.copy_tree(root, local)
    assert (local / "x" / "b.txt").read_text() == "t1\nt2\n"
    with pytest.raises(FileNotFoundError):
        (root / "missing").read_text()
    (root / "x" / "b.txt").unlink()
    (root / "x" / "b.txt").unlink(missing_ok=True)
    fileio.remove_tree(root)
    assert not root.exists()
    assert os.listdir(tmp_path) == ["copy"]  # no local `ram:` directory


def test_beam_backend_on_an_object_store(monkeypatch):
    """Without TensorFlow (Beam's workers) remote paths go through Beam's FileSystems."""
    monkeypatch.setattr(fileio, "_backend", fileio._BeamFiles)
    root = fileio.path("ram://fileio-beam/out")
    fileio.write_atomic(root / "schema.json", "{}\n")
    (root / "vocab" / "f.txt").write_text("a\nb\n")
    assert root.is_dir() and (root / "vocab").is_dir() and (root / "schema.json").is_file()
    assert [e.name for e in root.iterdir()] == ["schema.json", "vocab"]
    with (root / "vocab" / "f.txt").open("r", encoding="utf-8") as fh:
        assert fh.read() == "a\nb\n"
    assert fileio.size(root / "vocab" / "f.txt") == 4
    fileio.remove_tree(root)
    assert not root.exists()


def test_configs_import_no_tensorflow():
    code = ("import sys; import configs.fileio, configs.features; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; "
            "p = configs.fileio.path('gs://b/x'); print(p / 'y')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "gs://b/x/y"


def test_non_chief_worker_mirrors_a_remote_run_locally(tmp_path, monkeypatch):
    from pipeline import runtime

    monkeypatch.setattr(runtime._WORKER, "temp_root", tmp_path)
    mine = runtime.output_dir("gs://bucket/run/ckpt")
    assert mine == tmp_path / runtime.REMOTE_MIRROR / "gs" / "bucket" / "run" / "ckpt"
    assert str(runtime.shared_dir(mine)) == "gs://bucket/run/ckpt"
    assert str(runtime.shared_dir("gs://bucket/run")) == "gs://bucket/run"
    local = tmp_path.parent / "run"
    assert runtime.shared_dir(runtime.output_dir(local)) == local.resolve()


# ------------------------------------------------------------------ the job and the pipeline
ROOT = "ram://remote-e2e"
TINY_SEARCH = ["search.pretrain_steps=10", "search.search_steps=20", "search.batch_size=256",
               "search.min_arch_updates=0", "search.eval_every=10"]
TINY_RETRAIN = ["retrain.batch_size=256", "retrain.max_epochs=1"]


@pytest.fixture(scope="module")
def remote_run(tmp_path_factory):
    """Raw rows written locally; the Beam job, search, retraining, export and prediction all on
    ram://, run from an empty working directory (returned with the results)."""
    from configs import experiment
    from pipeline.export import export
    from pipeline.predict import predict
    from pipeline.retrain import retrain
    from pipeline.search import run_search
    from preprocessing import run as preprocess
    from preprocessing import synthetic

    cwd = tmp_path_factory.mktemp("cwd")
    raw = tmp_path_factory.mktemp("raw") / "rows.tsv"
    synthetic.generate(str(raw), 3000, 5)
    old = os.getcwd()
    os.chdir(cwd)
    try:
        job = preprocess.run(["--dataset", "criteo", "--input", str(raw),
                              "--data_dir", f"{ROOT}/data", "--runner", "DirectRunner",
                              "--direct_running_mode", "in_memory"])
        cfg = experiment.resolve("synthetic", set_overrides=TINY_SEARCH + TINY_RETRAIN)
        dims = run_search(f"{ROOT}/data", f"{ROOT}/search", cfg, quiet=True)
        metrics = retrain(f"{ROOT}/data", f"{ROOT}/search", f"{ROOT}/retrain", cfg, quiet=True)
        version = export(f"{ROOT}/retrain", f"{ROOT}/exports", "ctr", log=lambda *_: None)
        fileio.copy_file(raw, f"{ROOT}/raw/rows.tsv")
        counts = predict(f"{ROOT}/exports/ctr", f"{ROOT}/raw/*.tsv", f"{ROOT}/pred/scores.csv",
                         quiet=True, log=lambda *_: None)
    finally:
        os.chdir(old)
    return {"cwd": cwd, "job": job, "dims": dims, "metrics": metrics, "version": version,
            "counts": counts}


def test_the_beam_job_writes_to_a_remote_data_dir(remote_run):
    from configs.features import DataSchema

    data = fileio.path(f"{ROOT}/data")
    names = {e.name for e in data.iterdir()}
    assert {"schema.json", "stats.json", "vocab", "train", "valid", "test"} <= names
    assert not [n for n in names if ".tmp-" in n]
    schema = DataSchema.load(str(data))
    assert schema.splits == remote_run["job"].schema.splits
    assert len(schema.read_vocab(str(data), schema.fields[0].name)) == \
        schema.fields[0].vocab_size - 1
    left = [f"{root}/{f}" for root, _, files in gfile.walk(str(data.parent)) for f in files
            if "/data." in root]
    assert left == []  # every file of the temporary DIR.tmp-XXXXXXXX was moved


def test_search_retrain_export_predict_on_remote_dirs(remote_run):
    search, retrained = fileio.path(f"{ROOT}/search"), fileio.path(f"{ROOT}/retrain")
    dims = json.loads((search / "dims.json").read_text())
    assert dims["field_order"] == remote_run["dims"]["field_order"]
    assert json.loads((search / "config.json").read_text())["data_dir"] == f"{ROOT}/data"
    assert gfile.glob(f"{ROOT}/search/ckpt/ckpt-*.index")
    metrics = json.loads((retrained / "metrics.json").read_text())
    assert metrics["test_auc"] == remote_run["metrics"]["test_auc"]
    for name in ("model.keras", "model_spec.json", "test_predictions.npz",
                 "valid_predictions.npz"):
        assert (retrained / name).is_file(), name
    from pipeline.runtime import load_npz

    with load_npz(retrained / "test_predictions.npz") as z:
        assert z["labels"].shape == z["probabilities"].shape

    version = remote_run["version"]
    assert str(version) == f"{ROOT}/exports/ctr/1"
    assert (version / "saved_model.pb").is_file()
    info = json.loads((version / "assets.extra" / "export.json").read_text())
    assert info["model_dir"] == f"{ROOT}/retrain" and info["data_dir"] == f"{ROOT}/data"
    loaded = tf.saved_model.load(str(version))
    assert "serving_default" in loaded.signatures

    counts = remote_run["counts"]
    assert counts["scored"] > 0 and counts["output"] == f"{ROOT}/pred/scores.csv"
    lines = fileio.path(f"{ROOT}/pred/scores.csv").read_text().splitlines()
    assert lines[0] == "row_id,source,line,probability,label"
    assert len(lines) == counts["scored"] + 1
    probs = np.array([float(r.split(",")[3]) for r in lines[1:]])
    assert ((probs > 0) & (probs < 1)).all()
    assert fileio.path(f"{ROOT}/pred/scores.csv.rejects.jsonl").is_file()
    assert not [n for n in gfile.listdir(f"{ROOT}/pred") if ".tmp-" in n]


def test_nothing_was_written_locally(remote_run):
    assert os.listdir(remote_run["cwd"]) == []
    assert not os.path.exists("ram:") and not os.path.exists("/ram:")


def test_a_rerun_resumes_from_remote_outputs(remote_run):
    """A finished retraining on ram:// is read back, not repeated; a second export is version
    2 (numbered by listing the remote directory)."""
    from configs import experiment
    from pipeline.export import export
    from pipeline.retrain import retrain

    cfg = experiment.resolve("synthetic", set_overrides=TINY_SEARCH + TINY_RETRAIN)
    again = retrain(f"{ROOT}/data", f"{ROOT}/search", f"{ROOT}/retrain", cfg, quiet=True)
    assert again == remote_run["metrics"]
    v2 = export(f"{ROOT}/retrain", f"{ROOT}/exports", "ctr", log=lambda *_: None)
    assert str(v2) == f"{ROOT}/exports/ctr/2"


def test_pipeline_run_with_a_remote_workdir(remote_run, tmp_path, monkeypatch, capsys):
    """`pipeline.run --workdir ram://...` on the job's output (copied to W/data: the stages
    resume from it): search, both retrainings, export and summary.json on ram://."""
    from pipeline import run as run_cli

    work = "ram://remote-run/w"
    fileio.copy_tree(f"{ROOT}/data", f"{work}/data")
    monkeypatch.chdir(tmp_path)
    argv = ["--workdir", work, "--quiet", "--fde_dim", "4"]
    for setting in TINY_SEARCH + TINY_RETRAIN:
        argv += ["--set", setting]
    assert run_cli.main(argv) == 0, capsys.readouterr().err
    # the report is a local directory renamed into place: said, not written
    assert "report: not written for a remote workdir" in capsys.readouterr().out
    summary = json.loads(fileio.path(f"{work}/summary.json").read_text())
    assert summary["workdir"] == work and summary["export"] == f"{work}/exports/criteo/1"
    for name in ("search/dims.json", "retrain_autodim/metrics.json", "retrain_fde4/model.keras",
                 "exports/criteo/1/saved_model.pb"):
        assert fileio.path(f"{work}/{name}").is_file(), name
    assert os.listdir(tmp_path) == []


def test_predict_reads_remote_gzip_and_refuses_a_foreign_remote_output(remote_run, tmp_path):
    import gzip

    from pipeline.predict import PredictError, predict

    raw = fileio.path(f"{ROOT}/raw/rows.tsv").read_bytes()
    fileio.path(f"{ROOT}/gz/rows.tsv.gz").write_bytes(gzip.compress(raw))
    local_out = tmp_path / "scores.csv"
    counts = predict(f"{ROOT}/exports/ctr", f"{ROOT}/gz/rows.tsv.gz", str(local_out),
                     version=1, quiet=True, log=lambda *_: None)
    assert counts["scored"] == remote_run["counts"]["scored"]
    assert local_out.read_text() == fileio.path(f"{ROOT}/pred/scores.csv").read_text() \
        .replace(f"{ROOT}/raw/rows.tsv", f"{ROOT}/gz/rows.tsv.gz")
    foreign = fileio.path(f"{ROOT}/pred/notes.txt")
    foreign.write_text("not a predict output\n")
    with pytest.raises(PredictError, match="was not written by pipeline.predict"):
        predict(f"{ROOT}/exports/ctr", f"{ROOT}/raw/*.tsv", str(foreign), quiet=True,
                log=lambda *_: None)
    assert foreign.read_text() == "not a predict output\n"
