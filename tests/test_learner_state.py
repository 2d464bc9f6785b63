"""Saved Learner states of the first layout (``tests/data/learner-v1-*.pt``) load into the current Learner.

The files were written by ``torch.save(learner.state_dict())`` after one ``step`` of the Learners that
:func:`_learner` builds (the model's parameters first multiplied by 4, so that damped DP's spectral norms exceed one
and its damping is not zero): Kolen–Pollack feedback weights as ``feedback_weights.{i}``, the damped-DP
power-iteration vectors as ``spectral_vector_{k}_{c}``, the noise and random-order generators' states.
"""

from pathlib import Path

import pytest
import torch

from dualprop import Learner, models
from dualprop.rules import damping_from_spectral_norm
from dualprop.training.checkpoint import atomic_save, load_checkpoint

DATA = Path(__file__).parent / "data"


def _learner(kind: str) -> Learner:
    model = models.mlp([5, 7, 6, 3])
    if kind == "kolen-pollack":
        return Learner(model, rule="dpT", alpha=0.5, schedule="fw2", feedback="kolen-pollack")
    return Learner(model, rule="dp-damped", alpha=0.5, schedule="random", passes=2, state_noise=0.01, noise_seed=3)


def _saved(kind: str) -> dict:
    return torch.load(DATA / f"learner-v1-{kind}.pt", weights_only=True)


@pytest.mark.parametrize("kind", ["kolen-pollack", "dp-damped"])
def test_first_layout_loads_the_model_exactly(kind):
    saved = _saved(kind)
    learner = _learner(kind)
    learner.load_state_dict(saved)
    for name, value in learner.model.state_dict().items():
        assert torch.equal(value, saved[f"model.{name}"])


def test_first_layout_kolen_pollack_feedback_weights_load():
    saved = _saved("kolen-pollack")
    learner = _learner("kolen-pollack")
    learner.load_state_dict(saved)
    loaded = learner.feedback_parameters()
    assert len(loaded) == 2
    for index, weight in enumerate(loaded):
        assert torch.equal(weight, saved[f"feedback_weights.{index}"])
    assert torch.equal(learner.feedback_weights[1], saved["feedback_weights.1"])


def test_first_layout_damping_warm_starts_from_the_saved_vectors_and_generators():
    saved = _saved("dp-damped")
    learner = _learner("dp-damped")
    learner.load_state_dict(saved)
    states = learner.feed_forward(torch.randn(2, 5))
    # one power-iteration step from the saved vector v of each chain block B_{k+1} = W_{k+1}·+b:
    # v ← WᵀWv / ‖WᵀWv‖, γ = ‖Wv‖
    expected = []
    for k, layer in ((1, learner.model[2]), (2, learner.model[4])):
        vector, weight = saved[f"spectral_vector_{k}_{k + 1}"], layer.weight.detach()
        w = vector @ weight.T @ weight
        gamma = float(((w / w.norm()) @ weight.T).norm())
        expected.append(damping_from_spectral_norm(gamma))
    assert learner.dampings(states) == pytest.approx(expected, rel=1e-5)
    state = learner.state_dict()
    assert torch.equal(state["noise_generator_cpu"], saved["noise_generator_cpu"])
    assert torch.equal(state["order_generator"], saved["order_generator"])


def test_earlier_checkpoint_layout_with_a_feedback_list_loads_into_the_learner(tmp_path):
    saved = _learner("kolen-pollack")
    feedback = [torch.randn_like(w) for w in saved.feedback_parameters()]
    atomic_save({"model": saved.model.state_dict(), "feedback": feedback, "epoch": 1}, tmp_path / "old.pt")
    learner = _learner("kolen-pollack")
    learner.load_state_dict(load_checkpoint(tmp_path / "old.pt")["learner"])
    for loaded, weight in zip(learner.feedback_parameters(), feedback):
        assert torch.equal(loaded, weight)


def test_a_version_1_damped_learner_saved_before_its_first_step_loads_strictly():
    learner = _learner("dp-damped")
    state = {key: value for key, value in learner.state_dict().items() if not key.startswith("damping.")}
    restored = _learner("dp-damped")
    restored.load_state_dict(state)  # no version: read as version 1, which had no vectors before a step
    assert all(buffer.numel() == 0 for buffer in restored.damping.buffers())
    with pytest.raises(RuntimeError, match="Missing key"):
        state = learner.state_dict()
        del state["damping.vector_1_2"]
        restored.load_state_dict(state)  # version 2 names every vector
