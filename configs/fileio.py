"""Paths that may name a remote file system (`gs://bucket/run`, `s3://...`, TensorFlow's
`ram://`), for every directory the job, the search, retraining, export and prediction read or
write.

`path(p)` is the one entry point: a local path stays a `pathlib.Path` (its behaviour is exactly
pathlib's), a path with a `scheme://` becomes a `RemotePath`, the subset of pathlib's interface
the pipeline uses (`/`, `name`, `parent`, `exists`, `is_file`, `is_dir`, `mkdir`, `iterdir`,
`glob`, `read_text`, `write_text`, `open`, `unlink`, ...) over `tf.io.gfile` when TensorFlow is
already imported (the training side), else over Beam's `FileSystems` (Beam's workers, which
import configs/ without TensorFlow). `pathlib.Path("gs://b/x")` would be `gs:/b/x`, a local
path, so nothing that may be remote goes through `Path()`.

What stays local-only: a directory rename (object stores have none: `rename` of a directory is
a copy there, not atomic), file locks, and `write_atomic`'s guarantee: on a remote file system it
writes a temporary name and renames it over the target, which on an object store is a copy and a
delete, not atomic (a reader may see no file in between, never a partial one).

Importable without TensorFlow or Beam.
"""
from __future__ import annotations

import contextlib
import fnmatch
import io
import os
import re
import sys
from pathlib import Path
from typing import Iterator

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(p) -> bool:
    """Whether `p` names a file system other than the local one (it has a `scheme://`)."""
    return isinstance(p, RemotePath) or bool(_SCHEME.match(str(p)))


def path(p) -> "Path | RemotePath":
    """`p` as a path object: a `RemotePath` for a `scheme://` path, else a `pathlib.Path`."""
    if isinstance(p, (Path, RemotePath)):
        return p
    text = os.fspath(p) if not isinstance(p, str) else p
    return RemotePath(text) if is_remote(text) else Path(text)


def absolute(p) -> str:
    """`p` as recorded in a run's files: a local path resolved, a remote one as it is."""
    p = path(p)
    return str(p) if isinstance(p, RemotePath) else str(p.resolve())


def join(base, *parts: str) -> "Path | RemotePath":
    out = path(base)
    for part in parts:
        out = out / part
    return out


# ------------------------------------------------------------------ backends
class _GFile:
    """Remote file-system operations through tf.io.gfile."""

    def __init__(self, tf):
        self.g = tf.io.gfile

    def exists(self, p: str) -> bool:
        return self.g.exists(p)

    def isdir(self, p: str) -> bool:
        return self.g.isdir(p)

    def makedirs(self, p: str) -> None:
        self.g.makedirs(p)

    def listdir(self, p: str) -> list[str]:
        return [n.rstrip("/") for n in self.g.listdir(p)]

    def glob(self, pattern: str) -> list[str]:
        return list(self.g.glob(pattern))

    def open(self, p: str, mode: str):
        return self.g.GFile(p, mode)

    def remove(self, p: str) -> None:
        self.g.remove(p)

    def rmtree(self, p: str) -> None:
        self.g.rmtree(p)

    def rename(self, src: str, dst: str) -> None:
        self.g.rename(src, dst, overwrite=True)

    def copy(self, src: str, dst: str) -> None:
        self.g.copy(src, dst, overwrite=True)


class _BeamFiles:
    """Remote file-system operations through Beam's FileSystems (no directories on object
    stores: a directory exists when a file lies under it)."""

    def __init__(self):
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems

        self.fs, self.plain = FileSystems, CompressionTypes.UNCOMPRESSED

    def _match(self, pattern: str) -> list[str]:
        try:
            return [m.path for m in self.fs.match([pattern])[0].metadata_list]
        except Exception:  # noqa: BLE001 - Beam raises BeamIOError for "no match"
            return []

    def exists(self, p: str) -> bool:
        return self.fs.exists(p) or self.isdir(p)

    def isdir(self, p: str) -> bool:
        return bool(self._match(p.rstrip("/") + "/**"))

    def makedirs(self, p: str) -> None:
        with contextlib.suppress(Exception):
            self.fs.mkdirs(p)  # object stores: nothing to do (and some raise if it exists)

    def listdir(self, p: str) -> list[str]:
        prefix = p.rstrip("/") + "/"
        return sorted({m[len(prefix):].split("/", 1)[0] for m in self._match(prefix + "**")
                       if m.startswith(prefix)})

    def glob(self, pattern: str) -> list[str]:
        return self._match(pattern)

    def open(self, p: str, mode: str):
        if "r" in mode:
            return self.fs.open(p, compression_type=self.plain)
        return self.fs.create(p, compression_type=self.plain)

    def remove(self, p: str) -> None:
        self.fs.delete([p])

    def rmtree(self, p: str) -> None:
        self.fs.delete([p.rstrip("/") + "/"])

    def rename(self, src: str, dst: str) -> None:
        if self.fs.exists(dst):
            self.fs.delete([dst])
        self.fs.rename([src], [dst])

    def copy(self, src: str, dst: str) -> None:
        self.fs.copy([src], [dst])


