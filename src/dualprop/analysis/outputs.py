"""Result files that never replace an existing one: ``name.ext``, else ``name-2.ext``, ``name-3.ext``, …

Each appears complete or not at all (:mod:`dualprop.atomic`): a failed write leaves no empty or partial
file behind."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any, Callable

from dualprop.atomic import atomic_write_new


def write_new_file(directory: str | Path, stem: str, suffix: str, write: Callable[[IO[Any]], object]) -> Path:
    """Write text with ``write(file)`` to a new ``directory/stem suffix`` (``stem-2 suffix``, … if taken)
    and return its path."""
    return atomic_write_new(_existing_directory(directory), stem, suffix, write, text=True)


def free_file_name(directory: str | Path, stem: str, suffix: str) -> Path:
    """The first of ``directory/stem suffix``, ``stem-2 suffix``, … that does not exist (nothing is created)."""
    directory = _existing_directory(directory)
    for index in range(1, 100_000):
        candidate = directory / (f"{stem}{suffix}" if index == 1 else f"{stem}-{index}{suffix}")
        if not candidate.exists():
            return candidate
    raise ValueError(f"no free file name for {stem}{suffix} in {directory}")


def _existing_directory(directory: str | Path) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    return directory
