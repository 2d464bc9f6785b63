"""``Learner``: inference of the dyadic states (the state loop) and the local Hebbian weight update.

For a layered network (see :mod:`dualprop.network`) every unit ``k ≥ 1`` holds two compartments
``s⁺_k, s⁻_k``, both starting at the feed-forward value. Visiting layer ``k`` sets

* drive ``a_k = B_k(s̄_{k−1})`` with ``s̄ = α s⁺ + (1−α) s⁻`` (``s̄_0 = x``),
* feedback ``Δ_k = J_{B_{k+1}}(s⁺_k)ᵀ (s⁺_{k+1} − s⁻_{k+1})``,
* compartments by the rule (:mod:`dualprop.rules`).

The update is ``∂J/∂θ`` of ``J(θ) = −1/(β·B) Σ_k ⟨s⁺_k − s⁻_k, B_k(s̄_{k−1})⟩`` with the states held fixed,
accumulated into ``.grad`` by one ``backward()`` exactly as a loss would be.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from dualprop.fused import FUSED_RULES, FusedSweep
from dualprop.hardware import CompartmentPerturbation, noisy_backprop
from dualprop.losses import batch_loss, check_loss, output_gradient
from dualprop.network import LayeredNetwork, split_network, unwrap
from dualprop.rules import (DYADIC_RULES, RULES, damped_hidden_compartments,
                            damping_from_spectral_norm, hidden_compartments, mean_state, nudge_weights,
                            output_compartments, output_nudge_is_fixed)
from dualprop.schedules import layer_order, parse_schedule, random_order
from dualprop.spectral import SpectralNormEstimator

IMPLEMENTATIONS = ("auto", "generic", "fused")
FEEDBACK_MODES = ("symmetric", "kolen-pollack")


@dataclass
class DyadicStates:
    """Compartments after inference: ``plus[k]``, ``minus[k]`` for ``k = 0..L`` (index 0 is the input)."""

    plus: list[Tensor]
    minus: list[Tensor]
    alpha: float
    logits: Tensor
    """The feed-forward output ``s_L`` before any nudging."""

    def mean(self, k: int) -> Tensor:
        """``s̄_k = α s⁺_k + (1−α) s⁻_k``; ``s̄_0`` is the input."""
        if k == 0:
            return self.plus[0]
        return mean_state(self.plus[k], self.minus[k], self.alpha)

    def difference(self, k: int) -> Tensor:
        """``δ_k = s⁺_k − s⁻_k``."""
        return self.plus[k] - self.minus[k]

    def all_finite(self) -> bool:
        """Whether every compartment is finite (a diverging DP run first shows up here); one device sync."""
        return bool(torch.stack([torch.isfinite(s).all() for s in self.plus[1:] + self.minus[1:]]).all())


@dataclass
class StepResult:
    """What ``Learner.objective`` and ``Learner.step`` report.

    ``loss`` is the feed-forward batch-mean loss, ``logits`` the feed-forward output (detached), and
    ``objective`` the scalar whose ``backward()`` accumulates the rule's update into ``.grad``: the
    surrogate ``J`` for the dyadic rules, the batch-mean loss for ``bp`` and ``adversarial``.
    """

    loss: float
    logits: Tensor
    states_finite: bool = True
    objective: Tensor | None = None


class _DriveCache:
    """Drives ``a_k = B_k(s̄_{k−1})`` of one inference, recomputed only after layer ``k−1`` has changed.

    The feed-forward pass supplies every drive; layer 1's never changes (``s̄_0 = x``), and a drive stays
    valid until the layer below is updated — so a ``backward`` sweep needs no block forward at all.
    """

    def __init__(self, feed_forward_drives: list[Tensor | None]):
        self.values = feed_forward_drives
        self.updates = [0] * len(feed_forward_drives)   # updates made to each layer
        self.seen = [0] * len(feed_forward_drives)      # updates of layer k−1 that values[k] reflects

    def drive(self, k: int, compute: Callable[[], Tensor]) -> Tensor:
        if self.seen[k] != self.updates[k - 1]:
            self.values[k] = compute()
            self.seen[k] = self.updates[k - 1]
        return self.values[k]

    def layer_updated(self, k: int) -> None:
        self.updates[k] += 1


def _check_unit_interval(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_power_iterations(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"power_iterations must be an integer >= 1, got {value!r}")
    return value


class Learner(nn.Module):
    """Train a model with dual propagation or a reference rule; an ``nn.Module`` beside the optimizer.

    Rules: ``dp``, ``dpT`` (DP⊤), ``dp-damped`` (DP with damping ``L_k = max(0, (γ_k² − 1)/2)`` from a
    warm-started power iteration of ``power_iterations`` steps per call on the next block), ``bp``
    (backprop of the batch-mean loss) and ``adversarial`` (backprop at ``x + β ∇ₓℓ``, ℓ per sample).
    ``feedback="kolen-pollack"`` carries ``Δ`` through separate feedback weights that receive the same
    local update as the forward weights; give ``learner.parameters()`` (model and feedback weights) to
    the optimizer, with weight decay, so the two sets come to agree.

    The Learner's own tensors are registered state: the feedback weights (parameters) and the
    spectral-norm estimates of damped DP (buffers) are in ``state_dict()``, moved by ``to()``. The model
    is the submodule ``model`` (unwrapped from ``DistributedDataParallel`` or ``torch.compile``; the
    wrapper is still what runs), and ``learner(x)`` is its forward. ``objective(x, y)`` returns the
    scalar whose ``backward()`` accumulates the update into ``.grad``; ``step(x, y)`` is that plus
    ``backward()``. The optimizer stays the caller's.

    Hardware realism (:mod:`dualprop.hardware`): ``state_noise=σ`` adds N(0, σ²) to ``s⁺_k`` and ``s⁻_k``
    each time the state loop updates neuron k, ``state_quantum=q`` rounds them stochastically to multiples
    of q, both drawn from a generator seeded by ``noise_seed``; with ``bp`` the same perturbation hits every
    neuron's activation forward and its per-sample gradient backward. ``schedule="random"`` draws a new
    asynchronous order of ``K·L`` visits every step from its own generator seeded by ``noise_seed``.
    """

    def __init__(self, model: nn.Module, rule: str = "dpT", alpha: float = 0.5, beta: float = 0.1,
                 schedule: str = "forward", passes: int | None = None, loss: str = "cross_entropy",
                 implementation: str = "auto", feedback: str = "symmetric", power_iterations: int = 1,
                 state_noise: float = 0.0, state_quantum: float = 0.0, noise_seed: int = 0):
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"unknown implementation {implementation!r}; "
                             f"choose one of {', '.join(IMPLEMENTATIONS)}")
        self.rule = rule
        self.alpha = _check_unit_interval("alpha", alpha)
        self.beta = _check_positive("beta", beta)
        self.schedule, self.passes = parse_schedule(schedule, passes)
        self.loss = check_loss(loss)
        self.model = unwrap(model)
        self.__dict__["wrapper"] = model  # what runs; kept out of the module tree (no duplicate state)
        self.network: LayeredNetwork = split_network(self.model)
        # hardware realism: compartment noise and resolution, asynchronous order
        self.perturbation = CompartmentPerturbation(state_noise, state_quantum, noise_seed)
        if self.perturbation.active and rule == "adversarial":
            raise ValueError("state_noise and state_quantum apply to dp, dpT, dp-damped and bp, "
                             "not to rule 'adversarial'")
        self._order_generator = (torch.Generator().manual_seed(noise_seed) if self.schedule == "random"
                                 else None)
        self.order = None if self.schedule == "random" else \
            layer_order(self.schedule, self.network.depth, self.passes)
        if feedback not in FEEDBACK_MODES:
            raise ValueError(f"unknown feedback {feedback!r}; choose one of {', '.join(FEEDBACK_MODES)}")
        if feedback != "symmetric" and rule not in DYADIC_RULES:
            raise ValueError(f"feedback={feedback!r} needs a dual-propagation rule, not {rule!r}")
        self.feedback = feedback
        self.feedback_weights = nn.ParameterList()
        self._feedback_index: list[list[int]] = []
        if feedback == "kolen-pollack":
            self._make_feedback_weights()
        self.power_iterations = _check_power_iterations(power_iterations)
        self.implementation = self._resolve_implementation(implementation)
        self._spectral_estimators: dict[int, SpectralNormEstimator] = {}

    def _resolve_implementation(self, implementation: str) -> str:
        """``fused`` where asked (DP/DP⊤, one ``backward`` sweep) or, for ``auto``, where it is exact:
        DP⊤ with ``α ∈ {0, 1}``, one ``backward`` sweep. Prepares the fused sweep when chosen."""
        self._fused_sweep: FusedSweep | None = None
        if implementation == "fused":
            if self.rule not in FUSED_RULES:
                raise ValueError(f"implementation='fused' supports rules {', '.join(FUSED_RULES)}, "
                                 f"not {self.rule!r}")
            if self.feedback != "symmetric":
                raise ValueError(f"implementation='fused' feeds back through the forward weights; "
                                 f"feedback={self.feedback!r} needs implementation='generic'")
            if self.schedule != "backward" or self.passes != 1:
                raise ValueError(f"implementation='fused' is a single backward sweep: it needs "
                                 f"schedule='backward' with passes=1, got schedule={self.schedule!r} "
                                 f"with passes={self.passes}")
            if self.perturbation.active:
                raise ValueError("implementation='fused' has no state loop to perturb: state_noise and "
                                 "state_quantum need implementation='generic' (or 'auto')")
        elif implementation == "auto":
            exact = (self.rule == "dpT" and self.alpha in (0.0, 1.0) and self.schedule == "backward"
                     and self.passes == 1 and self.feedback == "symmetric" and not self.perturbation.active)
            implementation = "fused" if exact else "generic"
        if implementation == "fused":
            self._fused_sweep = FusedSweep(self.wrapper, self.network, self.rule, self.loss)
        return implementation

    def _make_feedback_weights(self) -> None:
        """Independently initialised feedback weights for blocks 2..L (block 1 feeds back nothing), drawn
        like PyTorch's own Linear and Conv weights (Kaiming-uniform with ``a = √5``)."""
        self._feedback_index = [[]]
        for block in self.network.blocks[1:]:
            indices = []
            for part in block.weighted_parts():
                indices.append(len(self.feedback_weights))
                self.feedback_weights.append(nn.Parameter(
                    nn.init.kaiming_uniform_(torch.empty_like(part.weight), a=math.sqrt(5))))
            self._feedback_index.append(indices)

    def _block_feedback(self, k: int) -> list[Tensor] | None:
        """The feedback weights that replace block ``k+1``'s weights in its transposed map (or None)."""
        if self.feedback == "symmetric":
            return None
        weights = [self.feedback_weights[i] for i in self._feedback_index[k]]
        for weight, part in zip(weights, self.network.blocks[k].weighted_parts()):
            if weight.dtype != part.weight.dtype or weight.device != part.weight.device:
                raise ValueError(f"the feedback weights are {weight.dtype} on {weight.device} but the model "
                                 f"is {part.weight.dtype} on {part.weight.device}; move the Learner with "
                                 f"learner.to(...) rather than the model alone")
        return weights

    def feedback_parameters(self) -> list[nn.Parameter]:
        """The Kolen–Pollack feedback weights (empty with symmetric feedback)."""
        return list(self.feedback_weights)

    def forward(self, x: Tensor) -> Tensor:
        """The model's output (through its wrapper, if any)."""
        return self.wrapper(x)

    def extra_repr(self) -> str:
        return (f"rule={self.rule!r}, alpha={self.alpha}, beta={self.beta}, schedule={self.schedule!r}, "
                f"passes={self.passes}, loss={self.loss!r}, implementation={self.implementation!r}, "
                f"feedback={self.feedback!r}, depth={self.network.depth}")

    # -- inference ---------------------------------------------------------------------------------

    def feed_forward(self, x: Tensor) -> list[Tensor]:
        """``[s_0, …, s_L]`` with ``s_k = f_k(B_k(s_{k−1}))`` and ``s_L = B_L(s_{L−1})``, without grad."""
        return self._feed_forward(x)[0]

    def _feed_forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor | None]]:
        """The feed-forward states and drives ``[None, a_1, …, a_L]`` (``a_k = B_k(s_{k−1})``)."""
        states: list[Tensor] = [x]
        drives: list[Tensor | None] = [None]
        with torch.no_grad():
            for k, block in enumerate(self.network.blocks):
                drives.append(block(states[-1]))
                states.append(self.network.activations[k](drives[-1])
                              if k < len(self.network.activations) else drives[-1])
        return states, drives

    def infer(self, x: Tensor, y: Tensor) -> DyadicStates:
        """Run the inference schedule from the feed-forward states and return the dyadic states."""
        if self.rule == "bp":
            raise ValueError("rule 'bp' has no dyadic states to infer")
        plus, drives = self._feed_forward(x)
        logits = plus[-1]
        states = DyadicStates(plus, list(plus), self.alpha, logits)
        weights = nudge_weights(self.rule, self.alpha)
        dampings = self.dampings(plus) if self.rule == "dp-damped" else None
        cache = _DriveCache(drives)
        with torch.no_grad():
            fixed_nudge = (self.beta * output_gradient(self.loss, logits, y)
                           if output_nudge_is_fixed(self.rule) else None)
            order = self.order if self._order_generator is None else \
                random_order(self.network.depth, self.passes, self._order_generator)
            for k in order:
                self._update_layer(states, cache, k, y, weights, fixed_nudge, dampings)
        return states

    def dampings(self, states: list[Tensor]) -> list[float]:
        """``L_k = max(0, (γ_k² − 1)/2)`` for hidden layers k = 1..L−1, γ_k the spectral norm of ``B_{k+1}``
        (power iteration, warm-started from the previous call's vector, a buffer ``spectral_vector_k``)."""
        result = []
        for k in range(1, self.network.depth):
            estimator = self._spectral_estimators.get(k)
            if estimator is None:
                estimator = SpectralNormEstimator(self.network.blocks[k], states[k].shape[1:],
                                                  self.power_iterations)
                self._spectral_estimators[k] = estimator
            name = f"spectral_vector_{k}"
            saved = getattr(self, name, None)
            estimator.vector = saved if saved is not None and saved.numel() else None
            result.append(damping_from_spectral_norm(estimator()))
            self.register_buffer(name, estimator.vector if estimator.vector is not None else torch.empty(0))
        return result

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        """Accept the spectral-norm vectors of a saved Learner even before this one has made its own."""
        for key, value in state_dict.items():
            name = key[len(prefix):]
            if key.startswith(prefix) and name.startswith("spectral_vector_") and "." not in name:
                self.register_buffer(name, torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _update_layer(self, states: DyadicStates, cache: "_DriveCache", k: int, y: Tensor,
                      weights: tuple[float, float], fixed_nudge: Tensor | None,
                      dampings: list[float] | None) -> None:
        """Set ``s⁺_k, s⁻_k`` from the current neighbours: at most one block forward (the drive, only if
        layer k−1 changed since it was last computed) and, for a hidden layer, one VJP."""
        net = self.network
        drive = cache.drive(k, lambda: net.blocks[k - 1](states.mean(k - 1)))
        if k == net.depth:
            nudge = fixed_nudge if fixed_nudge is not None else \
                self.beta * output_gradient(self.loss, drive, y)
            states.plus[k], states.minus[k] = output_compartments(drive, nudge, weights)
        else:
            feedback = net.blocks[k].vjp(states.plus[k], states.difference(k + 1), self._block_feedback(k))
            activation = net.activations[k - 1]
            if dampings is None:
                states.plus[k], states.minus[k] = hidden_compartments(activation, drive, feedback, weights)
            else:
                states.plus[k], states.minus[k] = damped_hidden_compartments(
                    activation, drive, feedback, weights, states.plus[k], states.minus[k], dampings[k - 1])
        states.plus[k], states.minus[k] = self.perturbation(states.plus[k]), self.perturbation(states.minus[k])
        cache.layer_updated(k)

    # -- learning ----------------------------------------------------------------------------------

    def surrogate_objective(self, states: DyadicStates) -> Tensor:
        """``J(θ) = −1/(β·B) Σ_k ⟨s⁺_k − s⁻_k, B_k(s̄_{k−1})⟩`` with the states detached.

        With Kolen–Pollack feedback each forward weight ``W`` enters ``J`` as ``W + (V − sg(V))`` for its
        feedback weight ``V`` (``sg``: stop-gradient): the value is unchanged and ``∂J/∂V = ∂J/∂W``, so
        one ``backward()`` gives both sets the same local update.
        """
        batch = states.plus[0].shape[0]
        total = None
        for k, block in enumerate(self.network.blocks, start=1):
            drive = _with_tied_feedback(block, self._feedback_of_block(k - 1),
                                        states.mean(k - 1).detach())
            term = (states.difference(k).detach() * drive).sum()
            total = term if total is None else total + term
        return total * (-1.0 / (self.beta * batch))

    def _feedback_of_block(self, index: int) -> list[Tensor] | None:
        """Feedback weights paired with the weighted parts of ``blocks[index]`` (None if it has none)."""
        if self.feedback == "symmetric" or index == 0:
            return None
        return self._block_feedback(index)

    def objective(self, x: Tensor, y: Tensor) -> StepResult:
        """Run inference and return the step's result with ``.objective``, the scalar whose
        ``backward()`` accumulates the rule's update into ``.grad`` exactly as :meth:`step` does."""
        if self.rule == "bp":
            with noisy_backprop(self.perturbation, self.network.activations, x.shape[0]) as neuron:
                logits = neuron(self.wrapper(x))
            loss = batch_loss(self.loss, logits, y)
            return StepResult(float(loss.detach()), logits.detach(), objective=loss)
        if self._fused_sweep is not None:
            loss_tensor, logits = self._fused_sweep.objective(x, y, self.alpha, self.beta)
            return StepResult(float(loss_tensor.detach()), logits, bool(torch.isfinite(logits).all()),
                              objective=loss_tensor)
        if self.rule == "adversarial":
            moved, clean_logits = self.adversarial_input(x, y)
            objective = batch_loss(self.loss, self.wrapper(moved), y)
            with torch.no_grad():
                loss = float(batch_loss(self.loss, clean_logits, y))
            return StepResult(loss, clean_logits, objective=objective)
        states = self.infer(x, y)
        objective = self._through_model(lambda: self.surrogate_objective(states))
        with torch.no_grad():
            loss = float(batch_loss(self.loss, states.logits, y))
        return StepResult(loss, states.logits, states.all_finite(), objective=objective)

    def step(self, x: Tensor, y: Tensor) -> StepResult:
        """Accumulate the rule's weight update into ``.grad`` (like ``loss.backward()``):
        ``objective(x, y).objective.backward()``."""
        result = self.objective(x, y)
        result.objective.backward()
        return result

    def _through_model(self, compute: Callable[[], Tensor]) -> Tensor:
        """Evaluate ``compute()`` as the forward of the model's ``DistributedDataParallel`` wrapper, if any.

        The wrapper then prepares its bucketed all-reduce for the following ``backward()`` exactly as for
        a loss: its module's ``forward`` is swapped for ``compute`` during the call. Otherwise (a plain or
        compiled model) ``compute()`` runs directly on the shared parameters.
        """
        ddp = _find_ddp(self.wrapper)
        if ddp is None:
            return compute()
        inner = ddp.module
        inner.forward = compute
        try:
            return ddp()
        finally:
            del inner.forward

    def adversarial_input(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(x + β ∇ₓℓ, clean logits)`` with ``∇ₓℓ`` the per-sample loss gradient (not scaled by 1/B).

        The input gradient runs on the unwrapped model, so a DDP wrapper is not armed by it."""
        with torch.enable_grad():
            point = x.detach().requires_grad_(True)
            logits = self.model(point)
            (grad,) = torch.autograd.grad(batch_loss(self.loss, logits, y), point)
        return (x + self.beta * x.shape[0] * grad).detach(), logits.detach()


def _find_ddp(model: nn.Module) -> DistributedDataParallel | None:
    """The ``DistributedDataParallel`` wrapper in a chain of wrappers (DDP, ``torch.compile``), if any."""
    while True:
        if isinstance(model, DistributedDataParallel):
            return model
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            return None
        model = inner


def _with_tied_feedback(block: nn.Module, feedback: list[Tensor] | None, s: Tensor) -> Tensor:
    """``block(s)`` with each weighted part's weight ``W`` replaced by ``W + (V − sg(V))`` (value ``W``,
    gradient shared with its feedback weight ``V``); the plain ``block(s)`` without feedback weights."""
    if not feedback:
        return block(s)
    tied = {f"parts.{i}.weight": part.weight + (weight - weight.detach())
            for (i, part), weight in zip(
                ((i, p) for i, p in enumerate(block.parts) if p in block.weighted_parts()), feedback)}
    return torch.func.functional_call(block, tied, (s,))
