"""Empirical Lipschitz constant of a model: the input–output Jacobian's spectral norm over samples.

For each sample ``x_n``, ``L_n = σ_max(J_f(x_n))`` by power iteration on ``J_nᵀJ_n``
(:func:`dualprop.spectral.power_iteration`). Samples are independent in eval mode, so the batch Jacobian
is block diagonal and one batched JVP (or VJP) gives every per-sample product ``J_n v_n`` (or
``J_nᵀ u_n``) at once. ``max_n L_n`` is a lower bound on the
model's Lipschitz constant; :func:`dualprop.analysis.spectral.product_bound` is an upper bound.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dualprop.spectral import power_iteration, random_normal


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode for the duration, then restore each one's own mode."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@dataclass(frozen=True)
class LipschitzEstimate:
    """Per-sample spectral norms ``L_n = σ_max(J_f(x_n))`` and their maximum and mean."""

    max: float
    mean: float
    per_sample: Tensor

    def __float__(self) -> float:
        return self.max


def empirical_lipschitz(
    model: nn.Module,
    inputs: Tensor,
    iterations: int = 20,
    generator: torch.Generator | None = None,
) -> LipschitzEstimate:
    """Estimate ``max_n σ_max(J_f(x_n))`` over the samples of ``inputs`` (dimension 0) by power iteration.

    The model runs in eval mode (its modes are restored afterwards); no parameter gradients are touched.
    Each ``L_n`` is a lower bound that increases to the true value with ``iterations``.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}.")
    if inputs.dim() < 1 or inputs.shape[0] == 0 or not inputs.is_floating_point():
        raise ValueError(
            f"inputs must be a non-empty floating-point batch of samples, got shape {tuple(inputs.shape)} "
            f"and dtype {inputs.dtype}."
        )
    inputs = inputs.detach()
    with eval_mode(model), torch.no_grad():
        _, vjp_fn = torch.func.vjp(model, inputs)
        vector = random_normal(inputs.shape, inputs.dtype, inputs.device, generator)
        per_sample, _ = power_iteration(
            lambda v: torch.func.jvp(model, (inputs,), (v,))[1], lambda u: vjp_fn(u)[0], vector, iterations
        )
    return LipschitzEstimate(max=float(per_sample.max()), mean=float(per_sample.mean()), per_sample=per_sample)
