"""Atomic output directories for the preprocessing job.

The job writes into a temporary sibling `DIR.tmp-XXXXXXXX` and renames it to DIR only when
everything (records, vocabularies, stats.json, schema.json) is there, so a crashed run never leaves
a directory that looks complete. A failed run keeps only its dead letters and stats in
`DIR.failed-XXXXXXXX` (named in the error message).

Local paths get a real directory rename. Object stores (gs://, s3://) have no directory rename:
there the files are renamed one by one with schema.json last, and readers treat a directory
without schema.json as unfinished (DataSchema.load refuses it).

Ownership: every directory the job creates (`DIR.tmp-XXXXXXXX`, hence the committed DIR) gets the
marker file `_AUTODIM_PREPROCESS` first (JSON naming the job, host and process). `--overwrite`
replaces an existing DIR only when it is a directory this job wrote: it has the marker, holds only
the job's own entries (`OWN_ENTRY`) and none of the run's input files; anything else is refused
before the job starts (`check_replaceable`) and nothing is removed. Leftover `DIR.tmp-XXXXXXXX`
siblings of a killed run (exactly that name, the marker, only the job's own entries, written by a
process of this host that is no longer running) are removed by the next run (`clean_leftovers`).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import uuid
from typing import Iterable

from apache_beam.io.filesystems import FileSystems

from configs.cli import abandoned, hold_directory
from configs.features import SCHEMA_FILE

MARKER_FILE = "_AUTODIM_PREPROCESS"
MARKER_JOB = "autodim preprocessing (python -m preprocessing.run)"
TMP_TAG = "tmp"
# The paths (relative to DIR) the job writes: its marker, schema/stats/counts, vocabularies,
# record shards and dead letters; `_BEAM_TEMP` only while a run is writing (Beam's sinks).
OWN_ENTRY = re.compile(r"_AUTODIM_PREPROCESS|schema\.json|stats\.json|_counts\.json"
                       r"|vocab(?:/[A-Za-z0-9_-]+\.txt)?"
                       r"|(?:train|valid|test)(?:/part-[0-9]+-of-[0-9]+\.tfrecord\.gz)?"
                       r"|deadletter(?:/part-[0-9]+-of-[0-9]+\.jsonl)?")
_BEAM_TEMP = re.compile(r"(?:train|valid|test|deadletter)/beam-temp-part-[0-9a-f]+(?:/[^/]+)?")


class OutputRefused(FileExistsError):
    """--overwrite of a directory the job did not write (or that holds its input)."""


def is_local(path: str) -> bool:
    return "://" not in path


def _remote_files(prefix: str) -> list[str]:
    try:
        return [m.path for m in FileSystems.match([prefix.rstrip("/") + "/**"])[0].metadata_list]
    except Exception:
        return []


def exists(path: str) -> bool:
    return os.path.exists(path) if is_local(path) else bool(_remote_files(path))


def sibling(path: str, tag: str) -> str:
    return f"{path.rstrip('/')}.{tag}-{uuid.uuid4().hex[:8]}"


def make_temp(out: str) -> str:
    """Creates `DIR.tmp-XXXXXXXX` holding the job's marker file."""
    tmp = sibling(out, TMP_TAG)
    if is_local(tmp):
        os.makedirs(tmp)
        hold_directory(tmp)  # until this process exits: a later run sees it is in use
    write_marker(tmp)
    return tmp


def write_marker(directory: str) -> None:
    record = {"job": MARKER_JOB, "version": 1, "host": socket.gethostname(), "pid": os.getpid()}
    with FileSystems.create(FileSystems.join(directory, MARKER_FILE),
                            mime_type="application/json") as fh:
        fh.write((json.dumps(record, sort_keys=True) + "\n").encode())


def read_marker(directory: str) -> dict | None:
    """The marker of a directory the job wrote, or None (absent, unreadable, another job's)."""
    path = FileSystems.join(directory, MARKER_FILE)
    try:
        if is_local(path) and (os.path.islink(path) or not os.path.isfile(path)):
            return None
        with FileSystems.open(path) as fh:
            record = json.loads(fh.read(1 << 16).decode())
    except Exception:
        return None
    return record if isinstance(record, dict) and record.get("job") == MARKER_JOB else None


def _entries(directory: str) -> list[tuple[str, bool]]:
    """(path relative to `directory`, is a symlink) of everything under it; object stores: the
    objects only."""
    if not is_local(directory):
        base = directory.rstrip("/") + "/"
        return [(f[len(base):], False) for f in _remote_files(directory)]
    out = []
    for root, dirs, files in os.walk(directory):
        rel = os.path.relpath(root, directory)
        for name in dirs + files:
            path = os.path.join(root, name)
            out.append((name if rel == "." else f"{rel}/{name}", os.path.islink(path)))
    return out


def _foreign(directory: str, unfinished: bool = False) -> list[str]:
    """Entries of `directory` the job does not write (symlinks always count as foreign)."""
    return sorted(rel for rel, link in _entries(directory)
                  if link or not (OWN_ENTRY.fullmatch(rel)
                                  or (unfinished and _BEAM_TEMP.fullmatch(rel))))


