"""An exclusive lock on a run (or study) directory, so that two processes never write into the same one.

The lock is an advisory ``flock`` on ``RUN_DIR/.lock``, a file that also holds the holder's process
id and host for the message shown to the second process. The operating system drops the lock when its
holder exits, however it exits, so a lock left by a killed run is stale by construction: the next
process takes it over. Having the lock, a process removes the temporary files of atomic writes that a
killed predecessor left behind (``.NAME.*.tmp``), which no live process can be writing any more.
"""

from __future__ import annotations

import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".lock"
TEMPORARY_PATTERN = ".*.tmp"


class RunDirectoryBusy(ValueError):
    """Another live process holds the run directory's lock."""


@contextmanager
def run_directory_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of ``run_dir`` inside the ``with`` block.

    Raises :class:`RunDirectoryBusy` naming the holder when another process has it.
    """
    path = Path(run_dir) / LOCK_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise RunDirectoryBusy(f"{run_dir} is in use by {holder}; wait for it to finish or stop it first") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        remove_stale_temporaries(run_dir)
        yield
    finally:
        os.close(descriptor)  # closing the descriptor releases the lock


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files of interrupted atomic writes in ``run_dir``; return them.

    Call only while holding the run directory's lock: then no process is writing them.
    """
    removed = []
    for path in Path(run_dir).glob(TEMPORARY_PATTERN):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
