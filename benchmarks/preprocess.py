"""Throughput and memory of the preprocessing job against a bare Beam read of the same files.

    python -m benchmarks.preprocess [--rows 1000000] [--shards 4] [--repeat 3] [--workdir DIR]
        [Beam options]

Generates `rows` and `4 * rows` synthetic Criteo-format rows (preprocessing.synthetic) split over
`--shards` files (the job reads each file sequentially, so parallelism comes from files), then
runs, each in its own subprocess with the same runner options (default: DirectRunner,
multi-process, 2 workers):
- bare: ReadFromText(glob) | Count.Globally (no parsing, nothing written),
- job:  python -m preprocessing.run --dataset criteo.
Wall time includes start-up. Memory: the peak of the summed RSS of the subprocess tree (polled
from /proc every 0.2 s) and the largest single-process max RSS (getrusage of the children).
At 4x rows the bare read and the job run `--repeat` times, alternately, because this machine's
speed drifts by tens of percent between runs (and a ratio of two runs minutes apart measures the
drift). Last line: `overhead_ratio=<median over the pairs of job time / bare time at 4x rows>
rows_per_s=<job rows/s at 4x rows, median run> mem_ratio_4x=<largest job peak tree RSS at 4x
rows / at 1x rows>`.

    python -m benchmarks.preprocess --distinct 250000,1000000,4000000 [--shards 4]
        [--preprocess_config FILE] [--workdir DIR] [Beam options]

The vocabulary pass against the number of distinct values of one field: per N, rows in Criteo
format whose C3 takes N values seen once (the long tail, dropped by the min count of 10) and
N/100 values seen 20 times each (they survive); the other fields take a few values. Only the job
runs; per N: wall time, the peak summed RSS of the process tree, the peak RSS of the runner
process and of the largest Beam worker process (each polled from /proc every 0.2 s), C3's
vocabulary size and tokens cut. Last line: `tree_mb=<per N> worker_mb=<per N>`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from configs.cli import StrictArgumentParser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BEAM = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]

_BARE = """
import sys, apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
pattern, out = sys.argv[1], sys.argv[2]
with beam.Pipeline(options=PipelineOptions(sys.argv[3:])) as p:
    (p | beam.io.ReadFromText(pattern) | beam.combiners.Count.Globally()
       | beam.Map(lambda n: open(out, "w").write(str(n))))
"""


def write_rows(directory: str, rows: int, shards: int, seed: int = 1) -> str:
    """Synthetic Criteo rows over `shards` files; returns their glob."""
    from preprocessing import synthetic

    os.makedirs(directory, exist_ok=True)
    files = [open(os.path.join(directory, f"part-{i:03d}.txt"), "w") for i in range(shards)]
    try:
        for i, chunk in enumerate(synthetic.iter_chunks(rows, seed)):
            files[i % shards].write(chunk)
    finally:
        for f in files:
            f.close()
    return os.path.join(directory, "part-*.txt")


def _tree_rss_kb(root: int, per_pid: dict[int, int] | None = None) -> int:
    """Summed VmRSS of `root` and its descendants, from /proc; with `per_pid`, also each
    process's largest VmRSS so far (kB, by pid)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as fh:
                status = fh.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        pid, ppid = int(name), int(fields.get("PPid", "0").strip())
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        if per_pid is not None and pid in rss:
            per_pid[pid] = max(per_pid.get(pid, 0), rss[pid])
        todo += children.get(pid, [])
    return total


