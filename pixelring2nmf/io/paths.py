"""Where results go: checked before any work starts, so a typo never costs a finished run.

A missing folder is created; an existing result is overwritten only with `--force` (a model
file or a simulated era takes minutes to remake, `train --out` pointed at the shipped model
would silently replace it, and a figure or a CSV may be someone's only copy).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import OutputError


def output_file(path: Path | str, *, force: bool = False, what: str = "output") -> Path:
    """`path` ready to be written: parent created, writable, existing file only with force."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not force:
        raise OutputError(f"{what} {path} exists; pass --force to overwrite it")
    _writable_folder(path.parent, what)
    return path


def output_folder(path: Path | str, *, force: bool = False, what: str = "output folder") -> Path:
    """`path` ready to be filled: created, or existing and empty, or anything with force."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file; give a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise OutputError(f"{what} {path} is not empty; pass --force to write into it anyway")
    _writable_folder(path, what)
    return path


def _writable_folder(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"cannot create the folder {folder} for the {what}: {error.strerror or error}"
        ) from None
    if not os.access(folder, os.W_OK):
        raise OutputError(f"cannot write the {what} into {folder}: permission denied")
