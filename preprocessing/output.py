"""Atomic output directories for the preprocessing job.

The job writes into a temporary sibling `DIR.tmp-XXXXXXXX` and renames it to DIR only when
everything (records, vocabularies, stats.json, schema.json) is there, so a crashed run never leaves
a directory that looks complete. A failed run keeps only its dead letters and stats in
`DIR.failed-XXXXXXXX` (named in the error message).

Local paths get a real directory rename. Object stores (gs://, s3://) have no directory rename:
there the files are renamed one by one with schema.json last, and readers treat a directory
without schema.json as unfinished (DataSchema.load refuses it).
"""
from __future__ import annotations

import os
import shutil
import uuid

from apache_beam.io.filesystems import FileSystems

from configs.features import SCHEMA_FILE


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
    tmp = sibling(out, "tmp")
    if is_local(tmp):
        os.makedirs(tmp)
    return tmp


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
    """Makes `tmp` appear as `out` (replacing an existing `out` only when `overwrite`)."""
    if exists(out) and not overwrite:
        raise FileExistsError(f"output directory {out} exists (pass --overwrite to replace it)")
    if not is_local(out):
        remove(out)
        _move_remote(tmp, out, last=SCHEMA_FILE)
        return
    old = None
    if os.path.exists(out):
        old = sibling(out, "old")
        os.rename(out, old)
    os.rename(tmp, out)
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
