"""`python -m pipeline.predict`: batch scoring of raw log files with an exported SavedModel.

    python -m pipeline.predict --model EXPORTS/NAME --input GLOB --output FILE
        [--version N] [--dataset NAME] [--batch_size 4096] [--quiet]

- `--model` is a TF Serving model base directory (the newest integer version is used unless
  `--version N`) or a version directory itself.
- Input: files matching GLOB (comma-separated globs allowed; `.gz` files are decompressed) in the
  dataset's own raw format, read line by line in chunks of `--batch_size` (bounded memory). The
  format comes from the export's `assets/schema.json` unless `--dataset` names another preset.
- The label is optional, per file: the file's first data line (blank and header lines do not
  count) fixes its layout, labelled or unlabelled:
    criteo  40 tab-separated columns = label first; 39 = no label
    avazu   24 comma-separated columns (with `click`); 23 = no `click` column (the Kaggle test
            file layout); header lines of both layouts are skipped
    frappe  `label idx:v ...` (11 tokens); 10 tokens = no label
    csv     len(columns) values; len(columns) - 1 = the label column left out
  Every later line of that file with another column count is rejected (reason: expected vs found
  count), never re-read in the other layout. A first line with neither count is rejected and the
  next data line decides. MovieLens (three joined tables) is not a line format and is refused.
- Output: CSV `row_id,source,line,probability,label` in input order (files in sorted order);
  `row_id` counts the scored rows from 0, `source` is the file path, `line` its 1-based line
  number, `label` is empty for a row without one. Raw values go through the same token rules as
  online serving (inside the SavedModel): a non-numeric value in a numeric field is a missing value,
  not a reject.
- Malformed lines (wrong column count, bad label, undecodable bytes, bad Avazu hour) are not
  scored: they are written to `FILE.rejects.jsonl` (`source`, `line`, `reason`, `raw`) and
  counted in the summary. Blank lines are skipped and counted.
- Safety: FILE and FILE.rejects.jsonl are written to temporary files beside them
  (`.NAME.tmp-XXXXXXXX`, mode 0666 minus the umask) and renamed into place only when every input
  was read to its end; on any failure they are removed and nothing appears at the final paths.
  The output, its rejects file and their temporaries are never read as input: naming one in
  `--input` (or a path that resolves to one) is a usage error; a glob's match of one is left out
  with a logged note. An existing FILE is replaced only if it is a pipeline.predict output (first
  line `row_id,source,line,probability,label`), an existing rejects file only if it is empty or a
  pipeline.predict rejects file; anything else there is refused, never overwritten.
- Exit codes: 0 success; 1 failure at run time (a damaged or unreadable input, e.g. a truncated
  `.gz`, an unwritable output location); 2 usage error (bad arguments, no model, an output that
  would replace an input or a file predict did not write).
"""
from __future__ import annotations

import contextlib
import csv
import glob
import gzip
import io
import json
import os
import sys
import zlib
from pathlib import Path
from typing import Iterator, Sequence

from configs import fileio
from configs.cli import (
    TEMP_INFIX,
    JobError,
    StrictArgumentParser,
    UsageError,
    create_temp,
    run_main,
)
from configs.features import SCHEMA_FILE, DataSchema, DatasetSpec, dataset_spec
from configs.loader import from_dict

REJECTS_SUFFIX = ".rejects.jsonl"
OUTPUT_HEADER = ("row_id", "source", "line", "probability", "label")


class PredictError(UsageError):
    """Bad arguments or an unusable model directory; the message names the path."""


class PredictFailure(JobError):
    """A failure at run time (exit 1): a damaged or unreadable input, an unwritable output."""


def resolve_version(model: str | Path, version: int | None = None) -> Path:
    """The SavedModel directory: MODEL/<version> (newest if None), or MODEL itself if it is one."""
    model = fileio.path(model)
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


