"""Shared by the fault tests: tiny digits runs, a CLI subprocess and the one-error-line check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dualprop
from dualprop.cli import main
from dualprop.training.rundir import read_summary

SOURCE = Path(dualprop.__file__).resolve().parents[1]
TINY = [
    "--hidden",
    "16",
    "--batch-size",
    "64",
    "--limit-batches",
    "2",
    "--no-progress",
    "--no-tensorboard",
    "--no-baseline",
]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SOURCE), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dualprop", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def one_error_line(err: str) -> str:
    """The error line, which must end stderr and be its only error (no traceback; progress lines of a run
    that had started may come before it)."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines and lines[-1].startswith("dualprop: error: "), err
    assert sum("error" in line.lower() for line in lines) == 1, err
    return lines[-1]


def train_run(out: Path, *args: str, epochs: int = 1) -> Path:
    """A finished run directory of a tiny digits MLP."""
    assert main(["train", "--epochs", str(epochs), "--warmup-epochs", "0", "--out", str(out), *TINY, *args]) == 0
    (run_dir,) = [path for path in out.iterdir() if path.is_dir()]
    return run_dir


def as_killed(run_dir: Path) -> Path:
    """Make a finished run look like one killed after its last checkpoint (status still ``running``)."""
    summary = read_summary(run_dir)
    summary["status"] = "running"
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def edit_config(run_dir: Path, old: str, new: str) -> None:
    path = run_dir / "config.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def killed_copy(finished_run: Path, directory: Path) -> Path:
    """A copy of ``finished_run`` in ``directory`` that looks killed after its last checkpoint."""
    copy = directory / finished_run.name
    shutil.copytree(finished_run, copy)
    return as_killed(copy)
