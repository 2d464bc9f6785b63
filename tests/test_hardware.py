"""Noisy, low-precision and asynchronous dyadic neurons: the perturbation against independent statistics,
its wiring into the Learner's state loop and into backprop, the random schedule, and the settings."""

import math

import pytest
import torch
from torch import nn

from dualprop import Learner
from dualprop.hardware import CompartmentPerturbation, noisy_backprop
from dualprop.schedules import layer_order, parse_schedule, random_order

from conftest import rule_grads


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 4)).double()


def _batch(n=16, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=generator, dtype=torch.float64), torch.randint(0, 4, (n,), generator=generator)


# -- the perturbation itself -------------------------------------------------------------------------------


def test_off_returns_the_input_itself_and_draws_nothing():
    s = torch.randn(5, 3)
    for quantum in (0.0, None):
        perturbation = CompartmentPerturbation(0.0, quantum, noise_seed=7)
        assert not perturbation.active
        assert perturbation(s) is s
    torch.manual_seed(3)
    before = torch.get_rng_state()
    CompartmentPerturbation(0.0, 0.0)(s)
    assert torch.equal(torch.get_rng_state(), before)


def test_noise_has_the_asked_standard_deviation_and_is_reproducible():
    s = torch.linspace(-2, 2, 200_000, dtype=torch.float64)
    noisy = CompartmentPerturbation(0.05, noise_seed=4)(s)
    error = noisy - s
    assert abs(float(error.mean())) < 4 * 0.05 / math.sqrt(s.numel())
    assert float(error.std()) == pytest.approx(0.05, rel=0.01)
    assert torch.equal(CompartmentPerturbation(0.05, noise_seed=4)(s), noisy)
    assert not torch.equal(CompartmentPerturbation(0.05, noise_seed=5)(s), noisy)


def test_stochastic_rounding_lands_on_the_grid_next_to_the_value():
    q = 0.25
    s = torch.randn(10_000, dtype=torch.float64) * 3
    rounded = CompartmentPerturbation(state_quantum=q, noise_seed=1)(s)
    steps = rounded / q
    assert torch.allclose(steps, steps.round(), atol=1e-9)  # multiples of q
    assert bool(((rounded - s).abs() < q).all())  # one of the two neighbours
    assert torch.equal(torch.floor(s / q) * q <= rounded, torch.ones_like(s, dtype=torch.bool))
    exact = torch.tensor([0.5, -0.75, 1.0], dtype=torch.float64)  # values on the grid stay put
    assert torch.equal(CompartmentPerturbation(state_quantum=q)(exact), exact)


def test_stochastic_rounding_is_unbiased():
    q, value, draws = 0.1, 0.03, 400_000  # 0.3 of the way from 0 to q
    rounded = CompartmentPerturbation(state_quantum=q, noise_seed=2)(torch.full((draws,), value, dtype=torch.float64))
    up = float((rounded > value).double().mean())
    assert torch.unique(rounded).tolist() == pytest.approx([0.0, q])
    # Bernoulli(0.3): standard error sqrt(0.21 / N) ≈ 7e-4.
    assert up == pytest.approx(0.3, abs=4 * math.sqrt(0.21 / draws))
    assert float(rounded.mean()) == pytest.approx(value, abs=4 * q * math.sqrt(0.21 / draws))


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("state_noise", {"state_noise": -0.1}),
        ("state_noise", {"state_noise": float("nan")}),
        ("state_noise", {"state_noise": True}),
        ("state_quantum", {"state_quantum": -1.0}),
        ("state_quantum", {"state_quantum": float("inf")}),
        ("noise_seed", {"noise_seed": -1}),
        ("noise_seed", {"noise_seed": 1.5}),
    ],
)
def test_bad_settings_name_the_setting(name, kwargs):
    with pytest.raises(ValueError, match=name):
        CompartmentPerturbation(**kwargs)
    with pytest.raises(ValueError, match=name):
        Learner(_mlp(), **kwargs)


# -- the state loop -----------------------------------------------------------------------------------------


def test_zero_noise_is_bit_identical_to_no_noise():
    x, y = _batch()
    for rule in ("dp", "dpT", "dp-damped", "bp"):
        plain = rule_grads(_mlp(), x, y, rule=rule, schedule="fwbw2")
        zero = rule_grads(_mlp(), x, y, rule=rule, schedule="fwbw2", state_noise=0.0, state_quantum=0.0, noise_seed=9)
        assert all(torch.equal(a, b) for a, b in zip(plain, zero)), rule


