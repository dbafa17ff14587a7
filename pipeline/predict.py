"""`python -m pipeline.predict`: batch scoring of raw log files with an exported SavedModel.

    python -m pipeline.predict --model EXPORTS/NAME --input GLOB --output FILE
        [--version N] [--dataset NAME] [--batch_size 4096] [--quiet]

- `--model` is a TF Serving model base directory (the newest integer version is used unless
  `--version N`) or a version directory itself.
- Input: files matching GLOB (comma-separated globs allowed; `.gz` files are decompressed) in the
  dataset's own raw format, read line by line in chunks of `--batch_size` (bounded memory). The
  format comes from the export's `assets/schema.json` unless `--dataset` names another preset.
- The label is optional, per line:
    criteo  40 tab-separated columns = label first; 39 = no label
    avazu   24 comma-separated columns (with `click`); 23 = no `click` column (the Kaggle test
            file layout); header lines of both layouts are skipped
    frappe  `label idx:v ...` (11 tokens); 10 tokens = no label
    csv     len(columns) values; len(columns) - 1 = the label column left out
  MovieLens (three joined tables) is not a line format and is refused.
- Output: CSV `row_id,source,line,probability,label` in input order (files in sorted order);
  `row_id` counts the scored rows from 0, `source` is the file path, `line` its 1-based line
  number, `label` is empty for a row without one. Raw values go through the same token rules as
  online serving (inside the SavedModel): a non-numeric value in a numeric field is a missing value,
  not a reject.
- Malformed lines (wrong column count, bad label, undecodable bytes, bad Avazu hour) are not
  scored: they are written to `FILE.rejects.jsonl` (`source`, `line`, `reason`, `raw`) and
  counted in the summary. Blank lines are skipped and counted.
"""
from __future__ import annotations

import argparse
import csv
import glob
import gzip
import json
import os
import sys
from pathlib import Path
from typing import Iterator

from configs.features import SCHEMA_FILE, DataSchema, DatasetSpec, dataset_spec
from configs.loader import ConfigError, from_dict

REJECTS_SUFFIX = ".rejects.jsonl"


class PredictError(ValueError):
    """Bad arguments or an unusable model directory; the message names the path."""


def resolve_version(model: str | Path, version: int | None = None) -> Path:
    """The SavedModel directory: MODEL/<version> (newest if None), or MODEL itself if it is one."""
    model = Path(model)
    if (model / "saved_model.pb").is_file():
        if version is not None:
            raise PredictError(f"--version given but {model} is a version directory already")
        return model
    if not model.is_dir():
        raise PredictError(f"--model {model} does not exist")
    versions = sorted(int(p.name) for p in model.iterdir()
                      if p.name.isdigit() and (p / "saved_model.pb").is_file())
    if not versions:
        raise PredictError(f"--model {model} holds no SavedModel version directories")
    if version is None:
        return model / str(versions[-1])
    if version not in versions:
        raise PredictError(f"--model {model} has no version {version}; versions: {versions}")
    return model / str(version)


def load_dataset_spec(version_dir: Path, dataset: str | None) -> tuple[DatasetSpec, list[str]]:
    """The DatasetSpec to parse input with and the model's field names (from assets)."""
    path = version_dir / "assets" / SCHEMA_FILE
    if not path.is_file():
        raise PredictError(f"{path} is missing: {version_dir} was not written by pipeline.export")
    schema = DataSchema.load(path.parent)
    if dataset:
        spec = dataset_spec(dataset)
    else:
        spec = from_dict(DatasetSpec, schema.config["dataset"], "dataset")
    missing = [n for n in schema.field_names if n not in spec.field_names]
    if missing:
        raise PredictError(f"dataset {spec.name} has no field(s) {missing} that the model needs")
    return spec, list(schema.field_names)


class RowReader:
    """One raw line -> ({field: raw value}, label or None); None for a header line.

    Raises MalformedRecord (reason) for a line that cannot be read."""

    def __init__(self, spec: DatasetSpec, field_names: list[str]):
        from preprocessing.formats import AVAZU_COLUMNS, line_parser

        if spec.format not in ("criteo", "avazu", "frappe", "csv"):
            raise PredictError(f"format {spec.format!r} of dataset {spec.name} is not a "
                               f"single-file line format; batch prediction supports criteo, "
                               f"avazu, frappe and csv")
        self.parser = line_parser(spec)
        self.format = spec.format
        self.spec = spec
        self._index = [(self.parser.columns.index(n), n) for n in field_names]
        self._avazu_test_header = ",".join(c for c in AVAZU_COLUMNS if c != "click")

    def _labelled(self, text: str, line_no: int) -> tuple[str, bool] | None:
        """The line in its labelled layout (a dummy label inserted if it has none)."""
        fmt = self.format
        if fmt == "criteo":
            n = text.count("\t") + 1
            return (text, True) if n != 39 else ("0\t" + text, False)
        if fmt == "avazu":
            if text.strip() == self._avazu_test_header:
                return None
            parts = text.split(",")
            if len(parts) == 23:
                return ",".join(parts[:1] + ["0"] + parts[1:]), False
            return text, True
        if fmt == "frappe":
            return (text, True) if len(text.split()) != 10 else ("0 " + text, False)
        # csv
        if self.spec.header and line_no == 1:
            return None
        try:
            values = next(csv.reader([text], delimiter=self.spec.delimiter, strict=True))
        except (csv.Error, StopIteration):
            return text, True  # the parser reports it
        if len(values) == len(self.spec.columns) - 1:
            label_at = self.spec.columns.index(self.spec.label_column)
            values.insert(label_at, self.spec.negative_labels[0] if self.spec.negative_labels
                          else self.spec.positive_labels[0])
            buf = __import__("io").StringIO()
            csv.writer(buf, delimiter=self.spec.delimiter, lineterminator="").writerow(values)
            return buf.getvalue(), False
        return text, True

    def __call__(self, text: str, line_no: int):
        got = self._labelled(text, line_no)
        if got is None:
            return None
        text, has_label = got
        parsed = self.parser.split(text, line_no)
        if parsed is None:
            return None
        values, label = parsed
        return {name: values[i] for i, name in self._index}, (label if has_label else None)


