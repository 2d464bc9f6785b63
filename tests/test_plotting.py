"""The optional-matplotlib guard: without matplotlib every plot function writes nothing and says so."""

from __future__ import annotations

import sys

from dualprop.analysis.heatmap import plot_angle_heatmap
from dualprop.analysis.plotting import pyplot


def test_without_matplotlib_nothing_is_drawn(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert pyplot() is None
    path = tmp_path / "angles.png"
    assert plot_angle_heatmap([[1.0, 2.0]], ["block 1"], [1, 2], "batch", path) is False
    assert not path.exists()
