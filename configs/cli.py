"""The command-line conventions every autodim CLI shares: strict flags, one name per concept,
one meaning per exit code, one-line errors.

- Flags are matched exactly (no abbreviations). An unknown or misspelt flag is refused with the
  closest known one ("--fde-dim: unknown flag; did you mean --fde_dim?"). The CLIs that run the
  Beam job pass on only the flags that Beam's `PipelineOptions` define (`beam_flags()`).
- Deprecated spellings (`add_alias`) still work for one release and print a warning naming the
  current one.
- Exit codes, the same for every command:

  | code | meaning |
  |---|---|
  | 0 | success |
  | 1 | the job ran and failed (bad or damaged input data, an unwritable output, a crash) |
  | 2 | usage error: a flag, config value or path argument is wrong; nothing was written |
  | 3 | numeric failure: the training loss became NaN or Inf (the run stops, checkpoints kept) |

Importable without TensorFlow or Beam (Beam is imported only by `beam_flags`).
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import fcntl
import functools
import os
import sys
import textwrap
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NUMERIC = 3

EXIT_CODES_HELP = ("exit codes: 0 success, 1 the job failed (bad or damaged input, unwritable "
                   "output), 2 usage error (flag, config value or path; nothing written), "
                   "3 numeric failure (NaN/Inf loss)")


class UsageError(ValueError):
    """A flag, config value or path argument is wrong; raised before anything is written."""


class NumericFailure(RuntimeError):
    """Training produced NaN or Inf."""


class JobError(RuntimeError):
    """The job ran and failed for a reason the message states (exit code 1)."""


def exit_code(exc: BaseException) -> int:
    """The documented exit code for an exception a command reports in one line."""
    if isinstance(exc, NumericFailure):
        return EXIT_NUMERIC
    if isinstance(exc, (UsageError, FileNotFoundError, FileExistsError, NotADirectoryError,
                        IsADirectoryError)):
        return EXIT_USAGE
    return EXIT_FAILURE


# What a command reports as one line (anything else is a bug: its traceback is kept).
REPORTED = (UsageError, NumericFailure, JobError, OSError)
# TensorFlow's file-system errors (tf.errors.*): one line too, exit code 1.
_TF_IO_ERRORS = ("PermissionDeniedError", "NotFoundError", "AlreadyExistsError",
                 "ResourceExhaustedError", "DataLossError")


def _is_tf_io_error(exc: BaseException) -> bool:
    tf = sys.modules.get("tensorflow")
    return (tf is not None and isinstance(exc, tf.errors.OpError)
            and type(exc).__name__ in _TF_IO_ERRORS)


def _is_peer_lost(exc: BaseException) -> bool:
    """A multi-worker run's collectives aborted because a peer went down (TensorFlow's
    UnavailableError, or the abort's Cancelled/Internal error naming the collective)."""
    tf = sys.modules.get("tensorflow")
    if tf is None or not isinstance(exc, tf.errors.OpError):
        return False
    return isinstance(exc, tf.errors.UnavailableError) or "Collective ops is aborted" in str(exc)


def report(exc: BaseException, stream=None) -> int:
    """Prints `error: <message>` and returns the exit code for it."""
    stream = stream or sys.stderr
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(exc):
        message = f"{exc.strerror or exc}: {exc.filename}"
    elif isinstance(exc, OSError) and exc.strerror and exc.filename:
        message = f"{exc.strerror}: {exc.filename}"
    else:
        message = str(exc)
    print(f"error: {message}", file=stream)
    return exit_code(exc)


def run_main(fn: Callable[[], int | None]) -> int:
    """Runs a CLI body; the REPORTED exceptions become one `error:` line and their exit code."""
    try:
        code = fn()
    except REPORTED as exc:
        return report(exc)
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a TF file-system error
        if _is_tf_io_error(exc):
            print(f"error: {exc.message}", file=sys.stderr)
            return EXIT_FAILURE
        if _is_peer_lost(exc):
            first = exc.message.strip().splitlines()[0] if exc.message else type(exc).__name__
            print(f"error: another worker of the cluster is gone ({first}); restart every "
                  f"worker of the job: the run resumes from its last checkpoint",
                  file=sys.stderr)
            return EXIT_FAILURE
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return EXIT_OK if code is None else code


