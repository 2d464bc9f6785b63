import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from dualprop.analysis.attacks import adversarial_accuracy, fgsm, pgd

TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def digits_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Logistic regression on 600 scikit-learn digits in [0, 1], trained for 200 full-batch steps."""
    data = load_digits()
    x = torch.tensor(data.data[:600] / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target[:600], dtype=torch.long)
    torch.manual_seed(0)
    model = nn.Linear(64, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, x, y


def test_fgsm_matches_hand_gradient_of_softmax_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    model = nn.Linear(5, 3).double()
    x = torch.rand(8, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=generator)
    weight, bias = model.weight.detach(), model.bias.detach()
    # ∂ℓ_n/∂x_n = Wᵀ(softmax(W x_n + b) − onehot(y_n)); the batch mean only rescales by 1/B.
    grad = (torch.softmax(x @ weight.T + bias, dim=1) - F.one_hot(y, 3).double()) @ weight
    expected = (x + 0.1 * grad.sign()).clamp(0, 1)
    torch.testing.assert_close(fgsm(model, F.cross_entropy, x, y, eps=0.1), expected)
    expected_l2 = (x + 0.3 * grad / grad.norm(dim=1, keepdim=True)).clamp(0, 1)
    torch.testing.assert_close(fgsm(model, F.cross_entropy, x, y, eps=0.3, norm="l2"), expected_l2)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.slow
def test_pgd_stays_in_ball_and_data_range(digits_model, norm):
    model, x, y = digits_model
    x, y = x[:64], y[:64]
    eps = 0.1 if norm == "linf" else 1.0
    x_adv = pgd(
        model,
        F.cross_entropy,
        x,
        y,
        eps=eps,
        step_size=2 * eps,
        steps=5,
        norm=norm,
        generator=torch.Generator().manual_seed(1),
    )
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert size.max() <= eps * (1 + 1e-5)
    assert size.max() >= eps * 0.9  # the attack did move to the boundary
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.0)])
@pytest.mark.slow
def test_attacks_lower_accuracy_of_trained_model(digits_model, norm, eps):
    model, x, y = digits_model
    clean = adversarial_accuracy(model, (x, y))
    assert clean > 0.95

    def attack_pgd(m, xb, yb):
        return pgd(
            m,
            F.cross_entropy,
            xb,
            yb,
            eps=eps,
            step_size=eps / 4,
            steps=10,
            norm=norm,
            generator=torch.Generator().manual_seed(2),
        )

    def attack_fgsm(m, xb, yb):
        return fgsm(m, F.cross_entropy, xb, yb, eps=eps, norm=norm)

    robust = adversarial_accuracy(model, (x, y), attack_pgd, batch_size=200)
    one_step = adversarial_accuracy(model, (x, y), attack_fgsm, batch_size=200)
    assert robust < clean - 0.3
    assert robust <= one_step + 0.02
    assert all(p.grad is None for p in model.parameters())


def test_attacks_restore_modes_and_leave_no_gradients():
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.ReLU(), nn.Linear(6, 2))
    model.train()
    x, y = torch.rand(3, 4), torch.tensor([0, 1, 0])
    pgd(model, F.cross_entropy, x, y, eps=0.2, step_size=0.05, steps=3)
    fgsm(model, F.cross_entropy, x, y, eps=0.2)
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_zero_eps_and_determinism():
    model = nn.Linear(4, 3)
    x, y = torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1])
    torch.testing.assert_close(pgd(model, F.cross_entropy, x, y, eps=0.0, step_size=0.1, steps=2), x)
    runs = [
        pgd(
            model,
            F.cross_entropy,
            x,
            y,
            eps=0.3,
            step_size=0.01,
            steps=2,
            norm="l2",
            generator=torch.Generator().manual_seed(3),
        )
        for _ in range(2)
    ]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(eps=-0.1), "eps"),
        (dict(steps=0), "steps"),
        (dict(norm="l1"), "norm"),
        (dict(step_size=0.0), "step_size"),
    ],
)
def test_bad_settings_raise(kwargs, message):
    settings = dict(eps=0.1, step_size=0.01, steps=1, norm="linf") | kwargs
    with pytest.raises(ValueError, match=message):
        pgd(nn.Linear(2, 2), F.cross_entropy, torch.rand(1, 2), torch.tensor([0]), **settings)