def test_noisy_steps_are_reproducible_per_seed():
    x, y = _batch()
    settings = dict(rule="dpT", beta=0.5, schedule="random", passes=2, state_noise=0.05, state_quantum=0.01)
    first = rule_grads(_mlp(), x, y, noise_seed=3, **settings)
    again = rule_grads(_mlp(), x, y, noise_seed=3, **settings)
    other = rule_grads(_mlp(), x, y, noise_seed=4, **settings)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_measured_compartment_noise_on_a_fixed_network():
    # One backward sweep of DP⊤: the output layer is visited first, while its drive is still the exact
    # feed-forward one, so its compartments differ from the noise-free ones by the noise alone.
    x, y = _batch(n=4000)
    model, sigma = _mlp(), 0.02
    clean = Learner(model, rule="dpT", alpha=0.5, beta=0.3, schedule="backward", implementation="generic").infer(x, y)
    noisy = Learner(model, rule="dpT", alpha=0.5, beta=0.3, schedule="backward", state_noise=sigma, noise_seed=1).infer(
        x, y
    )
    plus, minus = noisy.plus[-1] - clean.plus[-1], noisy.minus[-1] - clean.minus[-1]
    n = plus.numel()
    assert float(plus.std()) == pytest.approx(sigma, rel=0.03)
    assert float(minus.std()) == pytest.approx(sigma, rel=0.03)
    assert abs(float(plus.mean())) < 4 * sigma / math.sqrt(n)
    # Independent draws: the difference s⁺ − s⁻ carries noise of standard deviation √2·σ.
    assert float((plus - minus).std()) == pytest.approx(math.sqrt(2) * sigma, rel=0.03)
    assert abs(float(torch.corrcoef(torch.stack([plus.flatten(), minus.flatten()]))[0, 1])) < 4 / math.sqrt(n)
    # The feed-forward prediction stays exact.
    assert torch.equal(noisy.logits, clean.logits)
    # Every hidden layer was perturbed too.
    assert all(not torch.equal(noisy.plus[k], clean.plus[k]) for k in (1, 2))


def test_quantised_compartments_lie_on_the_grid():
    x, y = _batch()
    q = 0.125
    states = Learner(_mlp(), rule="dp", schedule="fw2", state_quantum=q).infer(x, y)
    for s in states.plus[1:] + states.minus[1:]:
        assert torch.allclose(s / q, (s / q).round(), atol=1e-9)


def test_fused_refuses_noise_and_auto_falls_back():
    settings = dict(rule="dpT", alpha=0.0, schedule="backward")
    assert Learner(_mlp(), **settings).implementation == "fused"
    for hardware in ({"state_noise": 0.1}, {"state_quantum": 0.1}):
        with pytest.raises(ValueError, match="state_noise and state_quantum need implementation='generic'"):
            Learner(_mlp(), implementation="fused", **settings, **hardware)
        assert Learner(_mlp(), **settings, **hardware).implementation == "generic"
    with pytest.raises(ValueError, match="schedule='backward'"):
        Learner(_mlp(), rule="dpT", alpha=0.0, schedule="random", implementation="fused")


def test_adversarial_refuses_noise():
    with pytest.raises(ValueError, match="not to rule 'adversarial'"):
        Learner(_mlp(), rule="adversarial", state_noise=0.1)


# -- backprop with the same noise ----------------------------------------------------------------------------


