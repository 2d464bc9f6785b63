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

from typing import Callable

import torch
from torch import Tensor

DYADIC_RULES = ("dp", "dpT", "dp-damped")
RULES = ("bp", "adversarial") + DYADIC_RULES


def nudge_weights(rule: str, alpha: float) -> tuple[float, float]:
    """``(c⁺, c⁻)``: ``(α, 1−α)`` for DP and damped DP, ``(1−α, α)`` for DP⊤."""
    if rule == "dpT":
        return 1.0 - alpha, alpha
    if rule in ("dp", "dp-damped"):
        return alpha, 1.0 - alpha
    raise ValueError(f"rule {rule!r} has no dyadic compartments")


def output_nudge_is_fixed(rule: str) -> bool:
    """DP⊤ nudges the output with the gradient at the feed-forward prediction; DP at the current drive."""
    return rule == "dpT"


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
