"""The job on cluster runners: its pipeline built with DataflowRunner, FlinkRunner and SparkRunner
options, never submitted (there is no cluster here), through `python -m preprocessing.run`'s own
flag handling (run.make_plan, which run() uses). Every option given reaches Beam's options with its
value, a misspelt one is refused by name, and the transform graph is the local one."""
from __future__ import annotations

import shutil

import pytest
from apache_beam.portability import python_urns

from configs import cli
from preprocessing import run

# Per runner: the flags given (the cluster ones BUILD.md shows, and more), and what Beam's
# options must hold after them: every flag's value, and nothing else that is not a default.
RUNNERS = {
    "DataflowRunner": (
        ["--runner", "DataflowRunner", "--project", "autodim-test", "--region=europe-west1",
         "--temp_location", "gs://autodim-test-bucket/tmp",
         "--staging_location=gs://autodim-test-bucket/staging", "--setup_file", "./setup.py",
         "--num_workers", "4", "--max_num_workers=16", "--worker_machine_type", "n2-highmem-8",
         "--disk_size_gb", "100", "--job_name", "autodim-preprocess",
         "--experiments", "use_runner_v2", "--experiments=no_use_multiple_sdk_containers",
         # Beam's switch for building a Dataflow job without a cloud: it skips the GCS
         # bucket lookups that validating temp_location would make at construction.
         "--dry_run", "True"],
        {"runner": "DataflowRunner", "project": "autodim-test", "region": "europe-west1",
         "temp_location": "gs://autodim-test-bucket/tmp",
         "staging_location": "gs://autodim-test-bucket/staging", "setup_file": "./setup.py",
         "num_workers": 4, "max_num_workers": 16, "machine_type": "n2-highmem-8",
         "disk_size_gb": 100, "job_name": "autodim-preprocess",
         "experiments": ["use_runner_v2", "no_use_multiple_sdk_containers"], "dry_run": "True"}),
    "FlinkRunner": (
        ["--runner=FlinkRunner", "--flink_master", "flink-host:8081", "--flink_version", "1.19",
         "--parallelism", "8", "--max_parallelism=64", "--setup_file", "./setup.py",
         "--environment_type", "DOCKER",
         "--environment_config", "apache/beam_python3.11_sdk:2.77.0",
         "--sdk_worker_parallelism", "2", "--experiments", "pre_optimize=all"],
        {"runner": "FlinkRunner", "flink_master": "flink-host:8081", "flink_version": "1.19",
         "parallelism": 8, "max_parallelism": 64, "setup_file": "./setup.py",
         "environment_type": "DOCKER", "environment_config": "apache/beam_python3.11_sdk:2.77.0",
         "sdk_worker_parallelism": "2", "experiments": ["pre_optimize=all"]}),
    "SparkRunner": (
        ["--runner", "SparkRunner", "--spark_master_url", "spark://spark-host:7077",
         "--spark_version=3", "--setup_file", "./setup.py", "--environment_type", "PROCESS",
         "--environment_config", '{"command": "/opt/apache/beam/boot"}',
         "--sdk_worker_parallelism", "4"],
        {"runner": "SparkRunner", "spark_master_url": "spark://spark-host:7077",
         "spark_version": "3", "setup_file": "./setup.py", "environment_type": "PROCESS",
         "environment_config": '{"command": "/opt/apache/beam/boot"}',
         "sdk_worker_parallelism": "4"}),
}
# The local default (no runner flag): what run.pipeline_options adds.
LOCAL = {"direct_running_mode": "multi_processing", "direct_num_workers": 2}


@pytest.fixture
def job_args(tmp_path):
    raw = tmp_path / "day0.txt"
    raw.write_text("1\t5" + "\t" * 12 + "a" + "\t" * 26 + "\n")
    return ["--dataset", "criteo", "--input", str(raw), "--data_dir", str(tmp_path / "out")]


