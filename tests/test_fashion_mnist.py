"""The real benchmark: Fashion-MNIST as Debian's dataset-fashion-mnist installs it, found without a
--data-dir, with the official contents, and learnable in one short epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualprop.cli import main
from dualprop.data import verify_dataset

INSTALLED = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(
    not INSTALLED.is_dir(),
    reason=f"Fashion-MNIST is not installed in {INSTALLED} (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture
def no_user_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty $DUALPROP_DATA and home, so only the system-wide copy can be found."""
    monkeypatch.setenv("DUALPROP_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_installed_files_have_the_official_contents(no_user_data: None) -> None:
    assert verify_dataset("fashion-mnist") == INSTALLED


@pytest.mark.slow
def test_one_short_epoch_on_the_real_data_passes_80_percent(
    no_user_data: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 300 batches of 64 (19200 training images); the whole test set (10000 images) is evaluated.
    status = main(
        [
            "train",
            "--dataset",
            "fashion-mnist",
            "--rule",
            "dpT",
            "--alpha",
            "1",
            "--beta",
            "0.1",
            "--schedule",
            "backward",
            "--hidden",
            "256",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--limit-batches",
            "300",
            "--optimizer",
            "adam",
            "--lr",
            "0.001",
            "--final-lr",
            "0.001",
            "--warmup-epochs",
            "0",
            "--no-augment",
            "--no-baseline",
            "--threads",
            "1",
            "--seed",
            "0",
            "--out",
            str(tmp_path / "runs"),
            "--json",
            "--no-progress",
            "--no-tensorboard",
        ]
    )
    assert status == 0
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    assert run["status"] == "finished" and run["test_acc"] > 80.0
    rows = (Path(run["run_dir"]) / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("1,300,")
