"""Speed, memory and quality benchmarks that print their figures (never run by the tests)."""
from __future__ import annotations

from pathlib import Path


def check_output(parser, path: str | Path, title: str, flag: str = "--output") -> Path:
    """The markdown file a benchmark writes: refused (parser.error, before anything runs) when it
    exists and its first line does not start with `title`, the heading that benchmark writes, so
    a benchmark replaces only its own earlier output, never a file it did not write
    (BENCHMARKS.md, a README)."""
    path = Path(path)
    if path.is_dir():
        parser.error(f"{flag} {path} is a directory; give a file name")
    if path.exists():
        with path.open(encoding="utf-8", errors="replace") as fh:
            first = fh.readline().rstrip("\n")
        if not first.startswith(title):
            parser.error(f"{flag} {path} exists and was not written by this benchmark (its first "
                         f"line does not start with {title!r}); choose another file")
    return path


def write_output(path: Path, lines: list[str]) -> None:
    """Writes the markdown atomically (a reader never sees half a table), replacing only what
    check_output allowed."""
    from configs.cli import atomic_output

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, "w", replace=True, encoding="utf-8") as fh:
        fh.write("\n".join(lines))
