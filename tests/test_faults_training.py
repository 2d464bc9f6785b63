"""Faults during training: divergence that stays finite, warnings shown to users."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from faults_support import (
    SOURCE,
    TINY,
)

from dualprop.cli import main
from dualprop.training import TrainConfig
from dualprop.training.rundir import read_metrics, read_summary

# -- 3. divergence that stays finite ---------------------------------------------------------------


def test_a_finite_blow_up_ends_as_diverged_with_exit_3(tmp_path, capsys):
    args = [
        "--rule",
        "dp",
        "--alpha",
        "1",
        "--beta",
        "20",
        "--epochs",
        "2",
        "--hidden",
        "16",
        "--batch-size",
        "64",
        "--no-progress",
        "--no-tensorboard",
        "--no-baseline",
        "--json",
    ]
    assert main(["train", "--out", str(tmp_path / "on"), *args]) == 3
    (record,) = json.loads(capsys.readouterr().out)["runs"]
    summary = read_summary(record["run_dir"])
    assert summary["status"] == "diverged"
    assert summary["diverged_at"]["epoch"] == 2
    found = re.fullmatch(r"training loss (\S+) above 10 × the first step's (\S+)", summary["diverged_at"]["reason"])
    loss, reference = float(found.group(1)), float(found.group(2))
    assert np.isfinite(loss) and loss > 10 * reference  # the criterion, recomputed from the numbers it reports
    assert [row["epoch"] for row in read_metrics(record["run_dir"])] == [1]  # the last good epoch stays
    # The same run without the criterion: the loss is finite throughout, so only the factor stops it.
    assert main(["train", "--out", str(tmp_path / "off"), *args, "--divergence-factor", "0"]) == 0
    (record,) = json.loads(capsys.readouterr().out)["runs"]
    rows = read_metrics(record["run_dir"])
    assert all(np.isfinite(row["train_loss"]) for row in rows)
    assert max(row["train_loss"] for row in rows) > 10 * reference


def test_divergence_factor_is_a_checked_setting():
    with pytest.raises(ValueError, match="divergence_factor must be"):
        TrainConfig(divergence_factor=0.5).resolved()
    assert TrainConfig(divergence_factor=0).resolved().divergence_factor == 0


@pytest.mark.slow
def test_a_training_run_shows_users_no_warnings(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-W",
            "always::DeprecationWarning",
            "-W",
            "always::FutureWarning",
            "-m",
            "dualprop",
            "train",
            "--out",
            str(tmp_path),
            *TINY,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(SOURCE)},
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and "jit" not in result.stderr
