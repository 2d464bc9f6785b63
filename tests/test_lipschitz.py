import pytest
import torch
from torch import nn

from dualprop.analysis.lipschitz import empirical_lipschitz, eval_mode
from dualprop.spectral import layer_spectral_norms, product_bound


def exact_jacobian_norms(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """σ_max of each sample's full Jacobian matrix, built by autograd one sample at a time."""
    norms = []
    for x in inputs:
        jacobian = torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0)).squeeze(0), x)
        norms.append(torch.linalg.matrix_norm(jacobian.reshape(-1, x.numel()), ord=2))
    return torch.stack(norms)


@pytest.fixture
def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).double()


def test_matches_exact_jacobian_norms(mlp):
    inputs = torch.randn(6, 4, dtype=torch.float64)
    estimate = empirical_lipschitz(mlp, inputs, iterations=200, generator=torch.Generator().manual_seed(1))
    exact = exact_jacobian_norms(mlp, inputs)
    torch.testing.assert_close(estimate.per_sample, exact, rtol=1e-6, atol=0)
    assert estimate.max == pytest.approx(float(exact.max()), rel=1e-6)
    assert estimate.mean == pytest.approx(float(exact.mean()), rel=1e-6)
    assert all(p.grad is None for p in mlp.parameters())


def test_below_product_of_layer_norms(mlp):
    inputs = torch.randn(32, 4, dtype=torch.float64)
    estimate = empirical_lipschitz(mlp, inputs, iterations=50, generator=torch.Generator().manual_seed(2))
    linears = [m for m in mlp if isinstance(m, nn.Linear)]
    norms = layer_spectral_norms(
        linears, [(4,), (8,), (8,)], iterations=100, generator=torch.Generator().manual_seed(3)
    )
    assert 0 < estimate.max <= product_bound(norms)


@pytest.mark.slow
def test_samples_are_independent_and_modes_restored():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, 2)).double()
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    model.train()
    model[4].eval()
    inputs = torch.randn(5, 3, dtype=torch.float64)
    batch = empirical_lipschitz(model, inputs, iterations=100, generator=torch.Generator().manual_seed(5))
    with eval_mode(model):
        exact = exact_jacobian_norms(model, inputs)
    torch.testing.assert_close(batch.per_sample, exact, rtol=1e-6, atol=0)
    assert [m.training for m in model] == [True, True, True, True, False]


def test_bad_settings_raise(mlp):
    with pytest.raises(ValueError):
        empirical_lipschitz(mlp, torch.randn(2, 4, dtype=torch.float64), iterations=0)
    with pytest.raises(ValueError):
        empirical_lipschitz(mlp, torch.zeros(0, 4, dtype=torch.float64))
