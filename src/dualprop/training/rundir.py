"""Run directories: a fresh directory per run, its ``metrics.csv`` and its ``summary.json``.

Layout of one run directory::

    config.toml           the resolved settings (flat TOML; ``dualprop train --config`` reads it)
    metrics.csv           one row per finished epoch
    diagnostics.csv       with diagnose_every: per-layer angles to backprop's gradient every N steps
    summary.json          status (running, finished, diverged), best epoch, test accuracy, timings
    data.json             size and sha256 of every data file the run reads (a resume checks them)
    checkpoint-best.pt    the weights of the epoch with the best validation accuracy
    checkpoint-last.pt    everything needed to resume after the last finished epoch
"""

from __future__ import annotations

import csv
import json
import os
import re
import unicodedata
from pathlib import Path
from typing import Any, Mapping, Sequence

from dualprop.atomic import atomic_write, signals_held
from dualprop.data import DataError
from dualprop.data.fingerprint import changed_files

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
DATA_FILE = "data.json"
BEST_CHECKPOINT = "checkpoint-best.pt"
LAST_CHECKPOINT = "checkpoint-last.pt"
NAME_MAX = 255  # bytes in one file name on common file systems (ext4, XFS, APFS, NTFS)

DIAGNOSTICS_FILE = "diagnostics.csv"
DIAGNOSTICS_COLUMNS = ("epoch", "step", "layer", "cosine", "angle")
METRIC_COLUMNS = ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "elapsed")


def create_run_directory(parent: str | Path, name: str) -> Path:
    """Create and return ``parent/name``, or ``parent/name-2``, ``-3``, … if taken: never reuse one.

    ``os.mkdir`` fails when the directory exists, so two processes cannot claim the same name. Letters
    and digits of any script are kept, other characters become ``_``, and the name never starts with
    ``-``, ``.`` or ``_`` (so that no shell reads it as an option). A name longer than file systems allow,
    a file in the place of ``parent`` or a place where nothing can be created is a ``ValueError`` saying
    so; directories created on the way to ``parent`` are removed again when the run directory cannot be.
    """
    parent = Path(parent)
    safe = unicodedata.normalize("NFC", re.sub(r"[^\w.+-]+", "_", name)).lstrip("-._").rstrip("._") or "run"
    longest = len(f"{safe}-99999".encode())
    if longest > NAME_MAX:
        raise ValueError(
            f"the run directory name {safe[:32]}… is {len(safe.encode())} bytes long; file systems "
            f"allow {NAME_MAX}: choose a shorter name"
        )
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"out {parent} is a file, not a directory: choose another place for the runs")
    missing = [p for p in (parent, *parent.parents) if not p.exists()]
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for index in range(1, 100_000):
            candidate = parent / (safe if index == 1 else f"{safe}-{index}")
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            return candidate
    except OSError as error:
        _remove_empty(missing)
        raise ValueError(f"cannot create a run directory in {parent}: {error.strerror or error}") from None
    raise ValueError(f"no free run directory name for {safe!r} under {parent}")


def _remove_empty(directories: Sequence[Path]) -> None:
    """Remove those of ``directories`` (innermost first) that exist and are empty."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            pass


def write_json_atomic(values: Mapping[str, Any], path: str | Path) -> None:
    """Write ``values`` as JSON through a temporary file and ``os.replace``."""

    def write(file) -> None:
        json.dump(values, file, indent=2, allow_nan=True)
        file.write("\n")

    atomic_write(path, write, text=True)


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; ``ValueError`` naming the file when it is missing, not JSON or not an
    object (``what`` says which file it should be)."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise ValueError(f"{path} does not exist; is {path.parent} a dualprop {what}?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} holds a JSON {type(values).__name__}, not the object of a dualprop {what}")
    return values


SUMMARY_NUMBERS = ("test_acc", "test_top5", "test_loss", "best_val_acc", "seconds")
SUMMARY_INTEGERS = ("seed", "epochs", "epochs_completed", "steps", "best_epoch")


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``summary.json`` as a dict; ``ValueError`` naming the file if it is missing or malformed
    (not an object, a status that is no string, a number or count of another type)."""
    path = Path(run_dir) / SUMMARY_FILE
    summary = read_json_object(path, "run directory")
    for key, value in summary.items():
        if value is None or isinstance(value, bool):
            wrong = isinstance(value, bool) and key in (*SUMMARY_NUMBERS, *SUMMARY_INTEGERS)
        elif key in SUMMARY_NUMBERS:
            wrong = not isinstance(value, (int, float))
        elif key in SUMMARY_INTEGERS:
            wrong = not isinstance(value, int)
        else:
            wrong = key == "status" and not isinstance(value, str)
        if wrong:
            kind = "an integer" if key in SUMMARY_INTEGERS else "a number" if key in SUMMARY_NUMBERS else "a string"
            raise ValueError(f"{path}: {key} must be {kind}, got {str(value)[:40]!r}")
    return summary


def write_data_fingerprint(run_dir: str | Path, files: Mapping[str, Any]) -> None:
    """Record the fingerprint of the run's data files (see :mod:`dualprop.data.fingerprint`) in ``data.json``."""
    write_json_atomic({"files": dict(files)}, Path(run_dir) / DATA_FILE)


