"""The fused single sweep: backprop with each activation's derivative replaced by a finite difference.

One ``backward`` sweep of dual propagation visits the layers ``L, L−1, …, 1`` once. Every drive it
computes is then a feed-forward pre-activation ``a_k`` and every feedback is a vector–Jacobian product at
feed-forward states, so the sweep is ordinary backprop of the batch-mean loss in which the activation's
backward ``u ↦ f'(a)·u`` becomes

    u ↦ (f(a + c₁·β·u) − f(a − c₂·β·u)) / β,

with ``(c₁, c₂) = (α, 1−α)`` for DP⊤ and ``(1−α, α)`` for DP (the compartment weights ``(c⁻, c⁺)`` of
:func:`dualprop.rules.nudge_weights`). Indeed the sweep sets ``δ_L = s⁺_L − s⁻_L = −β ∇ℓ`` and, for a
hidden layer, ``δ_k = f(a_k + c⁺Δ_k) − f(a_k − c⁻Δ_k)`` with ``Δ_k = J_{B_{k+1}}ᵀ δ_{k+1}``; writing
``δ_k = −β·g_k`` gives ``g_k = (f(a_k + c⁻β u_k) − f(a_k − c⁺β u_k)) / β`` with ``u_k = J_{B_{k+1}}ᵀ g_{k+1}``,
and the weight update ``−1/(βB) J_θᵀ δ_k = J_θᵀ g_k / B`` is what autograd accumulates.

**Batch mean.** ``u`` is the *per-sample* gradient. The loss is the batch mean, so the gradient that
autograd hands to the activation is ``u / B``. The finite difference is not linear in ``u``, so the
backward multiplies the incoming gradient by ``B``, applies the finite difference, and divides by ``B``.

**Exactness.** The weight updates use the feed-forward states ``s_{k−1}``. The generic sweep uses the
mean states ``s̄_{k−1} = α s⁺ + (1−α) s⁻`` after inference, which are feed-forward exactly when DP⊤ has
``α ∈ {0, 1}``; there the two agree. Elsewhere this is the fast approximation of the ICML 2023 paper,
close to the generic sweep at ``α = ½`` and small ``β``.

**Design.** The sweep runs the model's captured graph (:mod:`dualprop.graph`) with every activation site —
module, function or tensor method — replaced by a :class:`FusedActivation`, as the forward of the caller's
own module: its ``forward`` is swapped for the fused graph during the call, so forward hooks see a normal
forward and a ``DistributedDataParallel`` wrapper averages the gradients as usual. The replacement modules
are built once and reused. The same holds on any graph: a residual network trains at backprop's cost.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from dualprop.graph import NeuronGraph, is_identity
from dualprop.losses import batch_loss
from dualprop.rules import FUSED_RULES, Rule, find_rule, nudge_weights
from dualprop.wrappers import forward_module, run_as_forward


def finite_difference_weights(rule: Rule | str, alpha: float) -> tuple[float, float]:
    """``(c₁, c₂)``: ``(α, 1−α)`` for DP⊤ and ``(1−α, α)`` for DP — the weights ``(c⁻, c⁺)`` swapped."""
    rule = find_rule(rule) if isinstance(rule, str) else rule
    if not rule.fused:
        raise ValueError(f"the fused sweep supports rules {', '.join(FUSED_RULES)}, not {rule.name!r}")
    c_plus, c_minus = nudge_weights(rule, alpha)
    return c_minus, c_plus


class DyadicActivationFunction(torch.autograd.Function):
    """``f(a)`` forward; backward ``v ↦ (f(a + c₁βBv) − f(a − c₂βBv)) / (βB)`` with ``B = a.shape[0]``.

    ``v`` is the incoming gradient of the batch-mean loss, ``u = B·v`` the per-sample one. Where a weight
    is zero (``α ∈ {0, 1}``) that end of the difference is ``f(a)`` itself, the forward output, reused.
    """

    @staticmethod
    def forward(
        ctx: Any,
        drive: Tensor,
        activation: Callable[[Tensor], Tensor],
        beta: float,
        weights: tuple[float, float],
    ) -> Tensor:
        output = activation(drive)
        ctx.save_for_backward(drive, output if 0.0 in weights else None)
        ctx.activation, ctx.beta, ctx.weights = activation, beta, weights
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None, None, None]:
        drive, output = ctx.saved_tensors
        c_1, c_2 = ctx.weights
        scale = ctx.beta * drive.shape[0]
        activation = ctx.activation
        if c_1 == 0.0:  # the difference in place in the one tensor computed here (no further allocation)
            difference = activation(torch.add(drive, grad_output, alpha=-c_2 * scale)).sub_(output).neg_()
        elif c_2 == 0.0:
            difference = activation(torch.add(drive, grad_output, alpha=c_1 * scale)).sub_(output)
        else:
            upper = activation(torch.add(drive, grad_output, alpha=c_1 * scale))
            difference = upper.sub_(activation(torch.add(drive, grad_output, alpha=-c_2 * scale)))
        return difference.div_(scale), None, None, None


class FusedActivation(nn.Module):
    """An activation module whose backward is the dyadic finite difference of :class:`DyadicActivationFunction`."""

    def __init__(self, activation: Callable[[Tensor], Tensor], beta: float, weights: tuple[float, float]):
        super().__init__()
        self.activation = activation
        self.beta = beta
        self.weights = weights

    def forward(self, drive: Tensor) -> Tensor:
        output: Tensor = DyadicActivationFunction.apply(drive, self.activation, self.beta, self.weights)  # type: ignore[no-untyped-call]
        return output


class FusedSweep:
    """One fused sweep per call: the model's graph with fused activations as its forward, then the loss."""

    def __init__(self, graph: NeuronGraph, rule: Rule | str, loss: str):
        self.rule = find_rule(rule) if isinstance(rule, str) else rule
        finite_difference_weights(self.rule, 0.5)  # validates the rule
        self.graph = graph
        self.loss = loss
        # an identity neuron's difference quotient is the incoming gradient itself: its site stays the identity
        sites = [nn.Identity() if is_identity(a) else FusedActivation(a, 1.0, (0.5, 0.5)) for a in graph.activations]
        self._fused = [site for site in sites if isinstance(site, FusedActivation)]
        self._forward = graph.with_activations(sites)

    def objective(self, model: nn.Module, x: Tensor, y: Tensor, alpha: float, beta: float) -> tuple[Tensor, Tensor]:
        """The batch-mean loss through the fused activations (its ``backward()`` accumulates the fused
        update), computed as the forward of ``model`` (or of its DDP wrapper), and the detached logits."""
        weights = finite_difference_weights(self.rule, alpha)
        for fused in self._fused:
            fused.beta, fused.weights = beta, weights
        self.graph.new_step()
        logits = run_as_forward(forward_module(model), self._forward, x)
        return batch_loss(self.loss, logits, y), logits.detach()
