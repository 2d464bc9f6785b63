"""Atomic file writes: a temporary file in the target's directory, flushed, fsynced, then moved to the
target in one step, so a reader sees the old file or the new one, never half of one.

A failed write (a full disk, a read-only place) removes the temporary file and raises ``OSError``
naming the target, also where the writer turned it into another exception (``torch.save`` reports a
failed ``write`` as a ``RuntimeError``). SIGINT and SIGTERM that arrive during a write are held until
the write has finished and then delivered, so an interrupt never tears a file."""

from __future__ import annotations

import errno
import os
import signal
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Hard links are how a new file appears complete without replacing one; these say a file system has none.
_NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV)


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, exclusively created ``.NAME.<random>.tmp`` beside ``path``, with the permissions of any new
    file (``0o666`` less the umask, as ``open()`` gives), not the owner-only ones of ``mkstemp``."""
    while True:
        temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temporary
        except FileExistsError:
            continue


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM arriving within the block are delivered, to the handlers installed before it,
    when the block ends. Outside the main thread (where handlers cannot change) the block runs as is."""
    current = {signum: signal.getsignal(signum) for signum in HELD_SIGNALS}
    if threading.current_thread() is not threading.main_thread() or None in current.values():
        yield  # a handler installed from C cannot be put back: leave the signals alone
        return
    held: list[int] = []
    for signum in HELD_SIGNALS:
        signal.signal(signum, lambda received, frame: held.append(received))
    try:
        yield
    finally:
        for signum, handler in current.items():
            signal.signal(signum, handler)
        for arrived in dict.fromkeys(held):
            signal.raise_signal(arrived)


def _os_error_within(error: BaseException) -> OSError | None:
    """The ``OSError`` that ``error`` is or that caused it (through ``__cause__`` or ``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _publish(temporary: Path, path: Path, replace: bool) -> None:
    """Move the finished ``temporary`` to ``path``; without ``replace`` an existing ``path`` stays and
    ``FileExistsError`` is raised (a hard link makes the check and the move one step)."""
    if replace:
        os.replace(temporary, path)
        return
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise
        if path.exists():
            raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
        os.replace(temporary, path)
        return
    os.unlink(temporary)


def atomic_write(
    path: str | Path, write: Callable[[IO[Any]], object], text: bool = False, replace: bool = True
) -> None:
    """Call ``write(file)`` on a temporary file and move it to ``path`` in one step; ``replace=False``
    never replaces an existing ``path`` (``FileExistsError``). On failure no file is left behind."""
    path = Path(path)
    with signals_held():
        temporary = None
        try:
            handle, temporary = _create_temporary(path)
            with os.fdopen(handle, "w", encoding="utf-8", newline="") if text else os.fdopen(handle, "wb") as file:
                write(file)
                file.flush()
                os.fsync(file.fileno())
            _publish(temporary, path, replace)
        except BaseException as error:
            if temporary is not None and os.path.exists(temporary):
                os.unlink(temporary)
            cause = _os_error_within(error) if isinstance(error, (OSError, RuntimeError)) else None
            if cause is None or isinstance(cause, FileExistsError):
                raise
            raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from None
    _fsync_directory(path.parent)


def atomic_write_new(
    directory: str | Path, stem: str, suffix: str, write: Callable[[IO[Any]], object], text: bool = False
) -> Path:
    """Write a new file ``directory/stem suffix`` (``stem-2 suffix``, … when taken) as :func:`atomic_write`
    does, never replacing a file, and return its path."""
    directory = Path(directory)
    for index in range(1, 100_000):
        candidate = directory / (f"{stem}{suffix}" if index == 1 else f"{stem}-{index}{suffix}")
        if candidate.exists():
            continue
        try:
            atomic_write(candidate, write, text=text, replace=False)
        except FileExistsError:  # taken meanwhile by another process
            continue
        return candidate
    raise FileExistsError(errno.EEXIST, f"no free file name for {stem}{suffix}", str(directory))


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
