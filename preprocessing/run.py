"""Raw logs -> vocabularies + GZIP TFRecords of tf.Example (the autodim preprocessing job).

    python -m preprocessing.run --dataset criteo --input 'data/criteo/train*.txt' \\
        --data_dir out/criteo [--preprocess_config FILE] [--overwrite] [--max_bad_fraction 0.01] \\
        [Beam options]

Datasets: criteo, avazu, frappe, csv (fields from --preprocess_config's `dataset:` section),
movielens-1m and movielens-100k (--input: a directory or glob holding the three table files, or
`tfds:movielens/1m-ratings`).

Output (DIR = --data_dir): schema.json, vocab/<field>.txt, {train,valid,test}/part-*.tfrecord.gz,
deadletter/part-*.jsonl (malformed records: file, line, reason, raw text), stats.json.

Reading keeps line numbers (for the deterministic split and for dead letters), so every input
file is read sequentially by one worker: parallelism is per input file. Shard big inputs into
many files (e.g. `split -n l/64`) to use many workers.

Runner: the DirectRunner in multi-process mode (2 workers) unless runner options are given; the
flags that Beam's PipelineOptions define go to Beam untouched (listed at the end of --help), any
other unknown flag is refused. For Dataflow/Flink/Spark add `--setup_file ./setup.py` so the
workers get the `configs` and `preprocessing` packages.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from configs.cli import JobError, StrictArgumentParser, run_main
from configs.features import DATASETS, SPLITS, DataSchema, DatasetSpec, FieldSchema
from configs.preprocess import PreprocessConfig, load_preprocess_config, resolve
from preprocessing import counts, job, output, reading

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RUNNER_FLAGS = ("--runner", "--direct_running_mode", "--direct_num_workers")
DEFAULT_RUNNER_ARGS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


class JobFailed(JobError):
    """The job ran but its result is refused (too many bad rows) or it crashed."""


@dataclasses.dataclass
class JobResult:
    output: str
    stats: dict[str, Any]
    schema: DataSchema
    pipeline_result: Any


def parse_args(argv):
    """(args, Beam flags): only flags that Beam's PipelineOptions define are passed on."""
    parser = StrictArgumentParser(prog="python -m preprocessing.run", description=__doc__,
                                  beam=True)
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS) + ["csv"],
                        help="the raw format of --input (csv: fields from --preprocess_config)")
    parser.add_argument("--input", required=True, help="file glob, directory, or tfds:NAME")
    parser.add_argument("--data_dir", required=True,
                        help="the output directory (must not exist, unless --overwrite)")
    parser.add_alias("--output", "--data_dir")
    parser.add_argument("--preprocess_config", default=None,
                        help="YAML PreprocessConfig")
    parser.add_alias("--config", "--preprocess_config")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --data_dir that this job wrote before")
    parser.add_argument("--max_bad_fraction", type=float, default=None,
                        help="fail when more rows than this fraction are malformed "
                             "(default: the config's, 0.01)")
    parser.add_argument("--tfds_data_dir", default=None, help="TFDS data_dir for tfds: inputs")
    return parser.parse_args(argv)


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    args = list(beam_args)
    if not any(a.split("=")[0] in _RUNNER_FLAGS for a in args):
        args += DEFAULT_RUNNER_ARGS
    # Multi-process DirectRunner workers import our packages from the repo root.
    path = os.environ.get("PYTHONPATH", "")
    if _REPO_ROOT not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, path) if p)
    return PipelineOptions(args)


@dataclasses.dataclass
class JobPlan:
    """What `run` will do, checked before anything is written: the flags, the config, the
    inputs and Beam's options. `pipeline()` builds the job's graph without running it."""

    args: argparse.Namespace
    cfg: PreprocessConfig
    spec: DatasetSpec
    resolved: dict[str, Any]
    config_hash: str
    inputs: job.JobInputs
    output: str
    options: PipelineOptions

    def pipeline(self, out_dir: str) -> beam.Pipeline:
        """The job's pipeline on the runner the options name, writing into `out_dir`; not run."""
        pipeline = beam.Pipeline(options=self.options)
        job.build(pipeline, self.spec, self.cfg, self.inputs, out_dir)
        return pipeline


def make_plan(argv=None) -> JobPlan:
    """Parses and checks everything `run` needs; raises ConfigError / InputError /
    FileExistsError / OutputRefused (SystemExit for a flag) and writes nothing."""
    args, beam_args = parse_args(argv)
    cfg = load_preprocess_config(args.preprocess_config, args.max_bad_fraction)
    spec, resolved, chash = resolve(args.dataset, cfg)
    inputs = job.resolve_inputs(spec, args.input, args.tfds_data_dir)
    out = args.data_dir.rstrip("/")
    if output.exists(out):
        if not args.overwrite:
            raise FileExistsError(f"output directory {out} exists (pass --overwrite to replace "
                                  f"it)")
        output.check_replaceable(out, inputs.paths())  # OutputRefused: nothing runs
    return JobPlan(args, cfg, spec, resolved, chash, inputs, out, pipeline_options(beam_args))