def _labelled_layout(spec: DatasetSpec, parser) -> tuple[int, str]:
    """(column count of a labelled line, what the count counts) of a line format."""
    from preprocessing.formats import AVAZU_COLUMNS

    return {
        "criteo": (40, "tab-separated columns"),
        "avazu": (len(AVAZU_COLUMNS), "comma-separated columns"),
        "frappe": (len(parser.columns) + 1, "whitespace-separated tokens"),
        "csv": (len(spec.columns), f"{spec.delimiter!r}-separated columns"),
    }[spec.format]


def _split_line(spec: DatasetSpec, text: str) -> list[str]:
    """A raw line's columns (tokens for frappe), whatever their count."""
    if spec.format == "criteo":
        return text.split("\t")
    if spec.format == "avazu":
        return text.split(",")
    if spec.format == "frappe":
        return text.split()
    from preprocessing.formats import MalformedRecord
    try:
        return next(csv.reader([text], delimiter=spec.delimiter, strict=True))
    except (csv.Error, StopIteration) as exc:
        raise MalformedRecord(f"unreadable delimited line: {exc}") from None


def _with_dummy_label(spec: DatasetSpec, values: list[str]) -> str:
    """An unlabelled line in the labelled layout (a placeholder label inserted)."""
    fmt = spec.format
    if fmt == "criteo":
        return "\t".join(["0"] + values)
    if fmt == "avazu":
        return ",".join(values[:1] + ["0"] + values[1:])
    if fmt == "frappe":
        return " ".join(["0"] + values)
    label_at = spec.columns.index(spec.label_column)
    values = list(values)
    values.insert(label_at, spec.negative_labels[0] if spec.negative_labels
                  else spec.positive_labels[0])
    buf = io.StringIO()
    csv.writer(buf, delimiter=spec.delimiter, lineterminator="").writerow(values)
    return buf.getvalue()


class RowReader:
    """One raw line -> ({field: raw value}, label or None); None for a header line.

    Labelled or not is decided per file (call `start_file()` before each file) by its first data
    line's column count; a later line with another count is a MalformedRecord naming expected and
    found counts. Raises MalformedRecord (reason) for any line that cannot be read."""

    def __init__(self, spec: DatasetSpec, field_names: list[str]):
        from preprocessing.formats import AVAZU_COLUMNS, LINE_PARSERS, line_parser

        if spec.format not in LINE_PARSERS:
            raise PredictError(f"format {spec.format!r} of dataset {spec.name} is not a "
                               f"single-file line format; batch prediction supports "
                               f"{', '.join(LINE_PARSERS)}")
        self.parser = line_parser(spec)
        self.format = spec.format
        self.spec = spec
        self._index = [(self.parser.columns.index(n), n) for n in field_names]
        self._avazu_headers = (",".join(AVAZU_COLUMNS),
                               ",".join(c for c in AVAZU_COLUMNS if c != "click"))
        self.labelled_count, self.unit = _labelled_layout(spec, self.parser)
        self.start_file()

    def start_file(self) -> None:
        """Forgets the layout: the next data line decides it for the new file."""
        self.has_label: bool | None = None
        self.layout_line = 0

    def _check_layout(self, n: int, line_no: int) -> None:
        """Fixes the file's layout on its first data line; refuses a line of another count."""
        from preprocessing.formats import MalformedRecord

        full = self.labelled_count
        if self.has_label is None:
            if n not in (full, full - 1):
                raise MalformedRecord(f"expected {full} {self.unit} (labelled) or {full - 1} "
                                      f"(unlabelled), got {n}")
            self.has_label, self.layout_line = n == full, line_no
        want = full if self.has_label else full - 1
        if n != want:
            layout = "labelled" if self.has_label else "unlabelled"
            raise MalformedRecord(f"expected {want} {self.unit} ({layout} file, as its line "
                                  f"{self.layout_line}), got {n}")

    def __call__(self, text: str, line_no: int):
        if self.format == "avazu" and text.strip() in self._avazu_headers:
            return None
        if self.format == "csv" and self.spec.header and line_no == 1:
            return None
        values = _split_line(self.spec, text)
        self._check_layout(len(values), line_no)
        if not self.has_label:
            text = _with_dummy_label(self.spec, values)
        parsed = self.parser.split(text, line_no)
        if parsed is None:
            return None
        values, label = parsed
        return {name: values[i] for i, name in self._index}, (label if self.has_label else None)


