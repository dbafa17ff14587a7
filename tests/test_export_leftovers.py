"""A killed export's temporary directory is removed by the next export; nothing else is."""
from __future__ import annotations

import os
import socket
import subprocess
import sys


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_next_export_removes_only_a_killed_exports_temporary(served, tmp_path):  # noqa: F811
    from pipeline.export import export

    _, _, model_dir, _ = served
    base = tmp_path / "exports" / "criteo"
    base.mkdir(parents=True)
    host = socket.gethostname()
    killed = base / f".tmp-{host}-{_dead_pid()}-1"
    (killed / "variables").mkdir(parents=True)
    (killed / "saved_model.pb").write_bytes(b"partial")
    live = base / f".tmp-{host}-{os.getppid()}-2"  # a live process: another exporter at work
    other_host = base / f".tmp-elsewhere-{_dead_pid()}-3"
    unrelated = base / ".tmp-notes"
    for d in (live, other_host, unrelated):
        d.mkdir()
    logged = []
    version = export(model_dir, tmp_path / "exports", log=logged.append)
    assert version == base / "1" and (version / "saved_model.pb").is_file()
    assert not killed.exists()
    assert live.is_dir() and other_host.is_dir() and unrelated.is_dir()
    assert any(str(killed) in line and "killed" in line for line in logged)
    assert sorted(p.name for p in base.iterdir()) == sorted(
        ["1", live.name, other_host.name, unrelated.name])


def test_a_locked_leftover_of_a_pid_that_looks_dead_is_kept(tmp_path):
    """Another container with the same host name (its own PID namespace) may be exporting: its
    PID looks dead here, but it holds the directory's lock."""
    from pipeline.export import remove_dead_leftovers

    busy = tmp_path / f".tmp-{socket.gethostname()}-{_dead_pid()}-4"
    busy.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from configs.cli import hold_directory; "
         "hold_directory(sys.argv[1]); print('held', flush=True); time.sleep(60)", str(busy)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert remove_dead_leftovers(tmp_path, log=lambda *_: None) == []
        assert busy.is_dir()
    finally:
        holder.kill()
        holder.wait()
    assert remove_dead_leftovers(tmp_path, log=lambda *_: None) == [busy]
