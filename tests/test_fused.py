"""The fused single sweep against the generic backward sweep, a hand-written version, and its settings."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dualprop import Learner, models
from dualprop.fused import DyadicActivationFunction, finite_difference_weights
from dualprop.losses import output_gradient


def _tiny_cnn() -> nn.Sequential:
    return models.mini_cnn(num_classes=3, in_channels=2, size=8, activation="tanh").double()


def _mlp() -> nn.Sequential:
    return models.mlp([5, 7, 6, 3], activation="tanh").double()


def _batch(model: nn.Sequential, batch: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    first = model[0]
    shape = (batch, first.in_features) if isinstance(first, nn.Linear) else (batch, first.in_channels, 8, 8)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (batch,), generator=generator)
    return x, y


def _update(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **settings) -> tuple[torch.Tensor, Learner]:
    """The flattened ``.grad`` one ``step`` of a fresh copy of ``model`` accumulates."""
    model = copy.deepcopy(model)
    learner = Learner(model, schedule="backward", **settings)
    learner.step(x, y)
    return torch.cat([p.grad.flatten() for p in model.parameters()]), learner


@pytest.mark.parametrize("make_model", [_mlp, _tiny_cnn], ids=["mlp", "cnn"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_fused_equals_generic_backward_sweep_for_dpT_at_alpha_0_and_1(make_model, loss, alpha):
    torch.manual_seed(1)
    model = make_model()
    x, y = _batch(model)
    settings = dict(rule="dpT", alpha=alpha, beta=0.3, loss=loss)
    fused, learner = _update(model, x, y, implementation="fused", **settings)
    generic, _ = _update(model, x, y, implementation="generic", **settings)
    assert learner.implementation == "fused"
    torch.testing.assert_close(fused, generic, rtol=1e-10, atol=1e-12)


def test_fused_matches_hand_written_finite_difference_backprop():
    """Per-sample u (not u/B) goes into the finite difference; the update is ``g_kᵀ s_{k−1} / B``."""
    torch.manual_seed(2)
    model = _mlp()
    x, y = _batch(model, batch=5)
    alpha, beta = 0.3, 0.7
    fused, _ = _update(model, x, y, rule="dp", alpha=alpha, beta=beta, implementation="fused")
    (w1, b1), (w2, b2), (w3, b3) = [(m.weight.detach(), m.bias.detach()) for m in model if isinstance(m, nn.Linear)]
    a1 = x @ w1.T + b1
    s1 = torch.tanh(a1)
    a2 = s1 @ w2.T + b2
    s2 = torch.tanh(a2)
    z = s2 @ w3.T + b3
    g3 = output_gradient("cross_entropy", z, y)
    c1, c2 = 1 - alpha, alpha  # DP
    u2 = g3 @ w3
    g2 = (torch.tanh(a2 + c1 * beta * u2) - torch.tanh(a2 - c2 * beta * u2)) / beta
    u1 = g2 @ w2
    g1 = (torch.tanh(a1 + c1 * beta * u1) - torch.tanh(a1 - c2 * beta * u1)) / beta
    batch = x.shape[0]
    expected = torch.cat(
        [
            t.flatten()
            for t in (g1.T @ x / batch, g1.mean(0), g2.T @ s1 / batch, g2.mean(0), g3.T @ s2 / batch, g3.mean(0))
        ]
    )
    torch.testing.assert_close(fused, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rule", ["dp", "dpT"])
def test_fused_approximates_generic_at_half_alpha_and_small_beta(rule):
    torch.manual_seed(3)
    model = _mlp()
    x, y = _batch(model, batch=8)
    settings = dict(rule=rule, alpha=0.5, beta=0.01)
    fused, _ = _update(model, x, y, implementation="fused", **settings)
    generic, _ = _update(model, x, y, implementation="generic", **settings)
    cosine = torch.nn.functional.cosine_similarity(fused, generic, dim=0)
    assert cosine > 0.99
    assert (fused - generic).norm() < 1e-3 * generic.norm()


def test_fused_and_generic_genuinely_differ_at_large_beta():
    """The approximation bound above is not vacuous: away from α ∈ {0, 1} the two are different rules."""
    torch.manual_seed(3)
    model = _mlp()
    x, y = _batch(model, batch=8)
    settings = dict(rule="dpT", alpha=0.5, beta=2.0)
    fused, _ = _update(model, x, y, implementation="fused", **settings)
    generic, _ = _update(model, x, y, implementation="generic", **settings)
    assert (fused - generic).norm() > 1e-3 * generic.norm()


def test_batch_rescaling_inside_the_activation_backward():
    drive = torch.tensor([[0.2, -1.0], [1.5, 0.1], [-0.3, 0.4]], dtype=torch.float64, requires_grad=True)
    incoming = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.25]], dtype=torch.float64)
    beta, (c1, c2) = 0.8, (0.25, 0.75)
    out = DyadicActivationFunction.apply(drive, nn.Tanh(), beta, (c1, c2))
    torch.testing.assert_close(out, torch.tanh(drive))
    (grad,) = torch.autograd.grad(out, drive, incoming / 3)
    a, u = drive.detach(), incoming
    expected = (torch.tanh(a + c1 * beta * u) - torch.tanh(a - c2 * beta * u)) / beta / 3
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=0)


def test_finite_difference_weights():
    assert finite_difference_weights("dpT", 0.2) == pytest.approx((0.2, 0.8))
    assert finite_difference_weights("dp", 0.2) == pytest.approx((0.8, 0.2))
    with pytest.raises(ValueError, match="bp"):
        finite_difference_weights("bp", 0.2)


@pytest.mark.parametrize(
    "settings, expected",
    [
        (dict(rule="dpT", alpha=0.0, schedule="backward"), "fused"),
        (dict(rule="dpT", alpha=1.0, schedule="bw1"), "fused"),
        (dict(rule="dpT", alpha=0.5, schedule="backward"), "generic"),
        (dict(rule="dp", alpha=0.0, schedule="backward"), "generic"),
        (dict(rule="dpT", alpha=0.0, schedule="backward", passes=2), "generic"),
        (dict(rule="dpT", alpha=0.0, schedule="forward"), "generic"),
        (dict(rule="bp"), "generic"),
    ],
)
def test_auto_picks_fused_only_where_exact(settings, expected):
    assert Learner(models.mlp([4, 5, 3]), implementation="auto", **settings).implementation == expected


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(rule="dpT", schedule="forward"), "schedule='backward'"),
        (dict(rule="dpT", schedule="backward", passes=2), "passes=1"),
        (dict(rule="dp", schedule="fwbw2"), "schedule='backward'"),
        (dict(rule="bp", schedule="backward"), "rules dp, dpT"),
    ],
)
def test_fused_rejects_settings_it_cannot_run(settings, message):
    with pytest.raises(ValueError, match=message):
        Learner(models.mlp([4, 5, 3]), implementation="fused", **settings)


def test_fused_step_runs_through_the_callers_module_and_restores_its_activations():
    model = nn.Sequential(
        nn.Linear(4, 5), nn.Sequential(nn.ReLU(inplace=True), nn.Linear(5, 5)), nn.Tanh(), nn.Linear(5, 3)
    )
    before = list(model.modules())
    calls = []
    model.register_forward_hook(lambda module, inputs, output: calls.append(output.shape))
    learner = Learner(model, rule="dpT", alpha=0.0, beta=0.1, schedule="backward")
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    result = learner.step(x, y)
    assert calls == [torch.Size([6, 3])]
    assert all(a is b for a, b in zip(model.modules(), before)) and len(list(model.modules())) == len(before)
    torch.testing.assert_close(result.logits, model(x))
    assert all(p.grad is not None for p in model.parameters())


def test_fused_step_restores_activations_when_the_forward_fails():
    model = models.mlp([4, 5, 3])
    activation = model[1]
    learner = Learner(model, rule="dpT", alpha=1.0, schedule="backward")
    with pytest.raises(RuntimeError):
        learner.step(torch.randn(2, 7), torch.tensor([0, 1]))
    assert model[1] is activation


def test_fused_step_through_a_ddp_wrapper_matches_the_plain_model(tmp_path):
    """The forward runs through the wrapper (one process, gloo), and the update is unchanged by it."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(4)
    model = _mlp()
    x, y = _batch(model)
    plain, _ = _update(model, x, y, rule="dpT", alpha=1.0, beta=0.2, implementation="fused")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(copy.deepcopy(model))
        calls = []
        wrapped.register_forward_hook(lambda module, inputs, output: calls.append(1))
        learner = Learner(wrapped, rule="dpT", alpha=1.0, beta=0.2, schedule="backward", implementation="fused")
        learner.step(x, y)
        update = torch.cat([p.grad.flatten() for p in wrapped.module.parameters()])
    finally:
        dist.destroy_process_group()
    assert calls == [1]
    torch.testing.assert_close(update, plain, rtol=1e-10, atol=1e-12)
