"""Summaries over run directories: mean ± std over seeds per setting, and training curves.

Runs belong to the same setting when their resolved configs agree on everything except the seed and
the bookkeeping keys (output folder, run name, device, threads, data directory, logging); for backprop
runs the nudging keys (α, β, schedule, passes, implementation) do not matter either.
Mean ± std use the sample standard deviation (n − 1) over the runs that reached a test accuracy.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from dualprop.training.config import read_toml
from dualprop.training.rundir import CONFIG_FILE, find_run_directories, read_metrics, read_summary

BOOKKEEPING_KEYS = ("seeds", "out", "name", "device", "threads", "data_dir", "tensorboard", "baseline")
NUDGING_KEYS = ("alpha", "beta", "schedule", "passes", "implementation")
COLUMNS = ("dataset", "model", "rule", "alpha", "beta", "schedule", "passes", "epochs")
_HEADINGS = {"alpha": "α", "beta": "β"}


@dataclass
class RunRecord:
    """One run directory: its config, summary and metric rows."""

    run_dir: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: list[dict[str, float]]


def collect_runs(paths: Sequence[str | Path]) -> list[RunRecord]:
    """Read every run directory among ``paths`` (or inside them); ``ValueError`` if there is none."""
    directories = find_run_directories(paths)
    if not directories:
        raise ValueError(f"no run directories (with summary.json) found in {', '.join(map(str, paths))}")
    return [RunRecord(d, read_toml(d / CONFIG_FILE), read_summary(d), read_metrics(d)) for d in directories]


def setting_key(config: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The config without seed and bookkeeping keys (and without nudging keys for ``bp``), hashable."""
    ignored = set(BOOKKEEPING_KEYS) | (set(NUDGING_KEYS) if config.get("rule") == "bp" else set())
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                        for k, v in config.items() if k not in ignored))


def group_runs(runs: Sequence[RunRecord]) -> list[list[RunRecord]]:
    """Runs grouped by setting, in order of first appearance."""
    groups: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(setting_key(run.config), []).append(run)
    return list(groups.values())


def mean_std(values: Sequence[float]) -> str:
    """``mean ± std`` with two decimals (std over n − 1; just the value for n = 1; ``–`` for none)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "-".join(str(v) for v in value)
    return str(value)


def markdown_table(runs: Sequence[RunRecord]) -> str:
    """One row per setting: the setting, seeds, test top-1 (and top-5), best validation accuracy and
    how many runs diverged. Keys that differ between settings but are not standard columns are added."""
    groups = group_runs(runs)
    keys = [dict(setting_key(g[0].config)) for g in groups]
    extra = sorted({k for key in keys for k in key if k not in COLUMNS
                    and len({_cell(other[k]) for other in keys if k in other}) > 1})
    headings = [_HEADINGS.get(c, c) for c in (*COLUMNS, *extra)] + [
        "seeds", "test acc (%)", "test top-5 (%)", "best val acc (%)", "diverged"]
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    for group, key in zip(groups, keys):
        summaries = [run.summary for run in group]
        setting = [_cell(key.get(c)) for c in (*COLUMNS, *extra)]
        diverged = sum(s.get("status") == "diverged" for s in summaries)
        stats = [str(len(group)), mean_std([s.get("test_acc") for s in summaries]),
                 mean_std([s.get("test_top5") for s in summaries]),
                 mean_std([s.get("best_val_acc") for s in summaries]), f"{diverged}/{len(group)}"]
        lines.append("| " + " | ".join(setting + stats) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(runs: Sequence[RunRecord], path: str | Path) -> bool:
    """Training loss and validation accuracy per epoch, mean over the seeds of each setting, as a PNG.

    Returns False (writing nothing) when matplotlib is not installed.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for group in group_runs(runs):
        config = group[0].config
        label = config["rule"] if config["rule"] == "bp" else \
            f"{config['rule']} α={config['alpha']:g} β={config['beta']:g}"
        label = f"{config['dataset']} {config['model']} {label}"
        for axis, column in ((loss_axis, "train_loss"), (acc_axis, "val_acc")):
            epochs, means = _mean_curve(group, column)
            if epochs:
                axis.plot(epochs, means, label=label)
    loss_axis.set(xlabel="epoch", ylabel="training loss", yscale="log")
    acc_axis.set(xlabel="epoch", ylabel="validation accuracy (%)")
    acc_axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def _mean_curve(group: Sequence[RunRecord], column: str) -> tuple[list[int], list[float]]:
    """Per epoch, the mean of ``column`` over the runs with a finite value there."""
    by_epoch: dict[int, list[float]] = {}
    for run in group:
        for row in run.metrics:
            value = row.get(column, float("nan"))
            if math.isfinite(value):
                by_epoch.setdefault(int(row["epoch"]), []).append(value)
    epochs = sorted(by_epoch)
    return epochs, [statistics.mean(by_epoch[e]) for e in epochs]
