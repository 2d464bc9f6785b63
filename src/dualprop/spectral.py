"""Spectral norms of blocks by matrix-free power iteration (used by damped DP and the analysis tools).

For a block ``B`` (affine or piecewise linear) the spectral norm ``γ = σ_max(J_B(p))`` is the largest
singular value of its Jacobian at a point ``p`` (for an affine block: of its linear part, any ``p``).
Power iteration on ``JᵀJ`` needs only Jacobian–vector products (forward mode) and vector–Jacobian
products (reverse mode), so the matrix is never formed:

    v ← JᵀJ v / ‖JᵀJ v‖,        γ ≈ ‖J v‖   (a lower bound that increases to γ).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from dualprop import checks

LinearMap = Callable[[Tensor], Tensor]


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(n) for n in input_shape)
    if not shape or any(n < 1 for n in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive sizes, got {tuple(input_shape)}.")
    return shape


def _block_dtype_device(block: nn.Module) -> tuple[torch.dtype, torch.device]:
    for tensor in list(block.parameters()) + list(block.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype, tensor.device
    return torch.get_default_dtype(), torch.device("cpu")


def random_normal(
    shape: Sequence[int],
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Standard normal tensor drawn from ``generator`` (on its own device), then moved to ``device``."""
    source = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=source).to(device)


def per_sample_norm(tensor: Tensor) -> Tensor:
    """Euclidean norm of each sample (dimension 0 indexes samples), shaped to broadcast against ``tensor``."""
    norms = tensor.flatten(1).norm(dim=1)
    return norms.view(-1, *([1] * (tensor.dim() - 1)))


def power_iteration(apply: LinearMap, adjoint: LinearMap, vector: Tensor, iterations: int) -> tuple[Tensor, Tensor]:
    """``iterations`` steps of ``v_n ← (JᵀJv)_n / ‖(JᵀJv)_n‖`` for each sample ``n`` (dimension 0) of a
    Jacobian ``J`` that is block diagonal over samples (one sample: the plain power iteration); returns
    ``(‖(Jv)_n‖ per sample, v)``, each norm a lower bound that increases to ``σ_max(J_n)``."""
    tiny = torch.finfo(vector.dtype).tiny
    for _ in range(iterations):
        w = adjoint(apply(vector))
        vector = w / per_sample_norm(w).clamp_min(tiny)
    return apply(vector).flatten(1).norm(dim=1), vector


class SpectralNormEstimator:
    """Warm-started power iteration for repeated estimates of ``σ_max(J_B)`` while ``B`` trains.

    Each call runs ``iterations`` steps starting from the vector the previous call ended with, so a
    caller that asks once per training step keeps a sharp estimate for a few products per step.
    ``input_shape`` is the shape of one sample (no batch dimension). For a piecewise-linear block the
    Jacobian is taken at ``point`` (one sample); by default at a random point drawn once and kept.
    """

    def __init__(
        self,
        block: nn.Module,
        input_shape: Sequence[int],
        iterations: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        self.block = block
        self.input_shape = _check_shape(input_shape)
        self.iterations = checks.positive_int("iterations", iterations)
        self.generator = generator
        self.vector: Tensor | None = None
        self.point: Tensor | None = None

    def reset(self) -> None:
        """Forget the warm-start vector and the default point."""
        self.vector = None
        self.point = None

    def _linear_maps(self, point: Tensor | None) -> tuple[LinearMap, LinearMap, torch.dtype, torch.device]:
        """The products ``v ↦ Jv`` and ``u ↦ Jᵀu`` on a batch of one, with their dtype and device."""
        block = self.block
        if type(block) is nn.Linear:
            weight = block.weight.detach()
            return (lambda v: v @ weight.T), (lambda u: u @ weight), weight.dtype, weight.device
        if point is None:
            dtype, device = _block_dtype_device(block)
            if self.point is None or self.point.dtype != dtype or self.point.device != device:
                self.point = random_normal(self.input_shape, dtype, device, self.generator)
            point = self.point
        batch = point.detach().unsqueeze(0)
        vjp_fn = torch.func.vjp(block, batch)[1]
        return (lambda v: torch.func.jvp(block, (batch,), (v,))[1]), (lambda u: vjp_fn(u)[0]), batch.dtype, batch.device

    def __call__(self, point: Tensor | None = None) -> float:
        """Return the current estimate of ``σ_max(J_B(point))`` after ``iterations`` more steps."""
        if point is not None:
            if tuple(point.shape) != self.input_shape:
                raise ValueError(
                    f"point must have the shape of one sample {self.input_shape}, got {tuple(point.shape)}."
                )
            if not point.is_floating_point():
                raise ValueError(f"point must be a floating-point tensor, got dtype {point.dtype}.")
        with torch.no_grad():
            apply, adjoint, dtype, device = self._linear_maps(point)
            if self.vector is None or self.vector.dtype != dtype or self.vector.device != device:
                self.vector = random_normal((1, *self.input_shape), dtype, device, self.generator)
            norms, vector = power_iteration(apply, adjoint, self.vector, self.iterations)
            sigma = float(norms[0])
        self.vector = vector if sigma > 0 else None
        return sigma


def spectral_norm(
    block: nn.Module,
    input_shape: Sequence[int],
    iterations: int = 50,
    generator: torch.Generator | None = None,
    point: Tensor | None = None,
) -> float:
    """Largest singular value of the block's Jacobian, ``σ_max(J_B(point))``, by power iteration.

    ``input_shape`` is the shape of one sample (no batch dimension); ``point`` (same shape) fixes where a
    piecewise-linear block is linearised, by default a random point. Deterministic given ``generator``.
    A plain ``nn.Linear`` uses its weight directly; every other block uses autograd JVP/VJP products.
    """
    return SpectralNormEstimator(block, input_shape, iterations, generator)(point)


def layer_spectral_norms(
    blocks: Sequence[nn.Module],
    input_shapes: Sequence[Sequence[int]],
    iterations: int = 50,
    generator: torch.Generator | None = None,
    points: Sequence[Tensor | None] | None = None,
) -> list[float]:
    """``[σ_max(J_{B_k}) for each block]``, each by :func:`spectral_norm`."""
    if len(blocks) != len(input_shapes):
        raise ValueError(
            f"blocks and input_shapes must have the same length, got {len(blocks)} and {len(input_shapes)}."
        )
    points = [None] * len(blocks) if points is None else list(points)
    if len(points) != len(blocks):
        raise ValueError(f"points must give one point (or None) per block, got {len(points)} for {len(blocks)} blocks.")
    return [
        spectral_norm(block, shape, iterations, generator, point)
        for block, shape, point in zip(blocks, input_shapes, points)
    ]


def product_bound(norms: Sequence[float]) -> float:
    """Upper bound ``Π_k γ_k`` on the Lipschitz constant of the composed network.

    Valid when every activation between the blocks is 1-Lipschitz (ReLU, Tanh, LeakyReLU with slope
    ≤ 1, Sigmoid and Hardsigmoid even with constant ¼ and ⅙), since ``‖J_{f∘B}‖ ≤ ‖J_f‖·‖J_B‖``.
    The empty product is 1 (the identity map).
    """
    if any(n < 0 for n in norms):
        raise ValueError(f"spectral norms must be non-negative, got {list(norms)}.")
    return float(math.prod(norms))
