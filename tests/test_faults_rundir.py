"""Faults around run directories: locks, resume against edited settings or other data, damaged run files,
report over runs, experiment and study directories. Each ends in one clear line and nothing is lost."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from faults_support import (
    as_killed,
    edit_config,
    killed_copy,
    one_error_line,
    run_cli,
    train_run,
)

from dualprop.cli import main
from dualprop.training import TrainConfig
from dualprop.training.checkpoint import atomic_save, load_checkpoint
from dualprop.training.rundir import read_metrics, read_summary
from dualprop.training.runlock import LOCK_FILE, run_directory_lock


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    return train_run(tmp_path_factory.mktemp("finished"), epochs=2)


@pytest.fixture
def killed_run(finished_run, tmp_path) -> Path:
    return killed_copy(finished_run, tmp_path)


# -- 1. one process per run directory -------------------------------------------------------------


@pytest.mark.slow
def test_a_second_process_on_a_locked_run_directory_exits_2_naming_the_holder(killed_run, capsys):
    rows = read_metrics(killed_run)
    with run_directory_lock(killed_run):
        assert main(["train", "--resume", str(killed_run)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"is in use by process {os.getpid()}" in line
        other = run_cli("train", "--resume", str(killed_run))  # another process sees the same lock
        assert other.returncode == 2
        assert f"is in use by process {os.getpid()}" in one_error_line(other.stderr)
    assert read_metrics(killed_run) == rows  # nothing was appended by the refused processes
    assert main(["train", "--resume", str(killed_run)]) == 0  # released on leaving the block
    assert [row["epoch"] for row in read_metrics(killed_run)] == [1, 2]


def test_a_lock_left_by_a_killed_process_is_stale_and_its_temporary_files_go(killed_run):
    (killed_run / LOCK_FILE).write_text("process 999999 on elsewhere\n")  # no live process holds it
    leftover = killed_run / ".summary.json.0123456789ab.tmp"
    leftover.write_text("{half")
    assert main(["train", "--resume", str(killed_run)]) == 0
    assert not leftover.exists()
    assert read_summary(killed_run)["status"] == "finished"


# -- 2. resume against an edited config.toml --------------------------------------------------------


@pytest.mark.parametrize(
    "old, new, key",
    [
        ("hidden = [16]", "hidden = [24]", "hidden"),
        ('rule = "dpT"', 'rule = "dp"', "rule"),
        ("alpha = 0.5", "alpha = 0.25", "alpha"),
        ('activation = "relu"', 'activation = "tanh"', "activation"),
    ],
)
def test_resume_refuses_changed_settings_naming_the_key(killed_run, capsys, old, new, key):
    edit_config(killed_run, old, new)
    assert main(["train", "--resume", str(killed_run)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"in {key} " in line and "may change" in line
    assert read_summary(killed_run)["status"] == "running"


def test_resume_may_lengthen_a_run_but_not_cut_it_below_its_checkpoint(finished_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    edit_config(run_dir, "epochs = 2", "epochs = 3")
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert [row["epoch"] for row in read_metrics(run_dir)] == [1, 2, 3]
    assert read_summary(run_dir)["epochs_completed"] == 3
    capsys.readouterr()
    as_killed(run_dir)
    edit_config(run_dir, "epochs = 3", "epochs = 1")
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert "fewer than the 3 epochs" in one_error_line(capsys.readouterr().err)


def test_a_checkpoint_without_saved_settings_that_does_not_fit_is_one_line(killed_run, capsys):
    checkpoint = killed_run / "checkpoint-last.pt"
    state = load_checkpoint(checkpoint)
    del state["config"]  # as written before the settings were kept with the checkpoint
    atomic_save(state, checkpoint)
    edit_config(killed_run, "hidden = [16]", "hidden = [24]")
    assert main(["train", "--resume", str(killed_run)]) == 2
    assert "does not fit the network" in one_error_line(capsys.readouterr().err)


def test_unreadable_config_and_metrics_files_are_named(tmp_path, finished_run, capsys):
    garbage = tmp_path / "settings.toml"
    garbage.write_bytes(b"\xd0\x00\xff binary")
    assert main(["train", "--config", str(garbage)]) == 2
    assert f"config file {garbage} is not valid TOML" in one_error_line(capsys.readouterr().err)
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "metrics.csv").write_text("epoch,train_loss\n1,not-a-number\n")
    assert main(["report", str(run_dir)]) == 2
    assert f"{run_dir / 'metrics.csv'} is not a dualprop metrics file" in one_error_line(capsys.readouterr().err)


def fake_run(root: Path, name: str, seed: int, status: str, test_acc: float | None) -> None:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(f'rule = "dpT"\nseeds = [{seed}]\n')
    (run_dir / "summary.json").write_text(
        json.dumps({"status": status, "seed": seed, "test_acc": test_acc, "best_val_acc": test_acc})
    )


def test_report_averages_finished_seeds_only_and_flags_a_repeated_seed(tmp_path, capsys):
    fake_run(tmp_path, "a", 0, "finished", 90.0)
    fake_run(tmp_path, "b", 1, "finished", 94.0)
    fake_run(tmp_path, "c", 1, "finished", 60.0)  # seed 1 again
    fake_run(tmp_path, "d", 2, "diverged", 10.0)  # tested on its best checkpoint, but diverged
    fake_run(tmp_path, "e", 3, "running", None)
    assert main(["report", str(tmp_path)]) == 0
    table, _, notes = capsys.readouterr().out.partition("\n\n")
    (row,) = table.strip().splitlines()[2:]
    # mean and sample std of 90 and 94: 92 ± sqrt(((90-92)^2 + (94-92)^2) / 1) = 92 ± 2.83
    assert "| 2 | 92.00 ± 2.83 | – | 92.00 ± 2.83 | – | 1/5 | 1/5 |" in row  # no metrics: no last val acc
    assert "seed 1 finished 2 times" in notes and str(tmp_path / "c") in notes


def test_report_keeps_runs_of_earlier_versions_with_their_setting(tmp_path, capsys):
    fake_run(tmp_path, "old", 0, "finished", 90.0)  # a config.toml without the newer settings
    fake_run(tmp_path, "new", 1, "finished", 94.0)
    with open(tmp_path / "new" / "config.toml", "a") as file:
        file.write("divergence_factor = 10.0\n")
    assert main(["report", str(tmp_path)]) == 0
    (row,) = capsys.readouterr().out.strip().splitlines()[2:]
    assert "| 2 | 92.00 ± 2.83 |" in row


def test_experiment_resume_finds_runs_written_by_earlier_versions(tmp_path):
    from dualprop.training.config import save_config
    from dualprop.training.experiments import existing_run

    config = TrainConfig(optimizer="adam", seeds=[3], baseline=False, out=str(tmp_path)).resolved()
    (tmp_path / "old").mkdir()
    save_config(config, tmp_path / "old" / "config.toml")
    text = (tmp_path / "old" / "config.toml").read_text()
    # As written before: momentum = 0.9 for Adam runs too, and no divergence_factor.
    text = text.replace("divergence_factor = 10.0\n", "") + "momentum = 0.9\n"
    (tmp_path / "old" / "config.toml").write_text(text)
    assert existing_run(tmp_path, config) == tmp_path / "old"
    assert existing_run(tmp_path, config.replace(lr=0.5)) is None


def test_a_study_directory_in_use_is_refused_naming_the_holder(tmp_path, capsys):
    from dualprop.analysis.study import StudyConfig, create_study

    directory = create_study(StudyConfig(dataset="digits", rules=["bp"], epochs=1), tmp_path)
    with run_directory_lock(directory):
        assert main(["experiment", "robustness-mlp", "--resume", str(directory), "--no-progress"]) == 2
    assert f"{directory} is in use by process {os.getpid()}" in one_error_line(capsys.readouterr().err)
    assert not list((directory / "runs").iterdir())  # nothing was trained


# -- the data a run was trained on ------------------------------------------------------------------


def save_npz(path: Path, shift: float) -> Path:
    rng = np.random.default_rng(0)
    x = rng.random((80, 6)).astype(np.float32) + shift
    np.savez(path, x_train=x[:64], y_train=np.arange(64) % 2, x_test=x[64:], y_test=np.arange(16) % 2)
    return path


def test_resume_refuses_a_data_file_replaced_by_other_data_naming_it(tmp_path, capsys):
    data = save_npz(tmp_path / "mine.npz", shift=0.0)
    original = data.read_bytes()
    run_dir = as_killed(train_run(tmp_path / "runs", "--dataset", str(data), epochs=2))
    recorded = json.loads((run_dir / "data.json").read_text())["files"]
    assert recorded == {
        "mine.npz": {"path": str(data), "size": len(original), "sha256": hashlib.sha256(original).hexdigest()}
    }
    save_npz(data, shift=1.0)  # the same shapes, other values
    assert data.stat().st_size == len(original)
    rows = read_metrics(run_dir)
    assert main(["train", "--resume", str(run_dir)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{data} differs from the file the run was trained on" in line
    assert read_metrics(run_dir) == rows and read_summary(run_dir)["status"] == "running"
    data.write_bytes(original)
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert read_summary(run_dir)["status"] == "finished"


def test_a_run_records_the_files_of_a_built_in_dataset(finished_run):
    (name,) = json.loads((finished_run / "data.json").read_text())["files"]
    assert name == "digits.csv.gz"  # scikit-learn's file that the digits are read from


def test_a_finished_run_whose_config_now_says_another_rule_is_refused(finished_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    summary = read_summary(run_dir)
    edit_config(run_dir, 'rule = "dpT"', 'rule = "dp"')
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert "differs from the checkpoint's settings in rule 'dpT' -> 'dp'" in one_error_line(capsys.readouterr().err)
    assert read_summary(run_dir) == summary


# -- damaged run files -----------------------------------------------------------------------------


def edit_checkpoint(run_dir: Path, change) -> Path:
    path = run_dir / "checkpoint-last.pt"
    state = load_checkpoint(path)
    change(state)
    atomic_save(state, path)
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda state: state.pop("optimizer"), "its 'optimizer' entry should be a dict but has none"),
        (lambda state: state.pop("rng"), "its 'rng' entry should be a dict but has none"),
        (lambda state: state.update(epoch="3"), "its 'epoch' entry should be a int but has a str"),
        (lambda state: state["rng"].pop("numpy"), "its random-number states lack 'numpy'"),
        (lambda state: state["rng"].update(torch=7), "cannot be resumed: not a saved random-number state"),
        (lambda state: state.update(optimizer={"state": {}, "param_groups": []}), "cannot be resumed: "),
    ],
    ids=["no-optimizer", "no-rng", "string-epoch", "no-numpy-rng", "bad-torch-rng", "other-optimizer"],
)
def test_a_damaged_checkpoint_is_one_line_naming_it(killed_run, capsys, change, message):
    path = edit_checkpoint(killed_run, change)
    rows = read_metrics(killed_run)
    assert main(["train", "--resume", str(killed_run)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"checkpoint {path} cannot be resumed" in line and message in line
    assert read_metrics(killed_run) == rows


SUMMARY_DAMAGES = [
    (lambda run: (run / "summary.json").write_text("[1, 2]"), "summary.json holds a JSON list"),
    (lambda run: json_edit(run / "summary.json", test_acc="high"), "summary.json: test_acc must be a number"),
    (lambda run: json_edit(run / "summary.json", status=3), "summary.json: status must be a string"),
]
CONFIG_TABLE = (lambda run: append(run / "config.toml", "[table]\nx = 1\n"), "config.toml")


@pytest.mark.parametrize(
    "command, damage, message",
    [
        *[(command, *damage) for command in (["report"], ["train", "--resume"]) for damage in SUMMARY_DAMAGES],
        *[(command, *CONFIG_TABLE) for command in (["report"], ["train", "--resume"], ["robustness"], ["diagnose"])],
    ],
)
def test_damaged_run_files_are_one_line_naming_them(finished_run, tmp_path, capsys, command, damage, message):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    damage(run_dir)
    assert main([*command, str(run_dir)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(run_dir) in line and message in line


def json_edit(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def append(path: Path, text: str) -> None:
    with open(path, "a") as file:
        file.write(text)


@pytest.mark.parametrize("command", [["diagnose", "--batches", "1"], ["robustness", "--limit", "4"]])
def test_a_checkpoint_of_another_network_is_one_line_naming_it(finished_run, tmp_path, capsys, command):
    other = train_run(tmp_path / "other", "--hidden", "8")
    before = sorted(finished_run.iterdir())
    checkpoint = other / "checkpoint-best.pt"
    assert main([*command, str(finished_run), "--checkpoint", str(checkpoint)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"checkpoint {checkpoint} does not fit the network of {finished_run / 'config.toml'}" in line
    assert "size mismatch" in line
    assert sorted(finished_run.iterdir()) == before


def test_diagnose_refuses_a_flag_that_would_change_the_network_of_a_run(finished_run, capsys):
    assert main(["diagnose", str(finished_run), "--hidden", "32"]) == 2
    assert "--hidden would change the run's network" in one_error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_a_study_resumes_from_another_working_directory(tmp_path, capsys, monkeypatch):
    for place in ("a", "b"):
        (tmp_path / place).mkdir()
    monkeypatch.chdir(tmp_path / "a")
    settings = ["--dataset", "digits", "--rules", "bp", "--hidden", "8", "--epochs", "1", "--limit-batches", "1"]
    assert main(["experiment", "robustness-mlp", *settings, "--test-limit", "8", "--out", "studies"]) == 0
    (study,) = (tmp_path / "a" / "studies").iterdir()
    (study / "results.json").unlink()  # as if stopped after training, before the measurements were recorded
    monkeypatch.chdir(tmp_path / "b")
    assert main(["experiment", "robustness-mlp", "--resume", f"../a/studies/{study.name}", "--no-progress"]) == 0
    (record,) = json.loads((study / "results.json").read_text()).values()
    assert record["status"] == "finished" and record["robustness"]["test_samples"] == 8
