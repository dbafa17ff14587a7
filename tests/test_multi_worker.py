"""Multi-worker search and retraining (--strategy multi_worker): two worker processes on
127.0.0.1, each with its own TF_CONFIG, against one process with the same global batch over two
logical CPUs; and a worker killed mid-run, the job restarted, the run resumed and finished."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures import REPO, random_split_data, read_json, write_dataset

VOCAB = [60, 50, 40, 30]
# a short search: 30 pre-training and 90 search steps of global batch 256, alpha every 10 steps
SEARCH = ["--preset", "synthetic", "--set", "search.batch_size=256",
          "--set", "search.pretrain_steps=30", "--set", "search.search_steps=90",
          "--set", "search.min_arch_updates=0", "--set", "search.checkpoint_every=20",
          "--set", "search.eval_every=30", "--quiet"]
RETRAIN = ["--preset", "synthetic", "--set", "retrain.batch_size=256",
           "--set", "retrain.max_epochs=2", "--quiet"]
TIMEOUT = 300


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start_workers(module: str, args: list[str], logs: Path, tmp: Path) -> list:
    """`python -m module args --strategy multi_worker` as worker 0 and 1 of a loopback cluster;
    each worker's temporary files go to tmp/w<i> (TMPDIR)."""
    ports = _free_ports(2)
    procs = []
    for i in range(2):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                     "task": {"type": "worker", "index": i}}
        (tmp / f"w{i}").mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONPATH=str(REPO), TMPDIR=str(tmp / f"w{i}"))
        out = open(logs.parent / f"{logs.name}.w{i}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", module, *args, "--strategy", "multi_worker"], cwd=REPO,
            env=env, stdout=out, stderr=subprocess.STDOUT))
        out.close()
    return procs


