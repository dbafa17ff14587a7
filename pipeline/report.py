"""`python -m pipeline.report`: one self-contained HTML page (and its plots as PNG files) of a
`pipeline.run` workdir, or of a search's model_dir alone.

    python -m pipeline.report --run DIR [--output OUT] [--no_latency]

DIR is a `pipeline.run` workdir (summary.json, search/, retrain_*/, exports/) or a
`pipeline.search` model_dir (dims.json and its TensorBoard events: the search's part of the
page). The page holds
- the AUC-versus-parameters picture: every retrained model found in the workdir (FDE-D points and
  their frontier, RaS, the AutoDim candidates of --param_costs, the chosen AutoDim) and the
  parameter budget when dims.json or summary.json records one;
- per field: vocabulary size, chosen dimension, alpha's probabilities over the search (from the
  `alpha/<field>/d<D>` scalars of the search's TensorBoard events; dims.json's final
  probabilities when the events are gone), the embedding parameters and those saved against
  every field at the largest candidate; the seeds' choices when dims.json has a consensus;
- the headline comparison: test AUC, logloss, embedding parameters, the export's size on disk
  and its serving latency (the SavedModel loaded with tf.saved_model.load, `serving_default`
  timed on raw rows of the test split);
- the resolved config.

OUT (default DIR/report) is a directory: `report.html`, the PNGs and `report.json` (what the page
shows, and the list of files this command wrote). It is built in a hidden temporary sibling and
renamed into place; an existing OUT is replaced only when it is a report this command wrote and
holds nothing else, otherwise the command refuses (exit 2) and writes nothing.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import sys
import time
from pathlib import Path

from configs import fileio
from configs.cli import StrictArgumentParser, UsageError, run_main

REPORT_DIR = "report"
PAGE = "report.html"
MANIFEST = "report.json"
GENERATOR = "pipeline.report"
AUC_PLOT = "auc_vs_params.png"
LATENCY_BATCH = 256
LATENCY_CALLS = 20


class ReportError(UsageError):
    """DIR is not something a report can be written of, or OUT is not ours to write."""


# ----------------------------------------------------------------------------- reading

def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ReportError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object")
    return data


def _optional_json(path: Path) -> dict | None:
    return _read_json(path) if path.is_file() else None


def _check_dims(dims: dict, path: Path) -> None:
    for key in ("field_order", "fields", "candidate_dims"):
        if key not in dims:
            raise ReportError(f"{path} has no {key!r}: not a dims.json of pipeline.search")
    for name in dims["field_order"]:
        field = dims["fields"].get(name)
        if not isinstance(field, dict) or "dim" not in field:
            raise ReportError(f"{path}: field {name!r} has no chosen 'dim'")


def kind_of(run_dir: Path) -> str:
    """"run" (a pipeline.run workdir) or "search" (a search's model_dir); ReportError naming
    what is missing otherwise."""
    if fileio.is_remote(run_dir):
        raise ReportError(f"--run {run_dir}: a report is written of a local directory; copy the "
                          f"run (or its search/, retrain_*/, exports/ and summary.json) first")
    if not run_dir.is_dir():
        raise ReportError(f"--run {run_dir}: no such directory")
    if (run_dir / "summary.json").is_file():
        return "run"
    if (run_dir / "dims.json").is_file():
        return "search"
    raise ReportError(f"--run {run_dir}: neither a pipeline.run workdir (no summary.json) nor a "
                      f"search's model_dir (no dims.json)")


def _records(path: Path):
    """The records of a TFRecord file (TensorBoard's events files), read in Python: a truncated
    last record (a killed search's) ends the file."""
    with open(path, "rb") as fh:
        while True:
            header = fh.read(12)  # uint64 length, uint32 masked CRC of the length
            if len(header) < 12:
                return
            (length,) = struct.unpack("<Q", header[:8])
            data = fh.read(length)
            if len(data) < length or len(fh.read(4)) < 4:  # then the data's CRC
                return
            yield data


def alpha_history(search_dir: Path, field_names, candidate_dims) -> dict:
    """{field: {"steps": [...], "probs": [[p per candidate] per step]}} from the search's
    `alpha/<field>/d<D>` TensorBoard scalars (summaries.write_alpha; every events file of the
    `train` run, a resumed search's later value winning a repeated step); {} without events."""
    import numpy as np
    from tensorboard.compat.proto import event_pb2
    from tensorboard.util import tensor_util

    tags = {f"alpha/{name}/d{d}": (name, j) for name in field_names
            for j, d in enumerate(candidate_dims)}
    values: dict[str, dict[int, list]] = {name: {} for name in field_names}
    for path in sorted((search_dir / "train").glob("events.out.tfevents.*")):
        for record in _records(path):
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                hit = tags.get(value.tag)
                if hit is None:
                    continue
                number = (float(tensor_util.make_ndarray(value.tensor))
                          if value.HasField("tensor") else float(value.simple_value))
                row = values[hit[0]].setdefault(int(event.step),
                                                [float("nan")] * len(candidate_dims))
                row[hit[1]] = number
    out = {}
    for name, by_step in values.items():
        steps = sorted(s for s, row in by_step.items() if not np.isnan(row).any())
        if steps:
            out[name] = {"steps": steps, "probs": [by_step[s] for s in steps]}
    return out


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def serving_latency(version_dir: Path, data_dir: Path | None, batch: int = LATENCY_BATCH,
                    calls: int = LATENCY_CALLS) -> dict:
    """The export's `serving_default` timed after tf.saved_model.load: median and p99 ms of a
    batch of `batch` raw rows of the test split (read from the preprocessing input named in
    data_dir/stats.json; rows built from the vocabularies when it is gone) and of one row."""
    import numpy as np
    import tensorflow as tf

    from configs.features import DataSchema
    from pipeline.export import raw_rows_from_inputs, raw_rows_from_vocab

    schema = DataSchema.load(version_dir / "assets")
    rows, source = [], "no data_dir"
    if data_dir is not None and data_dir.is_dir():
        rows, source = raw_rows_from_inputs(schema, data_dir, batch, split=2)
        if rows:
            source = f"test-split rows of {source}"
    if not rows:
        if data_dir is not None and (data_dir / "vocab").is_dir():
            rows = raw_rows_from_vocab(schema, data_dir, batch)
        else:
            rows = _rows_from_assets(schema, version_dir / "assets", batch)
        source = f"rows built from the vocabularies (raw test rows unavailable: {source})"
    fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    names = schema.field_names

    def inputs(part):
        return {n: tf.constant([r[n] for r in part], tf.string) for n in names}

    timings = {}
    for label, part in (("batch", rows), ("one", rows[:1])):
        feed = inputs(part)
        for _ in range(3):
            fn(**feed)["probability"].numpy()
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            fn(**feed)["probability"].numpy()
            times.append((time.perf_counter() - t0) * 1000.0)
        timings[label] = (float(np.median(times)), float(np.percentile(times, 99)))
    return {"batch_rows": len(rows), "calls": calls, "rows_source": source,
            "batch_median_ms": timings["batch"][0], "batch_p99_ms": timings["batch"][1],
            "one_median_ms": timings["one"][0], "one_p99_ms": timings["one"][1]}


def _rows_from_assets(schema, assets: Path, n: int) -> list[dict]:
    """raw_rows_from_vocab over the export's own vocabularies (assets/<field>.txt)."""
    from pipeline.export import raw_rows_from_vocab

    class _Flat:  # the export keeps vocab/<field>.txt as <field>.txt
        def __truediv__(self, rel):
            return assets / Path(rel).name

    return raw_rows_from_vocab(schema, _Flat(), n)


def _latest_version(base: Path) -> Path | None:
    versions = [p for p in base.glob("[0-9]*") if p.is_dir() and p.name.isdigit()] \
        if base.is_dir() else []
    return max(versions, key=lambda p: int(p.name)) if versions else None


def _local(work: Path, recorded: str | None, default: str) -> Path:
    """A directory of the run that summary.json recorded (relative to the run's working
    directory, or absolute): the one of that name in `work` (pipeline.run writes them there),
    so a moved or copied workdir reads its own."""
    name = Path(recorded).name if recorded else default
    if (work / name).is_dir() or not recorded or not Path(recorded).is_dir():
        return work / name
    return Path(recorded)


def _point(model_dir: Path, metrics: dict) -> dict:
    kind = metrics.get("dims_kind", "autodim")
    source = str(metrics.get("dims_source", ""))
    if kind == "fde":
        label = f"FDE-{source.split(':', 1)[1]}" if source.startswith("fde:") else "FDE"
    elif kind == "random":
        label = "RaS"
    else:
        label = f"AutoDim ({model_dir.name})"
    return {"label": label, "kind": kind, "dir": model_dir.name,
            "params": int(metrics["params"]), "test_auc": float(metrics["test_auc"]),
            "test_logloss": float(metrics["test_logloss"]),
            "best_valid_auc": metrics.get("best_valid_auc"),
            "train_seconds": metrics.get("train_seconds")}


def _budget(*records) -> dict | None:
    """The parameter budget of dims.json or summary.json ({"params": B, ...} or a number)."""
    for rec in records:
        budget = rec.get("budget") if isinstance(rec, dict) else None
        if isinstance(budget, (int, float)) and not isinstance(budget, bool):
            return {"params": int(budget)}
        if isinstance(budget, dict) and isinstance(budget.get("params"), (int, float)):
            return budget
    return None


def collect(run_dir: str | Path, *, latency: bool = True) -> dict:
    """Everything the page shows, read from `run_dir` (see kind_of)."""
    run_dir = fileio.path(run_dir)
    kind = kind_of(run_dir)
    summary = None
    points: list[dict] = []
    export = None
    if kind == "search":
        search_dir, work = run_dir, None
    else:
        work = run_dir
        summary = _read_json(work / "summary.json")
        chosen = None
        selection = summary.get("param_cost_selection")
        if isinstance(selection, dict) and selection.get("candidates"):
            chosen = selection["candidates"][selection["chosen"]]
        search_dir = _local(work, chosen and chosen.get("search_dir"), "search")
        auto_dir = _local(work, chosen and chosen.get("retrain_dir"), "retrain_autodim")
        names = {}  # the --param_costs candidates' retrain dirs: "AutoDim, cost C"
        for c in (selection or {}).get("candidates", []) if isinstance(selection, dict) else []:
            if isinstance(c, dict) and c.get("retrain_dir"):
                emb = f", {c['search_embedding']}" if c.get("search_embedding") else ""
                names[Path(c["retrain_dir"]).name] = f"AutoDim, cost {c.get('param_cost')}{emb}"
        for sub in sorted(p for p in work.iterdir() if p.is_dir()):
            metrics_path = sub / "metrics.json"
            if metrics_path.is_file():
                metrics = _read_json(metrics_path)
                if {"params", "test_auc", "test_logloss"} <= metrics.keys():
                    point = _point(sub, metrics)
                    point["label"] = names.get(sub.name, point["label"])
                    if sub.resolve() == auto_dir.resolve():
                        point.update(label="AutoDim", chosen=True)
                    points.append(point)
        if not any(p.get("chosen") for p in points):
            raise ReportError(f"{auto_dir / 'metrics.json'} is missing: the run's AutoDim "
                              f"retraining has not finished")
        export = _export_info(work, summary, latency)
    dims_path = search_dir / "dims.json"
    if not dims_path.is_file():
        raise ReportError(f"{dims_path} is missing: the run's search has not finished")
    dims = _read_json(dims_path)
    _check_dims(dims, dims_path)
    config = _optional_json(search_dir / "config.json")
    history = alpha_history(search_dir, dims["field_order"], dims["candidate_dims"])
    return {"kind": kind, "dir": str(run_dir), "search_dir": search_dir.name,
            "summary": summary, "dims": dims, "points": points, "export": export,
            "alpha": history, "budget": _budget(dims, summary),
            "consensus": dims.get("consensus") if isinstance(dims.get("consensus"), dict)
            else None,
            "config": config.get("config", config) if isinstance(config, dict) else None}


def _export_info(work: Path, summary: dict, latency: bool) -> dict | None:
    recorded = summary.get("export")
    if not recorded:
        return None
    base = work / "exports" / Path(recorded).parent.name  # EXPORTS/NAME/<version>
    version = base / Path(recorded).name
    if not version.is_dir():
        version = Path(recorded) if Path(recorded).is_dir() else _latest_version(base)
    if version is None or not (version / "saved_model.pb").is_file():
        return None
    info = {"dir": str(version.relative_to(work)) if version.is_relative_to(work)
            else str(version), "bytes": _dir_size(version)}
    if latency:
        data_dir = work / "data" if (work / "data").is_dir() else None
        info["latency"] = serving_latency(version, data_dir)
    return info


# ----------------------------------------------------------------------------- writing

def _owned(out: Path) -> list[str] | None:
    """The files a previous report in `out` wrote (its manifest), None when `out` is not one."""
    manifest = out / MANIFEST
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("generator") != GENERATOR:
        return None
    files = data.get("files")
    return files if isinstance(files, list) else None


def check_output(out: str | Path) -> Path:
    """`out` when this command may write it: absent, or an earlier report of this command that
    holds only the files it wrote. ReportError naming the foreign file otherwise."""
    out = fileio.path(out)
    if fileio.is_remote(out):
        raise ReportError(f"--output {out}: the report is written to a local directory")
    if not out.exists():
        return out
    if not out.is_dir():
        raise ReportError(f"--output {out} exists and is not a directory; the report is not "
                          f"written over it")
    owned = _owned(out)
    if owned is None:
        raise ReportError(f"--output {out} exists and is not a report of pipeline.report (no "
                          f"{MANIFEST} of it); choose another --output or remove it")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in set(owned) | {MANIFEST})
    if foreign:
        raise ReportError(f"--output {out} holds {foreign[0]}, which pipeline.report did not "
                          f"write; it is not replaced (move it away or choose another --output)")
    return out


def write_report(run_dir: str | Path, output: str | Path | None = None, *,
                 latency: bool = True) -> Path:
    """Writes the report directory and returns the path of its report.html."""
    from pipeline import report_page

    run_dir = fileio.path(run_dir)
    kind_of(run_dir)  # a --run that is not a run is named before --output
    out = check_output(output if output is not None else run_dir / REPORT_DIR)
    data = collect(run_dir, latency=latency)
    pngs = report_page.figures(data)
    page = report_page.render(data, pngs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.urandom(4).hex()}")
    tmp.mkdir()
    try:
        for name, png in pngs.items():
            (tmp / name).write_bytes(png)
        (tmp / PAGE).write_text(page, encoding="utf-8")
        files = sorted([*pngs, PAGE])
        manifest = {"generator": GENERATOR, "files": files, "run": str(run_dir.resolve()),
                    "kind": data["kind"], "points": data["points"], "export": data["export"],
                    "budget": data["budget"]}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                    encoding="utf-8")
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / PAGE


def _publish(tmp: Path, out: Path) -> None:
    """Renames the finished `tmp` to `out`; an earlier report at `out` (checked again: still
    only ours) is first renamed aside and then removed."""
    old = None
    if out.exists():
        check_output(out)
        old = out.with_name(f".{out.name}.old-{os.urandom(4).hex()}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def main(argv=None) -> int:
    parser = StrictArgumentParser(prog="python -m pipeline.report", description=__doc__)
    parser.add_argument("--run", required=True, metavar="DIR",
                        help="a pipeline.run workdir, or a pipeline.search model_dir")
    parser.add_argument("--output", metavar="OUT",
                        help=f"the report directory (default DIR/{REPORT_DIR}): {PAGE}, the "
                             f"plots as PNG files and {MANIFEST}")
    parser.add_argument("--no_latency", action="store_true",
                        help="do not load the export to time its serving signature")
    args = parser.parse_args(argv)

    def body():
        page = write_report(args.run, args.output, latency=not args.no_latency)
        print(f"report: {page}")

    return run_main(body)


def safe_name(text: str) -> str:
    """A file-name-safe rendering of a field name (the field's index keeps them unique)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:40] or "field"


if __name__ == "__main__":
    sys.exit(main())
