"""``torchrun --nproc_per_node=2 -m dualprop train`` end to end on digits (gloo, localhost): one run
directory written by rank 0 alone, one metrics row per epoch, equal step counts on both ranks, one
result line, and ``--resume`` continuing the run from rank 0's checkpoint on both ranks."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port

LIMIT_BATCHES = 3


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "dualprop",
        "train",
        *args,
        "--no-progress",
        "--dist-timeout",
        "60",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


@pytest.mark.slow
def test_torchrun_trains_on_two_ranks_and_resumes(tmp_path):
    out = tmp_path / "runs"
    first = torchrun(
        "--epochs", "2", "--limit-batches", str(LIMIT_BATCHES), "--no-baseline", "--device", "cpu", "--out", str(out)
    )
    assert first.returncode == 0, first.stderr
    (run_dir,) = out.iterdir()
    rows = metrics(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [int(r["step"]) for r in rows] == [LIMIT_BATCHES, 2 * LIMIT_BATCHES]  # every rank ran each step
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 2 * LIMIT_BATCHES
    assert summary["test_acc"] is not None
    assert len(re.findall(r"test accuracy", first.stdout)) == 1  # rank 0 alone reports

    # Make it a run that was stopped after epoch 2 of 3; both ranks continue from rank 0's checkpoint.
    config = run_dir / "config.toml"
    config.write_text(re.sub(r"(?m)^epochs = 2$", "epochs = 3", config.read_text()))
    summary["status"] = "running"
    (run_dir / "summary.json").write_text(json.dumps(summary))
    resumed = torchrun("--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert list(out.iterdir()) == [run_dir]
    rows_after = metrics(run_dir)
    assert rows_after[:2] == rows
    assert [int(r["step"]) for r in rows_after] == [LIMIT_BATCHES * e for e in (1, 2, 3)]
    final = json.loads((run_dir / "summary.json").read_text())
    assert final["status"] == "finished" and final["epochs_completed"] == 3
