import pytest
import torch
from torch import nn

from dualprop.spectral import SpectralNormEstimator, layer_spectral_norms, product_bound, spectral_norm


def explicit_jacobian_norm(block: nn.Module, point: torch.Tensor) -> float:
    """2-norm of the Jacobian matrix of one sample, built column by column by autograd."""
    shape = point.shape

    def flat(v: torch.Tensor) -> torch.Tensor:
        return block(v.view(1, *shape)).flatten()

    jacobian = torch.autograd.functional.jacobian(flat, point.flatten())
    return float(torch.linalg.matrix_norm(jacobian, ord=2))


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_linear_matches_largest_singular_value(generator):
    torch.manual_seed(1)
    linear = nn.Linear(20, 12).double()
    exact = float(torch.linalg.matrix_norm(linear.weight.detach(), ord=2))
    fast = spectral_norm(linear, (20,), generator=generator)
    through_autograd = spectral_norm(nn.Sequential(linear), (20,), generator=generator)
    assert fast == pytest.approx(exact, rel=1e-4)
    assert through_autograd == pytest.approx(exact, rel=1e-4)


@pytest.mark.slow
def test_conv_matches_explicit_jacobian(generator):
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, kernel_size=3, padding=1).double()
    point = torch.randn(2, 5, 5, dtype=torch.float64)
    exact = explicit_jacobian_norm(conv, point)
    assert spectral_norm(conv, (2, 5, 5), iterations=200, generator=generator) == pytest.approx(exact, rel=1e-4)


def test_conv_maxpool_matches_explicit_jacobian_at_point(generator):
    torch.manual_seed(3)
    block = nn.Sequential(nn.Conv2d(2, 3, kernel_size=3, padding=1), nn.MaxPool2d(2)).double()
    point = torch.randn(2, 6, 6, dtype=torch.float64)
    exact = explicit_jacobian_norm(block, point)
    estimate = spectral_norm(block, (2, 6, 6), iterations=200, generator=generator, point=point)
    assert estimate == pytest.approx(exact, rel=1e-4)
    assert all(p.grad is None for p in block.parameters())


def test_deterministic_given_generator():
    block = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2))
    first = spectral_norm(block, (1, 8, 8), iterations=3, generator=torch.Generator().manual_seed(7))
    second = spectral_norm(block, (1, 8, 8), iterations=3, generator=torch.Generator().manual_seed(7))
    assert first == second


def test_warm_started_estimator_increases_to_exact_value(generator):
    torch.manual_seed(4)
    block = nn.Sequential(nn.Flatten(), nn.Linear(12, 9)).double()
    exact = float(torch.linalg.matrix_norm(block[1].weight.detach(), ord=2))
    estimator = SpectralNormEstimator(block, (3, 4), iterations=1, generator=generator)
    estimates = [estimator() for _ in range(100)]
    assert all(later >= earlier - 1e-12 for earlier, later in zip(estimates, estimates[1:]))
    assert estimates[0] < exact * (1 - 1e-3)
    assert estimates[-1] == pytest.approx(exact, rel=1e-6)


def test_estimator_follows_weight_changes(generator):
    linear = nn.Linear(6, 6).double()
    estimator = SpectralNormEstimator(linear, (6,), iterations=30, generator=generator)
    estimator()
    with torch.no_grad():
        linear.weight.mul_(3.0)
    exact = float(torch.linalg.matrix_norm(linear.weight.detach(), ord=2))
    assert estimator() == pytest.approx(exact, rel=1e-6)


def test_layer_norms_and_product_bound(generator):
    torch.manual_seed(5)
    blocks = [nn.Linear(5, 7).double(), nn.Linear(7, 4).double()]
    norms = layer_spectral_norms(blocks, [(5,), (7,)], iterations=100, generator=generator)
    exact = [float(torch.linalg.matrix_norm(b.weight.detach(), ord=2)) for b in blocks]
    assert norms == pytest.approx(exact, rel=1e-6)
    assert product_bound(norms) == pytest.approx(exact[0] * exact[1], rel=1e-6)
    assert product_bound([]) == 1.0


@pytest.mark.parametrize(
    "call",
    [
        lambda: spectral_norm(nn.Linear(3, 3), (3,), iterations=0),
        lambda: spectral_norm(nn.Linear(3, 3), ()),
        lambda: spectral_norm(nn.Conv2d(1, 1, 3), (1, 5, 5), point=torch.zeros(5, 5)),
        lambda: layer_spectral_norms([nn.Linear(3, 3)], [(3,), (3,)]),
        lambda: product_bound([1.0, -2.0]),
    ],
)
def test_bad_settings_raise(call):
    with pytest.raises(ValueError):
        call()
