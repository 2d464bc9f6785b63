"""Dead units: the share of an activation's units that never fire on a set of inputs.

A ReLU unit is dead on a data set when its output is zero for every input of it; such a unit passes
no gradient (backprop's or a nudge), so a rule that kills many units stops learning through them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


@torch.no_grad()
def dead_fractions(model: nn.Module, inputs: Iterable[Tensor]) -> list[float]:
    """For every ``nn.ReLU`` module of ``model`` (in module order), the fraction of its output units
    (all positions of a feature map count as separate units) that are zero for every batch of
    ``inputs``: ``1 − mean_u [∃ n: f_u(x_n) > 0]``. The model is run in eval mode and restored."""
    activations = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    alive: list[Tensor | None] = [None] * len(activations)

    def recorder(index: int):
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            fired = (output > 0).flatten(1).any(dim=0)
            alive[index] = fired if alive[index] is None else alive[index] | fired

        return hook

    handles = [module.register_forward_hook(recorder(i)) for i, module in enumerate(activations)]
    was_training = model.training
    model.eval()
    try:
        for x in inputs:
            model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if any(a is None for a in alive):
        raise ValueError("dead_fractions needs at least one input batch reaching every ReLU")
    return [1.0 - float(a.float().mean()) for a in alive]
