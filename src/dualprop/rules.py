"""Compartment updates of a dyadic neuron: small pure functions of ``(a, Δ, g, α)``.

Both dual-propagation variants nudge the two compartments oppositely, with weights ``(c⁺, c⁻)``
that sum to one:

* hidden unit: ``s⁺ = f(a + c⁺ Δ)``, ``s⁻ = f(a − c⁻ Δ)``
* output unit: ``s⁺ = a − c⁺ g``, ``s⁻ = a + c⁻ g``

DP uses ``(c⁺, c⁻) = (α, 1−α)`` with ``g`` the loss gradient at the current output drive; DP⊤ uses
``(c⁺, c⁻) = (1−α, α)`` with ``g`` fixed at the feed-forward prediction. The compartments' mean is
``s̄ = α s⁺ + (1−α) s⁻``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from dualprop.checks import one_of


@dataclass(frozen=True)
class Rule:
    """What a learning rule is, for everything that depends on it (one instance per rule in :data:`RULE_TABLE`)."""

    name: str
    """The rule's setting, e.g. ``"dpT"``."""
    display_name: str
    """How tables and figures name it, e.g. ``"DP⊤"``."""
    dyadic: bool = False
    """Dyadic compartments inferred by the state loop; the update is ``∂J/∂θ`` of the surrogate ``J``.
    Otherwise the update is backprop of the batch-mean loss (at the moved input, if ``moves_input``)."""
    transposed: bool = False
    """DP⊤: compartment weights ``(c⁺, c⁻) = (1−α, α)`` instead of ``(α, 1−α)``."""
    fixed_output_nudge: bool = False
    """The output is nudged by the loss gradient at the feed-forward prediction, not at the current drive."""
    damped: bool = False
    """Damped DP: the hidden updates are damped by the spectral norms of the next blocks."""
    fused: bool = False
    """The fused single sweep (:mod:`dualprop.fused`) can run it."""
    moves_input: bool = False
    """Adversarial training: backprop at ``x + β ∇ₓℓ`` (no compartments to perturb)."""


RULE_TABLE: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("bp", "backprop"),
        Rule("adversarial", "adversarial", moves_input=True),
        Rule("dp", "DP", dyadic=True, fused=True),
        Rule("dpT", "DP⊤", dyadic=True, transposed=True, fixed_output_nudge=True, fused=True),
        Rule("dp-damped", "damped DP", dyadic=True, damped=True),
    )
}
RULES = tuple(RULE_TABLE)
DYADIC_RULES = tuple(name for name, rule in RULE_TABLE.items() if rule.dyadic)
FUSED_RULES = tuple(name for name, rule in RULE_TABLE.items() if rule.fused)


def find_rule(name: str) -> Rule:
    """The :class:`Rule` called ``name``; ``ValueError`` listing the rules for any other name."""
    return RULE_TABLE[one_of("rule", name, RULES)]


def display_name(name: str) -> str:
    """How tables and figures name the rule ``name`` (``"DP⊤"`` for ``dpT``)."""
    return find_rule(name).display_name


def nudge_weights(rule: Rule | str, alpha: float) -> tuple[float, float]:
    """``(c⁺, c⁻)``: ``(α, 1−α)`` for DP and damped DP, ``(1−α, α)`` for DP⊤."""
    rule = find_rule(rule) if isinstance(rule, str) else rule
    if not rule.dyadic:
        raise ValueError(f"rule {rule.name!r} has no dyadic compartments")
    return (1.0 - alpha, alpha) if rule.transposed else (alpha, 1.0 - alpha)


def mean_state(plus: Tensor, minus: Tensor, alpha: float) -> Tensor:
    """``s̄ = α s⁺ + (1−α) s⁻`` (one fused ``lerp`` kernel)."""
    return torch.lerp(minus, plus, alpha)


def hidden_compartments(
    activation: Callable[[Tensor], Tensor], drive: Tensor, feedback: Tensor, weights: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    """``s⁺ = f(a + c⁺Δ)``, ``s⁻ = f(a − c⁻Δ)``."""
    c_plus, c_minus = weights
    return (
        activation(torch.add(drive, feedback, alpha=c_plus)),
        activation(torch.add(drive, feedback, alpha=-c_minus)),
    )


def damped_hidden_compartments(
    activation: Callable[[Tensor], Tensor],
    drive: Tensor,
    feedback: Tensor,
    weights: tuple[float, float],
    plus: Tensor,
    minus: Tensor,
    damping: float,
) -> tuple[Tensor, Tensor]:
    """Damped DP: ``s^± ← f((a ± c^±Δ + λ s^±) / (1 + λ))`` with damping ``λ = L_k ≥ 0``."""
    c_plus, c_minus = weights
    scale = 1.0 / (1.0 + damping)
    return (
        activation((drive + c_plus * feedback + damping * plus) * scale),
        activation((drive - c_minus * feedback + damping * minus) * scale),
    )


def output_compartments(drive: Tensor, nudge: Tensor, weights: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """``s⁺ = a − c⁺ g``, ``s⁻ = a + c⁻ g`` with ``g = β ∇ℓ`` per sample."""
    c_plus, c_minus = weights
    return torch.add(drive, nudge, alpha=-c_plus), torch.add(drive, nudge, alpha=c_minus)


def damping_from_spectral_norm(gamma: float) -> float:
    """``L_k = max(0, (γ_k² − 1) / 2)`` for a next block of spectral norm ``γ_k``."""
    return max(0.0, (gamma * gamma - 1.0) / 2.0)
