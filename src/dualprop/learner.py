"""``Learner``: inference of the dyadic states (the state loop) and the local Hebbian weight update.

The model is a graph of neurons (see :mod:`dualprop.graph`): every neuron ``k ≥ 1`` holds two
compartments ``s⁺_k, s⁻_k``, both starting at the feed-forward value. Visiting neuron ``k`` sets

* drive ``a_k = B_k(s̄_{P(k)})`` with ``s̄ = α s⁺ + (1−α) s⁻`` (``s̄_0 = x``),
* feedback ``Δ_k = Σ_{c: k ∈ P(c)} J_{B_c, k}(s⁺_{P(c)})ᵀ (s⁺_c − s⁻_c)``, summed over the children ``c``,
* compartments by the rule (:mod:`dualprop.rules`).

For a layered network (``P(k) = (k−1,)``) this is ``Δ_k = J_{B_{k+1}}(s⁺_k)ᵀ (s⁺_{k+1} − s⁻_{k+1})``.
The update is ``∂J/∂θ`` of ``J(θ) = −1/(β·B) Σ_k ⟨s⁺_k − s⁻_k, B_k(s̄_{P(k)})⟩`` with the states held
fixed, returned by :meth:`Learner.objective` for the caller's ``backward()`` (or accumulated by
:meth:`Learner.step`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dualprop.fused import FUSED_RULES, FusedSweep
from dualprop.graph import (
    NeuronGraph,
    capture_graph,
    find_ddp,
    forward_module,
    run_as_forward,
    unwrap,
)
from dualprop.hardware import CompartmentPerturbation, noisy_backprop
from dualprop.inputs import check_batch
from dualprop.losses import batch_loss, check_loss, check_target, output_gradient, target_distribution
from dualprop.network import BlockInput, ZeroTerm, frozen_statistics, hebbian_term
from dualprop.rules import (
    DYADIC_RULES,
    RULES,
    damped_hidden_compartments,
    damping_from_spectral_norm,
    hidden_compartments,
    mean_state,
    nudge_weights,
    output_compartments,
    output_nudge_is_fixed,
)
from dualprop.schedules import layer_order, parse_schedule, random_order
from dualprop.spectral import SpectralNormEstimator

IMPLEMENTATIONS = ("auto", "generic", "fused")
_NOISE_GENERATOR = "noise_generator_"
_ORDER_GENERATOR = "order_generator"
FEEDBACK_MODES = ("symmetric", "kolen-pollack")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


@dataclass
class DyadicStates:
    """Compartments after inference: ``plus[k]``, ``minus[k]`` for neurons ``k = 0..N`` (0 is the input)."""

    plus: list[Tensor]
    minus: list[Tensor]
    alpha: float
    logits: Tensor
    """The feed-forward output ``s_N`` before any nudging."""
    target: Tensor
    """The targets as vectors shaped like ``logits`` (class indices made one-hot)."""
    drives: list[Tensor | None] = field(default_factory=list)
    """``a_k = B_k(s̄_{P(k)})`` at these states where inference left it current, else None (index 0 unused)."""

    def mean(self, k: int) -> Tensor:
        """``s̄_k = α s⁺_k + (1−α) s⁻_k``; ``s̄_0`` is the input, and so is an unmoved neuron's its state."""
        if k == 0 or not self.moved(k):
            return self.plus[k]
        return mean_state(self.plus[k], self.minus[k], self.alpha)

    def difference(self, k: int) -> Tensor:
        """``δ_k = s⁺_k − s⁻_k``."""
        return self.plus[k] - self.minus[k]

    def moved(self, k: int) -> bool:
        """Whether neuron ``k`` may have left its feed-forward state: until its first visit both compartments
        are the feed-forward tensor itself, so ``δ_k`` is exactly zero."""
        return self.plus[k] is not self.minus[k]

    def all_finite(self) -> Tensor:
        """Whether every compartment is finite (a diverging DP run first shows up here), as a 0-dim bool
        tensor: one sum per compartment — NaN or ±inf anywhere makes it non-finite — and no device sync
        until it is read."""
        sums = torch.stack(
            [
                s.sum(dtype=torch.promote_types(s.dtype, torch.float32))  # no fp16 overflow
                for s in self.plus[1:] + self.minus[1:]
            ]
        )
        return torch.isfinite(sums).all()


