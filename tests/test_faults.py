"""Faults a user can cause, end to end: each ends in one clear line (or a ValueError saying what to change)
and nothing the user owns is lost or half-written. Tiny runs: digits, a 16-unit MLP, two batches."""

from __future__ import annotations

import errno
import gzip
import json
import os
import pickle
import re
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from torch import nn

import dualprop
from dualprop.cli import main
from dualprop.data import DataError, load_dataset
from dualprop.inputs import check_batch
from dualprop.losses import batch_loss, output_gradient
from dualprop.training import TrainConfig, train
from dualprop.training.checkpoint import atomic_save, load_checkpoint
from dualprop.training.rundir import read_metrics, read_summary
from dualprop.training.runlock import LOCK_FILE, run_directory_lock

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


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    return train_run(tmp_path_factory.mktemp("finished"), epochs=2)


@pytest.fixture
def killed_run(finished_run, tmp_path) -> Path:
    copy = tmp_path / finished_run.name
    shutil.copytree(finished_run, copy)
    return as_killed(copy)


# -- 1. one process per run directory -------------------------------------------------------------


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


# -- 4. output that cannot be written --------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--out", "/proc/dualprop-runs"], "cannot write in /proc"),
        (["train", "--out", "{file}"], "is not a directory"),
        (["train", "--out", "{file}/runs"], "is not a directory"),
        (["train", "--name", "n" * 300, "--out", "{tmp}/runs"], "choose a shorter name"),
        (["report", "{tmp}", "--output", "{tmp}/missing/table.md"], "does not exist"),
        (["bench", "--model", "mlp:4-4-2", "--output", "{tmp}/missing/bench.json"], "does not exist"),
        (["diagnose", "--output-dir", "{file}/diagnose"], "is not a directory"),
    ],
)
def test_unwritable_outputs_are_one_line_before_any_work(tmp_path, capsys, args, message):
    a_file = tmp_path / "a-file"
    a_file.write_text("mine\n")
    args = [arg.format(file=a_file, tmp=tmp_path) for arg in args]
    extra = TINY if args[0] == "train" else []
    assert main([*args, *extra]) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert a_file.read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing was created


def test_a_full_disk_during_training_is_one_line_and_leaves_no_temporary_file(tmp_path, capsys, monkeypatch):
    def no_space(payload, file):
        file.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    assert main(["train", "--out", str(tmp_path), *TINY]) == 2
    assert "No space left on device" in one_error_line(capsys.readouterr().err)
    (run_dir,) = tmp_path.iterdir()
    assert not list(run_dir.glob(".*.tmp")) and not (run_dir / "checkpoint-last.pt").exists()
    assert read_summary(run_dir)["status"] == "running"  # resumable once there is space again
    monkeypatch.undo()
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert read_summary(run_dir)["status"] == "finished"


def test_a_closed_pipe_lets_the_run_finish_quietly(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SOURCE), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "dualprop", "train", "--out", str(tmp_path), *TINY, "--epochs", "2", "--baseline"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    first = process.stdout.readline()  # like `dualprop train 2>&1 | head -1`
    process.stdout.close()
    assert process.wait(timeout=120) == 0
    assert b"seed 0" in first
    summaries = [read_summary(run_dir) for run_dir in sorted(tmp_path.iterdir())]
    assert [s["status"] for s in summaries] == ["finished", "finished"]


# -- 5. data checked when it is read ---------------------------------------------------------------