def _graph(plan: run.JobPlan, out_dir: str):
    """The job's transform graph (the runner API proto `to_runner_api()` gives) and its runner.

    Compared as is, the DoFns' pickles included, except the payloads of Create's
    `MaybeReshuffle`: a pickle of a class defined inside Create.expand, which cloudpickle gives
    a random id, so it differs between two constructions of the same pipeline on the same
    runner (Create's values are in its FlatMap's payload, which is compared). Not compared,
    because the runner adds them when the job is submitted: the SDK environment (Docker image
    or Dataflow container, the staged --setup_file package), which to_runner_api() leaves at the
    default, and the runner's own rewrites of the graph."""
    pipeline = plan.pipeline(out_dir)
    proto = pipeline.to_runner_api()
    # Beam makes a local temp directory per Pipeline and removes it in run(); this one never runs
    shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)
    for transform in proto.components.transforms.values():
        python_type = transform.annotations.get("python_type", b"").decode()
        if (transform.spec.urn == python_urns.PICKLED_TRANSFORM
                and python_type.endswith(".Create.expand.<locals>.MaybeReshuffle")):
            transform.spec.ClearField("payload")
    return proto, type(pipeline.runner).__name__


def _differences(a, b) -> list[str]:
    """The components (transforms, PCollections, coders, ...) that differ between graphs."""
    out = []
    for kind in ("transforms", "pcollections", "coders", "windowing_strategies", "environments"):
        ca, cb = getattr(a.components, kind), getattr(b.components, kind)
        out += [f"{kind}: {k}" for k in sorted(set(ca) | set(cb))
                if k not in ca or k not in cb or ca[k] != cb[k]]
    if list(a.root_transform_ids) != list(b.root_transform_ids):
        out.append("root transforms")
    if sorted(a.requirements) != sorted(b.requirements):
        out.append("requirements")
    return out


def _assert_options(options, expected: dict) -> None:
    """Every flag given is in Beam's options with its value, and nothing else is set."""
    values = options.get_all_options()
    assert {name: values[name] for name in expected} == expected
    assert set(options.get_all_options(drop_default=True)) <= set(expected)


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_cluster_runner_options_all_reach_beam_and_build_the_local_graph(runner, job_args,
                                                                         tmp_path):
    flags, expected = RUNNERS[runner]
    plan = run.make_plan(job_args + flags)
    _assert_options(plan.options, expected)
    cluster, built_on = _graph(plan, str(tmp_path / "out.tmp"))
    assert built_on == runner
    _assert_options(plan.options, expected)  # Beam validates them (and may fill some in) here

    local_plan = run.make_plan(job_args)
    assert local_plan.options.get_all_options(drop_default=True) == LOCAL
    local, local_runner = _graph(local_plan, str(tmp_path / "out.tmp"))
    assert local_runner == "SwitchingDirectRunner"
    assert len(local.components.transforms) > 100
    assert _differences(local, cluster) == []
    assert local == cluster


@pytest.mark.parametrize("runner,flag,near", [
    ("DataflowRunner", "--regoin", "--region"),
    ("DataflowRunner", "--temp-location", "--temp_location"),
    ("DataflowRunner", "--maxNumWorkers", "--max_num_workers"),  # the Java SDK's spelling
    ("DataflowRunner", "--worker_machine", "--worker_machine_type"),
    ("FlinkRunner", "--flink_mastr", "--flink_master"),
    ("FlinkRunner", "--setupfile", "--setup_file"),
    ("SparkRunner", "--spark-master-url", "--spark_master_url"),
    ("SparkRunner", "--experiment_s", "--experiments"),
])
def test_cluster_runner_misspelt_option_is_refused_by_name(runner, flag, near, job_args, capsys):
    flags, _ = RUNNERS[runner]
    with pytest.raises(SystemExit) as exc:
        run.make_plan(job_args + flags + [flag, "x"])
    assert exc.value.code == cli.EXIT_USAGE
    assert f"{flag}: unknown flag; did you mean {near}?" in capsys.readouterr().err


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_cluster_runner_unknown_option_is_refused_by_name(runner, job_args, capsys):
    flags, _ = RUNNERS[runner]
    with pytest.raises(SystemExit) as exc:
        run.make_plan(job_args + flags + ["--autoscale_workers", "yes"])
    assert exc.value.code == cli.EXIT_USAGE
    assert "--autoscale_workers: unknown flag" in capsys.readouterr().err