def _same_file(a: str | Path, b: str | Path) -> bool:
    """The same path after resolving symlinks, or (both existing) the same inode."""
    if fileio.is_remote(a) or fileio.is_remote(b):
        return str(a).rstrip("/") == str(b).rstrip("/")
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _own_file(path: str, protected: Sequence[Path]) -> str | None:
    """What `path` is if it is one of this run's files (output, rejects file, a temporary of
    either, e.g. left by a killed run), else None."""
    for own in protected:
        if _same_file(path, own):
            return f"the output file {own}" if not str(own).endswith(REJECTS_SUFFIX) \
                else f"the rejects file {own}"
        if (os.path.basename(path).startswith(f".{own.name}{TEMP_INFIX}")
                and _same_file(os.path.dirname(path) or ".", own.parent)):
            return f"a temporary file of the output {own}"
    return None


def input_files(pattern: str, protected: Sequence[Path] = (),
                notes: list[str] | None = None) -> list[str]:
    """The files of the comma-separated globs, each glob's matches sorted, duplicates once.

    `protected` (the output and its rejects file) are never inputs: naming one (or a path that
    resolves to one, or a temporary of one) explicitly is a PredictError; a glob's match of one
    is left out, with a note appended to `notes`."""
    files, left_out = [], []
    for part in pattern.split(","):
        part = part.strip()
        if not part:
            continue
        if fileio.is_remote(part):
            matched = [p for p in fileio.glob(part) if fileio.path(p).is_file()]
        else:
            matched = sorted(p for p in glob.glob(part) if os.path.isfile(p))
        if not matched:
            raise PredictError(f"--input {part}: no files match")
        kept = []
        for m in matched:
            own = _own_file(m, protected)
            if own is None:
                kept.append(m)
            elif not glob.has_magic(part):
                raise PredictError(f"--input {part} is {own} (--output): it would be "
                                   f"overwritten while it is read; write the output elsewhere")
            else:
                left_out.append(f"predict: --input {part}: leaving out {m}, {own}")
        files += [m for m in kept if m not in files]
    if not files and left_out:
        raise PredictError(f"--input {pattern} matches only this run's own output files")
    if not files:
        raise PredictError("--input is empty")
    if notes is not None:
        notes += left_out
    return files


def _first_line(path, limit: int) -> bytes:
    """The first line of a file (at most `limit` bytes), with its newline."""
    path = fileio.path(path)
    if isinstance(path, Path):
        with open(path, "rb") as fh:
            return fh.readline(limit)
    with path.open("rb") as fh:  # GFile's readline takes no limit
        head = fh.read(limit)
    end = head.find(b"\n")
    return head if end < 0 else head[:end + 1]


def _is_predict_output(path: Path) -> bool:
    first = _first_line(path, 4096)
    return first.rstrip(b"\r\n") == ",".join(OUTPUT_HEADER).encode()


def _is_predict_rejects(path: Path) -> bool:
    first = _first_line(path, 1 << 20)
    if not first:
        return True
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and set(record) == {"source", "line", "reason", "raw"}