def check_data_fingerprint(run_dir: str | Path, files: dict[str, dict[str, Any]], record: bool = True) -> None:
    """Refuse to continue a run on data files other than those it was trained on: ``DataError`` naming the
    first that differs from ``data.json``. A run recorded before fingerprints existed gets ``files`` as its
    fingerprint (with ``record``) and is checked from then on."""
    path = Path(run_dir) / DATA_FILE
    if not path.exists():
        if record:
            write_data_fingerprint(run_dir, files)
        return
    recorded = read_json_object(path, "run directory").get("files")
    if not isinstance(recorded, dict) or not all(isinstance(entry, dict) for entry in recorded.values()):
        raise ValueError(f"{path} is not a dualprop data fingerprint (no object of files)")
    changes = changed_files(recorded, files)
    if changes:
        raise DataError(f"{changes[0]}: restore it, or train a new run on the new data")


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """The rows of ``metrics.csv`` with numeric values (empty cells become NaN)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
        return [
            {key: (float(value) if value not in ("", None) else float("nan")) for key, value in row.items()}
            for row in rows
            if row.get("epoch") not in ("", None)
        ]
    except (ValueError, TypeError, csv.Error) as error:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"{path} is not a dualprop metrics file: {error}") from None


class _EpochLog:
    """An append-only CSV run log whose first column is the epoch: rows are flushed and fsynced as they
    are added, and a resumed run cuts the file back atomically to its checkpoint's epoch."""

    columns: tuple[str, ...] = ()

    def __init__(self, path: Path):
        self.path = path

    def start(self) -> None:
        """Write the header of a new, empty log."""
        self._rewrite([])

    def _append(self, rows: Sequence[Sequence[Any]]) -> None:
        with signals_held(), open(self.path, "a", newline="", encoding="utf-8") as file:
            csv.writer(file).writerows(rows)
            file.flush()
            os.fsync(file.fileno())

    def _rewrite(self, rows: Sequence[Sequence[Any]]) -> None:
        def write(file) -> None:
            writer = csv.writer(file)
            writer.writerow(self.columns)
            writer.writerows(rows)

        atomic_write(self.path, write, text=True)

    def _rows_up_to(self, epoch: int) -> list[list[str]]:
        """Complete rows of epochs ``1..epoch`` in file order (a torn last line is skipped)."""
        if not self.path.exists():
            return []
        try:
            with open(self.path, newline="", encoding="utf-8") as file:
                rows = list(csv.reader(file))[1:]
        except (UnicodeDecodeError, csv.Error) as error:
            raise ValueError(f"{self.path} is not a dualprop run log: {error}") from None
        kept = []
        for cells in rows:
            if len(cells) != len(self.columns):
                continue
            try:
                row_epoch = int(float(cells[0]))
            except ValueError:
                continue
            if 1 <= row_epoch <= epoch:
                kept.append(cells)
        return kept


class MetricsLog(_EpochLog):
    """``metrics.csv``: one row per finished epoch."""

    columns = METRIC_COLUMNS

    def __init__(self, run_dir: str | Path):
        super().__init__(Path(run_dir) / METRICS_FILE)

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one epoch's row (missing columns are left empty)."""
        self._append([[_cell(row.get(column)) for column in METRIC_COLUMNS]])

    def truncate_to(self, epoch: int) -> None:
        """Keep exactly the rows of epochs ``1..epoch`` (the last finished epoch of a checkpoint).

        Rows after ``epoch`` (written before a crash that beat the checkpoint) and duplicates are
        dropped; a torn last line is dropped too. The file is rewritten atomically.
        """
        kept = {int(float(cells[0])): cells for cells in self._rows_up_to(epoch)}
        missing = [e for e in range(1, epoch + 1) if e not in kept]
        if missing:
            raise ValueError(f"{self.path} lacks the rows of epochs {missing} that the checkpoint has finished")
        self._rewrite([kept[e] for e in sorted(kept)])


class DiagnosticsLog(_EpochLog):
    """``diagnostics.csv``: per check during training, one row per layer (epoch, step, layer, cosine, angle)."""

    columns = DIAGNOSTICS_COLUMNS

    def __init__(self, run_dir: str | Path):
        super().__init__(Path(run_dir) / DIAGNOSTICS_FILE)

    def append(self, epoch: int, step: int, angles: Sequence[Any]) -> None:
        """Add the rows of one check (objects with ``layer``, ``cosine``, ``angle``); the file and its
        header are created if missing."""
        if not self.path.exists():
            self.start()
        self._append([[epoch, step, a.layer, f"{a.cosine:.8g}", f"{a.angle:.6g}"] for a in angles])

    def truncate_to(self, epoch: int) -> None:
        """Keep only the rows of epochs ``1..epoch`` (what a resumed run's checkpoint has finished)."""
        if self.path.exists():
            self._rewrite(self._rows_up_to(epoch))


def read_diagnostics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``diagnostics.csv``: epoch and step as int, cosine and angle as float (torn rows skipped)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            try:
                rows.append(
                    {
                        "epoch": int(row["epoch"]),
                        "step": int(row["step"]),
                        "layer": row["layer"],
                        "cosine": float(row["cosine"]),
                        "angle": float(row["angle"]),
                    }
                )
            except (KeyError, TypeError, ValueError):
                continue
    return rows


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
