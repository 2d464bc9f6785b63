"""Heat maps of per-layer gradient angles (layer × epoch, layer × batch) as PNG, when matplotlib exists."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path


def plot_angle_heatmap(matrix: Sequence[Sequence[float]], layers: Sequence[str], columns: Sequence[object],
                       column_label: str, path: str | Path, title: str = "") -> bool:
    """Draw ``matrix[layer][column]`` (angles in degrees; colour scale from 0 to the largest angle) to ``path``.

    Returns False (writing nothing) when matplotlib is not installed.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if not matrix or not columns:
        raise ValueError("a heat map needs at least one layer and one column")
    finite = [v for row in matrix for v in row if math.isfinite(v)]
    top = max(max(finite, default=90.0), 1e-3)
    width = min(16.0, 6.5 + 0.3 * len(columns))
    figure, axis = plt.subplots(figsize=(width, 1.2 + 0.45 * len(layers)))
    image = axis.imshow(matrix, aspect="auto", cmap="viridis", vmin=0.0, vmax=top, interpolation="nearest")
    axis.set_yticks(range(len(layers)), labels=list(layers))
    step = max(1, len(columns) // 20)
    axis.set_xticks(range(0, len(columns), step), labels=[str(c) for c in list(columns)[::step]])
    axis.set_xlabel(column_label)
    axis.set_title(title or "angle to backprop's gradient (degrees)", fontsize="medium")
    figure.colorbar(image, ax=axis, label="angle (°)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
