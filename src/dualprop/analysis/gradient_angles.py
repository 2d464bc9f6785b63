"""Gradient fidelity: the angle between a learning rule's weight update and backprop's gradient.

For a layer with rule update ``u`` and backprop gradient ``g`` of the batch-mean loss (same batch, same
weights), both flattened and concatenated over the layer's parameters::

    cos θ = ⟨u, g⟩ / (‖u‖ ‖g‖),        θ = arccos(cos θ) in degrees.

A layer is a block ``B_k`` of the layered network (all its parameters together) or, with
``per="parameter"``, each parameter tensor on its own. Where ``u`` or ``g`` is zero the angle is
undefined and reported as NaN. Nothing here changes the caller's ``.grad``.

:class:`dualprop.analysis.angle_log.GradientAngleLog` writes these rows to a run's ``diagnostics.csv``
during training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dualprop.learner import Learner
from dualprop.losses import batch_loss

GROUPINGS = ("block", "parameter")


@dataclass(frozen=True)
class LayerAngle:
    """Cosine and angle (degrees) between the rule's update and backprop's gradient for one layer."""

    layer: str
    cosine: float
    angle: float


def backprop_gradients(model: nn.Module, loss: str, x: Tensor, y: Tensor) -> list[Tensor]:
    """``∇_θ mean_n ℓ(model(x_n), y_n)`` for every parameter, by ``torch.autograd.grad`` (``.grad`` untouched)."""
    parameters = list(model.parameters())
    with torch.enable_grad():
        value = batch_loss(loss, model(x), y)
        grads = torch.autograd.grad(value, parameters, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(parameters, grads)]


def rule_update(learner: Learner, x: Tensor, y: Tensor) -> list[Tensor]:
    """The update ``learner.step(x, y)`` accumulates, per model parameter; ``.grad`` is restored after.

    The learner's own state moves as in any step (damped DP's warm-started power iteration)."""
    parameters = list(learner.model.parameters()) + learner.feedback_parameters()
    saved = [p.grad for p in parameters]
    for p in parameters:
        p.grad = None
    try:
        learner.step(x, y)
        update = [
            torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in learner.model.parameters()
        ]
    finally:
        for p, grad in zip(parameters, saved):
            p.grad = grad
    return update


def layer_groups(learner: Learner, per: str = "block") -> list[tuple[str, list[int]]]:
    """``(layer name, indices into model.parameters())`` per block (``"block k"``) or per parameter
    (its name in ``model.named_parameters()``)."""
    if per not in GROUPINGS:
        raise ValueError(f"per must be one of {', '.join(GROUPINGS)}, got {per!r}")
    named = list(learner.model.named_parameters())
    if per == "parameter":
        return [(name, [i]) for i, (name, _) in enumerate(named)]
    index_of = {id(p): i for i, (_, p) in enumerate(named)}
    groups = []
    for k, block in enumerate(learner.network.blocks, start=1):
        indices = [index_of[id(p)] for p in block.parameters() if id(p) in index_of]
        if indices:
            groups.append((f"block {k}", indices))
    return groups


def cosine_angle(u: Tensor, g: Tensor) -> tuple[float, float]:
    """``(cos θ, θ in degrees)`` between two flat vectors, computed in float64; NaN if either is zero."""
    u, g = u.double(), g.double()
    norms = float(u.norm() * g.norm())
    if norms == 0.0 or not math.isfinite(norms):
        return math.nan, math.nan
    cosine = max(-1.0, min(1.0, float(u @ g) / norms))
    return cosine, math.degrees(math.acos(cosine))


def compare_updates(
    groups: Sequence[tuple[str, list[int]]], update: Sequence[Tensor], reference: Sequence[Tensor]
) -> list[LayerAngle]:
    """One :class:`LayerAngle` per group, the group's tensors flattened and concatenated."""
    result = []
    for name, indices in groups:
        u = torch.cat([update[i].flatten() for i in indices])
        g = torch.cat([reference[i].flatten() for i in indices])
        result.append(LayerAngle(name, *cosine_angle(u, g)))
    return result


def gradient_angles(
    learner: Learner, x: Tensor, y: Tensor, per: str = "block", update: Sequence[Tensor] | None = None
) -> list[LayerAngle]:
    """Per-layer angle between the learner's update on ``(x, y)`` and backprop's gradient there.

    ``update`` may pass the rule's update already computed on this batch at these weights (for
    example the ``.grad`` a training step just accumulated); otherwise it is computed by
    :func:`rule_update`. The caller's ``.grad`` is left as it was.
    """
    groups = layer_groups(learner, per)
    if update is None:
        update = rule_update(learner, x, y)
    reference = backprop_gradients(learner.model, learner.loss, x, y)
    return compare_updates(groups, update, reference)


def current_update(model: nn.Module) -> list[Tensor]:
    """The ``.grad`` of every parameter (zeros where none), detached copies."""
    return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in model.parameters()]


def epoch_matrix(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[int], list[list[float]]]:
    """``(layers, epochs, mean angle[layer][epoch])`` from log rows; NaN where an epoch has no check."""
    layers = list(dict.fromkeys(row["layer"] for row in rows))
    epochs = sorted({row["epoch"] for row in rows})
    sums: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        if math.isfinite(row["angle"]):
            sums.setdefault((row["layer"], row["epoch"]), []).append(row["angle"])
    matrix = [[(sum(v) / len(v)) if (v := sums.get((layer, e))) else math.nan for e in epochs] for layer in layers]
    return layers, epochs, matrix
