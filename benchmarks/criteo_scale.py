"""The whole pipeline on Criteo-shaped data of any size: per stage wall time, rate, peak memory
and disk written, the vocabulary sizes, the search schedule, and AutoDim against FDE and the
planted truth.

    python -m benchmarks.criteo_scale --workdir DIR --rows 40000000 [--shards 8] [--seed 0]
        [--preset criteo] [--set KEY=VALUE ...] [--preprocess_config FILE] [--predict_shards 1]
        [--stages generate,preprocess,train,predict]

Stages, each run as the user runs it, in a subprocess whose process tree is measured (the peak
of the summed RSS of the tree, polled from /proc every 0.5 s; output to DIR/STAGE.log):
  generate    `python -m preprocessing.synthetic --profile criteo --rows N --shards K`
              -> DIR/raw/criteo-*.tsv and DIR/raw/criteo.tsv.truth.json
  preprocess  `python -m preprocessing.run --dataset criteo --input 'DIR/raw/criteo-*.tsv'`
              -> DIR/run/data
  train       search, retrain_autodim, retrain_fde and export, from one
              `python -m pipeline.run --workdir DIR/run --truth ... --quiet --no_report`; its stage
              lines ([3/5], [4/5], [5/5]) split its wall time and memory samples into stages
  predict     `python -m pipeline.predict` over the first `--predict_shards` raw files through
              the export -> DIR/predict/scores.csv
Each finished stage's figures go to DIR/figures/STAGE.json and a rerun skips it, so a run that
was stopped resumes (pipeline.run resumes its own stages too). Disk written is the size of each
stage's output directory. The report (also DIR/figures/report.md) ends with the line
`rows=N total_hours=H peak_rss_gib=G disk_gb=D auc_delta=X params_share=Y`.

Nothing is deleted: DIR holds gigabytes at Criteo sizes (about 240 bytes per raw row, 60 per
preprocessed row); remove it when its figures are recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.preprocess import _tree_rss_kb
from configs.cli import JobError, StrictArgumentParser, UsageError, run_main

STAGE_MARKERS = (("[3/5]", "search"), ("[4/5] retraining the searched", "retrain_autodim"),
                 ("[4/5] retraining the FDE", "retrain_fde"), ("[5/5]", "export"))
TRAIN_STAGES = ("search", "retrain_autodim", "retrain_fde", "export")
STAGES = ("generate", "preprocess", "train", "predict")


def _du(path: Path) -> int:
    """Bytes of the files under `path` (0 if absent)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _save(figures_dir: Path, stage: str, figures: dict) -> None:
    figures_dir.mkdir(parents=True, exist_ok=True)
    tmp = figures_dir / f".{stage}.json.tmp"
    tmp.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, figures_dir / f"{stage}.json")


def _save_first(figures_dir: Path, stage: str, figures: dict, run: Path) -> None:
    """A pipeline.run stage's figures as it ends, unless an earlier (interrupted) run already
    measured that stage: a resumed run skips the finished work, so its time for the stage is
    not the stage's."""
    if _load(figures_dir, stage) is not None:
        return
    dirs = {"search": run / "search", "retrain_autodim": run / "retrain_autodim",
            "retrain_fde": run / "retrain_fde32", "export": run / "exports"}
    extra = {"disk_bytes": _du(dirs[stage])} if stage in dirs else {}
    _save(figures_dir, stage, {**figures, **extra})