def check_output(output: Path, rejects: Path) -> None:
    """Refuses (PredictError) an output or rejects path that holds something predict did not
    write: only a previous predict output (rejects file) is ever replaced."""
    if isinstance(output, fileio.RemotePath):  # no symlinks, no special files
        for path, what, ours in ((output, "--output", _is_predict_output),
                                 (rejects, "the rejects file of --output", _is_predict_rejects)):
            if path.is_dir():
                raise PredictError(f"{what} {path} is a directory")
            if path.exists() and not ours(path):
                raise PredictError(f"{what} {path} exists and was not written by "
                                   f"pipeline.predict; refusing to overwrite it")
        return
    parent = output.parent
    while not os.path.exists(parent) and parent != parent.parent:
        parent = parent.parent
    if os.path.exists(parent) and not parent.is_dir():
        raise PredictError(f"--output {output}: {parent} is not a directory")
    for path, what, ours in ((output, "--output", _is_predict_output),
                             (rejects, "the rejects file of --output", _is_predict_rejects)):
        if not os.path.lexists(path):
            continue
        if path.is_dir():
            raise PredictError(f"{what} {path} is a directory")
        if not path.is_file():
            raise PredictError(f"{what} {path} exists and is not a regular file; refusing to "
                               f"replace it")
        try:
            replaceable = ours(path)
        except OSError as exc:
            raise PredictError(f"{what} {path} exists and cannot be read to check it is a "
                               f"pipeline.predict output: {exc.strerror or exc}") from None
        if not replaceable:
            kind = (f"its first line is not {','.join(OUTPUT_HEADER)}" if ours is _is_predict_output
                    else "it does not hold pipeline.predict rejects records")
            raise PredictError(f"{what} {path} exists and was not written by pipeline.predict "
                               f"({kind}); refusing to overwrite it")


def _create_temp(final: Path, created: list[Path]):
    """A new text file `.NAME.tmp-XXXXXXXX` beside `final` (mode 0666 minus the umask, as open()
    gives), appended to `created` at once so a failure can remove it."""
    tmp, fd = create_temp(final)
    created.append(tmp)
    return tmp, open(fd, "w", newline="", encoding="utf-8")


def _lines(path: str) -> Iterator[tuple[int, bytes, int]]:
    """(line_no, raw bytes without terminator, bytes consumed) of a file, streamed.

    A damaged `.gz` (truncated, corrupt) or an unreadable file raises PredictFailure naming the
    file and how far it was read."""
    opener = gzip.open if path.endswith(".gz") else open
    if fileio.is_remote(path):
        opener = _open_remote
    line_no = read = 0
    try:
        with opener(path, "rb") as fh:
            for raw in fh:
                line_no += 1
                read += len(raw)
                yield line_no, raw.rstrip(b"\r\n"), len(raw)
    except EOFError:
        raise PredictFailure(f"{path} is damaged: compressed stream ends after line {line_no} "
                             f"({read:,} uncompressed bytes read)") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise PredictFailure(f"{path} is damaged: corrupt compressed data after line {line_no} "
                             f"({read:,} uncompressed bytes read): {exc}") from None
    except OSError as exc:
        raise PredictFailure(f"cannot read {path} (after line {line_no}): "
                             f"{exc.strerror or exc}") from None


@contextlib.contextmanager
def _open_remote(name: str, mode: str):
    """A remote input file, opened binary (decompressed when it ends in .gz)."""
    with fileio.path(name).open(mode) as raw:
        if not name.endswith(".gz"):
            yield raw
            return
        with gzip.GzipFile(fileobj=raw, mode=mode) as fh:
            yield fh


def _cannot_write(output: Path, exc: OSError) -> PredictFailure:
    where = f" ({exc.filename})" if exc.filename else ""
    return PredictFailure(f"cannot write --output {output}: {exc.strerror or exc}{where}")


