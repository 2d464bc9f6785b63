"""Run directories: a fresh directory per run, its ``metrics.csv`` and its ``summary.json``.

Layout of one run directory::

    config.toml           the resolved settings (flat TOML; ``dualprop train --config`` reads it)
    metrics.csv           one row per finished epoch
    summary.json          status (running, finished, diverged), best epoch, test accuracy, timings
    checkpoint-best.pt    the weights of the epoch with the best validation accuracy
    checkpoint-last.pt    everything needed to resume after the last finished epoch
"""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from dualprop.atomic import atomic_write

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
BEST_CHECKPOINT = "checkpoint-best.pt"
LAST_CHECKPOINT = "checkpoint-last.pt"

METRIC_COLUMNS = ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds",
                  "elapsed")


def create_run_directory(parent: str | Path, name: str) -> Path:
    """Create and return ``parent/name``, or ``parent/name-2``, ``-3``, … if taken: never reuse one.

    ``os.mkdir`` fails when the directory exists, so two processes cannot claim the same name.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._") or "run"
    for index in range(1, 100_000):
        candidate = parent / (safe if index == 1 else f"{safe}-{index}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise ValueError(f"no free run directory name for {safe!r} under {parent}")


def write_json_atomic(values: Mapping[str, Any], path: str | Path) -> None:
    """Write ``values`` as JSON through a temporary file and ``os.replace``."""
    def write(file) -> None:
        json.dump(values, file, indent=2, allow_nan=True)
        file.write("\n")

    atomic_write(path, write, text=True)


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``summary.json`` as a dict; ``ValueError`` if missing or malformed."""
    path = Path(run_dir) / SUMMARY_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise ValueError(f"{path} does not exist; is {run_dir} a dualprop run directory?") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """The rows of ``metrics.csv`` with numeric values (empty cells become NaN)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    return [{key: (float(value) if value not in ("", None) else float("nan")) for key, value in row.items()}
            for row in rows if row.get("epoch") not in ("", None)]


class MetricsLog:
    """Append-only ``metrics.csv`` with one row per finished epoch, flushed and fsynced per row."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / METRICS_FILE

    def start(self) -> None:
        """Write the header of a new, empty log."""
        with open(self.path, "w", newline="", encoding="utf-8") as file:
            csv.writer(file).writerow(METRIC_COLUMNS)

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one epoch's row (missing columns are left empty)."""
        with open(self.path, "a", newline="", encoding="utf-8") as file:
            csv.writer(file).writerow([_cell(row.get(column)) for column in METRIC_COLUMNS])
            file.flush()
            os.fsync(file.fileno())

    def truncate_to(self, epoch: int) -> None:
        """Keep exactly the rows of epochs ``1..epoch`` (the last finished epoch of a checkpoint).

        Rows after ``epoch`` (written before a crash that beat the checkpoint) and duplicates are
        dropped; a torn last line is dropped too. The file is rewritten atomically.
        """
        kept: dict[int, list[str]] = {}
        if self.path.exists():
            with open(self.path, newline="", encoding="utf-8") as file:
                reader = csv.reader(file)
                next(reader, None)
                for cells in reader:
                    if len(cells) != len(METRIC_COLUMNS):
                        continue
                    try:
                        row_epoch = int(float(cells[0]))
                    except ValueError:
                        continue
                    if 1 <= row_epoch <= epoch:
                        kept[row_epoch] = cells
        missing = [e for e in range(1, epoch + 1) if e not in kept]
        if missing:
            raise ValueError(f"{self.path} lacks the rows of epochs {missing} that the checkpoint has finished")
        def write(file) -> None:
            writer = csv.writer(file)
            writer.writerow(METRIC_COLUMNS)
            for row_epoch in sorted(kept):
                writer.writerow(kept[row_epoch])

        atomic_write(self.path, write, text=True)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def find_run_directories(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories among ``paths``: each path itself if it holds a summary, else its sub-directories
    that do (so a parent such as ``runs/`` can be given)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / SUMMARY_FILE).is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p.parent for p in path.glob(f"*/{SUMMARY_FILE}")))
        else:
            raise ValueError(f"{path} is not a directory")
    return found
