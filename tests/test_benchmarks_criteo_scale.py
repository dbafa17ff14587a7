"""benchmarks.criteo_scale: the stage split of pipeline.run's output, its memory sampling and its
flags (the full run is a benchmark, not a test: BENCHMARKS.md)."""

import sys
import time

import pytest

from benchmarks import criteo_scale

# Prints pipeline.run's stage lines; holds ~150 MB during "search" only.
FAKE_RUN = """
import time
print("[1/5] setup", flush=True); time.sleep(0.6)
print("[3/5] searching dimensions", flush=True)
block = bytearray(150 * 1024 * 1024)
for i in range(0, len(block), 4096):
    block[i] = 1
time.sleep(1.2)
del block
print("[4/5] retraining the searched dimensions", flush=True); time.sleep(0.6)
print("[4/5] retraining the FDE-32 baseline", flush=True); time.sleep(0.6)
print("[5/5] exporting", flush=True); time.sleep(0.6)
"""


def test_run_staged_splits_time_and_memory_by_stage_lines(tmp_path):
    log = tmp_path / "run.log"
    start = time.monotonic()
    stages = criteo_scale.run_staged([sys.executable, "-c", FAKE_RUN], log, poll=0.1)
    wall = time.monotonic() - start
    assert list(stages) == ["setup", "search", "retrain_autodim", "retrain_fde", "export"]
    # each stage lasts about its sleep (a stage starts when its line is read, so the reading of
    # the line before may shorten it a little), and the stages add up to the whole run
    assert stages["search"]["seconds"] >= 1.1
    for stage in ("setup", "retrain_autodim", "retrain_fde", "export"):
        assert stages[stage]["seconds"] >= 0.5
    assert sum(s["seconds"] for s in stages.values()) == pytest.approx(wall, abs=0.3)
    # the 150 MB block is seen in the search stage only
    assert stages["search"]["peak_tree_mb"] > 140
    assert stages["retrain_fde"]["peak_tree_mb"] < stages["search"]["peak_tree_mb"] - 100
    assert "[5/5] exporting" in log.read_text()


def test_a_failing_pipeline_run_is_a_job_error_naming_its_log(tmp_path):
    log = tmp_path / "run.log"
    with pytest.raises(Exception, match="exit 3.*run.log"):
        criteo_scale.run_staged([sys.executable, "-c", "print('[3/5] x'); raise SystemExit(3)"],
                                log)


def test_a_stopped_run_keeps_its_finished_stages_and_a_resume_does_not_rewrite_them(tmp_path):
    """Each stage's figures are saved as it ends; a resumed pipeline.run (its search already
    done, so 'searching' passes at once) leaves the first run's search figures in place."""
    figs, run = tmp_path / "figures", tmp_path / "run"
    (run / "search").mkdir(parents=True)
    (run / "search" / "dims.json").write_text("{}")

    def save(stage, f):
        criteo_scale._save_first(figs, stage, f, run)

    stopped = ("import time; print('[1/5] setup', flush=True); time.sleep(0.3); "
               "print('[3/5] searching', flush=True); time.sleep(0.8); "
               "print('[4/5] retraining the searched dims', flush=True); raise SystemExit(3)")
    with pytest.raises(Exception, match="exit 3"):
        criteo_scale.run_staged([sys.executable, "-c", stopped], tmp_path / "a.log", poll=0.1,
                                on_stage=save)
    first = criteo_scale._load(figs, "search")
    assert first["seconds"] >= 0.7 and first["disk_bytes"] == 2
    assert criteo_scale._load(figs, "retrain_autodim") is None  # it never ended
    resumed = ("print('[1/5] setup', flush=True); print('[3/5] searching', flush=True); "
               "print('[4/5] retraining the searched dims', flush=True)")
    stages = criteo_scale.run_staged([sys.executable, "-c", resumed], tmp_path / "b.log",
                                     poll=0.1, on_stage=save)
    assert stages["search"]["seconds"] < 0.5  # the resume's own figure ...
    assert criteo_scale._load(figs, "search") == first  # ... is not written over the first
    assert criteo_scale._load(figs, "retrain_autodim") is not None


def test_du_counts_file_bytes(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 1000)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_bytes(b"y" * 234)
    assert criteo_scale._du(tmp_path) == 1234
    assert criteo_scale._du(tmp_path / "a") == 1000
    assert criteo_scale._du(tmp_path / "missing") == 0


@pytest.mark.parametrize("argv, message", [
    (["--stages", "generate,trian"], "unknown stage trian"),
    (["--rows", "0"], "--rows and --shards must be >= 1"),
])
def test_bad_flags_are_refused_before_anything_is_written(tmp_path, argv, message, capsys):
    work = tmp_path / "w"
    assert criteo_scale.main(["--workdir", str(work), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not work.exists()


def test_raw_rows_without_their_figures_are_not_reused(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "criteo.tsv.truth.json").write_text("{}")
    assert criteo_scale.main(["--workdir", str(tmp_path), "--stages", "generate"]) == 2
    assert "without their figures" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]

