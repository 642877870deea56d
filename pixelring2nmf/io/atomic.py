"""Atomic writes: a file is either its old content or its complete new content, never half.

Every output is written under a hidden temporary name in its own folder and renamed over the
target (a rename is atomic within one filesystem), so a kill, a crash or a full disk in the
middle of a write leaves no truncated file that a reader could take for a result. A failed
write is an `OutputError` naming the file and the problem (disk full, read-only folder), and
its temporary file is removed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import OutputError

TEMPORARY_SUFFIX = ".partial"


def temporary_path(path: Path) -> Path:
    """Where `path` is written before it is renamed: hidden, in the same folder (same disk),
    with the same suffix (writers that pick a format by the suffix still pick the right one)."""
    return path.with_name(f".{path.stem}.{os.getpid()}{TEMPORARY_SUFFIX}{path.suffix}")


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on failure it goes.

    An OSError while writing or renaming (ENOSPC, EROFS, EACCES, ...) becomes an OutputError
    that says which file could not be written and why.
    """
    path = Path(path)
    partial = temporary_path(path)
    try:
        yield partial
        os.replace(partial, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from error
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(temporary_path)` then rename over `path`: for writers that take a path
    (pandas, pyarrow, openpyxl)."""
    path = Path(path)
    with replacing(path) as partial:
        write(partial)
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """`data` into `path`, atomically."""
    return write_atomically(path, lambda partial: partial.write_bytes(data))


def write_text(path: str | Path, text: str) -> Path:
    """`text` (UTF-8) into `path`, atomically."""
    return write_atomically(path, lambda partial: partial.write_text(text, encoding="utf-8"))
