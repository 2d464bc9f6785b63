"""Hardware realism for dyadic neurons: noisy, low-precision compartments (and the same for backprop).

An analog or neuromorphic device holds each compartment with thermal noise and finite resolution.
:class:`CompartmentPerturbation` models both for a freshly computed compartment tensor ``s``:

* noise ``σ`` (``state_noise``):     ``s ← s + σ ε``,            ``ε ~ N(0, I)``
* resolution ``q`` (``state_quantum``): ``s ← q · ⌊s / q + U⌋``,   ``U ~ Uniform[0, 1)`` elementwise

in that order (the device stores what it computed). The rounding is stochastic and unbiased:
``E[q ⌊s/q + U⌋] = s``, each value lands on one of its two neighbouring multiples of ``q``, the nearer one
more often. Every draw comes from one ``torch.Generator`` per device, seeded by ``noise_seed``, so a run
is reproducible; with ``σ = 0`` and ``q = 0`` the input is returned untouched and nothing is drawn.

In the state loop of dual propagation the perturbation hits ``s⁺_k`` and ``s⁻_k`` independently each time
neuron ``k`` is updated, so the difference ``s⁺_k − s⁻_k``, which carries ``β ∇ℓ`` (times the Jacobian) to
the weights, carries noise of standard deviation ``√2 σ``: the signal-to-noise ratio grows with β.

The fair backprop reference (:func:`noisy_backprop`) perturbs the same neurons — every activation site
and the output — in both directions: the forward value ``s`` as above, and the backward gradient on the
per-sample scale a device would carry, ``u = B ∂ℓ̄/∂s`` (``ℓ̄`` the batch-mean loss, ``B`` the batch
size), i.e. ``∂ℓ̄/∂s ← perturb(B ∂ℓ̄/∂s) / B``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from dualprop import checks


class CompartmentPerturbation:
    """Noise ``σ`` and stochastic rounding to multiples of ``q`` for compartment tensors (see module doc).

    ``CompartmentPerturbation(state_noise=σ, state_quantum=q, noise_seed=s)``; ``σ ≥ 0``, ``q ≥ 0``
    (``0`` or ``None``: off). Calling it on a tensor returns the perturbed copy.
    """

    def __init__(self, state_noise: float | None = 0.0, state_quantum: float | None = 0.0, noise_seed: int = 0):
        self.noise = 0.0 if state_noise is None else checks.non_negative_finite("state_noise", state_noise)
        self.quantum = 0.0 if state_quantum is None else checks.non_negative_finite("state_quantum", state_quantum)
        self.seed = checks.non_negative_int("noise_seed", noise_seed)
        self._generators: dict[torch.device, torch.Generator] = {}

    @property
    def active(self) -> bool:
        """Whether anything is perturbed (``σ > 0`` or ``q > 0``)."""
        return self.noise > 0 or self.quantum > 0

    def __repr__(self) -> str:
        return (
            f"CompartmentPerturbation(state_noise={self.noise}, state_quantum={self.quantum}, noise_seed={self.seed})"
        )

    def generator(self, device: torch.device) -> torch.Generator:
        """The generator for ``device``, seeded with ``noise_seed`` on first use."""
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def generator_states(self) -> dict[torch.device, Tensor]:
        """The state of every device's generator used so far (for checkpoints)."""
        return {device: generator.get_state() for device, generator in self._generators.items()}

    def set_generator_state(self, device: torch.device, state: Tensor) -> None:
        """Continue ``device``'s generator from a saved state."""
        self.generator(device).set_state(state.cpu())

    def __call__(self, s: Tensor) -> Tensor:
        """``q ⌊(s + σε)/q + U⌋`` (each part only where it is on); ``s`` itself when nothing is on."""
        if not self.active:
            return s
        generator = self.generator(s.device)
        if self.noise > 0:
            s = s + self.noise * torch.randn(s.shape, generator=generator, device=s.device, dtype=s.dtype)
        if self.quantum > 0:
            uniform = torch.rand(s.shape, generator=generator, device=s.device, dtype=s.dtype)
            s = torch.floor(s / self.quantum + uniform) * self.quantum
        return s


class _NoisyNeuron(torch.autograd.Function):
    """Identity whose forward value and backward gradient are both perturbed (gradient per sample)."""

    @staticmethod
    def forward(ctx, s: Tensor, perturbation: CompartmentPerturbation, batch: int) -> Tensor:  # noqa: ANN001
        ctx.perturbation, ctx.batch = perturbation, batch
        return perturbation(s)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # noqa: ANN001
        return ctx.perturbation(grad * ctx.batch) / ctx.batch, None, None


@contextmanager
def noisy_backprop(
    perturbation: CompartmentPerturbation, activation_sites: Iterable[nn.Module], batch: int
) -> Iterator[Callable[[Tensor], Tensor]]:
    """While active, every output of ``activation_sites`` passes through the perturbation forward and
    backward (``∂ℓ̄/∂s ← perturb(B ∂ℓ̄/∂s)/B``); yields the same map for the output, ``logits = neuron(z)``.

    With an inactive perturbation nothing is registered and the yielded map is the identity.
    """
    if not perturbation.active:
        yield lambda s: s
        return

    def neuron(s: Tensor) -> Tensor:
        return _NoisyNeuron.apply(s, perturbation, batch)

    handles = [site.register_forward_hook(lambda _module, _inputs, output: neuron(output)) for site in activation_sites]
    try:
        yield neuron
    finally:
        for handle in handles:
            handle.remove()


class ActivationSite(nn.Module):
    """An activation ``f`` as a module of its own, so that the hooks of :func:`noisy_backprop` can find it."""

    def __init__(self, activation: Callable[[Tensor], Tensor]):
        super().__init__()
        self.activation = activation

    def forward(self, drive: Tensor) -> Tensor:
        return self.activation(drive)
