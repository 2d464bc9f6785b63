"""Summaries over run directories: mean ± std over seeds per setting, and training curves.

Runs belong to the same setting when their resolved configs agree on everything except the seed and
the bookkeeping keys (output folder, run name, device, threads, data directory, logging); for backprop
runs the nudging keys (α, β, schedule, passes, implementation) do not matter either.
Mean ± std use the sample standard deviation (n − 1) over the finished runs, one per seed: a diverged
run or one still running (or killed) is counted in its own column and never averaged in, and a seed
that appears in several finished runs of a setting is counted once (the first) and flagged in a note.
A run's time per epoch is the median of its epochs' training seconds (robust to a few slow epochs on a
shared machine); a setting's is the mean over its runs, and ``× bp`` divides it by that of the backprop
setting with the same data, network and optimisation.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from dualprop.analysis.plotting import pyplot, save_png
from dualprop.rules import RULE_TABLE
from dualprop.training.config import BOOKKEEPING_KEYS, TrainConfig, read_toml
from dualprop.training.rundir import CONFIG_FILE, find_run_directories, read_metrics, read_summary

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
    return [RunRecord(d, read_flat_config(d / CONFIG_FILE), read_summary(d), read_metrics(d)) for d in directories]


def read_flat_config(path: Path) -> dict[str, Any]:
    """A run's ``config.toml`` as written (settings an earlier version lacks stay absent); ``ValueError``
    naming the file when it holds a table or a list of anything but numbers, strings and booleans."""
    config = read_toml(path)
    for key, value in config.items():
        items = value if isinstance(value, list) else [value]
        if any(isinstance(item, (dict, list)) for item in items):
            raise ValueError(f"{path}: {key!r} is a table or nested list; a run's config.toml holds flat settings")
    return config


def setting_key(config: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The config without seed and bookkeeping keys (and without nudging keys for ``bp``, momentum for
    optimizers other than SGD), hashable. A setting that a config written by an earlier version lacks
    counts with its default, so old and new runs of one setting stay together."""
    config = {**TrainConfig().to_dict(), **config}
    ignored = set(BOOKKEEPING_KEYS) | (set(NUDGING_KEYS) if config.get("rule") == "bp" else set())
    if config.get("optimizer") != "sgd":
        ignored.add("momentum")
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k not in ignored))


def group_runs(runs: Sequence[RunRecord]) -> list[list[RunRecord]]:
    """Runs grouped by setting, in order of first appearance."""
    groups: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(setting_key(run.config), []).append(run)
    return list(groups.values())


def backprop_twin(key: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
    """The setting key of backprop with everything else of ``key`` unchanged."""
    return setting_key({**dict(key), "rule": "bp"})


def epoch_seconds(run: RunRecord) -> float:
    """Median training seconds per epoch of one run (NaN when its metrics hold none)."""
    seconds = [row["seconds"] for row in run.metrics if math.isfinite(row.get("seconds", math.nan))]
    return statistics.median(seconds) if seconds else math.nan


def mean_epoch_seconds(group: Sequence[RunRecord]) -> float:
    """Mean over the runs of a setting of their median epoch time (NaN when none is known)."""
    values = [v for v in map(epoch_seconds, group) if math.isfinite(v)]
    return statistics.mean(values) if values else math.nan


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


def run_seed(run: RunRecord) -> Any:
    """The seed of a run (from its summary, else its config)."""
    return run.summary.get("seed", (run.config.get("seeds") or [None])[0])


def finished_per_seed(group: Sequence[RunRecord]) -> tuple[list[RunRecord], dict[Any, list[RunRecord]]]:
    """The finished runs of a setting, the first one of each seed, and the seeds finished more than once
    (with all their runs)."""
    by_seed: dict[Any, list[RunRecord]] = {}
    for run in group:
        if run.summary.get("status") == "finished":
            by_seed.setdefault(run_seed(run), []).append(run)
    return [runs[0] for runs in by_seed.values()], {s: r for s, r in by_seed.items() if len(r) > 1}


def markdown_table(runs: Sequence[RunRecord]) -> str:
    """One row per setting: the setting, the number of finished seeds, their test top-1 (and top-5) of
    the best-validation epoch's weights, best and last epoch's validation accuracy (a run that collapsed
    after its best epoch shows in the last), how many runs diverged or did not finish; a note under the table
    names every seed finished more than once. Keys that differ between settings but are not standard
    columns are added."""
    groups = group_runs(runs)
    keys = [dict(setting_key(g[0].config)) for g in groups]
    extra = sorted(
        {
            k
            for key in keys
            for k in key
            if k not in COLUMNS and len({_cell(other[k]) for other in keys if k in other}) > 1
        }
    )
    headings = [_HEADINGS.get(c, c) for c in (*COLUMNS, *extra)] + [
        "seeds",
        "test acc (%)",
        "test top-5 (%)",
        "best val acc (%)",
        "last val acc (%)",
        "diverged",
        "unfinished",
        "s / epoch",
        "× bp",
    ]
    seconds = {setting_key(g[0].config): mean_epoch_seconds(g) for g in groups}
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    notes = []
    for row, (group, key) in enumerate(zip(groups, keys), start=1):
        finished, repeated = finished_per_seed(group)
        summaries = [run.summary for run in finished]
        setting = [_cell(key.get(c)) for c in (*COLUMNS, *extra)]
        diverged = sum(run.summary.get("status") == "diverged" for run in group)
        unfinished = len(group) - diverged - sum(run.summary.get("status") == "finished" for run in group)
        own = seconds[setting_key(group[0].config)]
        ratio = own / seconds.get(backprop_twin(setting_key(group[0].config)), math.nan)
        stats = [
            str(len(finished)),
            mean_std([s.get("test_acc") for s in summaries]),
            mean_std([s.get("test_top5") for s in summaries]),
            mean_std([s.get("best_val_acc") for s in summaries]),
            mean_std([run.metrics[-1].get("val_acc") if run.metrics else None for run in finished]),
            f"{diverged}/{len(group)}",
            f"{unfinished}/{len(group)}",
            "–" if math.isnan(own) else f"{own:.1f}",
            "–" if math.isnan(ratio) else f"{ratio:.2f}",
        ]
        lines.append("| " + " | ".join(setting + stats) + " |")
        for seed, same in repeated.items():
            places = ", ".join(str(run.run_dir) for run in same)
            notes.append(f"- row {row}: seed {seed} finished {len(same)} times ({places}); only the first is counted")
    return "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")


