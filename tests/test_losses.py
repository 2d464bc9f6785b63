import numpy as np
import pytest
import torch

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
