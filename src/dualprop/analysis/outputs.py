"""Result files that never replace an existing one: ``name.ext``, else ``name-2.ext``, ``name-3.ext``, …"""

from __future__ import annotations

import os
from pathlib import Path


def claim_new_file(directory: str | Path, stem: str, suffix: str) -> Path:
    """Create and return an empty ``directory/stem suffix`` (or ``stem-2 suffix``, … if taken).

    The file is created with ``O_EXCL``, so two processes never claim the same name and no existing
    file is touched; the caller then writes its content there.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    for index in range(1, 100_000):
        candidate = directory / (f"{stem}{suffix}" if index == 1 else f"{stem}-{index}{suffix}")
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            continue
        return candidate
    raise ValueError(f"no free file name for {stem}{suffix} in {directory}")