@contextlib.contextmanager
def _atomic_outputs(output: Path, rejects_path: Path):
    """Yields (output file, rejects file), both temporaries beside their final paths. When the
    block ends without an error they are synced and renamed into place (the rejects file first,
    the scores last); on any failure they are removed. An OSError (creating or writing them)
    becomes PredictFailure "cannot write --output"; reading errors are PredictFailure already."""
    if isinstance(output, fileio.RemotePath):
        with _remote_outputs(output, rejects_path) as files:
            yield files
        return
    temps: list[Path] = []  # removed on any failure; renamed into place at the end
    try:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            tmp_out, out = _create_temp(output, temps)
            tmp_rejects, rejects = _create_temp(rejects_path, temps)
        except OSError as exc:
            raise _cannot_write(output, exc) from None
        with out, rejects:
            yield out, rejects
            for fh in (out, rejects):
                fh.flush()
                os.fsync(fh.fileno())
        check_output(output, rejects_path)  # again: something may have appeared meanwhile
        os.replace(tmp_rejects, rejects_path)
        os.replace(tmp_out, output)
        temps.clear()
    except OSError as exc:
        raise _cannot_write(output, exc) from None
    finally:
        for tmp in temps:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass


@contextlib.contextmanager
def _remote_outputs(output: fileio.RemotePath, rejects_path: fileio.RemotePath):
    """_atomic_outputs for a remote --output: both files written in a local temporary
    directory, then copied to temporary names beside their final paths and renamed into place
    (fileio.put_file: not atomic on an object store, never a partial file)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix=".autodim-predict-") as tmp:
        local_out, local_rejects = Path(tmp) / "output.csv", Path(tmp) / "rejects.jsonl"
        with open(local_out, "w", newline="", encoding="utf-8") as out, \
                open(local_rejects, "w", newline="", encoding="utf-8") as rejects:
            yield out, rejects
        check_output(output, rejects_path)  # again: something may have appeared meanwhile
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            fileio.put_file(local_rejects, rejects_path)
            fileio.put_file(local_out, output)
        except OSError as exc:
            raise _cannot_write(output, exc) from None


class _BatchScorer:
    """Collects parsed rows, scores them `batch_size` at a time with the serving signature and
    writes them as output CSV rows (counting scored and labelled rows in `counts`)."""

    def __init__(self, score, field_names: list[str], out, counts: dict, batch_size: int):
        self._score = score
        self._field_names = field_names
        self._writer = csv.writer(out)
        self._writer.writerow(OUTPUT_HEADER)
        self._counts = counts
        self._batch_size = batch_size
        self._batch: list[tuple[str, int, dict, float | None]] = []

    def add(self, source: str, line_no: int, values: dict, label: float | None) -> bool:
        """Queues one row; True when a full batch is waiting for `flush`."""
        self._batch.append((source, line_no, values, label))
        return len(self._batch) >= self._batch_size

    def flush(self) -> None:
        import numpy as np
        import tensorflow as tf

        batch, counts = self._batch, self._counts
        if not batch:
            return
        inputs = {n: tf.constant([row[2][n] for row in batch], tf.string)
                  for n in self._field_names}
        probs = self._score(**inputs)["probability"].numpy()
        for (source, line_no, _, label), p in zip(batch, probs.astype(np.float64), strict=True):
            self._writer.writerow([counts["scored"], source, line_no, f"{p:.8g}",
                                   "" if label is None else f"{label:g}"])
            counts["scored"] += 1
            counts["labelled"] += label is not None
        batch.clear()


def _parse_line(reader: RowReader, raw: bytes, line_no: int):
    """`reader`'s result for a raw line; undecodable bytes are a MalformedRecord too."""
    from preprocessing.formats import MalformedRecord

    try:
        text = raw.decode(reader.parser.encoding)
    except UnicodeDecodeError as exc:
        raise MalformedRecord(f"undecodable bytes ({reader.parser.encoding}): "
                              f"{exc.reason} at byte {exc.start}") from None
    return reader(text, line_no)


