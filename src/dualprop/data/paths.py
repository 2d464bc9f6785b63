"""Where dataset files live: the data root and the dataset directory inside it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DataError

if TYPE_CHECKING:
    from .registry import DatasetSpec

DATA_ENV_VAR = "DUALPROP_DATA"
DEFAULT_DATA_ROOT = Path("~/.cache/dualprop")


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The explicit `root`, else $DUALPROP_DATA, else ~/.cache/dualprop (user-expanded)."""
    if root is None:
        root = os.environ.get(DATA_ENV_VAR) or DEFAULT_DATA_ROOT
    return Path(root).expanduser()


def is_present(directory: Path, relative: str) -> bool:
    """Whether `relative` exists in `directory`; a '.gz' name may also be present uncompressed."""
    path = directory / relative
    return path.exists() or (relative.endswith(".gz") and path.with_suffix("").exists())


def candidate_dirs(spec: DatasetSpec, root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Our layout `<root>/<name>` first, then the torchvision layouts of the same files."""
    base = data_root(root)
    return [base / spec.name, *(base / alias for alias in spec.torchvision_dirs)]


def find_dataset_dir(spec: DatasetSpec, root: str | os.PathLike[str] | None = None) -> Path:
    """The first candidate directory holding every file of `spec`; DataError naming what is missing."""
    candidates = candidate_dirs(spec, root)
    if not spec.files:
        return candidates[0]
    missing = {d: [f for f in spec.files if not is_present(d, f)] for d in candidates}
    for directory, absent in missing.items():
        if not absent:
            return directory
    closest = min(candidates, key=lambda d: len(missing[d]))
    sources = ", ".join(r.url for r in spec.resources) or spec.homepage
    raise DataError(
        f"dataset {spec.name!r} is incomplete: missing {', '.join(str(closest / f) for f in missing[closest])}; "
        f"place {', '.join(spec.files)} in {candidates[0]}"
        + (f" (or in {', '.join(str(d) for d in candidates[1:])})" if len(candidates) > 1 else "")
        + f"; get them from {sources}"
        + (f" or run dualprop.data.download({spec.name!r})" if spec.resources else "")
    )
