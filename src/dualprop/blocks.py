"""Blocks of a network of dyadic neurons: their forward maps and vector–Jacobian products.

The block ``B_k`` of neuron ``k`` is everything the model computes between the neurons ``P(k)`` it reads
and neuron ``k``'s activation site (see :mod:`dualprop.graph`). A block offers

* its forward map ``a_k = B_k(s_{P(k)})`` (one input per parent neuron),
* the vector–Jacobian product ``J_{B_k, p}(s⁺_{P(k)})ᵀ v`` with respect to each input ``p`` — the
  top-down feedback the block sends to its parents,
* its weighted parts (Linear and Conv), whose weights Kolen–Pollack feedback may replace in the
  transposed map.

Two kinds: :class:`Block`, a chain of modules with one input (every block of an ``nn.Sequential``), whose
Linear, Conv and reshaping parts have a constant Jacobian so their VJP needs no forward pass; and
:class:`GraphBlock`, any captured sub-graph (skip additions, concatenation, normalisation, dropout),
differentiated by autograd at the point.

Within one step a block is one fixed function: normalisation layers with batch statistics normalise
with their current input's statistics without touching their running statistics
(:func:`frozen_statistics`; the feed-forward pass updates them once), and every dropout site reuses the
mask the feed-forward pass drew (:class:`StepDropout`).
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "WEIGHTED_TYPES",
    "NORMALISATION_TYPES",
    "BlockLike",
    "Block",
    "GraphBlock",
    "BlockInput",
    "StepDropout",
    "StepRandom",
    "StepValue",
    "FunctionalBatchNorm",
    "frozen_statistics",
    "feedback_transpose",
    "HebbianTerm",
    "ZeroTerm",
    "hebbian_term",
    "autograd_vjp",
]

WEIGHTED_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)
# Normalisation layers: each keeps its input (an activation-sized tensor) for its backward.
NORMALISATION_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
# Modules whose Jacobian does not depend on the point, so their VJP needs no forward pass.
_POINT_FREE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Flatten, nn.Unflatten)


@runtime_checkable
class BlockLike(Protocol):
    """The contract of a block ``B_k`` (met by :class:`Block` and :class:`GraphBlock`): what the state loop and
    the update ``J`` ask of it."""

    def __call__(self, *inputs: Tensor) -> Tensor:
        """The drive ``a_k = B_k(s_{P(k)})``, one input per parent neuron."""
        ...

    def input_vjp(
        self, points: Sequence[Tensor], v: Tensor, position: int = 0, feedback: list[Tensor] | None = None
    ) -> Tensor:
        """``J_{B, p}(points)ᵀ v`` for the input ``p = position``; ``feedback`` (one tensor per weighted part)
        replaces the weights in the transposed map only."""
        ...

    def weighted_parts(self) -> list[nn.Module]:
        """The Linear and Conv modules of the block, each once, in order."""
        ...

    @property
    def closed_form_part(self) -> nn.Module | None:
        """The one Linear or zero-padded Conv part whose update :class:`HebbianTerm` writes in closed form
        (the block is nothing else, after reshapes), else None."""
        ...

    @property
    def normalises(self) -> bool:
        """Whether a normalisation layer is among its parts."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """Its parameters (as ``nn.Module.parameters``)."""
        ...


class StepDropout(nn.Module):
    """Dropout whose mask is drawn once per step and reused by every evaluation until :meth:`reset`.

    ``x ↦ x ⊙ m / (1 − p)`` with ``m ~ Bernoulli(1 − p)`` while active: while ``source.training`` for a
    dropout module (whose ``p`` is read at each call, so a change after capture is followed), or as the
    captured ``training`` flag of a functional call; otherwise the identity. ``channelwise`` draws one
    value per sample and channel (``Dropout1d/2d/3d``), broadcast over the remaining dimensions.
    """

    def __init__(self, p: float, source: nn.Module | None = None, training: bool = True, channelwise: bool = False):
        super().__init__()
        self.fixed_p = float(p)
        self.__dict__["source"] = source  # the user's module, read for its mode and p only
        self.active_flag = training
        self.channelwise = channelwise
        self.mask: Tensor | None = None

    @property
    def p(self) -> float:
        return float(self.source.p) if self.source is not None else self.fixed_p

    def active(self) -> bool:
        return self.source.training if self.source is not None else self.active_flag

    def reset(self) -> None:
        """Forget the mask: the next evaluation draws a new one."""
        self.mask = None

    def forward(self, x: Tensor) -> Tensor:
        p = self.p
        if not self.active() or p == 0.0:
            return x
        shape = (*x.shape[:2], *([1] * (x.dim() - 2))) if self.channelwise else x.shape
        if self.mask is None or self.mask.shape != shape or self.mask.dtype != x.dtype:
            keep = 1.0 - p
            mask = x.new_empty(shape)
            self.mask = mask.bernoulli_(keep).div_(keep) if keep > 0 else mask.zero_()
        return x * self.mask


class StepRandom(nn.Module):
    """A random draw of the model's own code (``bernoulli_``, ``torch.rand``, … — e.g. the mask of stochastic
    depth) made once per step: the first evaluation after :meth:`reset` draws, every later one with the
    same argument shapes returns (a copy of) that draw, so a block is one fixed function within a step."""

    def __init__(self, draw: Callable[..., Tensor]):
        super().__init__()
        self.__dict__["draw"] = draw
        self.value: Tensor | None = None
        self.key: tuple | None = None

    def reset(self) -> None:
        """Forget the draw: the next evaluation draws anew."""
        self.value = None

    def forward(self, *args: object, **kwargs: object) -> Tensor:
        key = tuple(a.shape if isinstance(a, Tensor) else a for a in (*args, *kwargs.values()))
        if self.value is None or key != self.key:
            self.value, self.key = self.draw(*args, **kwargs), key
        return self.value.clone()  # the model's code may scale its draw in place (``mask.div_(keep)``)


class StepValue(nn.Module):
    """A value the model's code reads from a tensor's metadata (``x.shape``, ``x.size(0)``, ``x.new_zeros(…)``)
    in a block that does not hold that tensor: called with the tensor (in the step's feed-forward pass) it
    reads and records the value; called without it (in the block) it returns the recorded value."""

    def __init__(self, read: Callable[..., object]):
        super().__init__()
        self.__dict__["read"] = read
        self.value: object = None

    def forward(self, *args: object, **kwargs: object) -> object:
        if args:
            self.value = self.read(*args, **kwargs)
        return self.value.clone() if isinstance(self.value, Tensor) else self.value


class FunctionalBatchNorm(nn.Module):
    """A call of ``F.batch_norm`` in the model's code as a module, so that within a step it normalises with
    its input's batch statistics without updating the running ones again (see :func:`frozen_statistics`),
    like a ``BatchNorm`` module: ``F.batch_norm(x, running_mean, running_var, …, training, momentum, eps)``
    with the running buffers left out while ``track_running_stats`` is off."""

    def __init__(self) -> None:
        super().__init__()
        self.track_running_stats = True

    def forward(
        self, x: Tensor, running_mean: Tensor | None, running_var: Tensor | None, *args: object, **kwargs: object
    ) -> Tensor:
        training = kwargs.get("training", args[2] if len(args) > 2 else False)
        if training and not self.track_running_stats:
            running_mean = running_var = None
        return nn.functional.batch_norm(x, running_mean, running_var, *args, **kwargs)  # type: ignore[arg-type]


class frozen_statistics:
    """Within the block, batch normalisation in training mode normalises with its input's own batch
    statistics and leaves its running statistics (and batch counter) untouched. (A context manager
    class rather than a generator, so that ``torch.compile`` traces through it.)"""

    def __init__(self, norms: Sequence[nn.Module]):
        self.frozen = [
            m
            for m in norms
            if isinstance(m, FunctionalBatchNorm) or isinstance(m, _BatchNorm) and m.training and m.track_running_stats
        ]

    def __enter__(self) -> None:
        for module in self.frozen:
            module.track_running_stats = False

    def __exit__(self, *exception: object) -> None:
        for module in self.frozen:
            module.track_running_stats = True


class feedback_transpose:
    """Within the block, each weighted part keeps its forward value but differentiates with respect to its
    input through its feedback weight ``V`` instead of ``W``: ``y = y_V + sg(y_W − y_V)``. (The parts'
    ``forward`` is replaced on the instance for the duration, without hooks, so that ``torch.compile``
    traces through it.)"""

    def __init__(self, parts: Sequence[nn.Module], feedback: Sequence[Tensor] | None):
        self.swapped = list(zip(parts, feedback, strict=True)) if feedback is not None else []

    def __enter__(self) -> None:
        for part, weight in self.swapped:
            part.__dict__["forward"] = _transposed_through(part, weight)

    def __exit__(self, *exception: object) -> None:
        for part, _ in self.swapped:
            del part.__dict__["forward"]


def _transposed_through(part: nn.Module, weight: Tensor) -> Callable[[Tensor], Tensor]:
    """``part``'s forward with its input derivative taken through ``weight`` (see :class:`feedback_transpose`)."""

    def forward(s: Tensor) -> Tensor:
        through_feedback = _with_weight(part, s, weight)
        return through_feedback + (type(part).forward(part, s) - through_feedback).detach()

    return forward


def _with_weight(part: nn.Module, s: Tensor, weight: Tensor) -> Tensor:
    """The weighted part's map with ``weight`` in place of its own (bias and settings kept)."""
    if isinstance(part, nn.Linear):
        return nn.functional.linear(s, weight, part.bias)
    return part._conv_forward(s, weight, part.bias)  # Conv1d / Conv2d


class Block(nn.Module):
    """A block made of a chain of modules with one input, applied in order.

    ``closed_form_part`` is its one Linear or zero-padded Conv part when the block is nothing else (after
    reshapes), whose update :class:`HebbianTerm` writes in closed form, else None; ``normalises`` tells
    whether a normalisation layer is among its parts."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self._weighted = [m for m in modules if isinstance(m, WEIGHTED_TYPES)]
        self._leading = list(modules[:-1])
        self.closed_form_part = _closed_form_part(modules)
        self.normalises = any(isinstance(m, NORMALISATION_TYPES) for m in modules)
        self._point_free = all(isinstance(m, _POINT_FREE_TYPES) for m in modules)
        self._needs_shapes = any(not isinstance(m, nn.Linear) for m in modules)  # Conv, reshapes
        self._input_shapes: list[torch.Size] = []

    def forward(self, s: Tensor) -> Tensor:
        """``B_k(s)``: the parts applied in order."""
        for part in self.parts:
            s = part(s)
        return s

    def _record_shapes(self, s: Tensor) -> None:
        """Each part's input shape for an input shaped like ``s`` (once per new shape; no hooks run)."""
        shapes = []
        with torch.no_grad():
            for part in self.parts:
                shapes.append(s.shape)
                s = part.forward(s)
        self._input_shapes = shapes

    def weighted_parts(self) -> list[nn.Module]:
        """The parts holding a weight matrix or kernel (Linear and Conv), in order."""
        return list(self._weighted)

    def last_part_input(self, s: Tensor) -> Tensor:
        """What the last part sees for the block input ``s``: ``s`` through every part before it."""
        for part in self._leading:
            s = part(s)
        return s

    def input_vjp(
        self, points: Sequence[Tensor], v: Tensor, position: int = 0, feedback: list[Tensor] | None = None
    ) -> Tensor:
        """The VJP with respect to the (only) input: :meth:`vjp` at ``points[0]``."""
        return self.vjp(points[0], v, feedback)

    def vjp(self, s: Tensor, v: Tensor, feedback: list[Tensor] | None = None) -> Tensor:
        """``J_{B}(s)ᵀ v`` — the vector–Jacobian product of the block at the point ``s``.

        Linear, convolution and reshaping parts have a constant Jacobian, so a block made only of them
        needs no forward pass: ``Wᵀv`` per Linear, a transposed convolution per Conv. Otherwise (e.g. max
        pooling, whose routing depends on ``s``) autograd differentiates the block at ``s``.
        ``feedback`` (one tensor per weighted part) replaces each weight in the transposed map only, as
        separate feedback weights do; the routing of max pooling still follows the forward weights.
        """
        if self._point_free:
            if self._needs_shapes and (len(self._input_shapes) != len(self.parts) or self._input_shapes[0] != s.shape):
                self._record_shapes(s)
            shapes = self._input_shapes if self._needs_shapes else [s.shape] * len(self.parts)
            weights = iter(feedback) if feedback is not None else None
            transposed = [
                (part, shape, next(weights) if weights is not None and isinstance(part, WEIGHTED_TYPES) else None)
                for part, shape in zip(self.parts, shapes)
            ]
            for part, shape, weight in reversed(transposed):
                v = _point_free_vjp(part, shape, v, weight)
            return v
        return autograd_vjp(self, [s], v, 0, self.weighted_parts(), feedback)


class GraphBlock(nn.Module):
    """A block captured as a sub-graph of the model: ``module(*inputs)`` with one input per parent."""

    def __init__(self, module: fx.GraphModule, weighted: list[nn.Module]):
        super().__init__()
        self.module = module
        self._weighted = weighted
        self.closed_form_part = None  # see Block: a captured sub-graph is differentiated by autograd
        self.normalises = any(isinstance(m, (*NORMALISATION_TYPES, FunctionalBatchNorm)) for m in module.modules())

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.module(*inputs)

    def weighted_parts(self) -> list[nn.Module]:
        """The Linear and Conv modules the block calls, each once, in the order of first use."""
        return list(self._weighted)

    def input_vjp(
        self, points: Sequence[Tensor], v: Tensor, position: int = 0, feedback: list[Tensor] | None = None
    ) -> Tensor:
        """``J_{B, p}(points)ᵀ v`` for input ``p = position`` by autograd at the point."""
        return autograd_vjp(self, points, v, position, self._weighted, feedback)


class BlockInput(nn.Module):
    """A block of several inputs as a function of the one at ``position``, the others held at zero: for a
    block affine in its inputs the Jacobian with respect to one input does not depend on the others."""

    def __init__(self, block: nn.Module, position: int, shapes: Sequence[torch.Size]):
        super().__init__()
        self.block, self.position, self.shapes = block, position, list(shapes)

    def forward(self, s: Tensor) -> Tensor:
        inputs = [s if i == self.position else s.new_zeros((s.shape[0], *shape)) for i, shape in enumerate(self.shapes)]
        return self.block(*inputs)


class HebbianTerm(torch.autograd.Function):
    """``⟨δ, a⟩`` of one block whose drive is ``a = W s̄ + b`` (Linear, or Conv with zero padding), from the
    drive computed during inference; its backward writes the local Hebbian update without recomputing
    the block: ``∂/∂W = δᵀ s̄`` (Linear; ``conv_weight(s̄, δ)`` for a convolution), ``∂/∂b = Σ δ`` — each
    times the incoming gradient, and the same again for a tied Kolen–Pollack feedback weight."""

    @staticmethod
    def forward(
        ctx,
        weight: Tensor,
        bias: Tensor | None,
        feedback: Tensor | None,  # type: ignore[override]
        part: nn.Module,
        s: Tensor,
        delta: Tensor,
        drive: Tensor,
    ) -> Tensor:
        ctx.save_for_backward(s, delta)
        ctx.part, ctx.has_bias, ctx.has_feedback = part, bias is not None, feedback is not None
        return torch.vdot(delta.flatten(), drive.flatten())

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        s, delta = ctx.saved_tensors
        part = ctx.part
        scaled = delta * grad_output
        if isinstance(part, nn.Linear):
            grad_weight = scaled.reshape(-1, scaled.shape[-1]).t() @ s.reshape(-1, s.shape[-1])
            reduce_dims = tuple(range(scaled.dim() - 1))
        else:
            weight_gradient = (
                torch.nn.grad.conv2d_weight if isinstance(part, nn.Conv2d) else torch.nn.grad.conv1d_weight
            )
            grad_weight = weight_gradient(
                s, part.weight.shape, scaled, part.stride, part.padding, part.dilation, part.groups
            )
            reduce_dims = (0, *range(2, scaled.dim()))
        grad_bias = scaled.sum(reduce_dims) if ctx.has_bias else None
        return grad_weight, grad_bias, grad_weight if ctx.has_feedback else None, None, None, None, None


class ZeroTerm(torch.autograd.Function):
    """``⟨δ, B(s̄)⟩ = 0`` of a block whose ``δ`` is exactly zero (its neuron was never moved from the
    feed-forward state), without running the block: its backward gives each of the block's parameters
    the zero gradient the term has, so optimizers and ``DistributedDataParallel`` see every parameter
    updated as when the term is differentiated."""

    @staticmethod
    def forward(ctx, reference: Tensor, *parameters: Tensor) -> Tensor:  # type: ignore[override]
        ctx.shapes = [(p.shape, p.dtype, p.device) for p in parameters]
        return reference.new_zeros(())

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        return (None, *(torch.zeros(shape, dtype=dtype, device=device) for shape, dtype, device in ctx.shapes))


def _closed_form_part(modules: Sequence[nn.Module]) -> nn.Module | None:
    """The last module of a chain that is one Linear or zero-padded Conv part after reshapes only — a block
    whose term :class:`HebbianTerm` writes in closed form — else None."""
    *reshapes, last = modules
    if not all(isinstance(m, (nn.Flatten, nn.Unflatten)) for m in reshapes):
        return None
    if isinstance(last, nn.Linear) or (isinstance(last, WEIGHTED_TYPES) and last.padding_mode == "zeros"):
        return last
    return None


def hebbian_term(
    block: BlockLike, inputs: Sequence[Tensor], delta: Tensor, drive: Tensor | None, feedback: Tensor | None = None
) -> Tensor | None:
    """``⟨δ, B(s̄)⟩`` by :class:`HebbianTerm` where ``block`` has a ``closed_form_part``, using
    ``drive = B(s̄)`` if it is current (else computing it without grad); None for any other block, whose
    term then needs autograd through its forward."""
    part = block.closed_form_part
    if part is None or not isinstance(block, Block):
        return None
    s = block.last_part_input(inputs[0])
    if drive is None:
        with torch.no_grad():
            drive = part(s)
    return HebbianTerm.apply(part.weight, part.bias, feedback, part, s, delta, drive)


def autograd_vjp(
    block: nn.Module,
    points: Sequence[Tensor],
    v: Tensor,
    position: int,
    weighted: Sequence[nn.Module],
    feedback: list[Tensor] | None,
) -> Tensor:
    """``J_{B, p}(points)ᵀ v`` by differentiating ``block(*points)`` with respect to input ``position``
    (through the feedback weights in place of the forward weights, if given), with ``torch.func.vjp``:
    a function transform, so it differentiates under ``torch.no_grad`` and ``torch.compile`` traces it."""
    inputs = [p.detach() for p in points]

    def of_input(s: Tensor) -> Tensor:
        return block(*inputs[:position], s, *inputs[position + 1 :])

    with feedback_transpose(weighted, feedback):
        _, pullback = torch.func.vjp(of_input, inputs[position])
        (grad,) = pullback(v)
    return grad


def _point_free_vjp(part: nn.Module, input_shape: torch.Size, v: Tensor, weight: Tensor | None = None) -> Tensor:
    """VJP of a module whose Jacobian is constant: its transposed linear map applied to ``v``
    (with ``weight`` in place of the module's own weight, if given)."""
    if weight is None and isinstance(part, WEIGHTED_TYPES):
        weight = part.weight
    if isinstance(part, nn.Linear):
        return v @ weight
    if isinstance(part, nn.Conv2d) and part.padding_mode == "zeros":
        return torch.nn.grad.conv2d_input(input_shape, weight, v, part.stride, part.padding, part.dilation, part.groups)
    if isinstance(part, nn.Conv1d) and part.padding_mode == "zeros":
        return torch.nn.grad.conv1d_input(input_shape, weight, v, part.stride, part.padding, part.dilation, part.groups)
    if isinstance(part, (nn.Flatten, nn.Unflatten)):
        return v.reshape(input_shape)
    with torch.enable_grad():  # e.g. a convolution with circular padding
        point = torch.zeros(input_shape, dtype=v.dtype, device=v.device, requires_grad=True)
        (grad,) = torch.autograd.grad(_with_weight(part, point, weight), point, v)
    return grad
