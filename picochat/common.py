"""Shared plumbing: the user-error type, artifact paths, atomic file writes, the CLI's one-line failure,
and the ignore index that data, loss and evals agree on. Where the code runs (device, dtype, ranks) is
runtime.py's business.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator



IGNORE_INDEX = -1  # a target that adds no loss (SFT masks the prompt with it; any negative id works)


class UserError(ValueError):
    """A mistake the user can fix (a bad flag, a missing or corrupt file, a network that is down).

    The CLI prints these as one `picochat: error:` line; every other exception is a bug in picochat and
    keeps its traceback."""


# ----------------------------------------------------------------------------------------------------------
# Paths and files

def picochat_home(home: str | os.PathLike | None = None) -> Path:
    """Root of all artifacts: data/, tokenizer/, checkpoints/<stage>/, report/."""
    return Path(home or os.environ.get("PICOCHAT_HOME") or Path.home() / ".cache" / "picochat")


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `final`; on success fsync it and rename it into place.

    A crash at any point leaves either the old file or the new one, never half of one.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes files private; artifacts are ordinary files
        durable_replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def durable_replace(source: Path, final: Path) -> None:
    """fsync source, rename it over final, fsync the folder: after a crash, old or new, never half."""
    with open(source, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(source, final)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def fail(message: str) -> None:
    """Print one error line and exit non-zero: the CLI's way to report bad input."""
    print(f"picochat: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)
