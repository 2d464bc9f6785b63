"""Split an ``nn.Sequential`` into a layered network of blocks and elementwise activations.

A layered network is ``s_0 = x``, ``s_k = f_k(B_k(s_{k-1}))`` for ``k < L`` and ``s_L = B_L(s_{L-1})``.
Each block ``B_k`` is a run of affine or piecewise-linear modules (Linear, Conv, pooling, Flatten) between
two activations; every activation ``f_k`` acts elementwise. A block offers its forward map and its
vector–Jacobian product ``J_{B}(s)ᵀ v``, the top-down feedback of a dyadic neuron.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

_ACTIVATION_TYPES: set[type[nn.Module]] = {
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, nn.Hardtanh, nn.GELU,
    nn.SiLU, nn.ELU, nn.CELU, nn.SELU, nn.Softplus, nn.Mish, nn.Hardswish, nn.Softsign, nn.Identity,
}
_BLOCK_TYPES: set[type[nn.Module]] = {
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.Flatten, nn.Unflatten,
}
# Modules whose Jacobian does not depend on the point, so their VJP needs no forward pass.
_POINT_FREE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Flatten, nn.Unflatten)
_WEIGHTED_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


def register_activation(module_type: type[nn.Module]) -> type[nn.Module]:
    """Declare a module type elementwise, so ``Learner`` splits a network at it. Usable as a decorator."""
    _ACTIVATION_TYPES.add(module_type)
    return module_type


def register_block_module(module_type: type[nn.Module]) -> type[nn.Module]:
    """Declare a module type an affine or piecewise-linear block part (its VJP comes from autograd)."""
    _BLOCK_TYPES.add(module_type)
    return module_type


def _is_activation(module: nn.Module) -> bool:
    return type(module) in _ACTIVATION_TYPES


def _is_block_part(module: nn.Module) -> bool:
    return type(module) in _BLOCK_TYPES


class Block(nn.Module):
    """One block ``B_k``: a sequence of affine / piecewise-linear modules applied in order."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self._point_free = all(isinstance(m, _POINT_FREE_TYPES) for m in modules)
        self._input_shapes: list[torch.Size] = []

    def forward(self, s: Tensor) -> Tensor:
        """``B_k(s)``; records each part's input shape for the point-free VJP."""
        shapes = []
        for part in self.parts:
            shapes.append(s.shape)
            s = part(s)
        self._input_shapes = shapes
        return s

    def weighted_parts(self) -> list[nn.Module]:
        """The parts holding a weight matrix or kernel (Linear and Conv), in order."""
        return [part for part in self.parts if isinstance(part, _WEIGHTED_TYPES)]

    def vjp(self, s: Tensor, v: Tensor, feedback: list[Tensor] | None = None) -> Tensor:
        """``J_{B}(s)ᵀ v`` — the vector–Jacobian product of the block at the point ``s``.

        Linear, convolution and reshaping parts have a constant Jacobian, so a block made only of them
        needs no forward pass: ``Wᵀv`` per Linear, a transposed convolution per Conv. Otherwise (e.g. max
        pooling, whose routing depends on ``s``) autograd differentiates the block at ``s``.
        ``feedback`` (one tensor per weighted part) replaces each weight in the transposed map only, as
        separate feedback weights do; the routing of max pooling still follows the forward weights.
        """
        weights = iter(feedback) if feedback is not None else None
        if self._point_free and len(self._input_shapes) == len(self.parts) \
                and self._input_shapes[0] == s.shape:
            transposed = [(part, shape, _feedback_for(part, weights))
                          for part, shape in zip(self.parts, self._input_shapes)]
            for part, shape, weight in reversed(transposed):
                v = _point_free_vjp(part, shape, v, weight)
            return v
        with torch.enable_grad():
            point = s.detach().requires_grad_(True)
            out = point
            for part in self.parts:
                weight = _feedback_for(part, weights)
                value = part(out)
                if weight is not None:  # forward value of W, gradient through the feedback weight
                    through_feedback = torch.func.functional_call(part, {"weight": weight}, (out,))
                    value = through_feedback + (value - through_feedback).detach()
                out = value
            (grad,) = torch.autograd.grad(out, point, v)
        return grad


