import csv
import math

import pytest
import torch
from torch import nn

from dualprop import Learner
from dualprop.analysis import GradientAngleLog
from dualprop.analysis.gradient_angles import cosine_angle, epoch_matrix, gradient_angles
from dualprop.training import TrainConfig, train
from dualprop.training.rundir import DiagnosticsLog, read_diagnostics


def make_batch(seed: int = 0) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(8, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    return model, x, y


def plain_backprop_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Backprop through a copy of the network written out by hand (independent of the library)."""
    w = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    h = torch.tanh(x @ w[0].T + w[1])
    h = torch.tanh(h @ w[2].T + w[3])
    z = h @ w[4].T + w[5]
    loss = -torch.log_softmax(z, dim=1)[torch.arange(len(y)), y].mean()
    return list(torch.autograd.grad(loss, w))


def test_cosine_angle_hand_worked():
    cos, angle = cosine_angle(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert cos == pytest.approx(1 / math.sqrt(2))
    assert angle == pytest.approx(45.0)
    assert cosine_angle(torch.tensor([1.0, 2.0]), torch.tensor([-2.0, -4.0]))[1] == pytest.approx(180.0)
    assert all(math.isnan(v) for v in cosine_angle(torch.zeros(3), torch.ones(3)))


def test_bp_against_itself_is_zero_degrees():
    model, x, y = make_batch()
    angles = gradient_angles(Learner(model, rule="bp"), x, y)
    assert [a.layer for a in angles] == ["block 1", "block 2", "block 3"]
    for a in angles:
        assert a.cosine == pytest.approx(1.0, abs=1e-12)
        assert a.angle == pytest.approx(0.0, abs=1e-5)


def test_per_parameter_matches_hand_computed_angles():
    model, x, y = make_batch(1)
    learner = Learner(model, rule="dpT", alpha=0.5, beta=0.5, schedule="backward")
    per_param = gradient_angles(learner, x, y, per="parameter")
    assert [a.layer for a in per_param] == [name for name, _ in model.named_parameters()]
    # Independent: the rule's update read from .grad after a plain step, backprop from the hand-written net.
    for p in model.parameters():
        p.grad = None
    learner.step(x, y)
    updates = [p.grad.clone() for p in model.parameters()]
    reference = plain_backprop_grads(model, x, y)
    for angle, u, g in zip(per_param, updates, reference):
        expected = math.degrees(math.acos(min(1.0, float((u * g).sum() / (u.norm() * g.norm())))))
        assert angle.angle == pytest.approx(expected, abs=1e-6)
    block1 = gradient_angles(learner, x, y)[0]
    u = torch.cat([updates[0].flatten(), updates[1].flatten()])
    g = torch.cat([reference[0].flatten(), reference[1].flatten()])
    assert block1.cosine == pytest.approx(float(u @ g / (u.norm() * g.norm())), abs=1e-12)


def test_dp_top_angle_shrinks_monotonically_as_beta_goes_to_zero():
    model, x, y = make_batch(2)
    history = []
    for beta in (1.0, 0.1, 0.01, 0.001):
        learner = Learner(model, rule="dpT", alpha=0.0, beta=beta, schedule="forward-backward", passes=2)
        history.append([a.angle for a in gradient_angles(learner, x, y)])
    for layer in range(2):  # hidden blocks: strictly closer to backprop as β shrinks
        column = [row[layer] for row in history]
        assert all(later < earlier for earlier, later in zip(column, column[1:])), column
        assert column[-1] < 0.1
    assert all(row[2] < 1e-5 for row in history)  # the output block's update is the exact gradient
    assert max(history[0]) > 1.0  # at β = 1 the update is visibly not backprop's gradient


def test_callers_grad_is_untouched():
    model, x, y = make_batch(3)
    for rule in ("dp", "bp", "adversarial", "dp-damped"):
        for p in model.parameters():
            p.grad = torch.full_like(p, 7.0)
        model[0].bias.grad = None
        before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        gradient_angles(Learner(model, rule=rule, alpha=1.0, beta=0.3), x, y)
        for p, old in zip(model.parameters(), before):
            if old is None:
                assert p.grad is None
            else:
                assert torch.equal(p.grad, old)


def test_angle_log_truncates_to_a_resumed_epoch(tmp_path):
    log = DiagnosticsLog(tmp_path)
    from dualprop.analysis.gradient_angles import LayerAngle

    for epoch, step in ((1, 5), (2, 10), (3, 15)):
        log.append(epoch, step, [LayerAngle("block 1", 0.5, 60.0), LayerAngle("block 2", 1.0, 0.0)])
    log.truncate_to(2)
    rows = read_diagnostics(tmp_path / "diagnostics.csv")
    assert [(r["epoch"], r["layer"]) for r in rows] == [(1, "block 1"), (1, "block 2"), (2, "block 1"), (2, "block 2")]
    layers, epochs, matrix = epoch_matrix(rows)
    assert layers == ["block 1", "block 2"] and epochs == [1, 2]
    assert matrix == [[60.0, 60.0], [0.0, 0.0]]


def test_training_writes_diagnostics_every_n_steps(tmp_path):
    config = TrainConfig(
        rule="dpT",
        alpha=0.5,
        beta=0.1,
        schedule="backward",
        epochs=2,
        hidden=[16],
        limit_batches=4,
        diagnose_every=2,
        baseline=False,
        out=str(tmp_path),
        tensorboard=False,
        threads=1,
    )
    summary = train(config, GradientAngleLog())[0]
    with open(f"{summary['run_dir']}/diagnostics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(int(r["epoch"]), int(r["step"]), r["layer"]) for r in rows] == [
        (1, 2, "block 1"),
        (1, 2, "block 2"),
        (1, 4, "block 1"),
        (1, 4, "block 2"),
        (2, 6, "block 1"),
        (2, 6, "block 2"),
        (2, 8, "block 1"),
        (2, 8, "block 2"),
    ]
    for row in rows:
        assert math.cos(math.radians(float(row["angle"]))) == pytest.approx(float(row["cosine"]), abs=1e-5)
        assert float(row["angle"]) < 90.0


def test_diagnose_every_without_an_observer_that_carries_it_out_is_refused(tmp_path):
    config = TrainConfig(
        epochs=1,
        hidden=[8],
        limit_batches=2,
        diagnose_every=1,
        baseline=False,
        out=str(tmp_path),
        tensorboard=False,
        threads=1,
    )
    with pytest.raises(ValueError, match="diagnose_every is carried out by an observer"):
        train(config)
    assert not any(tmp_path.iterdir())  # refused before any run directory was made


def test_the_angle_log_of_a_resumed_run_drops_the_rows_after_its_checkpoint(tmp_path):
    from dualprop.analysis.gradient_angles import LayerAngle

    log = DiagnosticsLog(tmp_path)
    for epoch in (1, 2, 3):
        log.append(epoch, 5 * epoch, [LayerAngle("block 1", 0.5, 60.0)])
    observer = GradientAngleLog()
    observer.run_started(tmp_path, TrainConfig(diagnose_every=5), seed=0, start_epoch=2, steps_per_epoch=5)
    assert [r["epoch"] for r in read_diagnostics(tmp_path / "diagnostics.csv")] == [1, 2]


def test_command_line_writes_diagnostics(tmp_path, capsys):
    from dualprop.cli import main

    assert (
        main(
            [
                "train",
                "--epochs",
                "1",
                "--limit-batches",
                "4",
                "--hidden",
                "8",
                "--diagnose-every",
                "2",
                "--no-baseline",
                "--no-tensorboard",
                "--no-progress",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    (run_dir,) = tmp_path.iterdir()
    rows = read_diagnostics(run_dir / "diagnostics.csv")
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 2), (1, 2), (1, 4), (1, 4)]