def _score_files(files: list[str], reader: RowReader, scorer: _BatchScorer, rejects,
                 counts: dict, progress) -> None:
    """Reads every line of `files` in order: rows go to `scorer`, malformed lines to `rejects`
    (one JSON record each); blank and header lines are counted."""
    from preprocessing.formats import MalformedRecord

    consumed = 0
    for path in files:
        reader.start_file()
        for line_no, raw, size in _lines(path):
            consumed += size
            if not raw.strip():
                counts["blank"] += 1
                continue
            try:
                got = _parse_line(reader, raw, line_no)
            except MalformedRecord as exc:
                counts["rejected"] += 1
                rejects.write(json.dumps({"source": path, "line": line_no, "reason": str(exc),
                                          "raw": raw.decode("utf-8", errors="replace")}) + "\n")
                continue
            if got is None:
                counts["header"] += 1
                continue
            if scorer.add(path, line_no, *got):
                scorer.flush()
                progress.update(consumed, "predict", rows=counts["scored"])
        scorer.flush()
        progress.update(consumed, "predict", rows=counts["scored"])


def predict(model: str | Path, pattern: str, output: str | Path, *, version: int | None = None,
            dataset: str | None = None, batch_size: int = 4096, quiet: bool = False,
            log=None) -> dict:
    """Scores the input files; returns the summary counts."""
    import tensorflow as tf

    from pipeline.progress import Progress

    if batch_size < 1:
        raise PredictError(f"--batch_size must be >= 1, got {batch_size}")
    version_dir = resolve_version(model, version)
    spec, field_names = load_dataset_spec(version_dir, dataset)
    reader = RowReader(spec, field_names)
    output = fileio.path(output)
    rejects_path = fileio.path(str(output) + REJECTS_SUFFIX)
    # Usage checks, before anything is written: no input is this run's output, rejects file or
    # a temporary of them, and only a previous predict output is ever replaced.
    notes: list[str] = []
    files = input_files(pattern, (output, rejects_path), notes)
    check_output(output, rejects_path)
    loaded = tf.saved_model.load(str(version_dir))  # kept referenced while its signature runs
    total_bytes = sum(fileio.size(f) for f in files)
    progress = Progress(max(total_bytes, 1), quiet=quiet, unit="B", unit_scale=True)
    log = log or progress.log
    for note in notes:
        log(note)
    counts = {"scored": 0, "rejected": 0, "blank": 0, "header": 0, "labelled": 0}
    progress.update(0, "predict", rows=0)
    try:
        with _atomic_outputs(output, rejects_path) as (out, rejects):
            scorer = _BatchScorer(loaded.signatures["serving_default"], field_names, out, counts,
                                  batch_size)
            _score_files(files, reader, scorer, rejects, counts, progress)
    finally:
        progress.close()
    counts.update({"files": len(files), "version_dir": str(version_dir), "output": str(output),
                   "rejects": str(rejects_path)})
    log(f"predict: {counts['scored']:,} rows scored ({counts['labelled']:,} with a label), "
        f"{counts['rejected']:,} rejected -> {rejects_path}, {counts['blank']:,} blank and "
        f"{counts['header']:,} header lines skipped; model {version_dir}; output {output}")
    return counts


def main(argv=None) -> int:
    from configs.features import DATASETS

    parser = StrictArgumentParser(prog="python -m pipeline.predict", description=__doc__)
    parser.add_argument("--model", required=True, help="EXPORTS/NAME (or a version directory)")
    parser.add_argument("--input", required=True, help="file glob(s), comma-separated")
    parser.add_argument("--output", required=True,
                        help="CSV to write (replaces only a previous predict output)")
    parser.add_argument("--version", type=int, default=None, help="model version (default newest)")
    parser.add_argument("--dataset", default=None, choices=sorted(DATASETS) + ["csv"],
                        help="override the export's dataset format")
    parser.add_argument("--batch_size", type=int, default=4096, help="rows per model call")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    args = parser.parse_args(argv)
    return run_main(lambda: predict(args.model, args.input, args.output, version=args.version,
                                    dataset=args.dataset, batch_size=args.batch_size,
                                    quiet=args.quiet) and None)


if __name__ == "__main__":
    sys.exit(main())
