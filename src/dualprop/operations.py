"""What the capture knows about PyTorch's operations: which are elementwise activations (neurons), which
are affine in their inputs, which read only a tensor's shape, which draw random numbers, which have no
derivative — and the marker :func:`neuron` and the two registries users extend.

:mod:`dualprop.graph` classifies every node of a traced ``forward`` with these tables.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from dualprop.blocks import StepDropout, StepRandom


def neuron(x: Tensor) -> Tensor:
    """Mark ``x`` as a neuron (an identity neuron, ``f = id``, unless ``x`` already is one) in a model's
    ``forward``: ``x = dualprop.neuron(x)``. The identity when run; a marker for the capture."""
    if isinstance(x, fx.Proxy):
        return x.tracer.create_proxy("call_function", neuron, (x,), {})
    return x


ACTIVATION_TYPES: set[type[nn.Module]] = {
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.Softplus,
    nn.Mish,
    nn.Hardswish,
    nn.Softsign,
}
BUILTIN_ACTIVATION_TYPES = frozenset(ACTIVATION_TYPES)
# Modules fx records as one call (the rest is traced into); any other torch.nn module is a block part too.
BLOCK_TYPES: set[type[nn.Module]] = {
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.Dropout,
}
# Block modules with a constant Jacobian (an affine map of their input, whatever the point).
AFFINE_TYPES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    StepDropout,
    StepRandom,
)
DROPOUT_MODULES = {nn.Dropout: False, nn.Dropout1d: True, nn.Dropout2d: True, nn.Dropout3d: True}
DROPOUT_FUNCTIONS = {F.dropout: False, F.dropout1d: True, F.dropout2d: True, F.dropout3d: True}

# Elementwise activation functions, each with its out-of-place form.
ACTIVATION_FUNCTIONS: dict[Callable[..., Tensor], Callable[..., Tensor]] = {
    F.relu: F.relu,
    torch.relu: torch.relu,
    F.relu_: F.relu,
    torch.relu_: torch.relu,
    F.relu6: F.relu6,
    F.leaky_relu: F.leaky_relu,
    F.leaky_relu_: F.leaky_relu,
    torch.sigmoid: torch.sigmoid,
    F.sigmoid: torch.sigmoid,
    torch.sigmoid_: torch.sigmoid,
    torch.tanh: torch.tanh,
    F.tanh: torch.tanh,
    torch.tanh_: torch.tanh,
    F.hardsigmoid: F.hardsigmoid,
    F.hardtanh: F.hardtanh,
    F.hardtanh_: F.hardtanh,
    F.gelu: F.gelu,
    F.silu: F.silu,
    F.elu: F.elu,
    F.elu_: F.elu,
    F.celu: F.celu,
    F.selu: F.selu,
    torch.selu: torch.selu,
    F.softplus: F.softplus,
    F.mish: F.mish,
    F.hardswish: F.hardswish,
    F.softsign: F.softsign,
    neuron: neuron,
}
ACTIVATION_METHODS = {
    "relu": torch.relu,
    "relu_": torch.relu,
    "sigmoid": torch.sigmoid,
    "sigmoid_": torch.sigmoid,
    "tanh": torch.tanh,
    "tanh_": torch.tanh,
}

# Affine (linear plus constant) operations of signals.
AFFINE_FUNCTIONS = {
    operator.add,
    operator.sub,
    operator.neg,
    operator.pos,
    operator.getitem,
    torch.add,
    torch.sub,
    torch.neg,
    torch.cat,
    torch.concat,
    torch.stack,
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.transpose,
    torch.permute,
    torch.mean,
    torch.sum,
    torch.roll,
    torch.chunk,
    torch.split,
    F.linear,
    F.conv1d,
    F.conv2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.pad,
    F.embedding,
    getattr,
}
# Products: affine as long as at most one factor is a signal (and a divisor is never one).
PRODUCT_FUNCTIONS = {
    operator.mul,
    operator.truediv,
    operator.matmul,
    torch.mul,
    torch.div,
    torch.matmul,
    torch.mm,
    torch.bmm,
}
AFFINE_METHODS = {
    "view",
    "reshape",
    "flatten",
    "permute",
    "transpose",
    "contiguous",
    "unsqueeze",
    "squeeze",
    "mean",
    "sum",
    "add",
    "sub",
    "neg",
    "expand",
    "expand_as",
    "t",
    "view_as",
    "reshape_as",
    "chunk",
    "split",
    "roll",
    "flip",
    "repeat",
    "unbind",
    "narrow",
    "unflatten",
}
PRODUCT_METHODS = {"mul", "div", "matmul", "__mul__", "__truediv__", "__matmul__"}
DIVISIONS = {operator.truediv, torch.div, "div", "__truediv__"}
# Reading a tensor's metadata, or making a tensor from shapes alone: constants of the step, not signals.
SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda", "layout"}
SHAPE_METHODS = {"size", "dim", "numel", "nelement", "get_device", "new_empty", "new_zeros", "new_ones", "new_full"}
SHAPE_FUNCTIONS = {
    torch.empty_like,
    torch.zeros_like,
    torch.ones_like,
    torch.full_like,
    torch.rand_like,
    torch.randn_like,
    torch.randint_like,
    torch.numel,
}
# Random draws of the model's code, made once per step.
RANDOM_FUNCTIONS = {
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
    torch.rand_like,
    torch.randn_like,
    torch.randint_like,
    torch.bernoulli,
    torch.normal,
    torch.multinomial,
}
RANDOM_METHODS = {"bernoulli_", "bernoulli", "uniform_", "normal_", "random_", "exponential_", "geometric_"}
# Operations without a derivative: a signal passed through them cannot carry feedback.
NOT_DIFFERENTIABLE = {
    "argmax",
    "argmin",
    "argsort",
    "round",
    "floor",
    "ceil",
    "trunc",
    "sign",
    "item",
    "tolist",
    "numpy",
    "nonzero",
    "bincount",
    "unique",
    "multinomial",
    "bernoulli",
}


def register_activation(module_type: type[nn.Module]) -> type[nn.Module]:
    """Declare a module type an elementwise activation, so that its call sites are neurons. Usable as a
    decorator.

    Raises ``TypeError`` for anything but a subclass of ``nn.Module``. The capture refuses an instance that
    has parameters (an activation is a fixed function; leave such a module undeclared and its parameters
    are trained as part of its block), and the first step refuses one that is not elementwise."""
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(
            f"register_activation takes a subclass of torch.nn.Module, got {module_type!r} "
            f"({type(module_type).__name__})"
        )
    ACTIVATION_TYPES.add(module_type)
    return module_type


def register_block_module(module_type: type[nn.Module]) -> type[nn.Module]:
    """Record calls of a module type as one operation of a block, without tracing into its ``forward``
    (which may then hold control flow on values); its VJP comes from autograd."""
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"register_block_module takes a subclass of torch.nn.Module, got {module_type!r}")
    BLOCK_TYPES.add(module_type)
    return module_type


class MethodCall:
    """A tensor method called by name: ``MethodCall("bernoulli_")(t, p) = t.bernoulli_(p)``."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, tensor: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return getattr(tensor, self.name)(*args, **kwargs)


def reads_metadata_only(node: fx.Node) -> bool:
    """Whether ``node`` reads its tensor inputs' metadata only (shape, dtype, device) or makes a tensor from
    it (``new_zeros``, ``rand_like``): its value is a constant of the step however the inputs' values move."""
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) > 1 and node.args[1] in SHAPE_ATTRIBUTES
    if node.op == "call_method":
        return node.target in SHAPE_METHODS
    return node.op == "call_function" and node.target in SHAPE_FUNCTIONS