def idx_file(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def mnist_files(directory: Path, test_size: int = 28, test_label: int = 3) -> None:
    directory.mkdir(parents=True)
    idx_file(directory / "train-images-idx3-ubyte.gz", np.zeros((8, 28, 28)))
    idx_file(directory / "train-labels-idx1-ubyte.gz", np.arange(8) % 10)
    idx_file(directory / "t10k-images-idx3-ubyte.gz", np.zeros((4, test_size, test_size)))
    idx_file(directory / "t10k-labels-idx1-ubyte.gz", np.full(4, test_label))


@pytest.mark.parametrize(
    "test_size, test_label, message",
    [
        (32, 3, "test images are 1 x 32 x 32 (C x H x W), expected 1 x 28 x 28"),
        (28, 12, "test labels must lie in 0..9, found 12..12"),
    ],
)
def test_a_test_split_that_does_not_fit_is_found_when_read(tmp_path, capsys, test_size, test_label, message):
    mnist_files(tmp_path / "data" / "mnist", test_size, test_label)
    args = ["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "runs")]
    assert main([*args, *TINY]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "t10k-images-idx3-ubyte.gz" in line and message in line
    assert not (tmp_path / "runs").exists()


def cifar_batch(labels: list, data: np.ndarray | None = None) -> dict:
    if data is None:
        data = np.zeros((len(labels), 3072), np.uint8)
    return {b"data": data, b"labels": labels, b"batch_label": b"training batch"}


def cifar10_files(root: Path, test_labels: list, protocol: int = 4) -> Path:
    directory = root / "cifar10" / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        content = cifar_batch(test_labels if name == "test_batch" else [1, 2])
        (directory / name).write_bytes(pickle.dumps(content, protocol=protocol))
    return directory


def test_a_protocol_2_cifar_pickle_is_data(tmp_path):
    directory = cifar10_files(tmp_path, [4, 5], protocol=2)
    assert b"_codecs" in (directory / "test_batch").read_bytes()  # how protocol 2 writes bytes
    splits = load_dataset("cifar10", root=tmp_path, validation_percent=0)
    assert splits.test.tensors[1].tolist() == [4, 5] and len(splits.train) == 10


@pytest.mark.parametrize(
    "test_labels, message", [([10, 1], "labels must lie in 0..9"), ([1.5, 2.0], "expected integer class labels")]
)
def test_cifar_labels_are_refused_not_cast(tmp_path, test_labels, message):
    cifar10_files(tmp_path, test_labels)
    with pytest.raises(DataError, match=message) as error:
        load_dataset("cifar10", root=tmp_path)
    assert "test_batch" in str(error.value)


@pytest.mark.parametrize(
    "x, y, message",
    [
        (np.full((32, 32, 3, 2), 300.0), np.array([[1], [2]]), "integers in 0..255, found float64 values 300.0..300.0"),
        (np.zeros((32, 32, 3, 2)), np.array([[1.5], [2.0]]), "expected integer class labels"),
    ],
)
def test_svhn_values_are_refused_not_cast(tmp_path, x, y, message):
    directory = tmp_path / "svhn"
    directory.mkdir()
    for name in ("train_32x32.mat", "test_32x32.mat"):
        scipy.io.savemat(directory / name, {"X": x, "y": y})
    with pytest.raises(DataError, match=message) as error:
        load_dataset("svhn", root=tmp_path)
    assert "train_32x32.mat" in str(error.value)


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


# -- 7. library ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x, y, message",
    [
        (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), "the batch is empty"),
        (torch.zeros(3, 4, dtype=torch.long), None, "not floating point: convert them with x.to(torch.float32)"),
        (torch.zeros(3, 4, dtype=torch.float64), None, "convert them with x.to(torch.float32)"),
        (torch.zeros(3, 4, device="meta"), None, "inputs are on meta but the network is on cpu"),
        (torch.zeros(3, 4), torch.zeros(2, dtype=torch.long), "there are 2 targets for 3 samples"),
        ([[0.0] * 4] * 3, None, "inputs must be a torch.Tensor"),
    ],
)
def test_check_batch_says_what_to_change(x, y, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_batch(nn.Linear(4, 2), x, y)


def test_check_batch_accepts_a_fitting_batch_and_mixed_precision():
    model = nn.Linear(4, 2)
    check_batch(model, torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        check_batch(model, torch.zeros(3, 4, dtype=torch.bfloat16))


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_boolean_targets_are_refused(loss):
    logits = torch.zeros(3, 2)
    for function in (batch_loss, output_gradient):
        with pytest.raises(ValueError, match=r"targets are boolean: give class indices as integers \(y.long\(\)\)"):
            function(loss, logits, torch.tensor([True, False, True]))


def test_float_labels_with_cross_entropy_are_refused_but_distributions_work():
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"convert them with y.long\(\)"):
        batch_loss("cross_entropy", logits, torch.tensor([0.0, 2.0]))
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    assert float(batch_loss("cross_entropy", logits, soft)) == pytest.approx(np.log(3))  # uniform softmax


# -- 8. small --------------------------------------------------------------------------------------


def test_run_files_get_the_permissions_of_config_toml(tmp_path):
    previous = os.umask(0o022)
    try:
        run_dir = train_run(tmp_path)
    finally:
        os.umask(previous)
    config_mode = stat.S_IMODE((run_dir / "config.toml").stat().st_mode)
    assert config_mode == 0o644
    for name in ("summary.json", "metrics.csv", "checkpoint-last.pt", "checkpoint-best.pt"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == config_mode, name


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