def _wait(procs, logs: Path) -> list[str]:
    deadline = time.monotonic() + TIMEOUT
    for p in procs:
        try:
            p.wait(max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    texts = [Path(f"{logs}.w{i}.log").read_text() for i in range(2)]
    for p, text in zip(procs, texts):
        assert p.returncode == 0, text[-3000:]
    return texts


def _run_one(module: str, args: list[str]) -> str:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, "-m", module, *args, "--logical_cpus", "2"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _dims_table(text: str) -> list[str]:
    """The `chosen dimensions` lines a search prints (field, dim, vocab, probabilities)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("chosen dimensions"))
    return [line for line in lines[start + 1:start + 1 + len(VOCAB)]]


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    """Data (4 files: each worker reads two), a two-worker search and the retraining of its
    dims; beside them the same search and retraining in one process over two logical CPUs."""
    root = tmp_path_factory.mktemp("multi_worker")
    data = root / "data"
    ids, labels = random_split_data(6000, VOCAB, seed=3)
    write_dataset(data, ids, labels, VOCAB, shards=4)
    search_dir, tmp = root / "search", root / "tmp"
    texts = _wait(_start_workers("pipeline.search", ["--data_dir", str(data), "--model_dir",
                                                     str(search_dir), *SEARCH],
                                 root / "search", tmp), root / "search")
    single_dir = root / "single_search"
    single = _run_one("pipeline.search", ["--data_dir", str(data), "--model_dir",
                                          str(single_dir), *SEARCH])
    retrain_dir = root / "retrain"
    retrain_texts = _wait(_start_workers(
        "pipeline.retrain", ["--data_dir", str(data), "--dims", str(search_dir / "dims.json"),
                             "--model_dir", str(retrain_dir), *RETRAIN], root / "retrain", tmp),
        root / "retrain")
    single_retrain = root / "single_retrain"
    _run_one("pipeline.retrain", ["--data_dir", str(data), "--dims", str(search_dir / "dims.json"),
                                  "--model_dir", str(single_retrain), *RETRAIN])
    return {"root": root, "data": data, "search_dir": search_dir, "texts": texts,
            "single_dir": single_dir, "single": single, "retrain_dir": retrain_dir,
            "retrain_texts": retrain_texts, "single_retrain": single_retrain, "tmp": tmp}


def test_multi_worker_search_workers_agree_and_only_the_chief_writes(cluster_run):
    r = cluster_run
    chief, other = r["texts"]
    assert "2 replica(s)" in chief and "2 replica(s)" in other
    # both workers derived the same architecture, the one in the chief's dims.json
    assert _dims_table(chief) == _dims_table(other)
    dims = read_json(r["search_dir"] / "dims.json")
    assert [int(line.split()[2]) for line in _dims_table(other)] == [
        dims["fields"][n]["dim"] for n in dims["field_order"]]
    # the chief's directory holds one run's files; the other worker's copies (checkpoints,
    # summaries, dims.json) were in its temporary directory, removed when it ended
    assert sorted(p.name for p in (r["search_dir"] / "ckpt").glob("ckpt-*.index"))
    assert list((r["tmp"] / "w1").iterdir()) == []
    assert not any(p.name.startswith("autodim-worker") for p in (r["tmp"] / "w0").iterdir())


def test_multi_worker_search_matches_one_process_with_the_same_global_batch(cluster_run):
    """Each worker reads its own files (one process's one input pipeline reads them all), so
    the batches, hence the trajectories, differ. The tolerance: in both runs the two fields that
    carry the planted signal get larger dims on average than the two noise fields, and the
    derived architecture's validation AUC is within 0.02."""
    r = cluster_run
    cluster = read_json(r["search_dir"] / "dims.json")
    single = read_json(r["single_dir"] / "dims.json")
    for run in (cluster, single):
        dims = {n: v["dim"] for n, v in run["fields"].items()}
        assert dims["f0"] + dims["f1"] > dims["f2"] + dims["f3"], dims
    assert cluster["final_metrics"]["derived_valid_auc"] == pytest.approx(
        single["final_metrics"]["derived_valid_auc"], abs=0.02)


def test_multi_worker_retraining_matches_one_process(cluster_run):
    r = cluster_run
    cluster = read_json(r["retrain_dir"] / "metrics.json")
    single = read_json(r["single_retrain"] / "metrics.json")
    assert cluster["params"] == single["params"]
    assert cluster["test_auc"] == pytest.approx(single["test_auc"], abs=0.02)
    assert cluster["test_auc"] > 0.6
    assert (r["retrain_dir"] / "model.keras").exists()
    # the other worker scored the same model: its log line names the same test AUC
    assert f"{cluster['test_auc']:.4f}" in r["retrain_texts"][1]


def test_multi_worker_search_resumes_after_a_worker_is_killed(cluster_run, tmp_path):
    """Worker 1 is SIGKILLed once the chief has a checkpoint past step 40; the chief fails (its
    collectives are aborted: TensorFlow's health check) or is stopped; the job restarted
    resumes from the chief's last checkpoint and ends with the uninterrupted run's dims."""
    r = cluster_run
    model_dir = tmp_path / "search"
    args = ["--data_dir", str(r["data"]), "--model_dir", str(model_dir), *SEARCH]
    procs = _start_workers("pipeline.search", args, tmp_path / "first", tmp_path / "tmp")
    ckpt = model_dir / "ckpt"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        if any(int(p.stem.split("-")[1]) >= 40 for p in ckpt.glob("ckpt-*.index")):
            break
        time.sleep(0.05)
    assert all(p.poll() is None for p in procs), "the run ended before it could be killed"
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    try:  # the chief's collectives are aborted when it finds its peer down
        procs[0].wait(90)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        procs[0].wait()
    assert procs[0].returncode != 0
    assert "another worker of the cluster is gone" in (tmp_path / "first.w0.log").read_text()
    assert not (model_dir / "dims.json").exists()
    texts = _wait(_start_workers("pipeline.search", args, tmp_path / "again", tmp_path / "tmp"),
                  tmp_path / "again")
    for text in texts:
        assert "resumed at step" in text and "ckpt-" in text
    resumed = read_json(model_dir / "dims.json")
    uninterrupted = read_json(r["search_dir"] / "dims.json")
    assert {n: v["dim"] for n, v in resumed["fields"].items()} == {
        n: v["dim"] for n, v in uninterrupted["fields"].items()}
    for n in resumed["field_order"]:
        assert resumed["fields"][n]["probabilities"] == pytest.approx(
            uninterrupted["fields"][n]["probabilities"], abs=1e-3), n


def test_multi_worker_flags_are_checked_before_anything_runs(tmp_path):
    from pipeline import search

    env_before = os.environ.pop("TF_CONFIG", None)
    try:
        out = tmp_path / "m"
        rc = search.main(["--data_dir", str(tmp_path), "--model_dir", str(out),
                          "--strategy", "multi_worker", "--logical_cpus", "2"])
        assert rc == 2 and not out.exists()
    finally:
        if env_before is not None:
            os.environ["TF_CONFIG"] = env_before


@pytest.mark.parametrize("tf_config, message", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{not json", "TF_CONFIG is not JSON"),
    ('{"cluster": {"worker": ["a:1"]}}', "needs a \"cluster\" and a \"task\""),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}',
     "is not one of the cluster's chief or worker tasks"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}',
     "cluster job 'ps'"),
])
def test_multi_worker_bad_tf_config_is_refused(tf_config, message):
    from configs.loader import ConfigError
    from pipeline.strategy import cluster_role

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        cluster_role(tf_config)


