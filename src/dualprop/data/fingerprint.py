"""The files a dataset is read from, checked to be regular files, and their fingerprints (size and sha256).

A run records the fingerprint of every file its data came from, so that a resumed run can tell whether
it would continue on other data. Only regular files are accepted: a named pipe or a device would block or
never end when read."""

from __future__ import annotations

import functools
import hashlib
import os
from importlib import resources
from pathlib import Path
from typing import Any

from .arrays import PYTHON_DATA, is_npz_path
from .paths import find_dataset_dir, regular_file
from .registry import get_spec

CHUNK_BYTES = 1 << 20
# Datasets bundled with a package: the package's data file that its reader opens.
BUNDLED_FILES = {"digits": ("sklearn.datasets.data", "digits.csv.gz")}


def dataset_files(name: str, root: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """The files reading dataset ``name`` (a registry name or an ``.npz`` path) opens, keyed by the name
    they have in the dataset (the ``.npz`` file's own name, a registry file such as ``train-images-idx3-ubyte.gz``),
    each checked to be a regular file. Data handed over from Python have none."""
    if name == PYTHON_DATA:
        return {}
    if is_npz_path(name):
        path = Path(name).expanduser()
        return {path.name: regular_file(path)}
    spec = get_spec(name)
    if not spec.files:
        if spec.name not in BUNDLED_FILES:
            return {}
        package, file_name = BUNDLED_FILES[spec.name]
        try:
            bundled = resources.files(package) / file_name
        except ModuleNotFoundError:
            return {}
        return {file_name: regular_file(str(bundled))} if bundled.is_file() else {}
    directory = find_dataset_dir(spec, root)
    found = {}
    for relative in spec.files:
        path = directory / relative
        if not path.exists() and relative.endswith(".gz"):
            path = path.with_suffix("")  # kept uncompressed
        found[relative] = regular_file(path)
    return found


def file_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex digest}`` of the file's content. A file whose place, size and
    modification time are those of one already hashed by this process is not read again."""
    status = os.stat(path)
    return dict(_content_fingerprint(os.path.realpath(path), status.st_size, status.st_mtime_ns, status.st_ino))


@functools.lru_cache(maxsize=64)
def _content_fingerprint(path: str, size: int, mtime_ns: int, inode: int) -> tuple[tuple[str, Any], ...]:
    """Size and sha256 of the bytes of ``path``; the other arguments key the cache."""
    digest = hashlib.sha256()
    read = 0
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(CHUNK_BYTES), b""):
            digest.update(chunk)
            read += len(chunk)
    return (("size", read), ("sha256", digest.hexdigest()))


def dataset_fingerprint(name: str, root: str | os.PathLike[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per file of :func:`dataset_files`: its path, size and sha256."""
    return {key: {"path": str(path), **file_fingerprint(path)} for key, path in dataset_files(name, root).items()}


def changed_files(recorded: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]) -> list[str]:
    """One phrase per file whose content differs between two fingerprints (or that one of them lacks)."""
    changes = []
    for key in sorted(recorded.keys() | current.keys()):
        old, new = recorded.get(key), current.get(key)
        if old is None or new is None:
            where = (new or old or {}).get("path", key)
            changes.append(f"{where} {'was not' if old is None else 'is no longer'} among the run's data files")
        elif (old.get("size"), old.get("sha256")) != (new["size"], new["sha256"]):
            changes.append(
                f"{new['path']} differs from the file the run was trained on "
                f"({old.get('size')} bytes, sha256 {str(old.get('sha256'))[:12]}…; now {new['size']} bytes, "
                f"sha256 {new['sha256'][:12]}…)"
            )
    return changes