def _rule_title(rule: str) -> str:
    """The rule's display name (the setting itself for a rule this version does not know)."""
    known = RULE_TABLE.get(rule)
    return known.display_name if known is not None else rule


def _rules(groups: Sequence[Sequence[RunRecord]]) -> list[str]:
    """The rules of the groups other than backprop, in order of first appearance (backprop alone
    when it is the only one)."""
    rules = list(dict.fromkeys(g[0].config["rule"] for g in groups))
    return [r for r in rules if r != "bp"] or rules


def _label(config: dict[str, Any]) -> str:
    if config["rule"] == "bp":
        return "backprop"
    return f"α={config['alpha']:g} β={config['beta']:g}"


def plot_curves(runs: Sequence[RunRecord], path: str | Path) -> bool:
    """Training loss (top) and validation accuracy (bottom) per epoch, mean over the seeds of each
    setting, one column per rule other than backprop (backprop dashed in every column), as a PNG.

    Returns False (writing nothing) when matplotlib is not installed.
    """
    plt = pyplot()
    if plt is None:
        return False
    from matplotlib.ticker import MaxNLocator

    groups = group_runs(runs)
    rules = _rules(groups)
    figure, axes = plt.subplots(2, len(rules), figsize=(4.6 * len(rules) + 1.5, 7), squeeze=False)
    for column, rule in enumerate(rules):
        for group in groups:
            config = group[0].config
            if config["rule"] != rule and config["rule"] != "bp":
                continue
            style = {"color": "black", "linestyle": "--"} if config["rule"] == "bp" else {}
            for row, metric in enumerate(("train_loss", "val_acc")):
                epochs, means = _mean_curve(group, metric)
                if epochs:
                    axes[row][column].plot(epochs, means, marker=".", label=_label(config), **style)
        axes[0][column].set(title=_rule_title(rule), yscale="log", ylabel="training loss")
        axes[1][column].set(xlabel="epoch", ylabel="validation accuracy (%)")
        axes[1][column].legend(fontsize="x-small")
        for row in (0, 1):
            axes[row][column].xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(_title(groups) + ": mean over seeds")
    figure.tight_layout()
    save_png(figure, path, replace=False)
    return True


def _title(groups: Sequence[Sequence[RunRecord]]) -> str:
    names = dict.fromkeys(f"{g[0].config['dataset']} {g[0].config['model']}" for g in groups)
    return ", ".join(names)


def plot_accuracy_against_beta(runs: Sequence[RunRecord], path: str | Path) -> bool:
    """Test accuracy (mean ± std over seeds) against β, one line per α, one panel per nudged rule;
    backprop's mean as a dashed line with its ± std band. Returns False (writing nothing) when
    matplotlib is not installed or no setting has both α and β."""
    plt = pyplot()
    groups = [g for g in group_runs(runs) if any(r.summary.get("test_acc") is not None for r in g)]
    rules = [r for r in _rules(groups) if r not in ("bp", "adversarial")]
    if plt is None or not rules:
        return False
    figure, axes = plt.subplots(1, len(rules), figsize=(4.8 * len(rules) + 1.5, 4), squeeze=False, sharey=True)
    for axis, rule in zip(axes[0], rules):
        by_alpha: dict[float, list[tuple[float, float, float]]] = {}
        for group in groups:
            config = group[0].config
            if config["rule"] != rule:
                continue
            values = [r.summary["test_acc"] for r in group if r.summary.get("test_acc") is not None]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            by_alpha.setdefault(config["alpha"], []).append((config["beta"], statistics.mean(values), spread))
        first = next(g[0].config for g in groups if g[0].config["rule"] == rule)
        twin = next((g for g in groups if setting_key(g[0].config) == backprop_twin(setting_key(first))), None)
        for alpha, points in sorted(by_alpha.items()):
            betas, means, spreads = zip(*sorted(points))
            axis.errorbar(betas, means, yerr=spreads, marker="o", capsize=3, label=f"α={alpha:g}")
        if twin is not None:
            values = [r.summary["test_acc"] for r in twin if r.summary.get("test_acc") is not None]
            mean, spread = statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
            axis.axhline(mean, color="black", linestyle="--", label="backprop")
            axis.axhspan(mean - spread, mean + spread, color="black", alpha=0.1)
        axis.set(title=_rule_title(rule), xscale="log", xlabel="β", ylabel="test accuracy (%)")
        axis.legend(fontsize="small")
    figure.suptitle(_title(groups) + ": test accuracy, mean ± std over seeds")
    figure.tight_layout()
    save_png(figure, path, replace=False)
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
