"""Signals: an interrupt at any moment ends the command with one line and 128 + the signal's number, never
as another error, never with a torn file; the workers of a parallel experiment die with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from faults_support import SOURCE, TINY, one_error_line

from dualprop.cli import main
from dualprop.graph import _Tracer
from dualprop.training.checkpoint import load_checkpoint
from dualprop.training.rundir import read_metrics, read_summary


def start_cli(*args: str) -> subprocess.Popen:
    """``dualprop ARGS`` in a process group of its own (as a shell starts a command)."""
    env = {**os.environ, "PYTHONPATH": str(SOURCE), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "dualprop", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_while_torch_is_imported_is_one_line(tmp_path, signum):
    process = start_cli("train", "--out", str(tmp_path), *TINY)
    maps = Path(f"/proc/{process.pid}/maps")
    while process.poll() is None and "libtorch" not in maps.read_text():
        time.sleep(0.005)
    process.send_signal(signum)  # torch is being imported (that takes seconds); nothing is trained yet
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum
    assert one_error_line(err) == f"dualprop: error: interrupted ({signal.Signals(signum).name})"
    assert "Traceback" not in err


def test_an_interrupt_turned_into_another_error_by_a_library_still_ends_as_the_interrupt(tmp_path, capsys, monkeypatch):
    def trace_interrupted_inside_an_import(self, root, concrete_args=None):
        # What an interrupt inside torch._dynamo's import looks like from outside: the KeyboardInterrupt is
        # swallowed there and a half-initialised module raises AttributeError later, inside capture.
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass
        raise AttributeError("module 'torch._dynamo' has no attribute 'guards'")

    monkeypatch.setattr(_Tracer, "trace", trace_interrupted_inside_an_import)
    assert main(["train", "--out", str(tmp_path / "runs"), *TINY]) == 130
    assert one_error_line(capsys.readouterr().err) == "dualprop: error: interrupted (SIGINT)"
    assert not (tmp_path / "runs").exists()  # the network is built before any file is written


def test_an_interrupt_during_a_checkpoint_write_finishes_the_write_then_exits_130(tmp_path, capsys, monkeypatch):
    save = torch.save

    def save_interrupted_midway(payload, file):
        if "optimizer" in payload:  # checkpoint-last.pt
            file.write(b"")  # the write has begun
            signal.raise_signal(signal.SIGINT)
        save(payload, file)

    monkeypatch.setattr(torch, "save", save_interrupted_midway)
    out = tmp_path / "runs"
    assert main(["train", "--out", str(out), "--epochs", "2", "--warmup-epochs", "0", *TINY]) == 130
    assert one_error_line(capsys.readouterr().err) == "dualprop: error: interrupted (SIGINT)"
    (run_dir,) = out.iterdir()
    assert not list(run_dir.glob(".*.tmp"))
    assert load_checkpoint(run_dir / "checkpoint-last.pt")["epoch"] == 1  # whole, not torn
    assert read_summary(run_dir)["status"] == "running"
    monkeypatch.undo()
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert [row["epoch"] for row in read_metrics(run_dir)] == [1, 2]


# -- parallel experiments ----------------------------------------------------------------------------

EXPERIMENT = """description = "two rules, two seeds"
dataset = "digits"
model = "mlp"
hidden = [8]
batch_size = 32
epochs = {epochs}
warmup_epochs = 0
seeds = [0, 1]
baseline = false
tensorboard = false
[[runs]]
rule = "dpT"
[[runs]]
rule = "bp"
"""


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status is left to collect


def end_survivors(pids: list[int]) -> None:
    """SIGKILL those of ``pids`` still alive, so that a failing test leaves no process behind."""
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def kill_mid_experiment(experiment: Path, out: Path, signum: int, group: bool) -> list[int]:
    """Start ``experiment --jobs 2``, send ``signum`` to the parent (``group``: to its whole process group,
    as Ctrl-C does) while both workers train; return the processes the parent had started."""
    process = start_cli("experiment", str(experiment), "--jobs", "2", "--out", str(out), "--no-progress")
    deadline = time.monotonic() + 240  # spawned workers import torch: slow on a loaded machine
    while time.monotonic() < deadline and len(list(out.glob("*/checkpoint-last.pt"))) < 2:
        assert process.poll() is None, process.communicate()
        time.sleep(0.01)
    workers = children_of(process.pid)
    assert len(workers) >= 2  # two pool workers (and the resource tracker)
    if group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    try:
        _, err = process.communicate(timeout=60)  # surviving workers would hold the pipes open
    except subprocess.TimeoutExpired:
        end_survivors(workers)
        raise
    if signum == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:  # one line from the parent; the workers end silently
        assert process.returncode == 128 + signum
        assert one_error_line(err) == f"dualprop: error: interrupted ({signal.Signals(signum).name})"
        assert "Traceback" not in err
    return workers


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(
    "signum, group",
    [(signal.SIGKILL, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["kill", "term", "ctrl-c"],
)
def test_the_workers_of_a_parallel_experiment_die_with_their_parent_and_resume_is_exact(
    tmp_path, capsys, signum, group
):
    experiment = tmp_path / "experiment.toml"
    experiment.write_text(EXPERIMENT.format(epochs=20))
    out = tmp_path / "runs"
    workers = kill_mid_experiment(experiment, out, signum, group)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(map(alive, workers)):
        time.sleep(0.05)
    survivors = [pid for pid in workers if alive(pid)]
    end_survivors(survivors)
    assert not survivors
    if signum != signal.SIGKILL:
        return
    cut_short = out / "digits-mlp-bp-seed0"
    assert read_summary(cut_short)["status"] == "running"
    # The runs cut short continue from their checkpoints; each run has one directory and every epoch once.
    assert main(["experiment", str(experiment), "--resume", str(out), "--no-progress"]) == 0
    run_dirs = sorted(out.iterdir())
    assert len(run_dirs) == 4
    for run_dir in run_dirs:
        assert read_summary(run_dir)["status"] == "finished"
        assert [row["epoch"] for row in read_metrics(run_dir)] == list(range(1, 21))
    # Exact: a run that was cut short ends with the weights of the same run trained without a break.
    assert main(["experiment", str(experiment), "--only", "2", "--seeds", "0", "--out", str(tmp_path / "whole")]) == 0
    (whole,) = (tmp_path / "whole").iterdir()
    assert whole.name == cut_short.name
    resumed = load_checkpoint(cut_short / "checkpoint-last.pt")["learner"]
    for key, value in load_checkpoint(whole / "checkpoint-last.pt")["learner"].items():
        assert torch.equal(resumed[key], value), key


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_worker_ends_the_experiment_with_one_line_and_no_orphans(tmp_path):
    experiment = tmp_path / "experiment.toml"
    experiment.write_text(EXPERIMENT.format(epochs=20))
    out = tmp_path / "runs"
    process = start_cli("experiment", str(experiment), "--jobs", "2", "--out", str(out), "--no-progress")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(out.glob("*/checkpoint-last.pt"))) < 2:
        assert process.poll() is None, process.communicate()
        time.sleep(0.01)
    children = children_of(process.pid)
    pool = [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(pool) == 2
    os.kill(pool[0], signal.SIGKILL)  # as the out-of-memory killer does
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "a worker process of the experiment died" in one_error_line(err)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(map(alive, children)):
        time.sleep(0.05)
    survivors = [pid for pid in children if alive(pid)]
    end_survivors(survivors)
    assert not survivors
