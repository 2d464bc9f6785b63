"""Gradient attacks on inputs in data range: FGSM and PGD under the ℓ∞ and ℓ2 norms.

The model includes its own input normalisation, so attacks move raw inputs ``x`` (e.g. in [0, 1]) and
clamp to the data range. With ``g = ∇ₓ loss_fn(model(x), y)``, one step of size ``a`` is

    ℓ∞:  x ← x + a·sign(g)            ℓ2:  x ← x + a·g / ‖g‖   (per sample),

and PGD projects back onto the ε-ball around the clean input (ℓ∞: clip each coordinate; ℓ2: rescale
each sample's perturbation to norm ≤ ε) and onto the data range after every step. Clamping to the data
range never leaves the ε-ball, since it only shrinks each coordinate of the perturbation.
Gradients are taken with respect to the input only; parameter ``.grad`` fields are left untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import Tensor, nn

from dualprop.analysis.lipschitz import eval_mode
from dualprop.spectral import per_sample_norm

Norm = Literal["linf", "l2"]
LossFn = Callable[[Tensor, Tensor], Tensor]
Attack = Callable[[nn.Module, Tensor, Tensor], Tensor]
Clamp = tuple[float, float] | None
NORMS = ("linf", "l2")


def _check_settings(eps: float, norm: str, clamp: Clamp) -> None:
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}.")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")
    if clamp is not None and not clamp[0] <= clamp[1]:
        raise ValueError(f"clamp must be a data range (lo, hi) with lo <= hi, got {clamp}.")


def _clamp(x: Tensor, clamp: Clamp) -> Tensor:
    return x if clamp is None else x.clamp(clamp[0], clamp[1])


def _input_gradient(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor) -> Tensor:
    """``∇ₓ loss_fn(model(x), y)``, computed without accumulating into any parameter's ``.grad``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss_fn(model(x), y), x)
    return grad


def _ascent_direction(grad: Tensor, norm: Norm) -> Tensor:
    """Steepest-ascent direction of unit size: ``sign(g)`` for ℓ∞, ``g / ‖g‖`` per sample for ℓ2."""
    if norm == "linf":
        return grad.sign()
    return grad / per_sample_norm(grad).clamp_min(torch.finfo(grad.dtype).tiny)


def _project(x_adv: Tensor, x: Tensor, eps: float, norm: Norm, clamp: Clamp) -> Tensor:
    """Project onto ``{x' : ‖x' − x‖ ≤ eps}`` and then onto the data range."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        scale = (eps / per_sample_norm(delta).clamp_min(torch.finfo(delta.dtype).tiny)).clamp(max=1.0)
        delta = delta * scale
    return _clamp(x + delta, clamp)


def _random_start(x: Tensor, eps: float, norm: Norm, generator: torch.Generator | None) -> Tensor:
    """A point drawn uniformly from the eps-ball around ``x`` (before clamping to the data range)."""
    source = generator.device if generator is not None else torch.device("cpu")
    if norm == "linf":
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=source) * 2 - 1
        return x + eps * noise.to(x.device)
    direction = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=source)
    direction = direction / per_sample_norm(direction)
    dimension = x[0].numel()
    radius = torch.rand((x.shape[0],), generator=generator, dtype=x.dtype, device=source) ** (1.0 / dimension)
    radius = radius.view(-1, *([1] * (x.dim() - 1)))
    return x + (eps * radius * direction).to(x.device)


def fgsm(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    eps: float,
    clamp: Clamp = (0.0, 1.0),
    norm: Norm = "linf",
) -> Tensor:
    """Fast gradient (sign) method: ``clamp(x + eps·sign(∇ₓℓ))`` (ℓ∞) or ``clamp(x + eps·g/‖g‖)`` (ℓ2)."""
    _check_settings(eps, norm, clamp)
    with eval_mode(model):
        grad = _input_gradient(model, loss_fn, x, y)
    return _clamp(x.detach() + eps * _ascent_direction(grad, norm), clamp)


def pgd(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    eps: float,
    step_size: float,
    steps: int,
    norm: Norm = "linf",
    random_start: bool = True,
    clamp: Clamp = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient ascent on the loss within the eps-ball and the data range; returns the last iterate."""
    _check_settings(eps, norm, clamp)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    if step_size <= 0:
        raise ValueError(f"step_size must be positive, got {step_size}.")
    x = x.detach()
    x_adv = _project(_random_start(x, eps, norm, generator), x, eps, norm, clamp) if random_start else x
    with eval_mode(model):
        for _ in range(steps):
            grad = _input_gradient(model, loss_fn, x_adv, y)
            x_adv = _project(x_adv + step_size * _ascent_direction(grad, norm), x, eps, norm, clamp)
    return x_adv


def _batches(
    data: tuple[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]], batch_size: int
) -> Iterable[tuple[Tensor, Tensor]]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        return zip(x.split(batch_size), y.split(batch_size))
    return data


def adversarial_accuracy(
    model: nn.Module,
    data: tuple[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]],
    attack: Attack | None = None,
    batch_size: int = 256,
) -> float:
    """Fraction of samples whose class ``argmax model(attack(model, x, y))`` equals ``y``.

    ``data`` is a pair of tensors ``(x, y)`` (split into batches of ``batch_size``) or an iterable of
    ``(x, y)`` batches such as a DataLoader. ``attack=None`` gives the clean accuracy. Example::

        adversarial_accuracy(model, (x, y), lambda m, x, y: pgd(m, F.cross_entropy, x, y, 0.1, 0.02, 10))
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    parameter = next(model.parameters(), None)
    correct = total = 0
    with eval_mode(model):
        for x, y in _batches(data, batch_size):
            if parameter is not None:
                x, y = x.to(parameter.device), y.to(parameter.device)
            if attack is not None:
                x = attack(model, x, y)
            with torch.no_grad():
                correct += int((model(x).argmax(dim=1) == y).sum())
            total += y.shape[0]
    if total == 0:
        raise ValueError("adversarial_accuracy needs at least one sample, but the data was empty.")
    return correct / total