def test_multi_worker_roles():
    from pipeline.strategy import cluster_role

    two = {"worker": ["a:1", "b:2"]}
    assert cluster_role(json.dumps({"cluster": two, "task": {"type": "worker", "index": 0}})) \
        == (True, 0, 2)
    assert cluster_role(json.dumps({"cluster": two, "task": {"type": "worker", "index": 1}})) \
        == (False, 1, 2)
    with_chief = {"chief": ["c:0"], **two}
    assert cluster_role(json.dumps({"cluster": with_chief,
                                    "task": {"type": "chief", "index": 0}})) == (True, 0, 3)
    assert cluster_role(json.dumps({"cluster": with_chief,
                                    "task": {"type": "worker", "index": 0}})) == (False, 1, 3)


def test_multi_worker_output_dirs_mirror_the_run_and_map_back(tmp_path, monkeypatch):
    from pipeline import runtime

    root = tmp_path / "worker-root"
    root.mkdir()
    monkeypatch.setattr(runtime._WORKER, "chief", False)
    monkeypatch.setattr(runtime._WORKER, "temp_root", root)
    run = tmp_path / "run"
    mine = runtime.output_dir(run)
    assert mine == root / run.resolve().relative_to("/")
    assert runtime.output_dir(run / "trials" / "2") == mine / "trials" / "2"
    assert runtime.output_dir(mine) == mine  # already this worker's
    assert runtime.shared_dir(mine / "ckpt") == run.resolve() / "ckpt"
    assert runtime.shared_dir(run) == run
    # a non-chief checks the chief's config.json and writes its own copy only
    record = {"kind": "search", "config_hash": "a", "schema_hash": "s"}
    assert runtime.prepare_model_dir(run, record) == mine
    assert not run.exists() and json.loads((mine / "config.json").read_text())["kind"] == "search"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({**record, "config_hash": "b"}))
    from configs.loader import ConfigError

    with pytest.raises(ConfigError, match="different config_hash"):
        runtime.prepare_model_dir(run, record)


def test_multi_worker_pipeline_run_needs_preprocessed_data_and_no_param_costs(tmp_path, capsys):
    """Refused before the strategy waits for the other workers, nothing written."""
    from pipeline import run

    work = tmp_path / "w"
    assert run.main(["--workdir", str(work), "--demo", "--strategy", "multi_worker"]) == 2
    assert "trains on preprocessed data" in capsys.readouterr().err
    assert not work.exists()
    ids, labels = random_split_data(400, VOCAB, seed=1)
    write_dataset(work / "data", ids, labels, VOCAB)
    listing = sorted(p.name for p in work.rglob("*"))
    assert run.main(["--workdir", str(work), "--param_costs", "0.01,0.05",
                     "--strategy", "multi_worker"]) == 2
    assert "--param_costs is not available with --strategy multi_worker" in \
        capsys.readouterr().err
    assert sorted(p.name for p in work.rglob("*")) == listing
