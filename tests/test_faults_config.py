"""Settings: every bad value is one line before anything is written."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from faults_support import (
    TINY,
    one_error_line,
    train_run,
)

from dualprop.cli import main
from dualprop.training import TrainConfig, TrainingObserver, train


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    return train_run(tmp_path_factory.mktemp("finished"), epochs=2)


# -- 6. settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, toml, message",
    [
        (["--seed", "-1"], "", "seeds must be integers in [0, 2^63), got [-1]"),
        ([], "seeds = 3\n", "seeds must be a list of integers, got 3"),
        (["--momentum", "5"], "", "momentum must lie in [0, 1), got 5.0"),
        (["--optimizer", "adam", "--momentum", "0.5"], "", "momentum is a setting of optimizer 'sgd'"),
        (["--optimizer", "adam"], "momentum = 0.5\n", "momentum is a setting of optimizer 'sgd'"),
        (["--optimizer", "adam", "--momentum", "0.9"], "", "--momentum is a setting of optimizer 'sgd'"),
    ],
)
def test_bad_settings_are_one_line_before_anything_is_written(tmp_path, capsys, args, toml, message):
    config = tmp_path / "settings.toml"
    config.write_text(toml)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "runs"), *args, *TINY]) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_adam_trains_without_momentum_and_sgd_gets_its_default(tmp_path):
    adam = train(
        TrainConfig(
            optimizer="adam",
            hidden=[16],
            epochs=1,
            limit_batches=1,
            baseline=False,
            tensorboard=False,
            out=str(tmp_path),
        )
    )
    assert adam[0]["status"] == "finished"
    assert "momentum" not in (Path(adam[0]["run_dir"]) / "config.toml").read_text()
    assert TrainConfig().resolved().momentum == 0.9
    # Earlier versions wrote momentum = 0.9 into every config.toml, Adam runs too: those still load.
    assert TrainConfig(optimizer="adam", momentum=0.9).resolved().momentum is None


@pytest.mark.parametrize("flag", ["--pgd-steps", "--lipschitz-samples"])
def test_robustness_counts_below_one_are_one_line(finished_run, capsys, flag):
    before = sorted(p.name for p in finished_run.iterdir())
    assert main(["robustness", str(finished_run), flag, "0"]) == 2
    assert f"{flag} must be >= 1, got 0" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in finished_run.iterdir()) == before


def test_train_help_shows_the_real_defaults(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "None" not in text and "[256, 256]" not in text and "(default: True)" not in text
    for shown in (
        "hidden widths of the MLP (default: 256 256)",
        "(default: 0.9 with sgd)",
        "passes of the inference schedule (default: 1, or the number in an alias such as fw3)",
        "(default: on)",
        "(default: 10.0)",
    ):
        assert shown in text


# -- settings that no machine can carry out ----------------------------------------------------------

BENCH = ["bench", "--model", "mlp:4-4-2", "--repeats", "1", "--warmup", "0"]


@pytest.mark.parametrize(
    "args, message",
    [
        ([*BENCH, "--alpha", "2"], "alpha must be a number in [0, 1], got 2.0"),
        ([*BENCH, "--beta", "0"], "beta must be a finite number > 0, got 0.0"),
        ([*BENCH, "--device", "tpu"], "unknown device 'tpu'; choose cpu or cuda[:i]"),
        (["train", "--dist-timeout", "inf"], "--dist-timeout must be a finite number of seconds > 0, got inf"),
        (["train", "--dist-timeout", "nan"], "--dist-timeout must be a finite number of seconds > 0, got nan"),
        (["train", "--dist-timeout", "-1"], "--dist-timeout must be a finite number of seconds > 0, got -1"),
        (["train", "--dist-timeout", "0"], "--dist-timeout must be a finite number of seconds > 0, got 0"),
        # beyond the 128 TiB address space of a 64-bit process: refused by any allocator
        (
            ["train", "--hidden", str(10**12)],
            "asks for more than this machine has (--hidden 1000000000000, --batch-size 64)",
        ),
        (
            ["train", "--pad-to", str(10**6)],
            "asks for more than this machine has (--hidden 16, --batch-size 64, --pad-to 1000000)",
        ),
        ([*BENCH, "--batch-size", str(10**14)], "(--model mlp:4-4-2, --batch-size 100000000000000)"),
    ],
)
def test_settings_no_machine_can_carry_out_are_one_line_before_anything_is_written(tmp_path, capsys, args, message):
    extra = ["--out", str(tmp_path / "runs"), *TINY] if args[0] == "train" else []
    assert main([args[0], *extra, *args[1:]]) == 2  # the setting under test comes last and wins
    assert message in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_an_unavailable_device_is_one_line(tmp_path, capsys):
    assert main(["train", "--device", "mps", "--out", str(tmp_path / "runs"), *TINY]) == 2
    assert "device 'mps' was asked for but MPS" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


# -- settings that used to pass silently ------------------------------------------------------------


def test_a_long_unicode_name_is_kept_and_never_starts_a_directory_with_a_dash(tmp_path):
    name = "ü" * 100
    run_dir = train_run(tmp_path, "--name", name)
    assert run_dir.name == f"{name}-dpT-a0.5-b0.1-seed0"
    dashed = train_run(tmp_path / "dashed", "--name=--x")
    assert dashed.name == "x-dpT-a0.5-b0.1-seed0"


def test_an_out_that_cannot_be_created_leaves_no_directories_behind(tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / ("x" * 300)  # a component longer than file systems allow
    assert main(["train", "--out", str(out), *TINY]) == 2
    assert "cannot create a run directory in" in one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_an_experiment_file_with_the_same_run_twice_is_refused(tmp_path, capsys):
    experiment = tmp_path / "twice.toml"
    experiment.write_text('description = "x"\nhidden = [16]\n[[runs]]\nrule = "bp"\n[[runs]]\nrule = "bp"\n')
    assert main(["experiment", str(experiment), "--out", str(tmp_path / "runs")]) == 2
    assert "[[runs]] 1 and 2 are the same setting" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


def test_a_study_with_a_negative_test_limit_is_refused_before_any_training(tmp_path, capsys):
    args = ["experiment", "robustness-mlp", "--dataset", "digits", "--rules", "bp", "--epochs", "1"]
    assert main([*args, "--test-limit", "-1", "--out", str(tmp_path / "studies")]) == 2
    assert "study test_limit must be an integer >= 0, got -1" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "studies").exists()


def test_numpy_and_python_generators_are_seeded_from_the_run_seed(tmp_path):
    from dualprop.training.trainer import Run

    draws = []
    for _ in range(2):
        np.random.seed(12345 + len(draws))  # whatever state the caller left behind
        random.seed(len(draws))
        Run(TrainConfig(hidden=[4], seeds=[7], out=str(tmp_path)).resolved(), TrainingObserver())
        draws.append((np.random.random(), random.random()))
    assert draws[0] == draws[1]
    np.random.seed([7, 0])
    random.seed(7)
    assert draws[0] == (np.random.random(), random.random())