def _load(figures_dir: Path, stage: str) -> dict | None:
    path = figures_dir / f"{stage}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _measured(cmd: list[str], stage: str, log: Path, poll: float = 0.5) -> dict:
    """Runs `cmd` with its output appended to `log`: seconds and peak tree RSS (MB)."""
    print(f"== {stage} ({time.strftime('%H:%M:%S')}): {' '.join(cmd)}", flush=True)
    start, peak = time.monotonic(), 0
    with open(log, "a", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            peak = max(peak, _tree_rss_kb(proc.pid))
            time.sleep(poll)
    if proc.returncode != 0:
        raise JobError(f"stage {stage} failed (exit {proc.returncode}); its output: {log}")
    return {"seconds": time.monotonic() - start, "peak_tree_mb": peak / 1024}


def run_staged(cmd: list[str], log: Path, poll: float = 0.5,
               on_stage: Callable[[str, dict], None] | None = None) -> dict[str, dict]:
    """Runs pipeline.run; per stage (by its marker lines): seconds and peak tree RSS (MB).
    `on_stage(stage, figures)` is called as each stage ends (the next marker line, or a clean
    exit), so a run stopped part-way keeps the figures of the stages it finished."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    current = ["setup"]
    marks: list[tuple[str, float]] = [("setup", start)]
    peaks: dict[str, float] = {}
    done = threading.Event()

    def sample():
        while not done.is_set():
            mb = _tree_rss_kb(proc.pid) / 1024
            peaks[current[0]] = max(peaks.get(current[0], 0.0), mb)
            done.wait(poll)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stages: dict[str, dict] = {}

    def close(t1: float) -> None:  # the stage of marks[-1] ended at t1
        stage, t0 = marks[-1]
        stages[stage] = {"seconds": t1 - t0, "peak_tree_mb": peaks.get(stage, 0.0)}
        if on_stage is not None:
            on_stage(stage, stages[stage])

    with open(log, "a", encoding="utf-8") as out:
        for line in proc.stdout:
            out.write(line)
            out.flush()
            for marker, stage in STAGE_MARKERS:
                if line.startswith(marker):
                    now = time.monotonic()
                    close(now)
                    current[0] = stage
                    marks.append((stage, now))
                    print(f"== {stage} ({time.strftime('%H:%M:%S')})", flush=True)
    rc = proc.wait()
    end = time.monotonic()
    done.set()
    sampler.join()
    if rc != 0:
        raise JobError(f"pipeline.run failed (exit {rc}); its output: {log}")
    close(end)
    return stages


def main(argv=None) -> int:
    parser = StrictArgumentParser(prog="python -m benchmarks.criteo_scale", description=__doc__)
    parser.add_argument("--workdir", required=True,
                        help="the run's directory (resumable; never deleted)")
    parser.add_argument("--rows", type=int, default=40_000_000, help="synthetic raw rows")
    parser.add_argument("--shards", type=int, default=8, help="raw files to write")
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    parser.add_argument("--preset", default="criteo", help="experiment preset")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="experiment config override for pipeline.run (repeatable)")
    parser.add_argument("--preprocess_config", help="YAML PreprocessConfig for the Beam job")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="the stages to run now, in order (a stage already finished is "
                             "skipped; 'train' is pipeline.run's search, retraining and export)")
    parser.add_argument("--predict_shards", type=int, default=1,
                        help="raw files scored through the export (0: no predict stage)")
    args = parser.parse_args(argv)
    return run_main(lambda: _run(_checked(args)))


def _checked(args):
    if args.rows < 1 or args.shards < 1 or args.predict_shards < 0:
        raise UsageError("--rows and --shards must be >= 1, --predict_shards >= 0")
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown or not args.stages:
        raise UsageError(f"--stages: unknown stage {', '.join(unknown) or '(none)'}; known: "
                         f"{', '.join(STAGES)}")
    return args


def _run(args) -> int:
    work = Path(args.workdir)
    raw, run, figs = work / "raw", work / "run", work / "figures"
    truth = raw / "criteo.tsv.truth.json"
    py = sys.executable
    work.mkdir(parents=True, exist_ok=True)

    if "generate" in args.stages and _load(figs, "generate") is None:
        raw.mkdir(exist_ok=True)
        if truth.exists():
            raise UsageError(f"{raw} holds generated rows without their figures "
                             f"({figs / 'generate.json'}); use a new --workdir")
        r = _measured([py, "-m", "preprocessing.synthetic", "--profile", "criteo", "--rows",
                       str(args.rows), "--shards", str(args.shards), "--seed", str(args.seed),
                       "--output", str(raw / "criteo.tsv")], "generate", work / "generate.log")
        _save(figs, "generate", {**r, "rows": args.rows, "disk_bytes": _du(raw)})
    raw_glob = str(raw / "criteo-*.tsv")

    if "preprocess" in args.stages and _load(figs, "preprocess") is None:
        cmd = [py, "-m", "preprocessing.run", "--dataset", "criteo", "--input", raw_glob,
               "--data_dir", str(run / "data")]
        if args.preprocess_config:
            cmd += ["--preprocess_config", args.preprocess_config]
        r = _measured(cmd, "preprocess", work / "preprocess.log")
        _save(figs, "preprocess", {**r, "rows": args.rows, "disk_bytes": _du(run / "data")})

    if "train" in args.stages and _load(figs, "export") is None:
        cmd = [py, "-m", "pipeline.run", "--workdir", str(run), "--dataset", "criteo",
               "--input", raw_glob, "--truth", str(truth), "--preset", args.preset, "--quiet",
               "--no_report"]  # the export stage's figures stay the export's alone
        for kv in args.set:
            cmd += ["--set", kv]
        print(f"== pipeline.run: {' '.join(cmd)}", flush=True)
        run_staged(cmd, work / "pipeline_run.log",
                   on_stage=lambda stage, f: _save_first(figs, stage, f, run))

    if "predict" in args.stages and args.predict_shards and _load(figs, "predict") is None:
        files = sorted(raw.glob("criteo-*.tsv"))[:args.predict_shards]
        exports = run / "exports" / "criteo"
        out = work / "predict" / "scores.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        pattern = files[0] if len(files) == 1 else raw / "criteo-0000[0-9]-of-*.tsv"
        cmd = [py, "-m", "pipeline.predict", "--model", str(exports), "--input", str(pattern),
               "--output", str(out), "--quiet"]
        r = _measured(cmd, "predict", work / "predict.log")
        lines = sum(1 for _ in open(out, encoding="utf-8")) - 1
        _save(figs, "predict", {**r, "rows": lines, "disk_bytes": _du(out.parent)})

    if not (run / "summary.json").exists():
        print(f"stages {', '.join(args.stages)} done; the report needs all of them")
        return 0
    report = _report(work, args)
    (figs / "report.md").write_text(report + "\n", encoding="utf-8")
    print(report)
    return 0


def _report(work: Path, args) -> str:
    figs, run = work / "figures", work / "run"
    schema = json.loads((run / "data" / "schema.json").read_text(encoding="utf-8"))
    stats_path = run / "data" / "stats.json"
    stats = json.loads(stats_path.read_text(encoding="utf-8")) if stats_path.exists() else {}
    dims = json.loads((run / "search" / "dims.json").read_text(encoding="utf-8"))
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    auto = json.loads((run / "retrain_autodim" / "metrics.json").read_text(encoding="utf-8"))
    fde = json.loads((run / "retrain_fde32" / "metrics.json").read_text(encoding="utf-8"))

    lines = ["| stage | wall | rate | peak RSS (process tree) | disk written |",
             "|---|---|---|---|---|"]
    total_s, peak, disk = 0.0, 0.0, 0
    for stage in ("generate", "preprocess", "setup", *TRAIN_STAGES, "predict"):
        f = _load(figs, stage)
        if not f:
            continue
        secs = f.get("seconds", 0.0)
        mb = f.get("peak_tree_mb", 0.0)
        total_s, peak, disk = total_s + secs, max(peak, mb), disk + f.get("disk_bytes", 0)
        rate = ""
        if stage in ("generate", "preprocess", "predict"):
            rate = f"{f['rows'] / secs:,.0f} rows/s"
        elif stage == "search":
            n = (dims["schedule"]["pretrain_steps"] + dims["schedule"]["search_steps"])
            rate = f"{n * _batch(run, 'search') / secs:,.0f} examples/s (whole stage)"
        elif stage.startswith("retrain"):
            m = auto if stage == "retrain_autodim" else fde
            rate = f"{m['examples_per_second']:,.0f} examples/s (training)"
        lines.append(f"| {stage} | {_hms(secs)} | {rate} | {mb / 1024:.2f} GiB | "
                     f"{f.get('disk_bytes', 0) / 1e9:.2f} GB |")
    lines.append("")
    lines.append("vocabulary sizes after min-count (field: ids): " + ", ".join(
        f"{f['name']}: {f['vocab_size']:,}" for f in schema["fields"]))
    caps = stats.get("vocab_caps")
    if caps:
        lines.append(f"vocabulary caps applied: {json.dumps(caps)}")
    lines.append("rows per split: " + ", ".join(f"{k} {v:,}" for k, v in schema["splits"].items()))
    scfg = json.loads((run / "search" / "config.json").read_text(encoding="utf-8"))["config"]
    temp = scfg["search"]["temperature"]
    temp_rule = (f"anneal 1 -> {scfg['search']['temperature_min']} over the search steps"
                 if temp == "anneal" else
                 f"paper: max({scfg['search']['temperature_min']}, 1 - "
                 f"{scfg['search']['temperature_decay']} t)")
    lines.append("search schedule: " + json.dumps(dims["schedule"]) + f"; temperature {temp_rule}")
    lines.append(f"AutoDim: test AUC {auto['test_auc']:.4f}, logloss {auto['test_logloss']:.4f}, "
                 f"{auto['params']:,} params, {auto['steps']} steps")
    lines.append(f"FDE-32:  test AUC {fde['test_auc']:.4f}, logloss {fde['test_logloss']:.4f}, "
                 f"{fde['params']:,} params, {fde['steps']} steps")
    if "truth" in summary:
        t = summary["truth"]
        lines.append("chosen dim (planted latent dim; 0 = noise): " + ", ".join(
            f"{n}={summary['dims'][n]}({t[n]['latent_dim']})" for n in dims["field_order"]))
    lines.append(f"rows={args.rows} total_hours={total_s / 3600:.2f} "
                 f"peak_rss_gib={peak / 1024:.2f} disk_gb={disk / 1e9:.1f} "
                 f"auc_delta={summary['auc_delta']:+.4f} "
                 f"params_share={summary['params_share_of_fde']:.3f}")
    return "\n".join(lines)


def _batch(run: Path, stage: str) -> int:
    cfg = json.loads((run / stage / "config.json").read_text(encoding="utf-8"))
    return int(cfg["config"]["search"]["batch_size"])


def _hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


if __name__ == "__main__":
    sys.exit(main())
