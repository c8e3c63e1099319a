"""Where input bytes come from: a file's, or stdin's already read; one-line errors for a file
that cannot be read. No heavy imports, so that the CLI can check its inputs before it loads
anything."""

from __future__ import annotations

import os
from pathlib import Path

from spnrefine.errors import SpnrefineError

STDIN_NAME = "<stdin>"
Source = str | Path | bytes


def read_source(source: Source, name: str | None = None) -> tuple[bytes, str]:
    """Return the bytes of `source` (a path, or bytes already read from stdin) and the name
    to report in errors."""
    if isinstance(source, bytes | bytearray | memoryview):
        data, shown = bytes(source), name or STDIN_NAME
    else:
        shown = name or str(source)
        try:
            data = Path(source).read_bytes()
        except OSError as err:
            raise _unreadable(err, shown) from None
    if not data:
        raise SpnrefineError("empty file", shown)
    return data, shown


def check_readable(path: str | Path) -> None:
    """Raise the error `read_source` would for a local file that is missing, a folder, or not
    readable, without reading it."""
    try:
        os.close(os.open(path, os.O_RDONLY))
        if Path(path).is_dir():
            raise IsADirectoryError
    except OSError as err:
        raise _unreadable(err, str(path)) from None


def _unreadable(err: OSError, shown: str) -> SpnrefineError:
    if isinstance(err, FileNotFoundError):
        return SpnrefineError("file not found", shown)
    if isinstance(err, IsADirectoryError):
        return SpnrefineError("is a folder, not a file", shown)
    if isinstance(err, PermissionError):
        return SpnrefineError("cannot read the file: permission denied", shown)
    return SpnrefineError(f"cannot read the file: {err.strerror or err}", shown)