@dataclass
class StepResult:
    """What ``Learner.objective`` and ``Learner.step`` report, kept as tensors so that a step waits for
    the device only when a value is read (and a compiled step stays one graph).

    ``loss_tensor`` is the feed-forward batch-mean loss (detached), ``logits`` the feed-forward output
    (detached), ``finite_tensor`` whether every dyadic compartment is finite (None for rules without
    states), and ``objective`` the scalar whose ``backward()`` accumulates the rule's update into
    ``.grad``: the surrogate ``J`` for the dyadic rules, the batch-mean loss for ``bp`` and ``adversarial``.
    """

    loss_tensor: Tensor
    logits: Tensor
    finite_tensor: Tensor | None = None
    objective: Tensor | None = None

    @property
    def loss(self) -> float:
        """The feed-forward batch-mean loss as a number (one device sync)."""
        return float(self.loss_tensor)

    @property
    def states_finite(self) -> bool:
        """Whether every dyadic compartment is finite (one device sync; True for rules without states)."""
        return self.finite_tensor is None or bool(self.finite_tensor)


class _Versions:
    """Version stamps of the neurons' states within one inference: a drive or a visit whose inputs carry
    the same stamps as when it was last computed would compute the same values, so it is reused. A drive
    is let go as soon as it cannot be reused (a parent changed) or is not needed any more."""

    def __init__(self, graph: NeuronGraph, drives: list[Tensor | None], dependencies: list[tuple[int, ...]]):
        self.graph = graph
        self.counts = [0] * (graph.depth + 1)
        self.drives = drives
        initial = [(0,) * len(parents) for parents in graph.parents]
        self._drive_seen = [None, *initial]
        self._dependencies = dependencies
        # The feed-forward state of a hidden neuron is what a visit computes while every δ is zero.
        self._visit_seen: list[tuple[int, ...] | None] = [None] + [(0,) * len(d) for d in dependencies[1:-1]] + [None]

    def _parents_stamp(self, k: int) -> tuple[int, ...]:
        return tuple(self.counts[p] for p in self.graph.parents[k - 1])

    def drive(self, k: int, compute: Callable[[], Tensor]) -> Tensor:
        """``a_k``, recomputed only if a parent of ``k`` has changed since it was last computed."""
        stamp = self._parents_stamp(k)
        if stamp != self._drive_seen[k]:
            self.drives[k] = compute()
            self._drive_seen[k] = stamp
        return self.drives[k]

    def current_drives(self) -> list[Tensor | None]:
        """The drives that still match their parents' states (None where a parent changed since or the
        drive was released)."""
        return [None] + [
            self.drives[k] if self._parents_stamp(k) == self._drive_seen[k] else None
            for k in range(1, self.graph.depth + 1)
        ]

    def release(self, k: int) -> None:
        """Let ``a_k`` go: nothing will read it again (it is computed anew if something does)."""
        self.drives[k] = None
        self._drive_seen[k] = None

    def visit_needed(self, k: int) -> bool:
        """Whether visiting ``k`` could change it: some neuron its update reads has changed since."""
        return tuple(self.counts[d] for d in self._dependencies[k]) != self._visit_seen[k]

    def visited(self, k: int) -> None:
        """Record a visit of ``k`` (the stamps it read) and that ``k`` has changed, which outdates the drives
        of its children."""
        self._visit_seen[k] = tuple(self.counts[d] for d in self._dependencies[k])
        self.counts[k] += 1
        for child in self.graph.children[k]:
            self.release(child)


