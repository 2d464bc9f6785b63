"""Atomic file writes: a temporary file in the target's directory, flushed, fsynced, then renamed over
the target with ``os.replace``, so a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import IO, Any, Callable


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, exclusively created ``.NAME.<random>.tmp`` beside ``path``, with the permissions of any new
    file (``0o666`` less the umask, as ``open()`` gives), not the owner-only ones of ``mkstemp``."""
    while True:
        temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temporary
        except FileExistsError:
            continue


def atomic_write(path: str | Path, write: Callable[[IO[Any]], None], text: bool = False) -> None:
    """Call ``write(file)`` on a temporary file and move it to ``path`` in one step."""
    path = Path(path)
    handle, temporary = _create_temporary(path)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") if text else os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable where the platform allows opening directories."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
