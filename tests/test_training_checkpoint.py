"""Atomic checkpoints, the safe loader, RNG state round trip, run directories and metrics.csv."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from dualprop.training.checkpoint import (
    CheckpointError,
    atomic_save,
    load_checkpoint,
    model_state,
    rng_state,
    set_rng_state,
)
from dualprop.training.rundir import METRIC_COLUMNS, MetricsLog, create_run_directory, read_metrics


def test_atomic_save_round_trips_through_the_safe_loader(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    path = tmp_path / "ckpt.pt"
    atomic_save(
        {
            "learner": {"model.weight": model.weight.detach()},
            "optimizer": optimizer.state_dict(),
            "epoch": 4,
            "rng": rng_state(),
        },
        path,
    )
    loaded = load_checkpoint(path)
    assert torch.equal(model_state(loaded)["weight"], model.weight.detach())
    assert loaded["epoch"] == 4
    momentum = loaded["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, optimizer.state[model.weight]["momentum_buffer"])
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"learner": {"w": torch.zeros(2)}, "epoch": 1}, path)
    # lambdas cannot be pickled: PicklingError from Python 3.12 on, AttributeError before
    with pytest.raises((pickle.PicklingError, AttributeError), match="pickle"):
        atomic_save({"learner": {"w": torch.ones(2)}, "epoch": lambda: 2}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


class _Payload:
    def __reduce__(self):
        return (print, ("executed",))


def test_loader_refuses_objects_that_are_not_plain_data(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"learner": _Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pt cannot be read"):
        load_checkpoint(path)
    (tmp_path / "garbage.pt").write_bytes(pickle.dumps([1, 2], protocol=2)[:3])
    with pytest.raises(CheckpointError, match="garbage.pt cannot be read"):
        load_checkpoint(tmp_path / "garbage.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_restores_torch_numpy_and_python(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    atomic_save({"learner": {}, "rng": rng_state()}, tmp_path / "r.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_run_directory_is_never_reused(tmp_path):
    first = create_run_directory(tmp_path, "digits run")
    (first / "marker").write_text("keep")
    second = create_run_directory(tmp_path, "digits run")
    third = create_run_directory(tmp_path, "digits run")
    assert [first.name, second.name, third.name] == ["digits_run", "digits_run-2", "digits_run-3"]
    assert (first / "marker").read_text() == "keep"
    assert not any(second.iterdir())


def test_metrics_are_cut_back_to_the_checkpoint_epoch(tmp_path):
    log = MetricsLog(tmp_path)
    log.start()
    for epoch in (1, 2, 2, 3):  # a duplicate row and a row past the checkpoint
        log.append({"epoch": epoch, "train_loss": 1.0 / epoch})
    with open(log.path, "a") as file:
        file.write("4,40,0.2")  # torn last line
    log.truncate_to(2)
    rows = read_metrics(tmp_path)
    assert [row["epoch"] for row in rows] == [1.0, 2.0]
    assert rows[1]["train_loss"] == pytest.approx(0.5)
    assert log.path.read_text().splitlines()[0] == ",".join(METRIC_COLUMNS)
    with pytest.raises(ValueError, match="lacks the rows of epochs \\[3\\]"):
        log.truncate_to(3)


def test_a_checkpoint_of_the_earlier_model_layout_reads_as_learner_state(tmp_path):
    path = tmp_path / "old.pt"
    weight, feedback = torch.ones(2, 3), torch.zeros(2, 3)
    atomic_save({"model": {"0.weight": weight}, "feedback": [feedback], "epoch": 2}, path)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 2 and "model" not in loaded
    assert torch.equal(loaded["learner"]["model.0.weight"], weight)
    assert torch.equal(loaded["learner"]["feedback_weights.0"], feedback)
    assert torch.equal(model_state(loaded)["0.weight"], weight)
