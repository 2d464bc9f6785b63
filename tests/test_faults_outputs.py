"""Output that cannot be written: unwritable places, a full disk, a closed pipe, file permissions; nothing
is left half-written."""

from __future__ import annotations

import errno
import io
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from faults_support import (
    SOURCE,
    TINY,
    one_error_line,
    train_run,
)

from dualprop.atomic import atomic_write, atomic_write_new
from dualprop.cli import main
from dualprop.training.rundir import read_summary

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


@pytest.mark.slow
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


class FillingDisk(io.RawIOBase):
    """A file on a disk that fills up after ``room`` bytes: then ``write`` raises ENOSPC."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.file.write(data)


def test_a_disk_filling_up_inside_torch_save_is_one_line_naming_the_checkpoint(tmp_path, capsys, monkeypatch):
    save = torch.save
    # torch.save reports the failed write as a RuntimeError ("unexpected pos"); the OSError behind it counts.
    monkeypatch.setattr(torch, "save", lambda payload, file: save(payload, FillingDisk(file, 100)))
    assert main(["train", "--out", str(tmp_path), *TINY]) == 2
    line = one_error_line(capsys.readouterr().err)
    (run_dir,) = tmp_path.iterdir()
    assert line == f"dualprop: error: file system error: No space left on device ({run_dir / 'checkpoint-best.pt'})"
    assert not list(run_dir.glob(".*.tmp")) and not list(run_dir.glob("checkpoint-*"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    return train_run(tmp_path_factory.mktemp("finished"))


@pytest.mark.parametrize(
    "command, output",
    [
        (["report", "{run}", "--output", "{tmp}/table.md"], "{tmp}/table.md"),
        (
            [
                "bench",
                "--model",
                "mlp:4-4-2",
                "--variants",
                "bp",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--output",
                "{tmp}/b.json",
            ],
            "{tmp}/b.json",
        ),
        (
            ["robustness", "{run}", "--limit", "8", "--eps", "0.1", "--pgd-steps", "1", "--lipschitz-samples", "4"],
            "{run}/robustness.json",
        ),
    ],
)
def test_an_output_that_cannot_be_written_leaves_no_file(finished_run, tmp_path, capsys, monkeypatch, command, output):
    def no_space(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("dualprop.atomic.os.fsync", no_space)
    before = sorted(finished_run.iterdir())
    command = [arg.format(run=finished_run, tmp=tmp_path) for arg in command]
    assert main(command) == 2
    output = Path(output.format(run=finished_run, tmp=tmp_path))
    assert one_error_line(capsys.readouterr().err).endswith(f"No space left on device ({output})")
    assert not output.exists()
    assert sorted(finished_run.iterdir()) == before and not list(tmp_path.iterdir())


def test_a_new_file_never_replaces_one_and_takes_the_next_free_name(tmp_path):
    mine = tmp_path / "table.md"
    mine.write_text("mine\n")
    with pytest.raises(FileExistsError):
        atomic_write(mine, lambda file: file.write("theirs\n"), text=True, replace=False)
    assert mine.read_text() == "mine\n"
    written = [atomic_write_new(tmp_path, "table", ".md", lambda file: file.write("new\n"), text=True) for _ in "ab"]
    assert [path.name for path in written] == ["table-2.md", "table-3.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table-2.md", "table-3.md", "table.md"]  # no temporaries


def test_a_signal_during_a_write_is_delivered_when_the_file_is_whole(tmp_path):
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:

        def write(file) -> None:
            file.write(b"first half, ")
            signal.raise_signal(signal.SIGTERM)
            assert received == []  # held while the file is being written
            file.write(b"second half")

        atomic_write(tmp_path / "out.bin", write)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == [signal.SIGTERM]
    assert (tmp_path / "out.bin").read_bytes() == b"first half, second half"
