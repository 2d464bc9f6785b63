"""Damped DP, adversarial training and Kolen–Pollack feedback against independent computations."""

import pytest
import torch
from torch import nn

from dualprop import Learner, models

F = torch.nn.functional


def _expanding_net():
    """Every block scales by 3 (spectral norm 3): plain DP at α = 1 and β = 1 feeds back ever larger Δ."""
    model = nn.Sequential(
        nn.Linear(4, 4), nn.LeakyReLU(0.5), nn.Linear(4, 4), nn.LeakyReLU(0.5), nn.Linear(4, 3)
    ).double()
    with torch.no_grad():
        for linear in (model[0], model[2], model[4]):
            linear.weight.copy_(3 * torch.eye(*linear.weight.shape))
            linear.bias.zero_()
    return model


def test_damped_dp_stays_finite_where_plain_dp_diverges():
    torch.manual_seed(0)
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    settings = dict(alpha=1.0, beta=1.0, schedule="forward", passes=30, loss="mse")
    plain = Learner(_expanding_net(), rule="dp", **settings).infer(x, y)
    damped_learner = Learner(_expanding_net(), rule="dp-damped", power_iterations=20, **settings)
    damped = damped_learner.infer(x, y)
    assert max(float(s.abs().max()) for s in plain.plus[1:3]) > 1e12
    assert damped.all_finite() and max(float(s.abs().max()) for s in damped.plus[1:]) < 100
    # L_k = (γ² − 1)/2 with γ = 3 for both hidden layers
    assert damped_learner.dampings(damped.plus) == pytest.approx([4.0, 4.0], rel=1e-6)


def test_damping_follows_the_largest_singular_value_and_vanishes_below_one():
    torch.manual_seed(1)
    model = models.mlp([5, 6, 4, 3]).double()
    learner = Learner(model, rule="dp-damped", power_iterations=200)
    states = learner.feed_forward(torch.randn(2, 5, dtype=torch.float64))
    expected = [
        max(0.0, (float(torch.linalg.matrix_norm(m.weight.detach(), 2)) ** 2 - 1) / 2) for m in (model[2], model[4])
    ]
    assert learner.dampings(states) == pytest.approx(expected, rel=1e-6)
    with torch.no_grad():
        model[2].weight.mul_(0.01)
        model[4].weight.mul_(0.01)
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    damped = Learner(model, rule="dp-damped", alpha=0.3, beta=0.5, schedule="fw3").infer(x, y)
    plain = Learner(model, rule="dp", alpha=0.3, beta=0.5, schedule="fw3").infer(x, y)
    for a, b in zip(damped.plus + damped.minus, plain.plus + plain.minus):
        torch.testing.assert_close(a, b)  # γ < 1 → L = 0 → damped DP is DP


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_adversarial_rule_is_backprop_at_the_moved_input(loss):
    torch.manual_seed(2)
    model = models.mlp([5, 7, 3], "tanh").double()
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.randint(0, 3, (4,))
    beta = 0.3

    def sample_loss(xi, yi):
        z = model(xi.unsqueeze(0))
        if loss == "cross_entropy":
            return F.cross_entropy(z, yi.unsqueeze(0))
        return 0.5 * ((z - F.one_hot(yi, 3)) ** 2).sum()

    moved = []
    for xi, yi in zip(x, y):  # per-sample input gradient, one sample at a time
        point = xi.clone().requires_grad_(True)
        moved.append(xi + beta * torch.autograd.grad(sample_loss(point, yi), point)[0])
    moved = torch.stack(moved)
    expected = torch.autograd.grad(
        torch.stack([sample_loss(m, yi) for m, yi in zip(moved, y)]).mean(), list(model.parameters())
    )
    model.zero_grad()
    result = Learner(model, rule="adversarial", beta=beta, loss=loss).step(x, y)
    for p, g in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, g)
    clean = torch.stack([sample_loss(a, b) for a, b in zip(x, y)]).mean()
    assert result.loss == pytest.approx(float(clean.detach()))


