"""Checks of a training batch against the network it is fed to, made before any work is done.

:func:`check_batch` turns the mistakes that would otherwise surface as a deep traceback from inside
torch (or, worse, as a silently wrong number) into one ``ValueError`` that says what to change: an
empty batch, inputs that are not floating point, inputs whose dtype or device differ from the
network's parameters, and targets that do not pair one with each sample or live on another device.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _reference_tensor(model: nn.Module) -> Tensor | None:
    """The network's first parameter (else buffer): where and in which dtype it computes."""
    parameter = next(iter(model.parameters()), None)
    return parameter if parameter is not None else next(iter(model.buffers()), None)


def check_batch(model: nn.Module, x: Tensor, y: Tensor | None = None, token_ids: bool = False) -> None:
    """Raise ``ValueError`` naming the fix when the batch ``(x, y)`` cannot be fed to ``model``.

    ``x`` must be a non-empty floating-point tensor (samples along dimension 0) on the device of the
    model's parameters and, outside ``torch.autocast``, of their dtype; ``y``, when given, a tensor with
    one target per sample on the same device (the loss checks its kind, see
    :func:`dualprop.losses.check_target`). With ``token_ids`` (a model whose input only embeddings read)
    ``x`` must instead hold integer ids.
    """
    if not isinstance(x, Tensor):
        raise ValueError(
            f"inputs must be a torch.Tensor, got {type(x).__name__}: convert them with "
            "torch.as_tensor(x, dtype=torch.float32)"
        )
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(
            f"the batch is empty (inputs of shape {tuple(x.shape)}): give at least one sample, "
            "samples along the first dimension"
        )
    reference = _reference_tensor(model)
    if token_ids:
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"inputs are {x.dtype}, but the model embeds integer token ids: give them as torch.long")
    elif not x.is_floating_point():
        wanted = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
        raise ValueError(f"inputs are {x.dtype}, not floating point: convert them with x.to({wanted})")
    if reference is not None:
        if x.device != reference.device:
            raise ValueError(
                f"inputs are on {x.device} but the network is on {reference.device}: move them "
                f"with x.to({str(reference.device)!r}) (or the network with model.to(...))"
            )
        mixed_precision = torch.is_autocast_enabled(x.device.type)
        if reference.is_floating_point() and x.dtype != reference.dtype and not mixed_precision and not token_ids:
            raise ValueError(
                f"inputs are {x.dtype} but the network's parameters are {reference.dtype}: "
                f"convert them with x.to({reference.dtype}) (or the network with "
                f"model.to({x.dtype}))"
            )
    if y is None:
        return
    if not isinstance(y, Tensor):
        raise ValueError(
            f"targets must be a torch.Tensor, got {type(y).__name__}: convert them with torch.as_tensor(y)"
        )
    if y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"there are {y.shape[0] if y.dim() else 'no'} targets for {x.shape[0]} samples: give one target per sample"
        )
    if y.device != x.device:
        raise ValueError(
            f"targets are on {y.device} but the inputs on {x.device}: move them with y.to({str(x.device)!r})"
        )