@functools.lru_cache(maxsize=1)
def _beam_parser() -> argparse.ArgumentParser:
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    # The same parser Beam builds in PipelineOptions.get_all_options: every options class.
    classes: dict[str, type] = {}
    for cls in PipelineOptions.__subclasses__():
        classes.setdefault(str(cls), cls)
    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in classes.values():
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
    return parser


def beam_flags() -> dict[str, list[str]]:
    """The flags Beam's PipelineOptions define, grouped by options class (as in Beam's docs)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    groups: dict[str, list[str]] = {}
    for cls in PipelineOptions.__subclasses__():
        sub = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        try:
            cls._add_argparse_args(sub)  # pylint: disable=protected-access
        except argparse.ArgumentError:
            continue
        flags = [s for a in sub._actions for s in a.option_strings if s.startswith("--")]
        if flags:
            groups.setdefault(cls.__name__, sorted(set(flags)))
    return groups


def beam_help() -> str:
    """An epilog listing every Beam flag passed through, by group."""
    lines = ["Beam pipeline options: any flag below is passed to Beam's PipelineOptions (e.g. "
             "--runner DataflowRunner --project P --region R --temp_location gs://B/tmp "
             "--setup_file ./setup.py); any other unknown flag is refused."]
    for group, flags in sorted(beam_flags().items()):
        lines.append(textwrap.fill(" ".join(flags), width=100, initial_indent=f"  {group}: ",
                                   subsequent_indent="    "))
    return "\n".join(lines)


class StrictArgumentParser(argparse.ArgumentParser):
    """argparse with exact flag names, suggestions for unknown flags, deprecated aliases and an
    optional Beam pass-through (`beam=True`: `parse_args` returns (args, beam_args))."""

    def __init__(self, *args, beam: bool = False, epilog: str | None = None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        self._beam = beam
        self._deprecated: dict[str, str] = {}
        parts = [p for p in (epilog, EXIT_CODES_HELP) if p]
        super().__init__(*args, allow_abbrev=False, epilog="\n\n".join(parts), **kwargs)

    def format_help(self) -> str:
        text = super().format_help()
        if self._beam:
            text += "\n" + beam_help() + "\n"
        return text

    def add_alias(self, old: str, new: str) -> None:
        """Accepts `old` as a deprecated spelling of the existing flag `new`."""
        action = next(a for a in self._actions if new in a.option_strings)
        action.option_strings.append(old)
        self._option_string_actions[old] = action
        self._deprecated[old] = new

    def known_flags(self) -> list[str]:
        """This parser's flags, then (beam=True) Beam's."""
        flags = [s for a in self._actions for s in a.option_strings
                 if s not in self._deprecated]
        if self._beam:
            flags += [s for a in _beam_parser()._actions for s in a.option_strings]
        return flags

    def _closest(self, name: str) -> str | None:
        """The same flag spelt with - for _ or another case, else a flag it abbreviates, else
        the most similar one (this parser's before Beam's)."""
        own = [s for a in self._actions for s in a.option_strings]
        def canon(flag: str) -> str:
            return flag.lstrip("-").replace("-", "_").lower()

        for pool in (own, self.known_flags()):
            same = [f for f in pool if canon(f) == canon(name)]
            if not same and len(canon(name)) > 1:
                same = [f for f in pool if canon(f).startswith(canon(name))]
            if not same:
                same = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
            if same:
                return self._deprecated.get(same[0], same[0])
        return None

    def _refuse(self, unknown: Sequence[str]) -> None:
        flag = next((u for u in unknown if u.startswith("-")), unknown[0])
        name = flag.split("=", 1)[0]
        if not name.startswith("-"):
            self.error(f"unexpected argument {flag!r}")
        near = self._closest(name)
        hint = f"; did you mean {near}?" if near else ""
        self.error(f"{name}: unknown flag{hint}")

    def _warn_deprecated(self, argv: Iterable[str]) -> None:
        for arg in argv:
            name = arg.split("=", 1)[0]
            if name in self._deprecated:
                print(f"warning: {name} is deprecated; use {self._deprecated[name]}",
                      file=sys.stderr)

    def _unknown_flags(self, argv: Sequence[str]) -> list[str]:
        """Flags in argv that neither this parser nor (with beam=True) Beam defines."""
        beam = _beam_parser()._option_string_actions if self._beam else {}
        unknown = []
        for arg in argv:
            if arg == "--":
                self.error("'--' (end of flags) is not supported: every value belongs to a flag")
            name = arg.split("=", 1)[0]
            if (name.startswith("--") and name not in self._option_string_actions
                    and name not in beam):
                unknown.append(arg)
        return unknown

    def parse_args(self, args=None, namespace=None):  # noqa: D102 - argparse's signature
        argv = list(sys.argv[1:] if args is None else args)
        self._warn_deprecated(argv)
        unknown = self._unknown_flags(argv)  # before argparse's own checks (required flags)
        if unknown:
            self._refuse(unknown)
        parsed, unknown = super().parse_known_args(argv, namespace)
        if not self._beam:
            if unknown:
                self._refuse(unknown)
            return parsed
        if unknown:
            beam = _beam_parser()
            beam.error = lambda message: self.error(f"Beam pipeline option: {message}")
            _, not_beam = beam.parse_known_args(unknown)
            if not_beam:
                self._refuse(not_beam)
        return parsed, unknown

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


TEMP_INFIX = ".tmp-"  # temporaries are `.NAME.tmp-XXXXXXXX` beside NAME


def create_temp(final: str | Path) -> tuple[Path, int]:
    """A new, empty file `.NAME.tmp-XXXXXXXX` beside `final` and its open descriptor. Created
    with O_EXCL and mode 0o666, so the umask applies as for open(path, "w") (mkstemp: 0o600)."""
    final = Path(final)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = final.with_name(f".{final.name}{TEMP_INFIX}{os.urandom(4).hex()}")
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {final}")


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "w", *, replace: bool = False,
                  **open_kwargs) -> Iterator:
    """Opens a temporary file beside `path` (create_temp) and renames it to `path` when the
    block succeeds (removed when it fails), so a reader never sees a partial file. Refuses an
    existing `path` unless `replace`: callers decide beforehand whether replacing is allowed."""
    path = Path(path)
    tmp, fd = create_temp(path)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
        if not replace and path.exists():
            raise FileExistsError(f"{path} appeared while it was being written; "
                                  f"the new output is not moved over it")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# Directories this process is writing, locked (flock on the directory itself) until it exits: a
# later run removes a killed run's temporary directory only when nobody holds its lock, which a
# PID check alone cannot tell (containers with the same host name but their own PID namespace
# share a volume).
_HELD: list[int] = []


def hold_directory(path: str | Path) -> None:
    """Locks `path` (a directory this process created) for the rest of the process's life."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    _HELD.append(fd)


def directory_in_use(path: str | Path) -> bool:
    """True when a live process (of any PID namespace on this kernel) holds `path`'s lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return True  # cannot tell: leave it alone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock this call took
    return False


def abandoned(path: str | Path, host: str, pid: int) -> bool:
    """True when the temporary directory `path`, written by process `pid` on `host`, was left
    by a run that is gone: `host` is this host, `pid` runs no more (and is not this process),
    and nobody holds the directory's lock (hold_directory)."""
    import socket

    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
        return False  # running
    except ProcessLookupError:
        pass
    except (PermissionError, OverflowError, ValueError):
        return False  # someone else's live process, or not a pid at all
    return not directory_in_use(path)
