"""The Learner against independent computations: a scalar case worked by hand, a NumPy re-derivation of
the state loop, autograd of the plain network (β → 0) and the known facts of the method
(docs/method.md)."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import dualprop
from dualprop import Learner, models

from conftest import rule_grads

F = torch.nn.functional


def _cosine(a, b):
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


# -- a scalar network worked by hand -------------------------------------------------------------------


def _scalar_net():
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    with torch.no_grad():
        model[0].weight.fill_(2.0)
        model[0].bias.zero_()
        model[2].weight.fill_(1.5)
        model[2].bias.zero_()
    return model


@pytest.mark.parametrize("rule", ["dp", "dpT"])
def test_scalar_network_by_hand(rule):
    # x = 1, y = 0, MSE, β = 0.5, α = ½, one backward sweep. Feed-forward: a₁ = 2, s₁ = 2, z = 3.
    # Output: g = β(z − y) = 1.5; c⁺ = c⁻ = ½ → s⁺₂ = 3 − 0.75 = 2.25, s⁻₂ = 3 + 0.75 = 3.75.
    # Hidden: Δ₁ = W₂(s⁺₂ − s⁻₂) = 1.5·(−1.5) = −2.25 → s⁺₁ = relu(2 − 1.125) = 0.875,
    #         s⁻₁ = relu(2 + 1.125) = 3.125, s̄₁ = 2.
    # Updates: ∂J/∂W₁ = −(1/β)·δ₁·x = −2·(−2.25) = 4.5 ; ∂J/∂W₂ = −(1/β)·δ₂·s̄₁ = −2·(−1.5)·2 = 6,
    # which are backprop's (z − y)·W₂·x = 4.5 and (z − y)·s₁ = 6 since ReLU is linear here.
    model = _scalar_net()
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    learner = Learner(model, rule=rule, alpha=0.5, beta=0.5, schedule="backward", loss="mse")
    states = learner.infer(x, y)
    assert [float(s) for s in states.plus] == pytest.approx([1.0, 0.875, 2.25])
    assert [float(s) for s in states.minus] == pytest.approx([1.0, 3.125, 3.75])
    model.zero_grad()
    result = learner.step(x, y)
    assert result.loss == pytest.approx(4.5)  # ½·3²
    assert float(model[0].weight.grad) == pytest.approx(4.5)
    assert float(model[2].weight.grad) == pytest.approx(6.0)
    assert float(model[0].bias.grad) == pytest.approx(4.5)
    assert float(model[2].bias.grad) == pytest.approx(3.0)


# -- a NumPy re-derivation of the state loop ----------------------------------------------------------


def _numpy_states(weights, biases, act, x, y, rule, alpha, beta, order, loss):
    """States by the compartment updates of docs/method.md, written out with explicit matrices."""
    L = len(weights)

    def grad(z):
        if loss == "mse":
            return z - y
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True) - y

    s = [x]
    for k in range(L):
        a = s[-1] @ weights[k].T + biases[k]
        s.append(act(a) if k < L - 1 else a)
    plus, minus = list(s), list(s)
    cp, cm = (1 - alpha, alpha) if rule == "dpT" else (alpha, 1 - alpha)
    g_fixed = beta * grad(s[-1])
    for k in order:
        below = x if k == 1 else alpha * plus[k - 1] + (1 - alpha) * minus[k - 1]
        a = below @ weights[k - 1].T + biases[k - 1]
        if k == L:
            g = g_fixed if rule == "dpT" else beta * grad(a)
            plus[k], minus[k] = a - cp * g, a + cm * g
        else:
            d = (plus[k + 1] - minus[k + 1]) @ weights[k]
            plus[k], minus[k] = act(a + cp * d), act(a - cm * d)
    return plus, minus


@pytest.mark.parametrize("rule", ["dp", "dpT"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("schedule", ["fw2", "backward", "fwbw2", "odd-even", "evenodd2"])
def test_states_match_numpy_derivation(rule, loss, schedule):
    torch.manual_seed(1)
    model = models.mlp([5, 6, 4, 3], activation="tanh").double()
    x = torch.randn(7, 5, dtype=torch.float64)
    labels = torch.randint(0, 3, (7,))
    alpha, beta = 0.3, 0.8
    learner = Learner(model, rule=rule, alpha=alpha, beta=beta, schedule=schedule, loss=loss)
    states = learner.infer(x, labels)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    plus, minus = _numpy_states(
        [m.weight.detach().numpy() for m in linears],
        [m.bias.detach().numpy() for m in linears],
        np.tanh,
        x.numpy(),
        np.eye(3)[labels.numpy()],
        rule,
        alpha,
        beta,
        learner.order,
        loss,
    )
    for k in range(4):
        np.testing.assert_allclose(states.plus[k].numpy(), plus[k], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(states.minus[k].numpy(), minus[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rule", ["dp", "dpT"])
def test_linear_update_is_hebbian_outer_product(rule):
    torch.manual_seed(2)
    model = models.mlp([4, 5, 3]).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    learner = Learner(model, rule=rule, alpha=0.7, beta=0.4, schedule="fw3")
    states = learner.infer(x, y)
    model.zero_grad()
    learner.step(x, y)
    for k, linear in ((1, model[0]), (2, model[2])):
        delta, below = states.difference(k), states.mean(k - 1)
        expected = -(delta.T @ below) / (0.4 * 6)
        torch.testing.assert_close(linear.weight.grad, expected)
        torch.testing.assert_close(linear.bias.grad, -delta.sum(0) / (0.4 * 6))


def test_infer_visits_layers_in_schedule_order_skipping_only_visits_that_change_nothing(monkeypatch):
    model = models.mlp([3, 4, 4, 4, 2])
    learner = Learner(model, rule="dpT", schedule="fwbw2")
    x, y = torch.randn(2, 3), torch.tensor([0, 1])
    visits = []
    original = Learner._update_neuron

    def recorded(self, states, versions, k, *rest):
        visits.append(k)
        return original(self, states, versions, k, *rest)

    monkeypatch.setattr(Learner, "_update_neuron", recorded)
    skipping = learner.infer(x, y)
    # the last visit of layer 1 follows its previous visit with nothing it reads changed in between
    assert learner.order == [4, 3, 2, 1, 2, 3, 4, 3, 2, 1, 1]
    assert visits == [4, 3, 2, 1, 2, 3, 4, 3, 2, 1]
    monkeypatch.setattr(dualprop.states.StateVersions, "visit_needed", lambda self, k: True)
    visits.clear()
    every_visit = learner.infer(x, y)
    assert visits == learner.order
    for k in range(1, 5):
        assert torch.equal(skipping.plus[k], every_visit.plus[k])
        assert torch.equal(skipping.minus[k], every_visit.minus[k])


def test_drives_are_recomputed_only_after_the_layer_below_changed():
    model = models.mlp([3, 4, 4, 4, 2])
    learner = Learner(model, rule="dp", alpha=0.3, beta=0.5, schedule="fwbw2")
    forwards = []
    for k, block in enumerate(learner.network.blocks, start=1):
        block.register_forward_hook(lambda *_, k=k: forwards.append(k))
    learner.infer(torch.randn(2, 3), torch.tensor([0, 1]))
    # the feed-forward pass (one run of the whole graph) gives every drive; then the visits
    # 4 3 2 1 | 2 3 4 3 2 1 | 1: a drive is computed again when the layer below was updated since the
    # last time — never for layer 1, whose input x is fixed
    assert forwards == [2, 3, 4]


# -- β → 0 recovers backprop ------------------------------------------------------------------------------


def _conv_net():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.MaxPool2d(2),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 6),
        nn.Sigmoid(),
        nn.Linear(6, 3),
    )


@pytest.mark.parametrize("make, shape", [(lambda: models.mlp([6, 8, 7, 3], "tanh"), (9, 6)), (_conv_net, (9, 2, 8, 8))])
@pytest.mark.parametrize("rule, alpha", [("dp", 0.5), ("dp", 1.0), ("dpT", 0.0), ("dpT", 0.5), ("dpT", 1.0)])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_small_beta_recovers_backprop(make, shape, rule, alpha, loss):
    torch.manual_seed(3)
    model = make().double()
    x = torch.randn(shape, dtype=torch.float64)
    y = torch.randint(0, 3, (shape[0],))
    reference = rule_grads(model, x, y, rule="bp", loss=loss)
    plain = model(x)  # independent check: the bp rule is autograd of the plain batch-mean loss
    manual = torch.autograd.grad(
        F.cross_entropy(plain, y) if loss == "cross_entropy" else 0.5 * ((plain - F.one_hot(y, 3)) ** 2).sum(1).mean(),
        list(model.parameters()),
    )
    for a, b in zip(reference, manual):
        torch.testing.assert_close(a, b)
    update = rule_grads(model, x, y, rule=rule, alpha=alpha, beta=1e-4, schedule="fw4", loss=loss)
    for a, b in zip(update, reference):
        assert _cosine(a, b) > 0.9999
        torch.testing.assert_close(a, b, rtol=5e-3, atol=5e-5)


# -- known facts ----------------------------------------------------------------------------------------


def test_half_alpha_dp_and_dpT_share_states():
    torch.manual_seed(4)
    model = _conv_net().double()
    x, y = torch.randn(5, 2, 8, 8, dtype=torch.float64), torch.randint(0, 3, (5,))
    # DP nudges the output at the current drive, DP⊤ at the prediction: they coincide when the output
    # is visited before any hidden layer moves, as in a backward sweep.
    dp = Learner(model, rule="dp", alpha=0.5, beta=0.7, schedule="backward").infer(x, y)
    dpt = Learner(model, rule="dpT", alpha=0.5, beta=0.7, schedule="backward").infer(x, y)
    for k in range(5):
        torch.testing.assert_close(dp.plus[k], dpt.plus[k])
        torch.testing.assert_close(dp.minus[k], dpt.minus[k])


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_dpT_extreme_alpha_reaches_fixed_point_in_one_backward_sweep(alpha, loss):
    torch.manual_seed(5)
    model = _conv_net().double()
    x, y = torch.randn(5, 2, 8, 8, dtype=torch.float64), torch.randint(0, 3, (5,))
    once = Learner(model, rule="dpT", alpha=alpha, beta=2.0, schedule="backward", loss=loss).infer(x, y)
    more = Learner(model, rule="dpT", alpha=alpha, beta=2.0, schedule="backward", passes=3, loss=loss).infer(x, y)
    also = Learner(model, rule="dpT", alpha=alpha, beta=2.0, schedule="fwbw3", loss=loss).infer(x, y)
    feed_forward = Learner(model, rule="dpT").feed_forward(x)
    for k in range(1, 5):
        torch.testing.assert_close(once.mean(k), feed_forward[k])  # s̄ stays feed-forward
        for other in (more, also):
            torch.testing.assert_close(once.plus[k], other.plus[k])
            torch.testing.assert_close(once.minus[k], other.minus[k])
    assert not torch.allclose(once.plus[1], once.minus[1])  # the nudge did reach the first layer


def test_dp_is_not_at_a_fixed_point_after_one_sweep():
    # the contrast to the DP⊤ fact above, so that test cannot pass vacuously
    torch.manual_seed(5)
    model = models.mlp([4, 6, 6, 3]).double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    once = Learner(model, rule="dp", alpha=1.0, beta=2.0, schedule="backward").infer(x, y)
    more = Learner(model, rule="dp", alpha=1.0, beta=2.0, schedule="backward", passes=3).infer(x, y)
    assert not torch.allclose(once.plus[1], more.plus[1])


def test_step_accumulates_like_backward_and_reports_feed_forward_loss():
    torch.manual_seed(6)
    model = models.mlp([4, 5, 3]).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    learner = Learner(model, rule="dpT", alpha=0.0, beta=0.1)
    once = rule_grads(model, x, y, rule="dpT", alpha=0.0, beta=0.1)
    model.zero_grad()
    learner.step(x, y)
    result = learner.step(x, y)
    for p, g in zip(model.parameters(), once):
        torch.testing.assert_close(p.grad, 2 * g)
    torch.testing.assert_close(result.logits, model(x).detach())
    assert result.loss == pytest.approx(float(F.cross_entropy(model(x), y).detach()))
    assert result.states_finite


def test_float_targets_equal_class_indices():
    torch.manual_seed(7)
    model = models.mlp([4, 5, 3]).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    by_index = rule_grads(model, x, y, rule="dp", alpha=0.2, beta=0.3, schedule="fw2", loss="mse")
    by_vector = rule_grads(
        model, x, F.one_hot(y, 3).double(), rule="dp", alpha=0.2, beta=0.3, schedule="fw2", loss="mse"
    )
    for a, b in zip(by_index, by_vector):
        torch.testing.assert_close(a, b)


# -- bad settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"beta": 0.0}, "beta"),
        ({"beta": -1.0}, "beta"),
        ({"beta": float("inf")}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"passes": 0}, "passes"),
        ({"rule": "hebb"}, "unknown rule"),
        ({"schedule": "diagonal"}, "unknown schedule"),
        ({"loss": "hinge"}, "unknown loss"),
        ({"implementation": "magic"}, "unknown implementation"),
    ],
)
def test_bad_settings_raise_value_error(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        Learner(models.mlp([3, 4, 2]), **kwargs)


def test_bad_targets_raise_value_error_for_every_rule():
    model = models.mlp([3, 4, 2])
    x = torch.randn(5, 3)
    for rule in ("bp", "dp", "dpT"):
        with pytest.raises(ValueError, match="target"):
            Learner(model, rule=rule, schedule="fw2").step(x, torch.zeros(5, 3))


def test_public_interface_example_runs():
    model = dualprop.models.mlp([64, 32, 10])
    learner = dualprop.Learner(
        model, rule="dpT", alpha=0.0, beta=0.1, schedule="forward-backward", passes=3, loss="cross_entropy"
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    result = learner.step(x, y)
    opt.step()
    assert isinstance(result.loss, float) and result.logits.shape == (8, 10)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    states = learner.infer(x, y)
    assert len(states.plus) == len(states.minus) == 3 and states.plus[0] is x


def test_all_finite_flags_any_non_finite_compartment():
    torch.manual_seed(8)
    model = models.mlp([4, 5, 3]).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    states = Learner(model, rule="dp", schedule="fw2").infer(x, y)
    assert states.all_finite()
    for compartments in (states.plus, states.minus):
        for k in (1, 2):
            saved = compartments[k]
            compartments[k] = saved.clone()
            compartments[k][0, 0] = float("nan")
            assert not states.all_finite()
            compartments[k] = saved


@pytest.mark.parametrize("rule", ["dp", "dpT"])
def test_a_step_whose_compartments_overflow_reports_them_non_finite_though_its_loss_is_finite(rule):
    torch.manual_seed(9)
    model = models.mlp([4, 5, 5, 3])
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    assert Learner(copy.deepcopy(model), rule=rule, beta=0.1, schedule="fw2").step(x, y).states_finite
    learner = Learner(model, rule=rule, beta=3e38, schedule="fw2")  # compartments beyond float32's range
    assert not learner.infer(x, y).all_finite()
    result = learner.step(x, y)
    assert math.isfinite(result.loss) and not result.states_finite


def test_blocks_whose_neurons_never_move_get_exactly_zero_updates_without_running_again():
    torch.manual_seed(10)
    model = nn.Sequential(
        nn.Linear(6, 8),
        nn.LayerNorm(8),
        nn.ReLU(),
        nn.Linear(8, 8),
        nn.ReLU(),
        nn.Linear(8, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    ).double()
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.randint(0, 3, (5,))
    learner = Learner(model, rule="dpT", alpha=0.5, beta=0.1, schedule="fw2")
    states = learner.infer(x, y)  # forward ×2 moves only the output and the neuron below it
    assert [torch.equal(states.plus[k], states.minus[k]) for k in (1, 2, 3, 4)] == [True, True, False, False]
    # J by hand through the plain layers, every term included
    layers = [model[0:2], model[3], model[5], model[7]]
    j = sum(((states.plus[k] - states.minus[k]) * layers[k - 1](states.mean(k - 1))).sum() for k in range(1, 5))
    expected = torch.autograd.grad(-j / (0.1 * 5), list(model.parameters()))
    calls = []
    model[1].register_forward_hook(lambda module, inputs, output: calls.append(1))
    learner.step(x, y)
    assert calls == [1]  # the feed-forward pass only: the unmoved block is not run for the update
    for parameter, reference in zip(model.parameters(), expected):
        torch.testing.assert_close(parameter.grad, reference, rtol=1e-12, atol=1e-15)
    assert all(torch.count_nonzero(p.grad) == 0 for p in [*model[0].parameters(), *model[1].parameters()])