def _backend():
    tf = sys.modules.get("tensorflow")
    if tf is not None and hasattr(tf, "io"):
        return _GFile(tf)
    return _BeamFiles()


# ------------------------------------------------------------------ a remote path
class RemotePath:
    """A `scheme://` path with the part of pathlib's interface the pipeline uses. Not an
    os.PathLike: handing one to `open()` or `os.*` is an error, never a local `scheme:` file."""

    def __init__(self, text: str):
        if not _SCHEME.match(text):
            raise ValueError(f"not a remote path: {text!r}")
        scheme, rest = text.split("://", 1)
        rest = re.sub(r"/+", "/", rest)
        self._text = f"{scheme}://{rest.rstrip('/') if rest.strip('/') else rest}"

    # ----- pure path
    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"RemotePath({self._text!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and other._text == self._text

    def __hash__(self) -> int:
        return hash(self._text)

    def __lt__(self, other) -> bool:
        return self._text < str(other)

    def __truediv__(self, part) -> "RemotePath":
        part = str(part)
        if is_remote(part):
            return RemotePath(part)
        return RemotePath(f"{self._text.rstrip('/')}/{part.lstrip('/')}")

    @property
    def _root(self) -> str:
        scheme, rest = self._text.split("://", 1)
        return f"{scheme}://"

    @property
    def name(self) -> str:
        rest = self._text[len(self._root):]
        return rest.rsplit("/", 1)[-1] if "/" in rest else rest

    @property
    def suffix(self) -> str:
        name = self.name
        i = name.rfind(".")
        return name[i:] if 0 < i < len(name) - 1 else ""

    @property
    def stem(self) -> str:
        return self.name[:len(self.name) - len(self.suffix)] if self.suffix else self.name

    @property
    def parent(self) -> "RemotePath":
        rest = self._text[len(self._root):]
        if "/" not in rest:
            return self
        return RemotePath(self._root + rest.rsplit("/", 1)[0])

    def with_name(self, name: str) -> "RemotePath":
        return self.parent / name

    def with_suffix(self, suffix: str) -> "RemotePath":
        return self.with_name(self.stem + suffix)

    def resolve(self) -> "RemotePath":
        return self

    def absolute(self) -> "RemotePath":
        return self

    def is_relative_to(self, other) -> bool:
        other = str(other).rstrip("/")
        return self._text == other or self._text.startswith(other + "/")

    def relative_to(self, other) -> str:
        if not self.is_relative_to(other):
            raise ValueError(f"{self} is not under {other}")
        return self._text[len(str(other).rstrip("/")):].lstrip("/")

    # ----- file system
    def exists(self) -> bool:
        return _backend().exists(self._text)

    def is_dir(self) -> bool:
        return _backend().isdir(self._text)

    def is_file(self) -> bool:
        fs = _backend()
        return fs.exists(self._text) and not fs.isdir(self._text)

    def is_symlink(self) -> bool:
        return False

    def mkdir(self, mode: int = 0o777, parents: bool = False, exist_ok: bool = False) -> None:
        fs = _backend()
        if fs.exists(self._text):
            if exist_ok and fs.isdir(self._text):
                return
            raise FileExistsError(f"{self} exists")
        if not parents and self.parent != self and not fs.isdir(str(self.parent)):
            raise FileNotFoundError(f"{self.parent} does not exist")
        fs.makedirs(self._text)

    def iterdir(self) -> Iterator["RemotePath"]:
        fs = _backend()
        if not fs.isdir(self._text):
            raise FileNotFoundError(f"{self} is not a directory")
        for name in sorted(fs.listdir(self._text)):
            yield self / name

    def glob(self, pattern: str) -> Iterator["RemotePath"]:
        """The entries of this directory whose name matches `pattern` (one level, no `**`)."""
        if "/" in pattern:
            return (RemotePath(p) for p in sorted(_backend().glob(f"{self}/{pattern}")))
        if not self.is_dir():
            return iter(())
        return (self / n for n in sorted(_backend().listdir(self._text))
                if fnmatch.fnmatchcase(n, pattern))

    def open(self, mode: str = "r", encoding: str | None = None, newline: str | None = None):
        """A file object; text through tf.io.gfile is UTF-8 with no newline translation."""
        fs, binary = _backend(), "b" in mode
        plain = mode.replace("t", "").replace("b", "")
        if isinstance(fs, _GFile):  # GFile reads and writes UTF-8 text itself
            return fs.open(self._text, plain + ("b" if binary else ""))
        raw = fs.open(self._text, plain)
        if binary:
            return raw
        if hasattr(raw, "readable"):  # io's interface (Beam's GCS, S3, local channels)
            return io.TextIOWrapper(raw, encoding=encoding or "utf-8", newline=newline)
        if "r" in plain:  # a channel without it: read whole
            with raw:
                return io.StringIO(raw.read().decode(encoding or "utf-8"), newline=newline)
        return _TextWriter(raw, encoding or "utf-8")

    def read_bytes(self) -> bytes:
        self._check_file()
        with self.open("rb") as fh:
            return fh.read()

    def read_text(self, encoding: str | None = None) -> str:
        """The file's text with universal newlines, as pathlib's read_text."""
        text = self.read_bytes().decode(encoding or "utf-8")
        return io.StringIO(text, newline=None).read()

    def write_bytes(self, data: bytes) -> int:
        with self.open("wb") as fh:
            fh.write(data)
        return len(data)

    def write_text(self, data: str, encoding: str | None = None) -> int:
        return self.write_bytes(data.encode(encoding or "utf-8"))

    def unlink(self, missing_ok: bool = False) -> None:
        fs = _backend()
        if not fs.exists(self._text):
            if missing_ok:
                return
            raise FileNotFoundError(f"{self} does not exist")
        fs.remove(self._text)

    def rmtree(self) -> None:
        _backend().rmtree(self._text)

    def rename(self, target) -> "RemotePath":
        """Renames over `target` (not atomic on object stores: a copy, then a delete)."""
        _backend().rename(self._text, str(target))
        return path(target)

    replace = rename

    def _check_file(self) -> None:
        if not _backend().exists(self._text):
            raise FileNotFoundError(f"{self} does not exist")


