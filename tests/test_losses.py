import numpy as np
import pytest
import torch
from torch import nn

from dualprop import Learner
from dualprop.losses import batch_loss, output_gradient


def _reference(name, z, y_onehot):
    if name == "cross_entropy":
        shifted = z - z.max(axis=1, keepdims=True)
        p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        return -(y_onehot * np.log(p)).sum(axis=1).mean(), p - y_onehot
    return 0.5 * ((z - y_onehot) ** 2).sum(axis=1).mean(), z - y_onehot


@pytest.mark.parametrize("name", ["cross_entropy", "mse"])
def test_loss_and_per_sample_gradient_against_numpy(name):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 4))
    labels = np.array([0, 3, 1, 1, 2])
    onehot = np.eye(4)[labels]
    loss, grad = _reference(name, z, onehot)
    zt = torch.tensor(z)
    for target in (torch.tensor(labels), torch.tensor(onehot)):
        assert float(batch_loss(name, zt, target)) == pytest.approx(loss, rel=1e-12)
        np.testing.assert_allclose(output_gradient(name, zt, target).numpy(), grad, rtol=1e-12)


@pytest.mark.parametrize("name", ["cross_entropy", "mse"])
def test_per_sample_gradient_is_batch_size_times_autograd_of_mean(name):
    z = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 3, (6,))
    (auto,) = torch.autograd.grad(batch_loss(name, z, y), z)
    torch.testing.assert_close(output_gradient(name, z.detach(), y), 6 * auto)


def test_mismatched_targets_raise():
    z = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="target shape"):
        batch_loss("mse", z, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="3 labels"):
        batch_loss("cross_entropy", z, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="class labels"):
        output_gradient("cross_entropy", z, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="unknown loss"):
        batch_loss("hinge", z, torch.zeros(4, dtype=torch.long))


# -- outputs with positions: (B, *, C) logits, (B, *) class indices -------------------------------------


@pytest.mark.parametrize("shape", [(4, 5, 3), (3, 2, 4, 5)])
def test_sequence_cross_entropy_is_the_mean_over_every_position(shape):
    torch.manual_seed(0)
    z = torch.randn(shape, dtype=torch.float64)
    y = torch.randint(0, shape[-1], shape[:-1])
    flat = torch.nn.functional.cross_entropy(z.reshape(-1, shape[-1]), y.reshape(-1))
    torch.testing.assert_close(batch_loss("cross_entropy", z, y), flat)
    onehot = torch.nn.functional.one_hot(y, shape[-1]).double()
    torch.testing.assert_close(batch_loss("cross_entropy", z, onehot), flat)
    mse = 0.5 * ((z - onehot) ** 2).sum(-1).mean()
    torch.testing.assert_close(batch_loss("mse", z, y), mse)


@pytest.mark.parametrize("name", ["cross_entropy", "mse"])
@pytest.mark.parametrize("shape", [(6, 5, 3), (3, 2, 4, 5)])
@pytest.mark.parametrize("indices", [True, False])
def test_sequence_gradient_is_batch_size_times_autograd_of_mean(name, shape, indices):
    torch.manual_seed(1)
    z = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, shape[-1], shape[:-1])
    if not indices:
        y = torch.softmax(torch.randn(shape, dtype=torch.float64), dim=-1)
    (auto,) = torch.autograd.grad(batch_loss(name, z, y), z)
    torch.testing.assert_close(output_gradient(name, z.detach(), y), shape[0] * auto)


def test_a_samples_loss_is_the_mean_over_its_positions():
    # by hand: one sample, two positions, two classes, logits 0 → ℓ = log 2 at each position; gradient
    # (softmax − y) / 2 = ±¼
    z = torch.zeros(1, 2, 2, dtype=torch.float64)
    y = torch.tensor([[0, 1]])
    assert float(batch_loss("cross_entropy", z, y)) == pytest.approx(np.log(2))
    expected = torch.tensor([[[-0.25, 0.25], [0.25, -0.25]]], dtype=torch.float64)
    torch.testing.assert_close(output_gradient("cross_entropy", z, y), expected)


def test_sequence_targets_that_do_not_fit_raise():
    z = torch.zeros(2, 5, 3)
    with pytest.raises(ValueError, match="one label per position"):
        batch_loss("cross_entropy", z, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="class indices \\(2, 5\\)"):
        batch_loss("cross_entropy", z, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="y.long"):
        batch_loss("cross_entropy", z, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="matches neither"):
        batch_loss("mse", z, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="class labels"):
        output_gradient("cross_entropy", z, torch.tensor([[0, 1, 2, 3, 0], [0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="classes along the last"):
        batch_loss("mse", torch.zeros(4), torch.zeros(4))


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize(
    "implementation, alpha, schedule",
    [
        ("generic", 0.0, "fw4"),
        ("generic", 0.5, "fw4"),
        ("generic", 1.0, "fw4"),
        ("generic", 0.5, "fwbw2"),
        ("fused", 0.0, "backward"),
        ("fused", 1.0, "backward"),
    ],
)
def test_learner_on_every_position_recovers_the_gradient_of_the_batch_loss(loss, implementation, alpha, schedule):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 3)).double()
    x = torch.randn(5, 4, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (5, 4))
    plain = model(x)
    reference = torch.autograd.grad(
        torch.nn.functional.cross_entropy(plain.reshape(-1, 3), y.reshape(-1))
        if loss == "cross_entropy"
        else 0.5 * ((plain - torch.nn.functional.one_hot(y, 3)) ** 2).sum(-1).mean(),
        list(model.parameters()),
    )
    learner = Learner(
        model, rule="dpT", alpha=alpha, beta=1e-6, schedule=schedule, loss=loss, implementation=implementation
    )
    assert learner.implementation == implementation
    model.zero_grad()
    result = learner.step(x, y)
    assert result.logits.shape == (5, 4, 3)
    assert result.loss == pytest.approx(float(batch_loss(loss, plain.detach(), y)), rel=1e-12)
    for parameter, expected in zip(model.parameters(), reference):
        cosine = torch.nn.functional.cosine_similarity(parameter.grad.flatten(), expected.flatten(), dim=0)
        assert float(cosine) > 0.9999
        assert float((parameter.grad - expected).norm() / expected.norm()) < 1e-5
