"""Heat maps as PNG, when matplotlib exists: per-layer gradient angles (layer × epoch, layer × batch) and
grids of accuracies (e.g. β × σ per rule), one panel per matrix with a shared colour scale."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dualprop.analysis.plotting import pyplot, save_png


@dataclass
class HeatmapPanel:
    """One matrix ``values[row][column]`` (NaN: no value, drawn grey) with its row and column labels;
    ``notes[row][column]``, where given and not empty, is written in the cell instead of its value."""

    values: Sequence[Sequence[float]]
    rows: Sequence[object]
    columns: Sequence[object]
    title: str = ""
    notes: Sequence[Sequence[str]] | None = None


def plot_heatmaps(
    panels: Sequence[HeatmapPanel],
    path: str | Path,
    *,
    row_label: str,
    column_label: str,
    colour_label: str,
    vmin: float,
    vmax: float,
    annotate: bool = False,
    title: str = "",
) -> bool:
    """Draw the panels side by side on one colour scale ``[vmin, vmax]`` to ``path``; with ``annotate``
    each cell shows its value. Returns False (writing nothing) when matplotlib is not installed."""
    plt = pyplot()
    if plt is None:
        return False
    if not panels or any(not panel.values or not panel.columns for panel in panels):
        raise ValueError("a heat map needs at least one row and one column")
    widest = max(len(panel.columns) for panel in panels)
    width = min(16.0, 6.5 + 0.3 * widest) if len(panels) == 1 else min(20.0, 1.6 + (0.9 + 0.5 * widest) * len(panels))
    height = 1.2 + 0.45 * max(len(panel.rows) for panel in panels)
    figure, axes = plt.subplots(
        1, len(panels), figsize=(width, height + (0.4 if title else 0.0)), squeeze=False, layout="constrained"
    )
    from matplotlib import colormaps

    colours = colormaps["viridis"].with_extremes(bad="lightgrey")
    for index, (axis, panel) in enumerate(zip(axes[0], panels)):
        image = axis.imshow(panel.values, aspect="auto", cmap=colours, vmin=vmin, vmax=vmax, interpolation="nearest")
        axis.set_yticks(range(len(panel.rows)), labels=[str(r) for r in panel.rows])
        step = max(1, len(panel.columns) // 20)
        axis.set_xticks(range(0, len(panel.columns), step), labels=[str(c) for c in list(panel.columns)[::step]])
        axis.set_xlabel(column_label)
        if index == 0:
            axis.set_ylabel(row_label)
        axis.set_title(panel.title, fontsize="medium")
        if annotate:
            for i, row in enumerate(panel.values):
                for j, value in enumerate(row):
                    note = panel.notes[i][j] if panel.notes is not None else ""
                    if note or math.isfinite(value):
                        light = math.isfinite(value) and value < vmin + 0.5 * (vmax - vmin)
                        axis.text(
                            j,
                            i,
                            note or f"{value:.0f}",
                            ha="center",
                            va="center",
                            fontsize="small",
                            color="white" if light else "black",
                        )
    figure.colorbar(image, ax=list(axes[0]), label=colour_label)
    if title:
        figure.suptitle(title, fontsize="medium")
    save_png(figure, path)
    return True


def plot_angle_heatmap(
    matrix: Sequence[Sequence[float]],
    layers: Sequence[str],
    columns: Sequence[object],
    column_label: str,
    path: str | Path,
    title: str = "",
) -> bool:
    """Draw ``matrix[layer][column]`` (angles in degrees; colour scale from 0 to the largest angle) to ``path``.

    Returns False (writing nothing) when matplotlib is not installed.
    """
    finite = [v for row in matrix for v in row if math.isfinite(v)]
    top = max(max(finite, default=90.0), 1e-3)
    panel = HeatmapPanel(matrix, layers, columns, title or "angle to backprop's gradient (degrees)")
    return plot_heatmaps(
        [panel], path, row_label="", column_label=column_label, colour_label="angle (°)", vmin=0.0, vmax=top
    )