def run(argv=None) -> JobResult:
    """Runs the job; raises ConfigError / InputError / FileExistsError before starting and
    JobFailed after (with dead letters kept in a directory the message names)."""
    plan = make_plan(argv)
    args, cfg, spec, inputs, out = plan.args, plan.cfg, plan.spec, plan.inputs, plan.output

    output.clean_leftovers(out)  # DIR.tmp-XXXXXXXX of killed runs
    tmp = output.make_temp(out)
    try:
        pipeline = plan.pipeline(tmp)
        result = pipeline.run()
        state = result.wait_until_finish()
        if state not in (None, "DONE", beam.runners.runner.PipelineState.DONE):
            raise JobFailed(f"pipeline finished in state {state}")
        with FileSystems.open(FileSystems.join(tmp, counts.COUNTS_FILE)) as fh:
            totals = json.loads(fh.read().decode())
    except BaseException as exc:
        failed = output.keep_failed(tmp, out)
        where = f"; dead letters so far kept in {failed}" if failed else ""
        if isinstance(exc, Exception):
            damaged = _damaged_input(exc)
            if damaged:
                raise JobFailed(f"{damaged}; no output written to {out}{where}") from exc
            raise JobFailed(f"preprocessing of {inputs.describe()} failed: {exc}{where}") from exc
        raise

    stats = counts.summarize_counts(totals, spec.field_names)
    if stats["rows_read"] == 0:
        output.keep_failed(tmp, out)
        skipped = stats["lines_skipped"]
        raise JobFailed(f"no data rows in {inputs.describe()} ({skipped['header']} header and "
                        f"{skipped['blank']} blank lines skipped); no output written to {out}")
    if stats["rows_read"] != stats["rows_written_total"] + stats["rows_deadlettered"]:
        output.keep_failed(tmp, out)
        raise JobFailed(f"internal error: rows read {stats['rows_read']} != written "
                        f"{stats['rows_written_total']} + dead-lettered "
                        f"{stats['rows_deadlettered']}")
    stats.update({"dataset": args.dataset, "input": inputs.describe(), "output": out,
                  "config_hash": plan.config_hash, "max_bad_fraction": cfg.max_bad_fraction})
    # capped fields: the cap and the tokens that reached the min count but were cut by it
    stats["vocab_caps"] = {
        f.name: {"max_vocab_size": spec.max_vocab_size(f),
                 "tokens_cut": int(totals.get(f"vocab_cut/{f.name}", 0))}
        for f in spec.fields if spec.max_vocab_size(f) is not None}
    _write_text(FileSystems.join(tmp, "stats.json"), json.dumps(stats, indent=2, sort_keys=True))
    FileSystems.delete([FileSystems.join(tmp, counts.COUNTS_FILE)])

    if stats["bad_fraction"] > cfg.max_bad_fraction:
        failed = output.keep_failed(tmp, out)
        raise JobFailed(
            f"{stats['rows_deadlettered'] + stats['side_tables']['rows_deadlettered']} malformed "
            f"rows ({stats['bad_fraction']:.2%}) exceed max_bad_fraction "
            f"{cfg.max_bad_fraction:.2%}; no output written to {out}. Dead letters and stats "
            f"are in {failed}")

    schema = DataSchema(
        dataset=args.dataset,
        fields=tuple(FieldSchema(f.name, f.kind, stats["vocab_sizes"][f.name], spec.min_count(f),
                                 spec.max_vocab_size(f))
                     for f in spec.fields),
        splits=dict(stats["rows_written"]), label_rate=stats["label_rate"]["train"],
        config=plan.resolved, config_hash=plan.config_hash)
    _write_text(FileSystems.join(tmp, "schema.json"), schema.to_json())
    output.commit(tmp, out, args.overwrite)
    return JobResult(out, stats, schema, result)


_DAMAGED = re.compile(re.escape(reading.DAMAGED) + r" .*? complete lines were read")


def _damaged_input(exc: BaseException) -> str | None:
    """The reader's "damaged input file ..." message inside a runner's error (the runners wrap
    worker errors in their own exceptions and tracebacks), or None."""
    while exc is not None:
        match = _DAMAGED.search(str(exc))
        if match:
            return match.group(0)
        exc = exc.__cause__ or exc.__context__
    return None


def _write_text(path: str, text: str) -> None:
    with FileSystems.create(path, mime_type="application/json") as fh:
        fh.write(text.encode("utf-8"))


def summary(res: JobResult) -> str:
    s = res.stats
    lines = [f"preprocessing {s['dataset']} done -> {res.output}",
             f"  input: {s['input']}",
             f"  rows read {s['rows_read']:,}  written {s['rows_written_total']:,}  "
             f"dead-lettered {s['rows_deadlettered']:,} ({s['bad_fraction']:.3%})  "
             f"skipped header/blank {s['lines_skipped']['header']}/{s['lines_skipped']['blank']}"]
    if s["side_tables"]["rows_read"]:
        lines.append(f"  side tables: rows read {s['side_tables']['rows_read']:,}  "
                     f"dead-lettered {s['side_tables']['rows_deadlettered']:,}")
    for split in SPLITS:
        lines.append(f"  {split:<5} {s['rows_written'][split]:>12,} rows  "
                     f"label rate {s['label_rate'][split]:.4f}")
    sizes = s["vocab_sizes"]
    shown = "  ".join(f"{k}={v}" for k, v in sizes.items())
    lines.append(f"  vocab sizes (incl. OOV, total {sum(sizes.values()):,}): {shown}")
    if s.get("vocab_caps"):
        lines.append("  vocab caps: " + "  ".join(
            f"{k}={c['max_vocab_size']:,} ({c['tokens_cut']:,} cut)"
            for k, c in s["vocab_caps"].items()))
    lines.append(f"  schema_hash {res.schema.schema_hash}  config_hash {s['config_hash']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    # Multi-process workers relay their start-up warnings through the job service: noise.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    return run_main(lambda: print(summary(run(argv))))


if __name__ == "__main__":
    sys.exit(main())
