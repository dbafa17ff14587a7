"""The flags search and retraining share (one name per concept across the CLIs: `--data_dir` is
the preprocessing job's output everywhere, `--config` the experiment YAML)."""
from __future__ import annotations

from configs.cli import StrictArgumentParser, UsageError
from configs.experiment import PRESETS


def add_experiment_flags(parser: StrictArgumentParser) -> None:
    """--data_dir, --model_dir, --config, --preset, --set, --logical_cpus, --strategy,
    --quiet."""
    parser.add_argument("--data_dir", required=True,
                        help="the preprocessing job's output directory (holds schema.json)")
    parser.add_alias("--data", "--data_dir")
    parser.add_argument("--model_dir", required=True, help="this run's directory (resumable)")
    parser.add_argument("--config", help="experiment YAML overriding the preset's values")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="named experiment preset (default: the dataset's own, else default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set model.backbone=fm "
                             "(repeatable; applied after --config)")
    parser.add_argument("--logical_cpus", type=int, default=0, metavar="K",
                        help="mirror over K >= 2 logical CPU devices (tests the multi-replica "
                             "path without a GPU); 0: every GPU, else the CPU")
    add_strategy_flag(parser)
    parser.add_argument("--quiet", action="store_true",
                        help="no progress display, only log lines")


def add_strategy_flag(parser: StrictArgumentParser) -> None:
    """--strategy auto|multi_worker|parameter_server."""
    parser.add_argument("--strategy", choices=("auto", "multi_worker", "parameter_server"),
                        default="auto",
                        help="auto: every GPU of this machine mirrored (else the CPU); "
                             "multi_worker: MultiWorkerMirroredStrategy over the cluster in "
                             "TF_CONFIG, every worker running the same command (the chief "
                             "writes the outputs; docs/DESIGN.md); parameter_server: "
                             "ParameterServerStrategy over TF_CONFIG's chief, ps and worker "
                             "tasks, the tables sharded over the ps tasks, asynchronous "
                             "training (search and retrain; BUILD.md)")


def add_memory_flags(parser: StrictArgumentParser) -> None:
    """--memory_limit, --dry_run (the search's memory model, `pipeline.memory`)."""
    parser.add_argument("--memory_limit", metavar="BYTES",
                        help="refuse to start a search whose memory model needs more than this "
                             "on one device (bytes, or with K, M, G, T: 16G, 40GB, 512M; powers "
                             "of 1024); the device is always checked (a GPU's total memory, the "
                             "host's MemAvailable)")
    parser.add_argument("--dry_run", action="store_true",
                        help="print the memory model (and whether the search fits) and exit "
                             "without creating anything")


def make_cli_strategy(logical_cpus: int, kind: str = "auto"):
    """The strategy for --logical_cpus and --strategy (None: the default one); call before any
    TF op."""
    if logical_cpus < 0 or logical_cpus == 1:
        raise UsageError(f"--logical_cpus must be 0 or >= 2, got {logical_cpus}")
    if kind in ("multi_worker", "parameter_server") and logical_cpus:
        raise UsageError(f"--logical_cpus and --strategy {kind} do not combine: a worker uses "
                         f"its own GPUs (or its CPU)")
    if logical_cpus == 0 and kind == "auto":
        return None
    from pipeline.strategy import make_strategy

    return make_strategy(logical_cpus, kind)