class _TextWriter(io.StringIO):
    """Text written to a binary channel without io's interface, encoded when closed."""

    def __init__(self, raw, encoding: str):
        super().__init__()
        self._raw, self._encoding = raw, encoding

    def close(self) -> None:
        if not self.closed:
            with self._raw:
                self._raw.write(self.getvalue().encode(self._encoding))
        super().close()


# ------------------------------------------------------------------ whole files
def write_atomic(target, data: bytes | str) -> "Path | RemotePath":
    """Writes `data` so that a reader never sees half of it: locally a temporary file beside
    `target` renamed over it (configs.cli.atomic_output); remotely a temporary name renamed over
    it, which on an object store is a copy and a delete, not atomic (a reader never sees a
    partial file, but may briefly see none)."""
    from configs.cli import atomic_output

    target = path(target)
    blob = data.encode("utf-8") if isinstance(data, str) else data
    if isinstance(target, Path):
        with atomic_output(target, "wb", replace=True) as fh:
            fh.write(blob)
        return target
    _via_temporary(target, lambda tmp: tmp.write_bytes(blob))
    return target


def _via_temporary(target, write) -> None:
    """`write(tmp)` to a temporary name beside the remote `target`, then renamed over it; the
    temporary is removed if either step fails."""
    from configs.cli import TEMP_INFIX

    tmp = target.with_name(f".{target.name}{TEMP_INFIX}{os.urandom(4).hex()}")
    try:
        write(tmp)
        tmp.rename(target)
    except BaseException:
        with contextlib.suppress(Exception):
            tmp.unlink(missing_ok=True)
        raise


def put_file(local: Path, target) -> None:
    """Copies the finished local file `local` to `target`: a remote target through a temporary
    name beside it renamed over it (write_atomic's guarantee), a local one by os.replace."""
    target = path(target)
    if isinstance(target, Path):
        os.replace(local, target)
        return
    _via_temporary(target, lambda tmp: copy_file(local, tmp))


def glob(pattern: str) -> list[str]:
    """The files and directories matching `pattern` (local: glob.glob; remote: the file
    system's own matching)."""
    if is_remote(pattern):
        return sorted(_backend().glob(pattern))
    import glob as globlib

    return globlib.glob(pattern)


def size(p) -> int:
    """A file's size in bytes."""
    p = path(p)
    if isinstance(p, Path):
        return p.stat().st_size
    backend = _backend()
    if isinstance(backend, _GFile):
        return backend.g.stat(str(p)).length
    return backend.fs.match([str(p)])[0].metadata_list[0].size_in_bytes


def copy_file(src, dst) -> None:
    """Copies one file between any two file systems (local to remote, remote to local, ...)."""
    src, dst = path(src), path(dst)
    if isinstance(src, Path) and isinstance(dst, Path):
        import shutil

        shutil.copy2(src, dst)
        return
    with src.open("rb") as a, dst.open("wb") as b:
        b.write(b"")  # tf.io.gfile creates the file at its first write: an empty one too
        while True:
            chunk = a.read(1 << 24)
            if not chunk:
                break
            b.write(chunk)


def copy_tree(src, dst) -> None:
    """Copies the directory `src` to `dst` (any two file systems), creating `dst`."""
    src, dst = path(src), path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        if entry.is_dir():
            copy_tree(entry, dst / entry.name)
        else:
            copy_file(entry, dst / entry.name)


def remove_tree(p) -> None:
    """Removes the directory `p` (any file system); a missing one is no error."""
    p = path(p)
    if isinstance(p, Path):
        import shutil

        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.rmtree()
