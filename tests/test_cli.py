"""The command line: quick start, exit codes, one-line errors, kill and --resume, --config precedence."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dualprop.cli import main
from dualprop.training.checkpoint import load_checkpoint
from dualprop.training.rundir import read_metrics

from conftest import run_cli

FAST = ["--hidden", "32", "--batch-size", "128", "--no-progress", "--no-tensorboard"]


def test_quick_start_reports_the_accuracies_it_saved(tmp_path, capsys):
    status = main(["train", "--epochs", "3", "--out", str(tmp_path), "--json", *FAST])
    assert status == 0
    out = capsys.readouterr().out
    report = json.loads(out)  # stdout is exactly one JSON object
    rules = [run["rule"] for run in report["runs"]]
    assert rules == ["dpT", "bp"]
    for run in report["runs"]:
        summary = json.loads((Path(run["run_dir"]) / "summary.json").read_text())
        assert summary["status"] == "finished"
        assert run["test_acc"] == summary["test_acc"] and run["seconds"] == summary["seconds"]
        assert run["test_acc"] > 80.0
        rows = read_metrics(run["run_dir"])
        assert [r["epoch"] for r in rows] == [1, 2, 3]
        for name in ("config.toml", "metrics.csv", "checkpoint-best.pt", "checkpoint-last.pt"):
            assert (Path(run["run_dir"]) / name).is_file()
    dpt = report["runs"][0]
    assert (dpt["alpha"], dpt["beta"]) == (0.5, 0.1)
    assert report["runs"][1]["alpha"] is None


def test_text_output_names_both_networks(tmp_path, capsys):
    assert main(["train", "--epochs", "1", "--limit-batches", "2", "--out", str(tmp_path), *FAST]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("dpT (alpha=0.5, beta=0.1), seed 0: test accuracy")
    assert lines[1].startswith("bp, seed 0: test accuracy")
    assert "epoch   1/1" in captured.err


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--alpha", "2"], "alpha must be a number in [0, 1], got 2.0"),
        (["train", "--beta", "-1"], "beta must be a finite number > 0"),
        (["train", "--rule", "hebbian"], "unknown rule 'hebbian'"),
        (["train", "--schedule", "zigzag"], "unknown schedule 'zigzag'"),
        (["train", "--passes", "0"], "passes must be an integer >= 1"),
        (["train", "--compile", "turbo"], "unknown compile mode 'turbo'"),
        (["bench", "--compile", "turbo"], "argument --compile: invalid choice: 'turbo'"),
        (["train", "--dataset", "lsun"], "unknown dataset 'lsun'"),
        (["train", "--epochs", "many"], "argument --epochs: invalid int value: 'many'"),
        (["train", "--config", "/nonexistent/run.toml"], "cannot read config file /nonexistent/run.toml"),
        (["train", "--resume", "/nonexistent/run"], "/nonexistent/run is not a run directory"),
        (["experiment", "nature-2031"], "unknown experiment 'nature-2031'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "choose a command"),
    ],
)
def test_bad_settings_exit_2_with_one_line(args, message, tmp_path, capsys):
    adds_out = args[:1] == ["train"] and "--resume" not in args
    assert main([*args, "--out", str(tmp_path)] if adds_out else args) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("dualprop: error: ")
    assert message in captured.err
    assert not list(tmp_path.iterdir())  # no run directory was made


@pytest.mark.slow
def test_bad_setting_in_a_fresh_process_has_no_traceback(tmp_path):
    result = run_cli("train", "--alpha", "1.5", "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr == "dualprop: error: alpha must be a number in [0, 1], got 1.5\n"
    assert result.stdout == ""


def test_missing_data_names_the_file(tmp_path, capsys):
    status = main(
        ["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "runs"), *FAST]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train-images-idx3-ubyte.gz" in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_unknown_key_in_config_file(tmp_path, capsys):
    (tmp_path / "c.toml").write_text("alpha = 0.2\nnudge = 3\n")
    assert main(["train", "--config", str(tmp_path / "c.toml")]) == 2
    assert "unknown setting 'nudge'" in capsys.readouterr().err


def test_flags_override_the_config_file(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(
        'rule = "dp"\nalpha = 0.2\nbeta = 0.05\nepochs = 3\nbaseline = false\nhidden = [16]\n'
    )
    status = main(
        [
            "train",
            "--config",
            str(tmp_path / "c.toml"),
            "--epochs",
            "1",
            "--limit-batches",
            "1",
            "--out",
            str(tmp_path / "runs"),
            "--json",
            "--no-progress",
        ]
    )
    assert status == 0
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    assert (run["rule"], run["alpha"], run["beta"], run["epochs_completed"]) == ("dp", 0.2, 0.05, 1)
    saved = (Path(run["run_dir"]) / "config.toml").read_text()
    assert "hidden = [16]" in saved and "epochs = 1" in saved


def test_divergence_exits_3_and_records_where(tmp_path, capsys):
    status = main(
        [
            "train",
            "--rule",
            "bp",
            "--lr",
            "1e8",
            "--warmup-epochs",
            "0",
            "--epochs",
            "2",
            "--out",
            str(tmp_path),
            "--json",
            *FAST,
        ]
    )
    assert status == 3
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    summary = json.loads((Path(run["run_dir"]) / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert summary["diverged_at"]["epoch"] == 1 and summary["diverged_at"]["step"] >= 1
    assert summary["diverged_at"]["reason"] in ("non-finite loss", "non-finite weights")


@pytest.mark.slow
def test_sigkill_then_resume_keeps_one_row_per_epoch(tmp_path):
    out = tmp_path / "runs"
    epochs = 40
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dualprop",
            "train",
            "--epochs",
            str(epochs),
            "--limit-batches",
            "4",
            "--no-baseline",
            "--seed",
            "3",
            "--out",
            str(out),
            *FAST,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180  # generous: a loaded machine starts slowly
    checkpoint = None
    while time.monotonic() < deadline and process.poll() is None:
        found = list(out.glob("*/checkpoint-last.pt")) if out.exists() else []
        if found:
            checkpoint = found[0]
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint is not None and process.returncode == -signal.SIGKILL  # killed mid-run
    run_dir = checkpoint.parent
    stopped_after = load_checkpoint(checkpoint)["epoch"]
    assert 1 <= stopped_after < epochs
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"

    result = run_cli("train", "--resume", str(run_dir), "--json", "--no-progress")
    assert result.returncode == 0, result.stderr
    (run,) = json.loads(result.stdout)["runs"]
    assert run["status"] == "finished" and run["epochs_completed"] == epochs
    assert [int(r["epoch"]) for r in read_metrics(run_dir)] == list(range(1, epochs + 1))
    assert f"resuming after epoch {stopped_after}" in result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 4 * epochs


def test_resume_takes_no_other_settings(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--epochs", "3"]) == 2
    assert "give no other settings" in capsys.readouterr().err
