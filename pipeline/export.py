"""`python -m pipeline.export`: a retrained model_dir -> a TF Serving SavedModel version.

    python -m pipeline.export --model_dir DIR --export_dir EXPORTS [--name NAME]
        [--data_dir DATA] [--warmup_rows 8] [--no_fold]

Writes `EXPORTS/NAME/<version>/` (NAME defaults to the dataset name; version = 1 + the largest
integer version present, never overwriting one). The SavedModel is written to a hidden temporary
sibling (`EXPORTS/NAME/.tmp-...`, ignored by TF Serving, which only loads integer directories)
and renamed into place, so a polling server never sees a half-written version.

Contents:
- signatures `serving_default` (one tf.string [None] input per raw field -> `probability`,
  `logit` [None]), `serving_tf_example` (serialized tf.Examples with a bytes_list per raw field
  -> the same outputs) and `transform` (raw fields -> `ids` int64 [None, M], `tokens`);
- assets: `schema.json`, `model_spec.json` and one vocabulary file per field (`<field>.txt`);
- `assets.extra/tf_serving_warmup_requests`: PredictionLog records with PredictRequests for
  `serving_default` built from real raw rows (the first parseable lines of the preprocessing
  input recorded in DATA/stats.json, when those files still exist) or, failing that, synthesised
  from the vocabularies (most frequent tokens; for numeric fields a raw number of the bucket).
  `assets.extra/export.json` records which, plus the source model_dir and spec.

A DeepFM or W&D re-trained with `retrain.mlp_input=unified` is exported with its per-field
projections folded into the first MLP layer (models/folding.py): the same logits (the skew tests
hold it to 1e-5), a first layer of sum d_m instead of M x E inputs, no projections for W&D.
`--no_fold` exports the model as trained; export.json records `folded_mlp_input`.

The preprocessing output (`data_dir` of model_spec.json) must be the one the model was trained
on: its schema_hash must equal the spec's (override the path with --data_dir when it moved).
"""
from __future__ import annotations

import glob
import itertools
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from configs import fileio
from configs.cli import StrictArgumentParser, UsageError, abandoned, hold_directory, run_main
from configs.features import MISSING_TOKEN, SCHEMA_FILE, DataSchema, DatasetSpec
from configs.loader import ConfigError, from_dict
from pipeline.retrain import MODEL_FILE, SPEC_FILE

WARMUP_FILE = "tf_serving_warmup_requests"
EXPORT_INFO = "export.json"
DEFAULT_WARMUP_ROWS = 8


class ExportError(UsageError):
    """The model_dir, data_dir or export_dir cannot be exported as asked; names the file."""


# ----------------------------------------------------------------------------- inputs