def test_noisy_neuron_perturbs_value_and_per_sample_gradient():
    batch, sigma = 50, 0.1
    s = torch.randn(batch, 2000, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(batch, 2000, dtype=torch.float64) / batch
    with noisy_backprop(CompartmentPerturbation(sigma, noise_seed=0), [], batch) as neuron:
        out = neuron(s)
    (out * upstream).sum().backward()
    out = out.detach()
    assert float((out - s.detach()).std()) == pytest.approx(sigma, rel=0.02)
    assert float((s.grad - upstream).std()) == pytest.approx(sigma / batch, rel=0.02)


def test_bp_noise_hits_every_activation_site_and_is_removed_afterwards():
    model = _mlp()
    x, y = _batch()
    clean = model(x).detach()
    with noisy_backprop(CompartmentPerturbation(0.5), [model[1], model[3]], batch=len(x)):
        hidden_noisy = model(x).detach()  # the sites alone, logits untouched
    with noisy_backprop(CompartmentPerturbation(0.0), [model[1], model[3]], batch=len(x)) as neuron:
        assert torch.equal(neuron(model(x)).detach(), clean)  # inactive: nothing registered
    assert not torch.equal(hidden_noisy, clean)
    assert torch.equal(model(x).detach(), clean)  # no hook stays registered
    noisy_bp = rule_grads(_mlp(), x, y, rule="bp", state_noise=0.05)
    clean_bp = rule_grads(_mlp(), x, y, rule="bp")
    assert not any(torch.equal(a, b) for a, b in zip(noisy_bp, clean_bp))


# -- the random schedule ---------------------------------------------------------------------------------


def test_random_order_visits_every_neuron_uniformly():
    depth, passes, steps = 5, 3, 4000
    generator = torch.Generator().manual_seed(0)
    orders = [random_order(depth, passes, generator) for _ in range(steps)]
    assert all(len(order) == depth * passes for order in orders)
    counts = torch.bincount(torch.tensor(orders).flatten(), minlength=depth + 1)
    assert counts[0] == 0
    visits = depth * passes * steps
    expected = visits / depth
    # Each count is Binomial(visits, 1/L): a per-neuron average of K visits per step.
    for count in counts[1:].tolist():
        assert abs(count - expected) < 4 * math.sqrt(visits * (1 / depth) * (1 - 1 / depth))
    assert len({tuple(o) for o in orders[:50]}) > 40  # a new order every step
    assert random_order(depth, passes, torch.Generator().manual_seed(0)) == orders[0]


def test_random_schedule_names_and_errors():
    assert parse_schedule("random") == ("random", 1)
    assert parse_schedule("random4") == ("random", 4)
    with pytest.raises(ValueError, match="no fixed layer order"):
        layer_order("random", 3, 2)
    with pytest.raises(ValueError, match="passes"):
        random_order(3, 0, torch.Generator())


def test_learner_draws_a_new_random_order_every_step():
    x, y = _batch()
    learner = Learner(_mlp(), rule="dp", alpha=1.0, beta=0.5, schedule="random", passes=1, noise_seed=2)
    results = [learner.infer(x, y) for _ in range(12)]
    distinct = {tuple(bool(torch.equal(r.plus[k], r.minus[k])) for k in (1, 2, 3)) for r in results}
    assert len(distinct) > 1  # which neurons moved differs between steps


# -- settings of a training run ---------------------------------------------------------------------------


def test_config_and_flags_carry_the_hardware_settings(tmp_path, capsys):
    from dualprop.cli import main
    from dualprop.training.config import TrainConfig, load_config, save_config

    config = TrainConfig(state_noise=0.02, state_quantum=0.05, noise_seed=7, schedule="random3").resolved()
    save_config(config, tmp_path / "c.toml")
    assert load_config(tmp_path / "c.toml") == config
    assert (config.schedule, config.passes) == ("random", 3)
    assert {k: config.learner_settings()[k] for k in ("state_noise", "state_quantum", "noise_seed")} == {
        "state_noise": 0.02,
        "state_quantum": 0.05,
        "noise_seed": 7,
    }
    status = main(
        [
            "train",
            "--state-noise",
            "0.01",
            "--state-quantum",
            "0.125",
            "--noise-seed",
            "4",
            "--schedule",
            "random",
            "--passes",
            "2",
            "--hidden",
            "8",
            "--epochs",
            "1",
            "--limit-batches",
            "2",
            "--no-baseline",
            "--out",
            str(tmp_path / "runs"),
            "--no-progress",
        ]
    )
    assert status == 0
    (saved,) = (tmp_path / "runs").glob("*/config.toml")
    loaded = load_config(saved)
    assert (loaded.state_noise, loaded.state_quantum, loaded.noise_seed, loaded.schedule, loaded.passes) == (
        0.01,
        0.125,
        4,
        "random",
        2,
    )
    capsys.readouterr()
    assert main(["train", "--state-noise", "-0.5", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err == "dualprop: error: state_noise must be a finite number >= 0, got -0.5\n"
    assert not (tmp_path / "bad").exists()