def _within(path: str, directory: str) -> bool:
    if is_local(path) != is_local(directory):
        return False
    if is_local(path):
        path, directory = os.path.realpath(path), os.path.realpath(directory)
        return os.path.commonpath([path, directory]) == directory
    return path.startswith(directory.rstrip("/") + "/")


def check_replaceable(out: str, inputs: Iterable[str] = ()) -> None:
    """Raises OutputRefused naming `out` and why, unless `out` is a directory this job wrote
    (its marker, only its own entries, none of `inputs` inside) or an empty directory."""
    def refuse(why: str):
        raise OutputRefused(
            f"refusing to overwrite {out}: {why}. --overwrite only replaces a directory this "
            f"job wrote (with its {MARKER_FILE} marker and nothing else); nothing was removed. "
            f"Remove it yourself or choose another output directory")

    if is_local(out):
        if os.path.islink(out):
            refuse("it is a symbolic link")
        if not os.path.isdir(out):
            refuse("it is not a directory")
    inside = sorted(p for p in inputs if _within(p, out))
    if inside:
        refuse(f"it holds input file(s) of this run ({', '.join(inside[:3])}"
               f"{', ...' if len(inside) > 3 else ''})")
    entries = _entries(out)
    if not entries:
        return  # an empty directory: nothing to lose
    if read_marker(out) is None:
        refuse(f"it has no {MARKER_FILE} marker, so it was not written by this job")
    foreign = _foreign(out)
    if foreign:
        refuse(f"it holds entries this job does not write ({', '.join(foreign[:5])}"
               f"{f' and {len(foreign) - 5} more' if len(foreign) > 5 else ''})")


def clean_leftovers(out: str) -> list[str]:
    """Removes the `DIR.tmp-XXXXXXXX` siblings of `out` that killed runs of this job left:
    exactly that name (8 hex digits), a real directory with the job's marker naming a process
    of this host that no longer runs, whose lock (configs.cli.hold_directory) nobody holds,
    holding only the job's own entries. Anything else is left
    alone. Local paths only; returns the removed directories."""
    if not is_local(out):
        return []
    parent, name = os.path.split(os.path.abspath(out))
    pattern = re.compile(re.escape(name) + r"\." + TMP_TAG + r"-[0-9a-f]{8}")
    try:
        candidates = sorted(os.listdir(parent))
    except OSError:
        return []
    removed = []
    for entry in candidates:
        path = os.path.join(parent, entry)
        if not pattern.fullmatch(entry) or os.path.islink(path) or not os.path.isdir(path):
            continue
        marker = read_marker(path)
        if marker is None or not isinstance(marker.get("pid"), int):
            continue
        if not abandoned(path, marker.get("host"), marker["pid"]):
            continue
        if _foreign(path, unfinished=True):
            continue
        shutil.rmtree(path)
        logging.warning("removed %s, the unfinished output of an earlier run that was stopped",
                        path)
        removed.append(path)
    return removed


def _move_remote(src: str, dst: str, last: str | None = None) -> None:
    files = sorted(_remote_files(src), key=lambda f: f.endswith("/" + last) if last else False)
    for f in files:
        FileSystems.rename([f], [dst.rstrip("/") + f[len(src.rstrip("/")):]])


def remove(path: str) -> None:
    if is_local(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        files = _remote_files(path)
        if files:
            FileSystems.delete(files)


def commit(tmp: str, out: str, overwrite: bool) -> None:
    """Makes `tmp` appear as `out` (replacing an existing `out` only when `overwrite` and it is
    a directory this job wrote: see check_replaceable)."""
    try:
        if exists(out):
            if not overwrite:
                raise FileExistsError(f"output directory {out} exists (pass --overwrite to "
                                      f"replace it)")
            check_replaceable(out)
    except FileExistsError as exc:  # DIR appeared or changed while the job ran: keep the result
        if not is_local(tmp):
            raise
        done = sibling(out, "done")  # not a leftover pattern: the next run never removes it
        os.rename(tmp, done)
        raise FileExistsError(f"{exc}; the finished output is kept in {done}") from None
    if not is_local(out):
        remove(out)
        _move_remote(tmp, out, last=SCHEMA_FILE)
        return
    old = None
    if os.path.exists(out):
        old = sibling(out, "old")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old:
            os.rename(old, out)  # put the previous output back
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)


def keep_failed(tmp: str, out: str, keep: tuple[str, ...] = ("deadletter", "stats.json")
                ) -> str | None:
    """Moves the named entries of a failed run's `tmp` to `DIR.failed-XXXX`, removes `tmp`;
    returns the failed directory (None when there was nothing to keep)."""
    failed = sibling(out, "failed")
    kept = False
    for name in keep:
        src = FileSystems.join(tmp, name)
        if is_local(tmp):
            if os.path.exists(src) and (not os.path.isdir(src) or _has_content(src)):
                os.makedirs(failed, exist_ok=True)
                os.rename(src, os.path.join(failed, name))
                kept = True
        elif _remote_files(src):
            _move_remote(src, FileSystems.join(failed, name))
            kept = True
    remove(tmp)
    return failed if kept else None


def _has_content(directory: str) -> bool:
    return any(os.path.getsize(os.path.join(directory, f)) > 0 for f in os.listdir(directory)
               if os.path.isfile(os.path.join(directory, f)))