def load_model_dir(model_dir: str | Path, data_dir: str | Path | None = None):
    """(spec dict, DataSchema, data_dir) after checking the files and the schema hash."""
    model_dir = fileio.path(model_dir)
    if not model_dir.is_dir():
        raise ExportError(f"model_dir {model_dir} does not exist")
    for name in (MODEL_FILE, SPEC_FILE):
        if not (model_dir / name).is_file():
            raise ExportError(f"{model_dir / name} is missing: {model_dir} is not a finished "
                              f"`python -m pipeline.retrain` model_dir")
    try:
        spec = json.loads((model_dir / SPEC_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ExportError(f"{model_dir / SPEC_FILE}: invalid JSON: {exc}") from None
    for key in ("schema_hash", "field_names", "vocab_sizes", "data_dir"):
        if key not in spec:
            raise ExportError(f"{model_dir / SPEC_FILE} has no {key!r}")
    data_dir = fileio.path(data_dir or spec["data_dir"])
    try:
        schema = DataSchema.load(data_dir)
    except ConfigError as exc:
        raise ExportError(f"{exc} (data_dir of {model_dir / SPEC_FILE}; pass --data_dir if "
                          f"the preprocessing output moved)") from None
    if schema.schema_hash != spec["schema_hash"]:
        raise ExportError(f"schema_hash mismatch: {model_dir / SPEC_FILE} has "
                          f"{spec['schema_hash']} but {data_dir / SCHEMA_FILE} has "
                          f"{schema.schema_hash}; the model was trained on another preprocessing "
                          f"output")
    if list(spec["field_names"]) != list(schema.field_names) or \
            list(spec["vocab_sizes"]) != [f.vocab_size for f in schema.fields]:
        raise ExportError(f"{model_dir / SPEC_FILE}: field names or vocab sizes differ from "
                          f"{data_dir / SCHEMA_FILE}")
    for f in schema.fields:
        path = data_dir / f.vocab_file
        if not path.is_file():
            raise ExportError(f"vocabulary file {path} of field {f.name} is missing")
        tokens = count_vocab_tokens(path)
        if tokens != f.vocab_size - 1:
            raise ExportError(f"{path} has {tokens} tokens but schema.json says field "
                              f"{f.name} has vocab_size {f.vocab_size} (= tokens + 1)")
    return spec, schema, data_dir


def count_vocab_tokens(path: str | Path) -> int:
    """The tokens (lines) of a vocabulary file, as the served table reads it: newline-separated,
    the last line with or without its newline. Counted in 1 MB blocks: three fields of 10M
    tokens in 0.3 s and no memory (building their token lists with DataSchema.read_vocab, as
    this check did before, took 10-14 s and 0.7 GB; benchmarks/large_vocab.py)."""
    lines, last = 0, b"\n"
    with fileio.path(path).open("rb") as fh:
        while block := fh.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def first_vocab_tokens(path: str | Path, n: int) -> list[str]:
    """The first n tokens of a vocabulary file (all of them when it has fewer), parsed as
    DataSchema.read_vocab parses every line."""
    with fileio.path(path).open("r", encoding="utf-8") as fh:
        return [line.rstrip("\n").split("\t", 1)[0] for line in itertools.islice(fh, n)]


def dataset_spec_of(schema: DataSchema) -> DatasetSpec:
    """The resolved DatasetSpec the preprocessing job recorded in schema.json."""
    try:
        return from_dict(DatasetSpec, schema.config["dataset"], "dataset")
    except (KeyError, TypeError) as exc:
        raise ExportError(f"schema.json of dataset {schema.dataset} has no resolved dataset "
                          f"config: {exc}") from None


# ----------------------------------------------------------------------------- warm-up rows

def raw_rows_from_inputs(schema: DataSchema, data_dir: Path, n: int,
                         split: int | None = None) -> tuple[list[dict], str]:
    """Up to n raw rows ({field: raw string}) read from the preprocessing input files named in
    data_dir/stats.json, or ([], reason) when that is not possible. `split` (0 train, 1 valid,
    2 test) keeps the lines the Beam job assigned to that split (schema.json's split config)."""
    from preprocessing.formats import MalformedRecord, line_parser, split_index

    stats_path = data_dir / "stats.json"
    if not stats_path.is_file():
        return [], f"{stats_path} is missing"
    stats = json.loads(stats_path.read_text(encoding="utf-8"))
    try:
        parser = line_parser(dataset_spec_of(schema))
    except ConfigError as exc:
        return [], str(exc)
    paths = []
    for pattern in str(stats.get("input", "")).split(", "):
        if pattern and "://" not in pattern:
            paths += sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
    if not paths:
        return [], f"the input files of {stats_path} ({stats.get('input')!r}) no longer exist"
    index = [(parser.columns.index(name), name) for name in schema.field_names]
    split_cfg = schema.config.get("split") if isinstance(schema.config, dict) else None
    if split is not None and not isinstance(split_cfg, dict):
        return [], f"{data_dir / SCHEMA_FILE} records no split configuration"
    rows = []
    for path in paths:
        opener = __import__("gzip").open if path.endswith(".gz") else open
        with opener(path, "rt", encoding=parser.encoding, errors="replace") as fh:
            for line_no, line in enumerate(fh, 1):
                text = line.rstrip("\r\n")
                if not text.strip():
                    continue
                if split is not None and split_index(
                        os.path.basename(path), line_no,
                        [split_cfg[k] for k in ("train", "valid", "test")],
                        split_cfg["seed"]) != split:
                    continue
                try:
                    got = parser.split(text, line_no)
                    if got is None:
                        continue
                    parser.encoder.tokens(got[0])
                except MalformedRecord:
                    continue
                rows.append({name: got[0][i] for i, name in index})
                if len(rows) >= n:
                    return rows, f"input file {path}"
    return rows, f"input files {paths}" if rows else "no parseable row in the input files"


def raw_rows_from_vocab(schema: DataSchema, data_dir: Path, n: int) -> list[dict]:
    """n synthetic raw rows: row k takes each field's k-th most frequent token (cycling); a
    numeric token becomes a raw number of its bucket, MISSING_TOKEN an empty string."""
    from pipeline.token_ops import synthetic_numeric_raw

    # row k < n reads token k % len(tokens): the first n tokens are all it needs (reading the
    # whole vocabularies took 12 s and 2.1 GB for three fields of 10M tokens)
    vocabs = {f.name: first_vocab_tokens(data_dir / f.vocab_file, n) for f in schema.fields}
    rows = []
    for k in range(n):
        row = {}
        for f in schema.fields:
            tokens = vocabs[f.name] or [MISSING_TOKEN]
            token = tokens[k % len(tokens)]
            if f.kind == "numeric":
                row[f.name] = synthetic_numeric_raw(token)
            else:
                row[f.name] = "" if token == MISSING_TOKEN else token
        rows.append(row)
    return rows


def write_warmup(path: Path, model_name: str, rows: list[dict], field_names) -> int:
    """Writes one PredictionLog per row (batch 1) plus one with all rows (a batch)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from pipeline.serving_client import build_predict_request

    batches = [[r] for r in rows] + ([rows] if len(rows) > 1 else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for batch in batches:
            request = build_predict_request(model_name, batch, field_names)
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return len(batches)


# ----------------------------------------------------------------------------- export

def publish_remote(staged: Path, base: fileio.RemotePath) -> fileio.RemotePath:
    """Copies the local SavedModel `staged` to the next version of the remote `base`, every file
    before saved_model.pb, so a server polling `base` finds the graph only once all it needs is
    there. Object stores have no directory rename: unlike a local export this is not atomic, and
    two exporters racing for the same version are not detected."""
    version_dir = base / str(next_version(base))
    files = sorted(p for p in staged.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == "saved_model.pb")  # last
    try:
        for src in files:
            dst = version_dir / src.relative_to(staged).as_posix()
            dst.parent.mkdir(parents=True, exist_ok=True)
            fileio.copy_file(src, dst)
    except BaseException:
        fileio.remove_tree(version_dir)  # a version without saved_model.pb: never served
        raise
    return version_dir


def next_version(base: Path) -> int:
    versions = [int(p.name) for p in base.iterdir() if p.name.isdigit()] if base.is_dir() else []
    return max(versions, default=0) + 1


def load_keras_model(model_dir: Path):
    import keras

    import models.factory  # noqa: F401  (registers the custom layers)

    try:
        return keras.saving.load_model(str(model_dir / MODEL_FILE), compile=False)
    except Exception as exc:  # corrupt archive, unknown class, ...
        raise ExportError(f"cannot load {model_dir / MODEL_FILE}: {exc}") from exc


def build_module(model, schema: DataSchema, data_dir: Path, extra_assets=()):
    from pipeline.serving_module import make_serving_module
    from pipeline.token_ops import huge_negative_tokens, max_log_bucket

    fields, max_bucket = [], 0
    for f in schema.fields:
        has_tokens = f.vocab_size > 1
        huge = {}
        if f.kind == "numeric" and has_tokens:
            tokens = schema.read_vocab(data_dir, f.name)
            huge = huge_negative_tokens(tokens)
            max_bucket = max(max_bucket, max_log_bucket(tokens))
        fields.append((f.name, f.kind, str(data_dir / f.vocab_file) if has_tokens else None, huge))
    return make_serving_module(model, fields, extra_assets, max_bucket)


_LEFTOVER = re.compile(r"\.tmp-(?P<host>[^/]+)-(?P<pid>[0-9]+)-[0-9]+")


def remove_dead_leftovers(base: Path, log=print) -> list[Path]:
    """Removes the temporary directories of exports that were killed: named exactly as this
    module names them, written on this host by a process that is no longer running, unlocked
    (configs.cli.hold_directory). Any other entry (another host's, a live exporter's, anything
    else) is left alone."""
    removed = []
    for entry in sorted(base.iterdir()):
        m = _LEFTOVER.fullmatch(entry.name)
        if (m and entry.is_dir() and not entry.is_symlink()
                and abandoned(entry, m["host"], int(m["pid"]))):
            shutil.rmtree(entry)
            removed.append(entry)
            log(f"removed {entry}: the temporary directory of an export that was killed")
    return removed


def export(model_dir: str | Path, export_dir: str | Path, name: str | None = None, *,
           data_dir: str | Path | None = None, warmup_rows: int = DEFAULT_WARMUP_ROWS,
           fold: bool = True, log=print) -> Path:
    """Exports model_dir; returns the new version directory."""
    import tensorflow as tf

    model_dir = fileio.path(model_dir)
    spec, schema, data_dir = load_model_dir(model_dir, data_dir)
    name = name or schema.dataset
    if not name or "/" in name or name.startswith("."):
        raise ExportError(f"--name must be a plain directory name, got {name!r}")
    model = load_keras_model(model_dir)
    from models.folding import can_fold, fold_mlp_input

    folded = fold and can_fold(model)
    if folded:
        model = fold_mlp_input(model)
    module = build_module(model, schema, data_dir,
                          extra_assets=[str(data_dir / SCHEMA_FILE), str(model_dir / SPEC_FILE)])

    base = fileio.path(export_dir) / name
    base.mkdir(parents=True, exist_ok=True)
    remote = isinstance(base, fileio.RemotePath)
    if remote:  # staged locally, then copied into place (publish_remote)
        tmp = Path(tempfile.mkdtemp(prefix=".autodim-export-"))
    else:
        remove_dead_leftovers(base, log)
        tmp = base / f".tmp-{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        tmp.mkdir()
        hold_directory(tmp)  # until this process exits: a later export sees it is in use
    try:
        tf.saved_model.save(module, str(tmp), signatures=module.signature_functions())
        rows, source = raw_rows_from_inputs(schema, data_dir, warmup_rows)
        if rows:
            warmup_source = f"real rows from {source}"
        else:
            rows = raw_rows_from_vocab(schema, data_dir, warmup_rows)
            warmup_source = f"synthesised from the vocabularies ({source})"
        count = write_warmup(tmp / "assets.extra" / WARMUP_FILE, name, rows, schema.field_names)
        info = {"model_dir": fileio.absolute(model_dir), "data_dir": fileio.absolute(data_dir),
                "dataset": schema.dataset, "schema_hash": schema.schema_hash,
                "field_names": list(schema.field_names),
                "field_kinds": [f.kind for f in schema.fields], "model_spec": spec,
                "warmup_requests": count, "warmup_source": warmup_source,
                "folded_mlp_input": folded,
                "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / "assets.extra" / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n",
                                                        encoding="utf-8")
        if remote:
            version_dir = publish_remote(tmp, base)
            shutil.rmtree(tmp, ignore_errors=True)
        while not remote:  # another exporter may take a version between listing and renaming
            version_dir = base / str(next_version(base))
            try:
                os.rename(tmp, version_dir)  # fails if version_dir exists and is non-empty
                break
            except OSError:
                if not version_dir.exists():
                    raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"exported {model_dir} -> {version_dir} ({count} warm-up requests, {warmup_source})")
    return version_dir


def main(argv=None) -> int:
    parser = StrictArgumentParser(prog="python -m pipeline.export", description=__doc__)
    parser.add_argument("--model_dir", required=True, help="a pipeline.retrain model_dir")
    parser.add_argument("--export_dir", required=True, help="base dir of the served models")
    parser.add_argument("--name", default=None, help="model name (default: the dataset name)")
    parser.add_argument("--data_dir", default=None,
                        help="preprocessing output (default: model_spec.json's data_dir)")
    parser.add_argument("--warmup_rows", type=int, default=DEFAULT_WARMUP_ROWS)
    parser.add_argument("--no_fold", action="store_true",
                        help="export the model as trained (no folding of the MLP input "
                             "projections)")
    args = parser.parse_args(argv)
    if args.warmup_rows < 1:
        parser.error(f"--warmup_rows must be >= 1, got {args.warmup_rows}")
    return run_main(lambda: export(args.model_dir, args.export_dir, args.name,
                                   data_dir=args.data_dir, warmup_rows=args.warmup_rows,
                                   fold=not args.no_fold) and None)


if __name__ == "__main__":
    sys.exit(main())
