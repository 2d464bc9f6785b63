"""The training loop in-process: resume equals an uninterrupted run, divergence stops cleanly."""

from __future__ import annotations

import json

import pytest
import torch

from dualprop.data import load_dataset
from dualprop.learner import Learner, StepResult
from dualprop.models import mlp
from dualprop.training import TrainConfig, TrainingObserver, resume_run, start_run
from dualprop.training.checkpoint import load_checkpoint, model_state
from dualprop.training.rundir import read_metrics


def tiny(tmp_path, **changes) -> TrainConfig:
    settings = dict(
        hidden=[32],
        epochs=4,
        batch_size=128,
        lr=0.05,
        warmup_epochs=1,
        out=str(tmp_path),
        baseline=False,
        tensorboard=False,
        seeds=[5],
    )
    settings.update(changes)
    return TrainConfig(**settings).resolved()


class Interrupt(Exception):
    pass


class InterruptAt(TrainingObserver):
    """Stops the process-like run in the middle of ``epoch`` (after that epoch's first step)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def step_finished(self, epoch, step, loss):
        if epoch == self.epoch and step == 2:
            raise Interrupt


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    config = tiny(tmp_path / "a")
    reference = start_run(config, 5)
    with pytest.raises(Interrupt):
        start_run(tiny(tmp_path / "b"), 5, InterruptAt(epoch=3))
    (run_dir,) = (tmp_path / "b").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"
    assert len(read_metrics(run_dir)) == 2
    resumed = resume_run(run_dir)
    assert resumed["status"] == "finished" and resumed["epochs_completed"] == 4
    rows, expected = read_metrics(run_dir), read_metrics(reference["run_dir"])
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    for row, want in zip(rows, expected):
        assert row["train_loss"] == pytest.approx(want["train_loss"], rel=1e-4)
        assert row["val_acc"] == pytest.approx(want["val_acc"])
    assert resumed["test_acc"] == pytest.approx(reference["test_acc"])
    assert resume_run(run_dir)["status"] == "finished"  # a finished run is left as it is


def test_test_accuracy_is_that_of_the_best_checkpoint(tmp_path):
    summary = start_run(tiny(tmp_path, epochs=2), 5)
    best = load_checkpoint(f"{summary['run_dir']}/checkpoint-best.pt")
    assert best["epoch"] == summary["best_epoch"]
    data = load_dataset("digits", validation_percent=10, seed=5, flatten=True)
    model = mlp([64, 32, 10])
    model.load_state_dict(model_state(best))
    x, y = data.test.tensors
    with torch.no_grad():
        accuracy = 100.0 * int((model(x).argmax(1) == y).sum()) / len(y)
    assert summary["test_acc"] == pytest.approx(accuracy, abs=1e-6)
    rows = read_metrics(summary["run_dir"])
    assert summary["best_val_acc"] == max(r["val_acc"] for r in rows)


def test_non_finite_states_stop_the_run_and_keep_the_best_checkpoint(tmp_path, monkeypatch):
    original = Learner.step
    calls = {"n": 0}
    steps_per_epoch = 11  # ceil(1293 / 128) training batches of digits with a 10 % validation split

    def failing_step(self, x, y):
        calls["n"] += 1
        result = original(self, x, y)
        if calls["n"] == 2 * steps_per_epoch + 3:
            return StepResult(result.loss_tensor, result.logits, torch.tensor(False))
        return result

    monkeypatch.setattr(Learner, "step", failing_step)
    summary = start_run(tiny(tmp_path), 5)
    assert summary["status"] == "diverged"
    assert summary["diverged_at"] == {
        "epoch": 3,
        "step": 2 * steps_per_epoch + 3,
        "step_in_epoch": 3,
        "reason": "non-finite dyadic states",
    }
    run_dir = summary["run_dir"]
    assert json.loads(open(f"{run_dir}/summary.json").read()) == summary
    assert load_checkpoint(f"{run_dir}/checkpoint-last.pt")["epoch"] == 2
    assert load_checkpoint(f"{run_dir}/checkpoint-best.pt")["epoch"] in (1, 2)
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2]
    assert summary["test_acc"] is not None and summary["epochs_completed"] == 2


def test_two_runs_with_one_name_get_two_directories(tmp_path):
    first = start_run(tiny(tmp_path, epochs=1, limit_batches=1), 5)
    second = start_run(tiny(tmp_path, epochs=1, limit_batches=1), 5)
    assert first["run_dir"] != second["run_dir"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "digits-mlp-dpT-a0.5-b0.1-seed5",
        "digits-mlp-dpT-a0.5-b0.1-seed5-2",
    ]


def test_kolen_pollack_feedback_weights_are_trained_and_resumed(tmp_path):
    settings = dict(rule="dpT", alpha=0.0, schedule="backward", feedback="kolen-pollack", weight_decay=1e-3)
    reference = start_run(tiny(tmp_path / "a", **settings), 5)
    with pytest.raises(Interrupt):
        start_run(tiny(tmp_path / "b", **settings), 5, InterruptAt(epoch=3))
    (run_dir,) = (tmp_path / "b").iterdir()
    resumed = resume_run(run_dir)
    assert resumed["status"] == reference["status"] == "finished"
    # the feedback weights are restored on resume: the resumed run retraces the uninterrupted one
    assert resumed["test_acc"] == pytest.approx(reference["test_acc"])
    finished = load_checkpoint(f"{reference['run_dir']}/checkpoint-last.pt")
    hidden = finished["learner"]["model.2.weight"]  # the output layer's forward weights (block 2)
    feedback = finished["learner"]["kolen_pollack.weights.0"]
    assert feedback.shape == hidden.shape and not torch.equal(feedback, hidden)
    assert reference["test_acc"] > 80.0


@pytest.mark.parametrize("reason", ["non-finite loss", "non-finite weights"])
def test_a_divergence_between_two_reads_is_reported_at_its_own_step(tmp_path, monkeypatch, reason):
    from dualprop.training import trainer

    monkeypatch.setattr(trainer, "READ_EVERY", 4)  # steps 1–4 are read together, then 5–8: step 6 lies inside
    original, calls, losses = Learner.step, {"n": 0}, []
    observer = TrainingObserver()
    observer.step_finished = lambda epoch, step, loss: losses.append((epoch, step, loss))

    def failing_step(self, x, y):
        calls["n"] += 1
        result = original(self, x, y)
        if calls["n"] == 6 and reason == "non-finite loss":
            return StepResult(result.loss_tensor * float("nan"), result.logits, result.finite_tensor)
        if calls["n"] == 6:
            next(self.model.parameters()).grad.fill_(float("nan"))  # the optimizer then writes NaN weights
        return result

    monkeypatch.setattr(Learner, "step", failing_step)
    summary = start_run(tiny(tmp_path, epochs=1), 5, observer)
    assert summary["diverged_at"] == {"epoch": 1, "step": 6, "step_in_epoch": 6, "reason": reason}
    assert summary["steps"] == 5  # the diverged step does not count as taken
    assert [step for _, step, _ in losses] == [1, 2, 3, 4, 5]  # every step before it reported, in order
    assert all(loss == loss and loss > 0 for _, _, loss in losses)


def test_an_epoch_reads_the_device_once_per_read_window_besides_the_label_check(tmp_path, monkeypatch):
    from dualprop.training import trainer

    reads, counting = {}, {"on": False}

    def counting_read(name):
        original = getattr(torch.Tensor, name)

        def counted(self, *args):
            if counting["on"]:
                reads[name] = reads.get(name, 0) + 1
            return original(self, *args)

        return counted

    for name in ("tolist", "item", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, counting_read(name))
    train_epoch = trainer.Run._train_epoch

    def counted_epoch(self, epoch):
        counting["on"] = True
        try:
            return train_epoch(self, epoch)
        finally:
            counting["on"] = False

    monkeypatch.setattr(trainer.Run, "_train_epoch", counted_epoch)
    monkeypatch.setattr(trainer, "READ_EVERY", 4)
    summary = start_run(tiny(tmp_path, epochs=1, limit_batches=10), 5)
    assert summary["status"] == "finished" and summary["steps"] == 10
    # the step results of 10 steps in windows of 4 (steps 1–4, 5–8, and 9–10 at the epoch's end), and one
    # check per step that the labels lie in the class range
    assert reads == {"tolist": 3, "__bool__": 10}
