"""``Learner``: inference of the dyadic states (the state loop) and the local Hebbian weight update.

The model is a graph of neurons (see :mod:`dualprop.graph`): every neuron ``k ≥ 1`` holds two
compartments ``s⁺_k, s⁻_k``, both starting at the feed-forward value. Visiting neuron ``k`` sets

* drive ``a_k = B_k(s̄_{P(k)})`` with ``s̄ = α s⁺ + (1−α) s⁻`` (``s̄_0 = x``),
* top-down signal ``Δ_k = Σ_{c: k ∈ P(c)} J_{B_c, k}(s⁺_{P(c)})ᵀ (s⁺_c − s⁻_c)``, summed over the children ``c``
  (through the forward weights, or through the Kolen–Pollack feedback weights of :mod:`dualprop.feedback`),
* compartments by the rule (:mod:`dualprop.rules`).

For a layered network (``P(k) = (k−1,)``) this is ``Δ_k = J_{B_{k+1}}(s⁺_k)ᵀ (s⁺_{k+1} − s⁻_{k+1})``.
The update is ``∂J/∂θ`` of ``J(θ) = −1/(β·B) Σ_k ⟨s⁺_k − s⁻_k, B_k(s̄_{P(k)})⟩`` with the states held
fixed, returned by :meth:`Learner.objective` for the caller's ``backward()`` (or accumulated by
:meth:`Learner.step`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dualprop.blocks import BlockLike, ZeroTerm, frozen_statistics, hebbian_term
from dualprop.compilation import COMPILE_MODES, compiled
from dualprop.damping import SpectralDamping
from dualprop.feedback import KolenPollackFeedback
from dualprop.fused import FusedSweep
from dualprop.graph import NeuronGraph, capture_graph
from dualprop.inputs import check_batch
from dualprop.learner_state import LearnerState
from dualprop.losses import batch_loss, check_target, output_gradient, target_distribution
from dualprop.reference import Backprop, adversarial_input, adversarial_objective
from dualprop.rules import Rule, damped_hidden_compartments, hidden_compartments, nudge_weights, output_compartments
from dualprop.schedules import last_visits, layer_order, random_order
from dualprop.settings import LearnerSettings, setting_view
from dualprop.states import DyadicStates, StateVersions, StepResult
from dualprop.wrappers import find_ddp, run_as_forward, unwrap

__all__ = ["COMPILE_MODES", "DyadicStates", "Learner", "LearnerSettings", "StepResult"]


class Learner(LearnerState):
    """Train any capturable model with dual propagation or a reference rule; an ``nn.Module`` beside the
    optimizer, which stays the caller's.

    ``Learner(model, rule="dpT", alpha=0.5, …)`` takes the fields of :class:`LearnerSettings` as arguments
    (in their order, or by name), or ``settings=LearnerSettings(…)``; ``learner.rule``, ``learner.alpha``, …
    read ``learner.settings``. Rules: ``dp``, ``dpT`` (DP⊤), ``dp-damped`` (:mod:`dualprop.damping`), and the
    references ``bp`` and ``adversarial`` (:mod:`dualprop.reference`). ``feedback="kolen-pollack"`` carries
    the top-down signal ``Δ`` through separate feedback weights (:mod:`dualprop.feedback`) that learn by the
    same local rule: give ``learner.parameters()`` to the optimizer, with weight decay. Compartment noise,
    rounding and asynchronous schedules: :mod:`dualprop.hardware`.

    The model is the submodule ``model`` (unwrapped from ``DistributedDataParallel`` or ``torch.compile``;
    the wrapper is still what runs), ``learner.graph`` its graph of neurons in the model's current mode,
    ``learner(x)`` its forward. ``objective(x, y)`` returns the scalar whose ``backward()`` accumulates the
    update into ``.grad``; ``step(x, y)`` is that plus ``backward()``. The feedback weights, damping vectors
    and generators are in ``state_dict()`` and moved by ``to()`` (:mod:`dualprop.learner_state`).
    """

    rule: str = setting_view("rule")
    alpha: float = setting_view("alpha")
    beta: float = setting_view("beta")
    schedule: str = setting_view("schedule")
    passes: int = setting_view("passes")
    loss: str = setting_view("loss")
    feedback: str = setting_view("feedback")
    power_iterations: int = setting_view("power_iterations")

    _graph: NeuronGraph
    kolen_pollack: KolenPollackFeedback | None
    damping: SpectralDamping | None
    wrapper: nn.Module  # the model as given (a DDP or compile wrapper, or the model itself)

    def __init__(self, model: nn.Module, *args: Any, settings: LearnerSettings | None = None, **kwargs: Any):
        super().__init__()
        if settings is not None and (args or kwargs):
            raise TypeError("Learner takes either settings=LearnerSettings(...) or the settings as arguments")
        self._settings = settings if settings is not None else LearnerSettings(*args, **kwargs)
        self._rule: Rule = self._settings.learning_rule
        self.model = unwrap(model)
        self.__dict__["wrapper"] = model  # what runs; kept out of the module tree (no duplicate state)
        # hardware realism: compartment noise and resolution, asynchronous order
        self.perturbation = self.settings.perturbation()
        random = self.schedule == "random"
        self._order_generator = torch.Generator().manual_seed(self.settings.noise_seed) if random else None
        self.kolen_pollack = None
        self.damping = None
        self._compiled_objective: Callable[..., StepResult] | None = None
        self._graphs: dict[tuple[Any, ...], NeuronGraph] = {}
        self._adopt(capture_graph(self.model))

    def _adopt(self, graph: NeuronGraph) -> None:
        """Make ``graph`` (a capture of the model in its current mode) the one the steps run on, with what
        derives from it: the visit order, the feedback weights of parts not seen before, the damping's
        vectors (kept while the neurons' connections stay the same), the implementation."""
        if self._rule.moves_input and graph.token_inputs:
            raise ValueError(f"rule {self.rule!r} moves the inputs along their gradient; integer token ids have none")
        same_structure = bool(self._graphs) and self._graph.parents == graph.parents
        self._graph = graph
        self._graphs[graph.mode] = graph
        self.order = (
            None if self.schedule == "random" else layer_order(self.schedule, graph.depth, self.passes, graph.levels)
        )
        self._last_visits = last_visits(self.order) if self.order is not None else {}
        plain_backprop = not self._rule.dyadic and not self._rule.moves_input
        self._backprop = Backprop(graph, self.perturbation, self.loss) if plain_backprop else None
        if self.feedback == "kolen-pollack":
            if self.kolen_pollack is None:
                self.kolen_pollack = KolenPollackFeedback(graph)
            else:
                self.kolen_pollack.add_parts(graph)
        if self._rule.damped:
            if self.damping is not None and same_structure:
                self.damping.follow(graph)
            else:
                self.damping = SpectralDamping(graph, self.power_iterations)
        self.implementation = self.settings.resolved_implementation(graph)
        self._fused_sweep = FusedSweep(graph, self._rule, self.loss) if self.implementation == "fused" else None
        self._dependencies = StateVersions.dependencies(graph)
        self._closed_form = [block.closed_form_part is not None for block in graph.blocks]

    def follow_model(self) -> None:
        """Follow the model's current mode and settings: ``train()``/``eval()``, a drop probability, flags its
        ``forward`` branches on. A model captured in another mode is captured again (each mode once, then
        cached). Every step calls this first."""
        key = self._graph.current_mode()
        if key != self._graph.mode:
            self._adopt(self._graphs.get(key) or capture_graph(self.model))

    @property
    def settings(self) -> LearnerSettings:
        """The settings this Learner was built with (fixed: a Learner with other settings is a new Learner)."""
        return self._settings

    @property
    def graph(self) -> NeuronGraph:
        """The model's graph of neurons and blocks (:class:`dualprop.graph.NeuronGraph`)."""
        return self._graph

    @property
    def network(self) -> NeuronGraph:
        """The same as :attr:`graph` (its earlier name)."""
        return self._graph

    @property
    def feedback_weights(self) -> nn.ParameterList:
        """The Kolen–Pollack feedback weights ``V`` (empty with symmetric feedback)."""
        return self.kolen_pollack.weights if self.kolen_pollack is not None else nn.ParameterList()

    def feedback_parameters(self) -> list[nn.Parameter]:
        """The Kolen–Pollack feedback weights ``V`` as a list (empty with symmetric feedback)."""
        return list(self.feedback_weights)

    def forward(self, x: Tensor) -> Tensor:
        """The model's output (through its wrapper, if any)."""
        output: Tensor = self.wrapper(x)
        return output

    def extra_repr(self) -> str:
        return (
            f"rule={self.rule!r}, alpha={self.alpha}, beta={self.beta}, schedule={self.schedule!r}, "
            f"passes={self.passes}, loss={self.loss!r}, implementation={self.implementation!r}, "
            f"feedback={self.feedback!r}, neurons={self.graph.depth}"
        )

    # -- inference ---------------------------------------------------------------------------------

    def feed_forward(self, x: Tensor) -> list[Tensor]:
        """``[s_0, …, s_N]`` with ``s_k = f_k(B_k(s_{P(k)}))`` and ``s_N = B_N(s_{P(N)})``, without grad."""
        self.follow_model()
        self.graph.new_step()
        with torch.no_grad():
            return self.graph.feed_forward(x)[0]

    def infer(self, x: Tensor, y: Tensor) -> DyadicStates:
        """Run the inference schedule from the feed-forward states and return the dyadic states.

        The feed-forward pass is the step's one ordinary forward (normalisation statistics updated once,
        dropout masks drawn once); the visits then see every block as that fixed function."""
        if not self._rule.dyadic:
            raise ValueError(f"rule {self.rule!r} has no dyadic states to infer")
        self.follow_model()
        check_batch(self.model, x, y, token_ids=self.graph.token_inputs)
        return self._infer(x, y)

    def _infer(self, x: Tensor, y: Tensor) -> DyadicStates:
        """:meth:`infer` on a batch already checked."""
        graph = self.graph
        graph.new_step()
        with torch.no_grad():
            plus, drives = graph.feed_forward(x)
        logits = plus[-1]
        check_target(self.loss, logits, y)
        states = DyadicStates(plus, list(plus), self.alpha, logits, target_distribution(logits, y))
        weights = nudge_weights(self._rule, self.alpha)
        versions = StateVersions(graph, drives, self._dependencies)
        target = states.target
        with torch.no_grad(), frozen_statistics(graph.norms):
            dampings = self.damping(plus) if self.damping is not None else None
            fixed_nudge = (
                self.beta * output_gradient(self.loss, logits, target) if self._rule.fixed_output_nudge else None
            )
            if self._order_generator is None:
                order, last = self.order, self._last_visits
            else:
                order = random_order(graph.depth, self.passes, self._order_generator)
                last = last_visits(order)
            deterministic = dampings is None and not self.perturbation.active
            for position, k in enumerate(order or []):
                if not deterministic or versions.visit_needed(k):
                    self._update_neuron(states, versions, k, target, weights, fixed_nudge, dampings)
                if position == last[k] and graph.blocks[k - 1].closed_form_part is None:
                    versions.release(k)  # only a closed-form update reads a drive after the last visit
        states.drives = versions.current_drives()
        return states

    def dampings(self, states: list[Tensor]) -> list[float]:
        """``L_k = max(0, (γ_k² − 1)/2)`` for hidden neurons k = 1..N−1 (damped DP; see :mod:`dualprop.damping`)."""
        if self.damping is None:
            raise ValueError(f"rule {self.rule!r} is not damped; dampings need rule 'dp-damped'")
        result: list[float] = self.damping(states)
        return result

    def _update_neuron(
        self,
        states: DyadicStates,
        versions: StateVersions,
        k: int,
        target: Tensor,
        weights: tuple[float, float],
        fixed_nudge: Tensor | None,
        dampings: list[float] | None,
    ) -> None:
        """Set ``s⁺_k, s⁻_k`` from the current neighbours: at most one block forward (the drive, only if a
        parent changed since it was last computed) and, for a hidden neuron, one VJP per child."""
        graph = self.graph
        drive = versions.drive(k, lambda: graph.blocks[k - 1](*[states.mean(p) for p in graph.parents[k - 1]]))
        if k == graph.depth:
            nudge = fixed_nudge if fixed_nudge is not None else self.beta * output_gradient(self.loss, drive, target)
            states.plus[k], states.minus[k] = output_compartments(drive, nudge, weights)
        else:
            top_down = self._top_down(states, k)
            activation = graph.activations[k - 1]
            if dampings is None:
                states.plus[k], states.minus[k] = hidden_compartments(activation, drive, top_down, weights)
            else:
                states.plus[k], states.minus[k] = damped_hidden_compartments(
                    activation, drive, top_down, weights, states.plus[k], states.minus[k], dampings[k - 1]
                )
        states.plus[k], states.minus[k] = self.perturbation(states.plus[k]), self.perturbation(states.minus[k])
        versions.visited(k)

    def _top_down(self, states: DyadicStates, k: int) -> Tensor:
        """``Δ_k = Σ_c J_{B_c, k}(s⁺_{P(c)})ᵀ δ_c`` over the children ``c`` of ``k``, through the feedback weights
        where there are any (a child never moved has ``δ_c = 0`` exactly and adds nothing: its VJP is not
        computed)."""
        graph = self.graph
        total = None
        for c in graph.children[k]:
            if not states.moved(c):
                continue
            parents = graph.parents[c - 1]
            block = graph.blocks[c - 1]
            points = [states.plus[p] for p in parents]
            weights = self.kolen_pollack.transposed_weights(block) if self.kolen_pollack is not None else None
            term = block.input_vjp(points, states.difference(c), parents.index(k), weights)
            total = term if total is None else total + term
        return total if total is not None else torch.zeros_like(states.plus[k])

    # -- learning ----------------------------------------------------------------------------------

    def surrogate_objective(self, states: DyadicStates) -> Tensor:
        """``J(θ) = −1/(β·B) Σ_k ⟨s⁺_k − s⁻_k, B_k(s̄_{P(k)})⟩`` with the states detached.

        A block that is one Linear or Conv part reuses its drive from inference and writes its update in
        closed form (:class:`dualprop.blocks.HebbianTerm`); any other block runs its forward under autograd.
        A block with a normalisation layer is checkpointed: its term keeps only ``s̄`` and ``δ``, not the
        normaliser's input, and its forward runs again when ``J`` is differentiated — the update then needs
        no more memory than backprop, for one more forward of those blocks.

        With Kolen–Pollack feedback each forward weight ``W`` that has a feedback weight ``V`` enters ``J`` as
        ``W + (V − sg(V))`` (``sg``: stop-gradient): the value is unchanged and ``∂J/∂V = ∂J/∂W``, so one
        ``backward()`` gives both sets the same local update.
        """
        copy = dataclasses.replace(states, plus=list(states.plus), minus=list(states.minus), drives=list(states.drives))
        return self._surrogate(*copy.release_factors(self._closed_form))

    def _surrogate(self, means: list[Tensor], deltas: list[Tensor | None], drives: list[Tensor | None]) -> Tensor:
        """:meth:`surrogate_objective` from the factors ``s̄_k`` (``k = 0..N−1``), ``δ_k`` (None where it is
        exactly zero: that block's term is zero and not computed, its parameters get zero gradients) and
        the current drives ``a_k`` (``k = 1..N``; index 0 unused)."""
        kolen_pollack = self.kolen_pollack
        total = None
        unmoved: list[Tensor] = []
        for k, (block, parents) in enumerate(zip(self.graph.blocks, self.graph.parents), start=1):
            delta = deltas[k]
            if delta is None:
                unmoved.extend([*block.parameters(), *(kolen_pollack.tied_parameters(block) if kolen_pollack else [])])
                continue
            inputs = [means[p].detach() for p in parents]
            delta = delta.detach()
            tied = kolen_pollack.closed_form_weight(block) if kolen_pollack is not None else None
            term = hebbian_term(block, inputs, delta, drives[k], tied)
            if term is None and block.normalises:
                term = checkpoint(
                    self._block_term, block, delta, *inputs, use_reentrant=False, preserve_rng_state=False
                )
            elif term is None:
                term = self._block_term(block, delta, *inputs)
            total = term if total is None else total + term
        if unmoved or total is None:
            zero = ZeroTerm.apply(_floating(means, deltas), *unmoved)  # type: ignore[no-untyped-call]
            total = zero if total is None else total + zero
        return total * (-1.0 / (self.beta * means[0].shape[0]))

    def _block_term(self, block: BlockLike, delta: Tensor, *inputs: Tensor) -> Tensor:
        """``⟨δ, B(s̄)⟩`` through the block's forward (with the feedback weights tied, see above), as the
        fixed function of this step (also when run again to differentiate it)."""
        with frozen_statistics(self.graph.norms):
            kolen_pollack = self.kolen_pollack
            drive = block(*inputs) if kolen_pollack is None else kolen_pollack.tied_forward(block, list(inputs))
            return (delta * drive).sum()

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
        check_batch(self.model, x, y, token_ids=self.graph.token_inputs)
        if self._backprop is not None:
            return self._backprop.objective(self.wrapper, x, y)
        if self._fused_sweep is not None:
            loss_tensor, logits = self._fused_sweep.objective(self.wrapper, x, y, self.alpha, self.beta)
            return StepResult(loss_tensor.detach(), logits, torch.isfinite(logits).all(), objective=loss_tensor)
        if self._rule.moves_input:
            return adversarial_objective(self.model, self.wrapper, self.loss, self.beta, x, y)
        states = self._infer(x, y)
        logits, finite = states.logits, states.all_finite()
        with torch.no_grad():
            loss = batch_loss(self.loss, logits, states.target)
        factors = states.release_factors(self._closed_form)
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
        self._compiled_objective = compiled(type(self)._objective, mode, self.parameters())

    def step(self, x: Tensor, y: Tensor) -> StepResult:
        """Accumulate the rule's weight update into ``.grad`` (like ``loss.backward()``):
        ``objective(x, y).objective.backward()``."""
        result = self.objective(x, y)
        assert result.objective is not None
        result.objective.backward()
        return result

    def adversarial_input(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(x + β ∇ₓℓ, clean logits)`` with ``∇ₓℓ`` the per-sample loss gradient (not scaled by 1/B).

        The input gradient runs on the unwrapped model, so a DDP wrapper is not armed by it."""
        return adversarial_input(self.model, self.loss, self.beta, x, y)


def _floating(means: list[Tensor], deltas: list[Tensor | None]) -> Tensor:
    """A floating-point tensor of the step to take a zero from (the input may hold integer token ids)."""
    return next(t for t in [means[0], *deltas, *means[1:]] if t is not None and t.is_floating_point())