def test_kolen_pollack_with_matching_feedback_equals_symmetric_dp():
    torch.manual_seed(3)
    model = models.mlp([5, 6, 4, 3]).double()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    settings = dict(rule="dp", alpha=0.3, beta=0.5, schedule="fw3")
    kp = Learner(model, feedback="kolen-pollack", **settings)
    assert len(kp.feedback_parameters()) == 2  # blocks 2 and 3 feed back
    assert not torch.allclose(kp.feedback_parameters()[0], model[2].weight)
    with torch.no_grad():
        kp.feedback_parameters()[0].copy_(model[2].weight)
        kp.feedback_parameters()[1].copy_(model[4].weight)
    model.zero_grad()
    kp.step(x, y)
    kp_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    Learner(model, **settings).step(x, y)
    for a, p in zip(kp_grads, model.parameters()):
        torch.testing.assert_close(a, p.grad)
    torch.testing.assert_close(kp.feedback_parameters()[0].grad, model[2].weight.grad)


def test_kolen_pollack_feedback_with_conv_block_uses_feedback_kernel():
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(2, 2, 3, padding=1),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).double()
    x, y = torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (3,))
    kp = Learner(model, rule="dpT", alpha=0.5, beta=0.5, schedule="backward", feedback="kolen-pollack")
    symmetric = Learner(model, rule="dpT", alpha=0.5, beta=0.5, schedule="backward")
    differs = kp.infer(x, y).plus[1]
    assert not torch.allclose(differs, symmetric.infer(x, y).plus[1])
    with torch.no_grad():
        for fb, part in zip(kp.feedback_parameters(), (model[2], model[6])):
            fb.copy_(part.weight)
    for k in range(4):
        torch.testing.assert_close(kp.infer(x, y).plus[k], symmetric.infer(x, y).plus[k])


@pytest.mark.slow
def test_kolen_pollack_feedback_converges_to_forward_weights():
    torch.manual_seed(5)
    teacher = models.mlp([6, 8, 3], "tanh")
    x = torch.randn(256, 6)
    y = teacher(x).argmax(1).detach()
    model = models.mlp([6, 16, 16, 3], "tanh")
    learner = Learner(model, rule="dpT", alpha=0.5, beta=0.1, schedule="backward", feedback="kolen-pollack")
    opt = torch.optim.SGD(
        list(model.parameters()) + learner.feedback_parameters(), lr=0.1, momentum=0.9, weight_decay=0.01
    )

    def misalignment():
        pairs = zip(learner.feedback_parameters(), (model[2].weight, model[4].weight))
        return [float((fb - w).norm().detach() / w.norm().detach()) for fb, w in pairs]

    start = misalignment()
    for _ in range(150):
        for i in range(0, 256, 64):
            opt.zero_grad()
            learner.step(x[i : i + 64], y[i : i + 64])
            opt.step()
    end = misalignment()
    assert all(e < 0.3 * s for s, e in zip(start, end)), (start, end)
    accuracy = float((model(x).argmax(1) == y).float().mean())
    assert accuracy > 0.8


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"rule": "bp", "feedback": "kolen-pollack"}, "dual-propagation rule"),
        ({"feedback": "random"}, "unknown feedback"),
        ({"rule": "dp-damped", "power_iterations": 0}, "power_iterations"),
    ],
)
def test_bad_related_settings(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        Learner(models.mlp([3, 4, 2]), **kwargs)


def test_fused_is_refused_and_never_chosen_with_kolen_pollack():
    model = models.mlp([3, 4, 2])
    with pytest.raises(ValueError, match="feedback"):
        Learner(model, rule="dpT", alpha=0.0, schedule="backward", implementation="fused", feedback="kolen-pollack")
    auto = Learner(model, rule="dpT", alpha=0.0, schedule="backward", feedback="kolen-pollack")
    assert auto.implementation == "generic"