def measure(cmd: list[str]) -> dict:
    """Runs `cmd`; wall seconds, peak tree RSS (MB), largest process max RSS (MB), and from
    /proc the peak RSS of `cmd`'s own process (MB) and of the largest of its descendants."""
    wrapper = ("import resource, subprocess, sys, json; r = subprocess.run(sys.argv[1:]); "
               "print(json.dumps({'rc': r.returncode, 'maxrss_kb': "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", wrapper, *cmd], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, per_pid = 0, {}
    while proc.poll() is None:
        peak = max(peak, _tree_rss_kb(proc.pid, per_pid))
        time.sleep(0.2)
    wall = time.perf_counter() - start
    out, err = proc.communicate()
    last = json.loads(out.strip().splitlines()[-1])
    if last["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {last['rc']}):\n{err[-3000:]}")
    # per_pid holds the wrapper (proc.pid), `cmd` (its only child) and cmd's descendants
    own = [pid for pid in per_pid if pid != proc.pid]
    main_pid = min(own, default=None)  # started first: the lowest pid unless pids wrapped
    return {
        "seconds": wall,
        "peak_tree_mb": peak / 1024,
        "max_process_mb": last["maxrss_kb"] / 1024,
        "main_process_mb": per_pid.get(main_pid, 0) / 1024,
        "largest_descendant_mb": max((per_pid[p] for p in own if p != main_pid),
                                     default=0) / 1024,
    }


def bench(pattern: str, rows: int, workdir: str, beam_args: list[str]) -> dict:
    """One bare read, then one job run, of the same files."""
    count_file = os.path.join(workdir, f"count-{rows}.txt")
    bare = measure([sys.executable, "-c", _BARE, pattern, count_file, *beam_args])
    counted = int(open(count_file).read())
    if counted != rows:
        raise RuntimeError(f"bare read counted {counted} rows, expected {rows}")
    out = os.path.join(workdir, f"out-{rows}")
    job = measure([sys.executable, "-m", "preprocessing.run", "--dataset", "criteo",
                   "--input", pattern, "--data_dir", out, "--overwrite", *beam_args])
    stats = json.load(open(os.path.join(out, "stats.json")))
    if stats["rows_written_total"] + stats["rows_deadlettered"] != rows:
        raise RuntimeError(f"job accounted for {stats['rows_read']} rows, expected {rows}")
    shutil.rmtree(out)
    return {"bare": bare, "job": job}


def write_distinct_rows(directory: str, distinct: int, shards: int) -> str:
    """Criteo-format rows whose C3 has `distinct` values seen once and `distinct // 100` values
    seen 20 times each (every sixth row), over `shards` files; returns their glob."""
    os.makedirs(directory, exist_ok=True)
    hot = max(1, distinct // 100)
    rows = distinct + 20 * hot
    empty13, empty23 = "\t" * 13, "\t" * 23
    files = [open(os.path.join(directory, f"part-{i:03d}.txt"), "w") for i in range(shards)]
    try:
        unique, block = 0, 10_000
        for start in range(0, rows, block):
            lines = []
            for r in range(start, min(rows, start + block)):
                if r % 6 == 0 and r // 6 < 20 * hot:
                    c3 = f"h{(r // 6) % hot:07x}"
                else:
                    c3, unique = f"u{unique:08x}", unique + 1
                lines.append(f"{r & 1}\t{r % 50}{empty13}a{r % 100}\tb{r % 7}\t{c3}{empty23}\n")
            files[(start // block) % shards].write("".join(lines))
    finally:
        for f in files:
            f.close()
    if unique != distinct:
        raise RuntimeError(f"wrote {unique} once-seen values, expected {distinct}")
    return os.path.join(directory, "part-*.txt")


def bench_distinct(sizes: list[int], shards: int, workdir: str, beam_args: list[str],
                   config: str | None) -> int:
    """The job on write_distinct_rows per size; prints one line per size and a summary."""
    tree, worker = [], []
    for n in sizes:
        pattern = write_distinct_rows(os.path.join(workdir, f"distinct-{n}"), n, shards)
        out = os.path.join(workdir, f"out-distinct-{n}")
        extra = ["--preprocess_config", config] if config else []
        r = measure([sys.executable, "-m", "preprocessing.run", "--dataset", "criteo",
                     "--input", pattern, "--data_dir", out, "--overwrite", *extra, *beam_args])
        stats = json.load(open(os.path.join(out, "stats.json")))
        cut = stats.get("vocab_caps", {}).get("C3", {}).get("tokens_cut", 0)
        print(f"  distinct {n:>10,}  rows {stats['rows_read']:>10,}  {r['seconds']:7.1f} s  "
              f"peak tree RSS {r['peak_tree_mb']:7.0f} MB  runner {r['main_process_mb']:6.0f} MB"
              f"  largest worker {r['largest_descendant_mb']:6.0f} MB  C3 vocab "
              f"{stats['vocab_sizes']['C3']:,} (cut {cut:,})", flush=True)
        tree.append(r["peak_tree_mb"])
        worker.append(r["largest_descendant_mb"])
        shutil.rmtree(out)
        shutil.rmtree(os.path.join(workdir, f"distinct-{n}"))
    print(f"runner args: {' '.join(beam_args)}; distinct {','.join(map(str, sizes))}")
    print(f"tree_mb={','.join(f'{m:.0f}' for m in tree)} "
          f"worker_mb={','.join(f'{m:.0f}' for m in worker)}")
    return 0


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def main(argv=None) -> int:
    parser = StrictArgumentParser(beam=True, description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=4, help="input files per dataset")
    parser.add_argument("--repeat", type=int, default=3,
                        help="bare/job pairs at 4x rows, run alternately (this machine's speed "
                             "drifts between runs; the median pair ratio is reported)")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--data_root", default=None,
                        help="unused by the synthetic benchmark; accepted for symmetry with the "
                             "other benchmarks")
    parser.add_alias("--data-root", "--data_root")
    parser.add_argument("--distinct", default=None,
                        help="comma-separated N: only the job, on rows with one field of N "
                             "distinct values, most seen once (the vocabulary pass's memory)")
    parser.add_argument("--preprocess_config", default=None,
                        help="with --distinct: the job's YAML config (e.g. a max_vocab_size)")
    args, beam_args = parser.parse_args(argv)
    if args.repeat < 1 or args.rows < 1:
        parser.error(f"--rows and --repeat must be >= 1, got {args.rows} and {args.repeat}")
    try:
        sizes = [int(v) for v in (args.distinct or "").split(",") if v.strip()]
    except ValueError:
        sizes = []
    if args.distinct is not None and (not sizes or min(sizes) < 100):
        parser.error(f"--distinct must list sizes >= 100, got {args.distinct!r}")
    beam_args = beam_args or DEFAULT_BEAM
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-preprocess-")
    if sizes:
        try:
            return bench_distinct(sizes, args.shards, workdir, beam_args, args.preprocess_config)
        finally:
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
    results = {}
    try:
        for rows in (args.rows, 4 * args.rows):
            t0 = time.perf_counter()
            pattern = write_rows(os.path.join(workdir, f"data-{rows}"), rows, args.shards)
            print(f"generated {rows:,} rows in {args.shards} files "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
            pairs = results[rows] = []
            for _ in range(args.repeat if rows > args.rows else 1):
                pairs.append(bench(pattern, rows, workdir, beam_args))
                for name in ("bare", "job"):
                    r = pairs[-1][name]
                    print(f"  {name:<4} {rows:>10,} rows  {r['seconds']:7.1f} s  "
                          f"{rows / r['seconds']:10,.0f} rows/s  peak tree RSS "
                          f"{r['peak_tree_mb']:7.0f} MB  largest process "
                          f"{r['max_process_mb']:6.0f} MB", flush=True)
                if rows > args.rows:
                    ratio = pairs[-1]["job"]["seconds"] / pairs[-1]["bare"]["seconds"]
                    print(f"  ratio job/bare {ratio:.2f}", flush=True)
            shutil.rmtree(os.path.join(workdir, f"data-{rows}"))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    small, big = results[args.rows], results[4 * args.rows]
    # each pair ran back to back, so its ratio shares the machine's speed at that time
    overhead = median([p["job"]["seconds"] / p["bare"]["seconds"] for p in big])
    rate = 4 * args.rows / median([p["job"]["seconds"] for p in big])
    mem_ratio = (max(p["job"]["peak_tree_mb"] for p in big)
                 / max(p["job"]["peak_tree_mb"] for p in small))
    print(f"runner args: {' '.join(beam_args)}; {len(big)} bare/job pair(s) at "
          f"{4 * args.rows:,} rows: overhead_ratio is the median of their ratios, rows_per_s "
          f"the median job's, mem_ratio_4x the largest job peak over the {args.rows:,}-row one")
    print(f"overhead_ratio={overhead:.2f} rows_per_s={rate:.0f} mem_ratio_4x={mem_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
