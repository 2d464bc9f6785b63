"""Where dataset files live: the data root and the dataset directory inside it."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DataError

if TYPE_CHECKING:
    from .registry import DatasetSpec

DATA_ENV_VAR = "DUALPROP_DATA"
DEFAULT_DATA_ROOT = Path("~/.cache/dualprop")
SYSTEM_DATA_ROOT = Path("/usr/share/datasets")  # where Debian's dataset-* packages install


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The root that receives downloads: the explicit `root`, else $DUALPROP_DATA, else ~/.cache/dualprop."""
    if root is None:
        root = os.environ.get(DATA_ENV_VAR) or DEFAULT_DATA_ROOT
    return Path(root).expanduser()


def data_roots(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """The roots searched for a dataset, in order: the explicit `root` alone when given; else
    $DUALPROP_DATA (when set), ~/.cache/dualprop and the system-wide /usr/share/datasets."""
    if root is not None:
        return [Path(root).expanduser()]
    roots = [data_root(), DEFAULT_DATA_ROOT.expanduser(), SYSTEM_DATA_ROOT]
    return list(dict.fromkeys(roots))


def is_present(directory: Path, relative: str) -> bool:
    """Whether `relative` exists in `directory`; a '.gz' name may also be present uncompressed."""
    path = directory / relative
    return path.exists() or (relative.endswith(".gz") and path.with_suffix("").exists())


def candidate_dirs(spec: DatasetSpec, root: str | os.PathLike[str] | None = None) -> list[Path]:
    """For every data root in search order: our layout `<root>/<name>`, then torchvision's layouts."""
    return [
        directory
        for base in data_roots(root)
        for directory in (base / spec.name, *(base / alias for alias in spec.torchvision_dirs))
    ]


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
    first_root = data_roots(root)[0]
    sources = ", ".join(r.url for r in spec.resources) or spec.homepage
    raise DataError(
        f"dataset {spec.name!r} is incomplete: missing {', '.join(str(closest / f) for f in missing[closest])}; "
        f"place {', '.join(spec.files)} in {first_root / spec.name}"
        + (
            f" (or in {', '.join(str(first_root / alias) for alias in spec.torchvision_dirs)})"
            if spec.torchvision_dirs
            else ""
        )
        + f"; searched {', '.join(map(str, data_roots(root)))}; get them from {sources}"
        + (f" or run dualprop.data.download({spec.name!r})" if spec.resources else "")
        + (
            f" or install the system package {spec.system_package} (into {SYSTEM_DATA_ROOT})"
            if spec.system_package
            else ""
        )
    )


def regular_file(path: str | os.PathLike[str]) -> Path:
    """``path`` itself when it is a regular file (following links); ``DataError`` naming it otherwise."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "not a file"
        raise DataError(f"{path} is {kind}; a dataset file must be a regular file")
    return path
