"""matplotlib, when it is installed (the ``plot`` extra): figures drawn off-screen and written as PNG."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from dualprop.atomic import atomic_write


def pyplot() -> ModuleType | None:
    """``matplotlib.pyplot`` on the file-only Agg backend, or ``None`` when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(figure: Any, path: str | Path, replace: bool = True) -> None:
    """Write ``figure`` to ``path`` as a 100-dpi PNG cropped to its contents, atomically (without
    ``replace`` never over an existing file), then close it."""
    import matplotlib.pyplot as plt

    def write(file: Any) -> None:
        figure.savefig(file, format="png", dpi=100, bbox_inches="tight")

    try:
        atomic_write(path, write, replace=replace)
    finally:
        plt.close(figure)