def _check_unit_interval(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_power_iterations(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"power_iterations must be an integer >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class LearnerSettings:
    """The settings of a :class:`Learner`, checked without a model: a bad one, or a bad combination, is a
    ``ValueError`` naming it. ``schedule`` and ``passes`` come out resolved (``fw3`` → ``forward``, 3)."""

    rule: str = "dpT"
    alpha: float = 0.5
    beta: float = 0.1
    schedule: str = "forward"
    passes: int | None = None
    loss: str = "cross_entropy"
    implementation: str = "auto"
    feedback: str = "symmetric"
    power_iterations: int = 1
    state_noise: float = 0.0
    state_quantum: float = 0.0
    noise_seed: int = 0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown rule {self.rule!r}; choose one of {', '.join(RULES)}")
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"unknown implementation {self.implementation!r}; choose one of {', '.join(IMPLEMENTATIONS)}"
            )
        schedule, passes = parse_schedule(self.schedule, self.passes)
        for name, value in (
            ("alpha", _check_unit_interval("alpha", self.alpha)),
            ("beta", _check_positive("beta", self.beta)),
            ("schedule", schedule),
            ("passes", passes),
            ("loss", check_loss(self.loss)),
            ("power_iterations", _check_power_iterations(self.power_iterations)),
        ):
            object.__setattr__(self, name, value)
        if self.feedback not in FEEDBACK_MODES:
            raise ValueError(f"unknown feedback {self.feedback!r}; choose one of {', '.join(FEEDBACK_MODES)}")
        if self.feedback != "symmetric" and self.rule not in DYADIC_RULES:
            raise ValueError(f"feedback={self.feedback!r} needs a dual-propagation rule, not {self.rule!r}")
        perturbed = self.perturbation().active
        if perturbed and self.rule == "adversarial":
            raise ValueError(
                "state_noise and state_quantum apply to dp, dpT, dp-damped and bp, not to rule 'adversarial'"
            )
        if self.implementation == "fused":
            if self.rule not in FUSED_RULES:
                raise ValueError(f"implementation='fused' supports rules {', '.join(FUSED_RULES)}, not {self.rule!r}")
            if self.feedback != "symmetric":
                raise ValueError(
                    f"implementation='fused' feeds back through the forward weights; "
                    f"feedback={self.feedback!r} needs implementation='generic'"
                )
            if not self.one_sweep:
                raise ValueError(
                    f"implementation='fused' is a single backward sweep: it needs "
                    f"schedule='backward' with passes=1, got schedule={self.schedule!r} "
                    f"with passes={self.passes}"
                )
            if perturbed:
                raise ValueError(
                    "implementation='fused' has no state loop to perturb: state_noise and "
                    "state_quantum need implementation='generic' (or 'auto')"
                )

    @property
    def one_sweep(self) -> bool:
        """Whether the schedule is one backward sweep (``backward``, or ``forward-backward`` with one pass)."""
        return self.passes == 1 and self.schedule in ("backward", "forward-backward")

    def perturbation(self) -> CompartmentPerturbation:
        """The compartment noise and rounding these settings ask for (checked on construction)."""
        return CompartmentPerturbation(self.state_noise, self.state_quantum, self.noise_seed)


class Learner(nn.Module):
    """Train any capturable model with dual propagation or a reference rule; an ``nn.Module`` beside the
    optimizer.

    Rules: ``dp``, ``dpT`` (DP⊤), ``dp-damped`` (DP with damping ``L_k = max(0, (γ_k² − 1)/2)``, ``γ_k`` the
    spectral norm of the map from neuron ``k`` to its children's drives, from a warm-started power
    iteration of ``power_iterations`` steps per call), ``bp`` (backprop of the batch-mean loss) and
    ``adversarial`` (backprop at ``x + β ∇ₓℓ``, ℓ per sample). ``feedback="kolen-pollack"`` carries ``Δ``
    through separate feedback weights, one per weighted module that feeds back, which receive the same
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
    asynchronous order of ``K·N`` visits every step from its own generator seeded by ``noise_seed``.
    """

    def __init__(
        self,
        model: nn.Module,
        rule: str = "dpT",
        alpha: float = 0.5,
        beta: float = 0.1,
        schedule: str = "forward",
        passes: int | None = None,
        loss: str = "cross_entropy",
        implementation: str = "auto",
        feedback: str = "symmetric",
        power_iterations: int = 1,
        state_noise: float = 0.0,
        state_quantum: float = 0.0,
        noise_seed: int = 0,
    ):
        super().__init__()
        settings = LearnerSettings(
            rule,
            alpha,
            beta,
            schedule,
            passes,
            loss,
            implementation,
            feedback,
            power_iterations,
            state_noise,
            state_quantum,
            noise_seed,
        )
        self.settings = settings
        self.rule, self.alpha, self.beta = settings.rule, settings.alpha, settings.beta
        self.schedule, self.passes, self.loss = settings.schedule, settings.passes, settings.loss
        self.feedback, self.power_iterations = settings.feedback, settings.power_iterations
        self.model = unwrap(model)
        self.__dict__["wrapper"] = model  # what runs; kept out of the module tree (no duplicate state)
        # hardware realism: compartment noise and resolution, asynchronous order
        self.perturbation = settings.perturbation()
        self._order_generator = torch.Generator().manual_seed(noise_seed) if self.schedule == "random" else None
        self.feedback_weights = nn.ParameterList()
        self._feedback_index: dict[nn.Module, int] = {}
        self._spectral_estimators: dict[tuple[int, int], SpectralNormEstimator] = {}
        self._compiled_objective: Callable[..., StepResult] | None = None
        self._graphs: dict[tuple, NeuronGraph] = {}
        self._adopt(capture_graph(self.model))

    def _adopt(self, graph: NeuronGraph) -> None:
        """Make ``graph`` (a capture of the model in its current mode) the one the steps run on, with what
        derives from it: the visit order, the feedback weights of new parts, the implementation."""
        if self.settings.rule == "adversarial" and graph.token_inputs:
            raise ValueError("rule 'adversarial' moves the inputs along their gradient; integer token ids have none")
        if hasattr(self, "network") and self.network.parents != graph.parents:
            self._spectral_estimators = {}
        self.network: NeuronGraph = graph
        self._graphs[graph.mode] = graph
        self.order = (
            None if self.schedule == "random" else layer_order(self.schedule, graph.depth, self.passes, graph.levels)
        )
        self._last_visits = _last_visits(self.order) if self.order is not None else {}
        self._sites = [_Site(activation) for activation in graph.activations] if self.perturbation.active else []
        # kept out of the module tree: it holds the model's own modules
        self.__dict__["_noisy_forward"] = graph.with_activations(self._sites) if self._sites else None
        if self.feedback == "kolen-pollack":
            self._make_feedback_weights()
        self.implementation = self._resolve_implementation(self.settings.implementation)
        self._dependencies = self._visit_dependencies()
        if self.rule == "dp-damped":
            self._check_damping_norms()

    def follow_model(self) -> None:
        """Follow the model's current mode and settings: ``train()``/``eval()``, a dropout's ``p``, flags its
        ``forward`` branches on. A model captured in another mode is captured again (each mode once, then
        cached). Every step calls this first."""
        key = self.network.current_mode()
        if key != self.network.mode:
            self._adopt(self._graphs.get(key) or capture_graph(self.model))

    def _resolve_implementation(self, implementation: str) -> str:
        """``fused`` where asked (its settings checked by :class:`LearnerSettings`) or, for ``auto``, where
        it equals the generic sweep: DP⊤ with ``α ∈ {0, 1}`` and one backward sweep (``backward``, or
        ``forward-backward`` with one pass, the same visit order), symmetric feedback, no perturbation —
        and at ``α = 0``, where ``s⁺`` leaves the feed-forward value, only if every block with several
        parents has a constant Jacobian."""
        self._fused_sweep: FusedSweep | None = None
        if implementation == "auto":
            graph = self.network
            points_fixed = self.alpha == 1.0 or all(
                affine for affine, parents in zip(graph.affine, graph.parents) if len(parents) > 1
            )
            exact = (
                self.rule == "dpT"
                and self.alpha in (0.0, 1.0)
                and self.settings.one_sweep
                and points_fixed
                and self.feedback == "symmetric"
                and not self.perturbation.active
            )
            implementation = "fused" if exact else "generic"
        if implementation == "fused":
            self._fused_sweep = FusedSweep(self.network, self.rule, self.loss)
        return implementation

    def _make_feedback_weights(self) -> None:
        """Independently initialised feedback weights, one per weighted module of every block that feeds
        back to a neuron (a block reading only the input feeds back nothing), drawn like PyTorch's own
        Linear and Conv weights (Kaiming-uniform with ``a = √5``)."""
        for block, parents in zip(self.network.blocks, self.network.parents):
            if parents == (0,):
                continue
            for part in block.weighted_parts():
                if part not in self._feedback_index:
                    self._feedback_index[part] = len(self.feedback_weights)
                    self.feedback_weights.append(
                        nn.Parameter(nn.init.kaiming_uniform_(torch.empty_like(part.weight), a=math.sqrt(5)))
                    )

    def _block_feedback(self, block: nn.Module) -> list[Tensor] | None:
        """The feedback weights that replace ``block``'s weights in its transposed map (or None)."""
        if self.feedback == "symmetric":
            return None
        parts = block.weighted_parts()
        weights = [self.feedback_weights[self._feedback_index[part]] for part in parts]
        for weight, part in zip(weights, parts):
            if weight.dtype != part.weight.dtype or weight.device != part.weight.device:
                raise ValueError(
                    f"the feedback weights are {weight.dtype} on {weight.device} but the model "
                    f"is {part.weight.dtype} on {part.weight.device}; move the Learner with "
                    f"learner.to(...) rather than the model alone"
                )
        return weights

    def feedback_parameters(self) -> list[nn.Parameter]:
        """The Kolen–Pollack feedback weights (empty with symmetric feedback)."""
        return list(self.feedback_weights)

    def forward(self, x: Tensor) -> Tensor:
        """The model's output (through its wrapper, if any)."""
        return self.wrapper(x)

    def extra_repr(self) -> str:
        return (
            f"rule={self.rule!r}, alpha={self.alpha}, beta={self.beta}, schedule={self.schedule!r}, "
            f"passes={self.passes}, loss={self.loss!r}, implementation={self.implementation!r}, "
            f"feedback={self.feedback!r}, neurons={self.network.depth}"
        )

    # -- inference ---------------------------------------------------------------------------------

    def feed_forward(self, x: Tensor) -> list[Tensor]:
        """``[s_0, …, s_N]`` with ``s_k = f_k(B_k(s_{P(k)}))`` and ``s_N = B_N(s_{P(N)})``, without grad."""
        self.follow_model()
        self.network.new_step()
        with torch.no_grad():
            return self.network.feed_forward(x)[0]

    def infer(self, x: Tensor, y: Tensor) -> DyadicStates:
        """Run the inference schedule from the feed-forward states and return the dyadic states.

        The feed-forward pass is the step's one ordinary forward (normalisation statistics updated once,
        dropout masks drawn once); the visits then see every block as that fixed function."""
        if self.rule == "bp":
            raise ValueError("rule 'bp' has no dyadic states to infer")
        self.follow_model()
        check_batch(self.model, x, y, token_ids=self.network.token_inputs)
        return self._infer(x, y)

    def _infer(self, x: Tensor, y: Tensor) -> DyadicStates:
        """:meth:`infer` on a batch already checked."""
        self.network.new_step()
        with torch.no_grad():
            plus, drives = self.network.feed_forward(x)
        logits = plus[-1]
        check_target(self.loss, logits, y)
        states = DyadicStates(plus, list(plus), self.alpha, logits, target_distribution(logits, y))
        weights = nudge_weights(self.rule, self.alpha)
        versions = _Versions(self.network, drives, self._dependencies)
        target = states.target
        with torch.no_grad(), frozen_statistics(self.network.norms):
            dampings = self.dampings(plus) if self.rule == "dp-damped" else None
            fixed_nudge = (
                self.beta * output_gradient(self.loss, logits, target) if output_nudge_is_fixed(self.rule) else None
            )
            order = (
                self.order
                if self._order_generator is None
                else random_order(self.network.depth, self.passes, self._order_generator)
            )
            deterministic = dampings is None and not self.perturbation.active
            last_visits = self._last_visits if self._order_generator is None else _last_visits(order)
            for position, k in enumerate(order):
                if not deterministic or versions.visit_needed(k):
                    self._update_neuron(states, versions, k, target, weights, fixed_nudge, dampings)
                if position == last_visits[k] and self.network.blocks[k - 1].closed_form_part is None:
                    versions.release(k)  # only a closed-form update reads a drive after the last visit
        states.drives = versions.current_drives()
        return states

    def _visit_dependencies(self) -> list[tuple[int, ...]]:
        """For each neuron ``k``, the neurons whose states its update reads: its parents (drive), its
        children and their other parents (feedback), and ``k`` itself where a child's Jacobian depends on
        the point ``s⁺_k``. Unused index 0 holds ``()``."""
        graph = self.network
        result: list[tuple[int, ...]] = [()]
        for k in range(1, graph.depth + 1):
            reads = set(graph.parents[k - 1])
            for c in graph.children[k]:
                reads.add(c)
                reads.update(graph.parents[c - 1])
            reads.discard(k)
            if not all(graph.affine[c - 1] for c in graph.children[k]):
                reads.add(k)
            result.append(tuple(sorted(reads)))
        return result

    def dampings(self, states: list[Tensor]) -> list[float]:
        """``L_k = max(0, (γ_k² − 1)/2)`` for hidden neurons k = 1..N−1, ``γ_k`` the spectral norm of the map
        from ``s_k`` to its children's drives: ``γ_{c,k}`` of the one child ``c`` (for a chain, ``B_{k+1}``), or
        the bound ``(Σ_c γ_{c,k}²)^{1/2}`` over several. Each ``γ_{c,k}`` comes from a power iteration warm-started
        from the previous call's vector, kept as the buffer ``spectral_vector_{k}_{c}``."""
        graph = self.network
        self._check_damping_norms()
        result = []
        for k in range(1, graph.depth):
            norms = [self._spectral_norm(k, c, states) for c in graph.children[k]]
            gamma = norms[0] if len(norms) == 1 else math.sqrt(sum(g * g for g in norms))
            result.append(damping_from_spectral_norm(gamma))
        return result

    def _check_damping_norms(self) -> None:
        """``dp-damped`` needs a per-sample spectral norm of every block, which batch normalisation in
        training mode (normalising with the batch's statistics) does not have."""
        if any(m.training or not m.track_running_stats for m in self.network.norms):
            raise ValueError(
                "rule 'dp-damped' needs the spectral norm of every block per sample, which "
                "batch normalisation in training mode does not have; use model.eval() or "
                "another rule"
            )

    def _spectral_norm(self, k: int, c: int, states: list[Tensor]) -> float:
        """``γ_{c,k}``: the spectral norm of block ``c`` as a function of its input from neuron ``k``."""
        estimator = self._spectral_estimators.get((k, c))
        if estimator is None:
            parents = self.network.parents[c - 1]
            block = self.network.blocks[c - 1]
            target = (
                block
                if len(parents) == 1
                else BlockInput(block, parents.index(k), [states[p].shape[1:] for p in parents])
            )
            estimator = SpectralNormEstimator(target, states[k].shape[1:], self.power_iterations)
            self._spectral_estimators[(k, c)] = estimator
        name = f"spectral_vector_{k}_{c}"
        saved = getattr(self, name, None)
        estimator.vector = saved if saved is not None and saved.numel() else None
        gamma = estimator()
        self.register_buffer(name, estimator.vector if estimator.vector is not None else torch.empty(0))
        return gamma

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # type: ignore[override]
        """Besides parameters and buffers, the states of the noise and random-order generators, so that a
        resumed noisy or asynchronous run draws what the uninterrupted one would have drawn."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for device, state in self.perturbation.generator_states().items():
            destination[f"{prefix}{_NOISE_GENERATOR}{str(device).replace(':', '_')}"] = state
        if self._order_generator is not None:
            destination[prefix + _ORDER_GENERATOR] = self._order_generator.get_state()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):  # type: ignore[override]
        """Accept the spectral-norm vectors of a saved Learner even before this one has made its own, and
        continue its generators."""
        generators = []
        for key, value in state_dict.items():
            name = key[len(prefix) :]
            if not key.startswith(prefix) or "." in name:
                continue
            if name.startswith("spectral_vector_"):
                self.register_buffer(name, torch.empty_like(value))
            elif name.startswith(_NOISE_GENERATOR):
                device = torch.device(name[len(_NOISE_GENERATOR) :].replace("_", ":"))
                self.perturbation.set_generator_state(device, value)
                generators.append(key)
            elif name == _ORDER_GENERATOR and self._order_generator is not None:
                self._order_generator.set_state(value.cpu())
                generators.append(key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for key in generators:
            if key in unexpected_keys:
                unexpected_keys.remove(key)

    def _update_neuron(
        self,
        states: DyadicStates,
        versions: _Versions,
        k: int,
        target: Tensor,
        weights: tuple[float, float],
        fixed_nudge: Tensor | None,
        dampings: list[float] | None,
    ) -> None:
        """Set ``s⁺_k, s⁻_k`` from the current neighbours: at most one block forward (the drive, only if a
        parent changed since it was last computed) and, for a hidden neuron, one VJP per child."""
        graph = self.network
        drive = versions.drive(k, lambda: graph.blocks[k - 1](*[states.mean(p) for p in graph.parents[k - 1]]))
        if k == graph.depth:
            nudge = fixed_nudge if fixed_nudge is not None else self.beta * output_gradient(self.loss, drive, target)
            states.plus[k], states.minus[k] = output_compartments(drive, nudge, weights)
        else:
            feedback = self._feedback(states, k)
            activation = graph.activations[k - 1]
            if dampings is None:
                states.plus[k], states.minus[k] = hidden_compartments(activation, drive, feedback, weights)
            else:
                states.plus[k], states.minus[k] = damped_hidden_compartments(
                    activation, drive, feedback, weights, states.plus[k], states.minus[k], dampings[k - 1]
                )
        states.plus[k], states.minus[k] = self.perturbation(states.plus[k]), self.perturbation(states.minus[k])
        versions.visited(k)

    def _feedback(self, states: DyadicStates, k: int) -> Tensor:
        """``Δ_k = Σ_c J_{B_c, k}(s⁺_{P(c)})ᵀ δ_c`` over the children ``c`` of ``k`` (a child never moved has
        ``δ_c = 0`` exactly and adds nothing: its VJP is not computed)."""
        graph = self.network
        total = None
        for c in graph.children[k]:
            if not states.moved(c):
                continue
            parents = graph.parents[c - 1]
            block = graph.blocks[c - 1]
            term = block.input_vjp(
                [states.plus[p] for p in parents], states.difference(c), parents.index(k), self._block_feedback(block)
            )
            total = term if total is None else total + term
        return total if total is not None else torch.zeros_like(states.plus[k])

    # -- learning ----------------------------------------------------------------------------------

    def surrogate_objective(self, states: DyadicStates) -> Tensor:
        """``J(θ) = −1/(β·B) Σ_k ⟨s⁺_k − s⁻_k, B_k(s̄_{P(k)})⟩`` with the states detached.

        A block that is one Linear or Conv part reuses its drive from inference and writes its update in
        closed form (:class:`dualprop.network.HebbianTerm`); any other block runs its forward under autograd.
        A block with a normalisation layer is checkpointed: its term keeps only ``s̄`` and ``δ``, not the
        normaliser's input, and its forward runs again when ``J`` is differentiated — the update then needs
        no more memory than backprop, for one more forward of those blocks.

        With Kolen–Pollack feedback each forward weight ``W`` that has a feedback weight ``V`` enters ``J`` as
        ``W + (V − sg(V))`` (``sg``: stop-gradient): the value is unchanged and ``∂J/∂V = ∂J/∂W``, so one
        ``backward()`` gives both sets the same local update.
        """
        copy = dataclasses.replace(states, plus=list(states.plus), minus=list(states.minus), drives=list(states.drives))
        return self._surrogate(*self._release_factors(copy))

    def _surrogate(self, means: list[Tensor], deltas: list[Tensor | None], drives: list[Tensor | None]) -> Tensor:
        """:meth:`surrogate_objective` from the factors ``s̄_k`` (``k = 0..N−1``), ``δ_k`` (None where it is
        exactly zero: that block's term is zero and not computed, its parameters get zero gradients) and
        the current drives ``a_k`` (``k = 1..N``; index 0 unused)."""
        graph = self.network
        total = None
        unmoved: list[Tensor] = []
        for k, (block, parents) in enumerate(zip(graph.blocks, graph.parents), start=1):
            if deltas[k] is None:
                unmoved.extend(self._block_parameters(block))
                continue
            inputs = [means[p].detach() for p in parents]
            delta = deltas[k].detach()
            term = hebbian_term(block, inputs, delta, drives[k], self._tied_feedback(block))
            if term is None and block.normalises:
                term = checkpoint(
                    self._block_term, block, delta, *inputs, use_reentrant=False, preserve_rng_state=False
                )
            elif term is None:
                term = self._block_term(block, delta, *inputs)
            total = term if total is None else total + term
        if unmoved or total is None:
            zero = ZeroTerm.apply(_floating(means, deltas), *unmoved)
            total = zero if total is None else total + zero
        return total * (-1.0 / (self.beta * means[0].shape[0]))

    def _block_parameters(self, block: nn.Module) -> list[Tensor]:
        """The parameters a block's term differentiates: its own, and the feedback weights tied to them."""
        tied = (
            [
                self.feedback_weights[self._feedback_index[part]]
                for part in block.weighted_parts()
                if part in self._feedback_index
            ]
            if self.feedback != "symmetric"
            else []
        )
        return [*block.parameters(), *tied]

    def _block_term(self, block: nn.Module, delta: Tensor, *inputs: Tensor) -> Tensor:
        """``⟨δ, B(s̄)⟩`` through the block's forward, as the fixed function of this step (also when run again
        to differentiate it)."""
        with frozen_statistics(self.network.norms):
            return (delta * self._tied_drive(block, list(inputs))).sum()

    def _release_factors(self, states: DyadicStates) -> tuple[list[Tensor], list[Tensor | None], list[Tensor | None]]:
        """The factors of :meth:`_surrogate` taken out of ``states``, which are emptied on the way: each
        neuron's compartments are released as soon as its ``s̄`` and ``δ`` exist, and the drives that no
        closed-form term reads are dropped first, so that the update's factors never coexist with all the
        compartments."""
        graph = self.network
        drives = [None] + [
            drive if block.closed_form_part is not None else None
            for block, drive in zip(graph.blocks, states.drives[1:] or [None] * graph.depth)
        ]
        states.drives = []
        means: list[Tensor] = [states.plus[0]]
        deltas: list[Tensor | None] = [None]
        for k in range(1, graph.depth + 1):
            if k < graph.depth:
                means.append(states.mean(k))
            deltas.append(states.difference(k) if states.moved(k) else None)
            states.plus[k] = states.minus[k] = None  # type: ignore[call-overload]
        return means, deltas, drives

    def _tied_feedback(self, block: nn.Module) -> Tensor | None:
        """The feedback weight of a block's one weighted part, if it has one."""
        if self.feedback == "symmetric":
            return None
        parts = block.weighted_parts()
        if len(parts) != 1 or parts[0] not in self._feedback_index:
            return None
        return self.feedback_weights[self._feedback_index[parts[0]]]

    def _tied_drive(self, block: nn.Module, inputs: list[Tensor]) -> Tensor:
        """``block(*inputs)``, with each weight that has a feedback weight tied to it (see above)."""
        tied = {}
        if self.feedback != "symmetric":
            names = {module: name for name, module in block.named_modules()}
            for part in block.weighted_parts():
                if part in self._feedback_index:
                    weight = self.feedback_weights[self._feedback_index[part]]
                    tied[f"{names[part]}.weight"] = part.weight + (weight - weight.detach())
        if not tied:
            return block(*inputs)
        return torch.func.functional_call(block, tied, tuple(inputs))

    def objective(self, x: Tensor, y: Tensor) -> StepResult:
        """Run inference and return the step's result with ``.objective``, the scalar whose
        ``backward()`` accumulates the rule's update into ``.grad`` exactly as :meth:`step` does (compiled,
        after :meth:`compile_objective`).

        A batch that cannot be fed to the model (empty, integer or mismatched dtype or device, targets not
        one per sample or of the wrong kind) is a ``ValueError`` that says what to change."""
        self.follow_model()
        if self._compiled_objective is not None:
            return self._compiled_objective(self, x, y)
        return self._objective(x, y)

    def _objective(self, x: Tensor, y: Tensor) -> StepResult:
        """:meth:`objective`, uncompiled."""
        check_batch(self.model, x, y, token_ids=self.network.token_inputs)
        if self.rule == "bp":
            if self._noisy_forward is None:
                logits = self.wrapper(x)
            else:
                self.network.new_step()
                with noisy_backprop(self.perturbation, self._sites, x.shape[0]) as neuron:
                    logits = neuron(run_as_forward(forward_module(self.wrapper), self._noisy_forward, x))
            loss = batch_loss(self.loss, logits, y)
            return StepResult(loss.detach(), logits.detach(), objective=loss)
        if self._fused_sweep is not None:
            loss_tensor, logits = self._fused_sweep.objective(self.wrapper, x, y, self.alpha, self.beta)
            return StepResult(loss_tensor.detach(), logits, torch.isfinite(logits).all(), objective=loss_tensor)
        if self.rule == "adversarial":
            moved, clean_logits = self.adversarial_input(x, y)
            target = target_distribution(clean_logits, y)
            objective = batch_loss(self.loss, self.wrapper(moved), target)
            with torch.no_grad():
                loss = batch_loss(self.loss, clean_logits, target)
            return StepResult(loss, clean_logits, objective=objective)
        states = self._infer(x, y)
        logits, finite = states.logits, states.all_finite()
        with torch.no_grad():
            loss = batch_loss(self.loss, logits, states.target)
        factors = self._release_factors(states)
        ddp = find_ddp(self.wrapper)
        objective = self._surrogate(*factors) if ddp is None else run_as_forward(ddp, lambda: self._surrogate(*factors))
        return StepResult(loss, logits, finite, objective=objective)

    def compile_objective(self, mode: str = "default") -> None:
        """Run :meth:`objective` (and so :meth:`step`) of this Learner as ``torch.compile`` of it in ``mode``;
        ``mode="reduce-overhead"`` replays the step as CUDA graphs on a GPU. (The compiled function takes the
        Learner as an argument, so a copy of the Learner runs its own step.)

        The deterministic state loop (a fixed schedule, no compartment noise, no damping) traces to one
        graph: the visits the schedule skips are decided while tracing, the label range is asserted
        inside the graph, and the result's loss and finiteness stay tensors until read. A batch of a new
        shape compiles again. Read a step's result before the next step: CUDA-graph replays reuse their
        output memory."""
        if mode not in COMPILE_MODES[1:]:
            raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES[1:])}")
        parameter = next(iter(self.parameters()), None)
        _check_compiler(mode, parameter.device if parameter is not None else torch.device("cpu"))
        self._compiled_objective = torch.compile(type(self)._objective, mode=mode)

    def step(self, x: Tensor, y: Tensor) -> StepResult:
        """Accumulate the rule's weight update into ``.grad`` (like ``loss.backward()``):
        ``objective(x, y).objective.backward()``."""
        result = self.objective(x, y)
        result.objective.backward()
        return result

    def adversarial_input(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(x + β ∇ₓℓ, clean logits)`` with ``∇ₓℓ`` the per-sample loss gradient (not scaled by 1/B).

        The input gradient runs on the unwrapped model, so a DDP wrapper is not armed by it."""
        with torch.enable_grad():
            point = x.detach().requires_grad_(True)
            logits = self.model(point)
            (grad,) = torch.autograd.grad(batch_loss(self.loss, logits, y), point)
        return (x + self.beta * x.shape[0] * grad).detach(), logits.detach()


def _check_compiler(mode: str, device: torch.device) -> None:
    """``ValueError`` naming the cause when ``torch.compile`` in ``mode`` cannot build code for ``device`` here
    (no C++ compiler for the CPU, no Triton for a GPU), found by compiling a one-line function before any
    training starts."""
    try:
        torch.compile(torch.add, mode=mode)(torch.ones(2, device=device), 1)
    except Exception as error:  # the code generators' own errors differ by backend and torch version
        cause = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"torch.compile in mode {mode!r} cannot build code on {device} here "
            f"({type(error).__name__}: {cause}); train without compiling"
        ) from None


def _floating(means: list[Tensor], deltas: list[Tensor | None]) -> Tensor:
    """A floating-point tensor of the step to take a zero from (the input may hold integer token ids)."""
    return next(t for t in [means[0], *deltas, *means[1:]] if t is not None and t.is_floating_point())


def _last_visits(order: list[int]) -> dict[int, int]:
    """The position of each neuron's last visit in ``order``."""
    return {k: position for position, k in enumerate(order)}


class _Site(nn.Module):
    """An activation site as a module of its own (so that hooks of noisy backprop can find it)."""

    def __init__(self, activation: Callable[[Tensor], Tensor]):
        super().__init__()
        self.activation = activation

    def forward(self, drive: Tensor) -> Tensor:
        return self.activation(drive)