def input_files(pattern: str) -> list[str]:
    files = []
    for part in pattern.split(","):
        part = part.strip()
        if part:
            matched = sorted(p for p in glob.glob(part) if os.path.isfile(p))
            if not matched:
                raise PredictError(f"--input {part}: no files match")
            files += [m for m in matched if m not in files]
    if not files:
        raise PredictError("--input is empty")
    return files


def _lines(path: str) -> Iterator[tuple[int, bytes, int]]:
    """(line_no, raw bytes without terminator, bytes consumed) of a file, streamed."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            yield line_no, raw.rstrip(b"\r\n"), len(raw)


def predict(model: str | Path, pattern: str, output: str | Path, *, version: int | None = None,
            dataset: str | None = None, batch_size: int = 4096, quiet: bool = False,
            log=None) -> dict:
    """Scores the input files; returns the summary counts."""
    import numpy as np
    import tensorflow as tf

    from pipeline.progress import Progress
    from preprocessing.formats import MalformedRecord

    if batch_size < 1:
        raise PredictError(f"--batch_size must be >= 1, got {batch_size}")
    version_dir = resolve_version(model, version)
    spec, field_names = load_dataset_spec(version_dir, dataset)
    reader = RowReader(spec, field_names)
    files = input_files(pattern)
    loaded = tf.saved_model.load(str(version_dir))
    score = loaded.signatures["serving_default"]
    total_bytes = sum(os.path.getsize(f) for f in files)
    progress = Progress(max(total_bytes, 1), quiet=quiet)
    log = log or progress.log
    counts = {"scored": 0, "rejected": 0, "blank": 0, "header": 0, "labelled": 0}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    rejects_path = Path(str(output) + REJECTS_SUFFIX)
    consumed = 0
    progress.update(0, "predict")

    with open(output, "w", newline="", encoding="utf-8") as out, \
            open(rejects_path, "w", encoding="utf-8") as rejects:
        writer = csv.writer(out)
        writer.writerow(["row_id", "source", "line", "probability", "label"])
        batch: list[tuple[str, int, dict, float | None]] = []

        def flush():
            if not batch:
                return
            inputs = {n: tf.constant([row[2][n] for row in batch], tf.string) for n in field_names}
            probs = score(**inputs)["probability"].numpy()
            for (source, line_no, _, label), p in zip(batch, probs.astype(np.float64)):
                writer.writerow([counts["scored"], source, line_no, f"{p:.8g}",
                                 "" if label is None else f"{label:g}"])
                counts["scored"] += 1
                counts["labelled"] += label is not None
            batch.clear()

        for path in files:
            for line_no, raw, size in _lines(path):
                consumed += size
                if not raw.strip():
                    counts["blank"] += 1
                    continue
                try:
                    try:
                        text = raw.decode(reader.parser.encoding)
                    except UnicodeDecodeError as exc:
                        raise MalformedRecord(f"undecodable bytes ({reader.parser.encoding}): "
                                              f"{exc.reason} at byte {exc.start}") from None
                    got = reader(text, line_no)
                except MalformedRecord as exc:
                    counts["rejected"] += 1
                    rejects.write(json.dumps({"source": path, "line": line_no, "reason": str(exc),
                                              "raw": raw.decode("utf-8", errors="replace")}) + "\n")
                    continue
                if got is None:
                    counts["header"] += 1
                    continue
                batch.append((path, line_no, got[0], got[1]))
                if len(batch) >= batch_size:
                    flush()
                    progress.update(consumed, "predict")
            flush()
            progress.update(consumed, "predict")
    progress.close()
    counts.update({"files": len(files), "version_dir": str(version_dir), "output": str(output),
                   "rejects": str(rejects_path)})
    log(f"predict: {counts['scored']:,} rows scored ({counts['labelled']:,} with a label), "
        f"{counts['rejected']:,} rejected -> {rejects_path}, {counts['blank']:,} blank and "
        f"{counts['header']:,} header lines skipped; model {version_dir}; output {output}")
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="EXPORTS/NAME (or a version directory)")
    parser.add_argument("--input", required=True, help="file glob(s), comma-separated")
    parser.add_argument("--output", required=True, help="CSV to write")
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--dataset", default=None, help="override the export's dataset format")
    parser.add_argument("--batch_size", type=int, default=4096)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        predict(args.model, args.input, args.output, version=args.version, dataset=args.dataset,
                batch_size=args.batch_size, quiet=args.quiet)
    except (PredictError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