def _feedback_for(part: nn.Module, weights) -> Tensor | None:
    return next(weights) if weights is not None and isinstance(part, _WEIGHTED_TYPES) else None


def _point_free_vjp(part: nn.Module, input_shape: torch.Size, v: Tensor,
                    weight: Tensor | None = None) -> Tensor:
    """VJP of a module whose Jacobian is constant: its transposed linear map applied to ``v``
    (with ``weight`` in place of the module's own weight, if given)."""
    if weight is None and isinstance(part, _WEIGHTED_TYPES):
        weight = part.weight
    if isinstance(part, nn.Linear):
        return v @ weight
    if isinstance(part, nn.Conv2d) and part.padding_mode == "zeros":
        return torch.nn.grad.conv2d_input(input_shape, weight, v, part.stride, part.padding,
                                          part.dilation, part.groups)
    if isinstance(part, nn.Conv1d) and part.padding_mode == "zeros":
        return torch.nn.grad.conv1d_input(input_shape, weight, v, part.stride, part.padding,
                                          part.dilation, part.groups)
    if isinstance(part, (nn.Flatten, nn.Unflatten)):
        return v.reshape(input_shape)
    with torch.enable_grad():  # e.g. a convolution with circular padding
        point = torch.zeros(input_shape, dtype=v.dtype, device=v.device, requires_grad=True)
        out = torch.func.functional_call(part, {"weight": weight}, (point,))
        (grad,) = torch.autograd.grad(out, point, v)
    return grad


@dataclass
class LayeredNetwork:
    """Blocks ``B_1..B_L`` and activations ``f_1..f_{L-1}`` (``activations[k-1]`` follows ``blocks[k-1]``)."""

    blocks: list[Block]
    activations: list[nn.Module]

    @property
    def depth(self) -> int:
        """``L``, the number of blocks."""
        return len(self.blocks)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``DistributedDataParallel`` and ``torch.compile`` wrappers (in any nesting),
    or the model itself. Other wrappers that hide the module (``nn.DataParallel``, FSDP) are refused."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, nn.DataParallel) or type(model).__name__ == "FullyShardedDataParallel":
            raise ValueError(f"a model wrapped in {type(model).__name__} cannot be trained by a Learner; "
                             f"pass the module itself, or wrap it in DistributedDataParallel")
        else:
            return model


def _flatten_sequential(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    items = []
    for name, child in model.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            items.extend(_flatten_sequential(child, path + "."))
        else:
            items.append((path, child))
    return items


def split_network(model: nn.Module) -> LayeredNetwork:
    """Split a (possibly nested, possibly DDP-wrapped) ``nn.Sequential`` at its activations.

    Raises ``ValueError`` naming the offending module when the model is not a layered network:
    an unsupported module, two activations in a row, an activation first or after the last block.
    """
    model = unwrap(model)
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"the model must be an nn.Sequential of blocks and activations, "
                         f"got {type(model).__name__}")
    blocks: list[Block] = []
    activations: list[nn.Module] = []
    current: list[nn.Module] = []
    last_activation = ""
    for path, module in _flatten_sequential(model):
        kind = type(module).__name__
        if _is_activation(module):
            if not current:
                where = "at the start" if not blocks else f"right after activation {last_activation}"
                raise ValueError(f"module {path} ({kind}) is an activation with no block before it "
                                 f"({where}); every activation must follow a Linear/Conv block")
            blocks.append(Block(current))
            activations.append(module)
            current = []
            last_activation = f"{path} ({kind})"
        elif _is_block_part(module):
            current.append(module)
        else:
            raise ValueError(
                f"module {path} ({kind}) is neither a supported block part (Linear, Conv, pooling, "
                f"Flatten) nor an elementwise activation; if it acts elementwise, declare it with "
                f"dualprop.register_activation({kind})")
    if not current:
        if not blocks:
            raise ValueError("the model has no modules")
        raise ValueError(f"the model ends with activation {last_activation}; the last block must output "
                         f"logits, so remove the final activation")
    blocks.append(Block(current))
    return LayeredNetwork(blocks, activations)
