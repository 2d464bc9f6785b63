"""Losses and their per-sample output gradients.

* ``cross_entropy``: ``ℓ(z, y) = −Σ_c y_c log softmax(z)_c`` (y one-hot for class indices), gradient
  ``softmax(z) − y``;
* ``mse``: ``ℓ(z, y) = ½‖z − y‖²`` (y one-hot for class indices), gradient ``z − y``.

The output holds logits ``(B, C)``, or ``(B, *, C)`` with classes along the last dimension: one prediction
per position, e.g. ``(B, T, C)`` for next-token training. Targets are class indices (an integer tensor shaped
like the output without its class dimension: ``(B,)`` or ``(B, *)``) or float vectors shaped like the output;
:func:`check_target` refuses anything else with a ``ValueError`` that says what to change.

A sample's loss is the mean of ``ℓ`` over its ``P`` positions (``P = 1`` for ``(B, C)``); the reported loss
is the batch mean, i.e. the mean over all ``B·P`` positions. The gradient is per sample (not scaled by
``1/B``): ``B`` times the gradient of the batch mean, i.e. ``(softmax(z) − y) / P`` at every position.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dualprop import checks

LOSSES = ("cross_entropy", "mse")


def check_loss(name: str) -> str:
    """Return ``name`` if it is a known loss, else raise ``ValueError``."""
    return checks.one_of("loss", name, LOSSES)


def check_target(name: str, logits: Tensor, target: Tensor) -> None:
    """Refuse targets that would be read silently wrong: not a tensor, boolean, on another device than
    the output, or (for ``cross_entropy``) float labels instead of integer class indices; and an output
    without a class dimension."""
    if not isinstance(target, Tensor):
        raise ValueError(
            f"targets must be a torch.Tensor, got {type(target).__name__}: convert them with torch.as_tensor(y)"
        )
    if logits.dim() < 2:
        raise ValueError(
            f"the network's output has shape {tuple(logits.shape)}: a loss needs samples along the first "
            "dimension and classes along the last, e.g. (B, C) or (B, T, C)"
        )
    if target.dtype == torch.bool:
        raise ValueError(
            "targets are boolean: give class indices as integers (y.long()) or target vectors as floats (y.float())"
        )
    if target.device != logits.device:
        raise ValueError(
            f"targets are on {target.device} but the network's output is on {logits.device}: "
            f"move them with y.to({str(logits.device)!r})"
        )
    if name == "cross_entropy" and target.is_floating_point() and target.shape == logits.shape[:-1]:
        raise ValueError(
            f"cross_entropy takes class indices as an integer tensor, got {target.dtype} labels: "
            f"convert them with y.long() (or give float target distributions of shape "
            f"{tuple(logits.shape)})"
        )


def positions(logits: Tensor) -> int:
    """``P``: the number of predictions per sample, the product of the dimensions between the batch and
    the classes (1 for ``(B, C)``)."""
    return math.prod(logits.shape[1:-1])


def target_distribution(logits: Tensor, target: Tensor) -> Tensor:
    """Targets as float vectors shaped like ``logits``: class indices (shape ``logits.shape[:-1]``) become
    one-hot vectors along the last dimension."""
    if not target.is_floating_point() and target.dim() == logits.dim() - 1:
        classes = logits.shape[-1]
        if target.shape != logits.shape[:-1]:
            if target.dim() == 1:
                raise ValueError(f"target has {target.shape[0]} labels but the batch has {logits.shape[0]} samples")
            raise ValueError(
                f"class-index targets of shape {tuple(target.shape)} do not match the output's positions "
                f"{tuple(logits.shape[:-1])}: give one label per position (the output's shape without its last, "
                "class, dimension)"
            )
        _check_label_range(target, classes)
        return F.one_hot(target.long(), classes).to(logits.dtype)
    if target.shape != logits.shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} matches neither the output shape "
            f"{tuple(logits.shape)} nor its class indices {tuple(logits.shape[:-1])}"
        )
    return target.to(logits.dtype)


def _check_label_range(target: Tensor, classes: int) -> None:
    """Class indices must lie in ``[0, classes − 1]``: a ``ValueError`` in eager mode (one device sync); while
    ``torch.compile`` traces, an assertion inside the graph (``torch._assert_async``), which keeps the
    step one graph without a sync and raises a ``RuntimeError`` with the same message."""
    message = f"class labels must lie in [0, {classes - 1}] for {classes} outputs"
    if torch.compiler.is_compiling():
        torch._assert_async(((target >= 0) & (target < classes)).all(), message)
    elif target.numel() and bool(((target < 0) | (target >= classes)).any()):
        raise ValueError(message)


def batch_loss(name: str, logits: Tensor, target: Tensor) -> Tensor:
    """The batch-mean loss (a differentiable scalar): ``ℓ`` averaged over every sample and position."""
    check_loss(name)
    check_target(name, logits, target)
    y = target_distribution(logits, target)
    if name == "cross_entropy":
        return -(y * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
    return 0.5 * (logits - y).pow(2).sum(dim=-1).mean()


def output_gradient(name: str, logits: Tensor, target: Tensor) -> Tensor:
    """Per-sample ``∇_z`` of the sample's mean loss over its ``P`` positions: ``(softmax(z) − y) / P``
    (cross-entropy) or ``(z − y) / P`` (MSE); ``B`` times the gradient of :func:`batch_loss`."""
    check_loss(name)
    check_target(name, logits, target)
    y = target_distribution(logits, target)
    gradient = torch.softmax(logits, dim=-1) - y if name == "cross_entropy" else logits - y
    count = positions(logits)
    return gradient if count == 1 else gradient.div_(count)
