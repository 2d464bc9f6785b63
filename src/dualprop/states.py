"""The dyadic states of one inference, the bookkeeping of the state loop, and what a step reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from dualprop.graph import NeuronGraph
from dualprop.rules import mean_state


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

    def release_factors(self, reads_drive: list[bool]) -> tuple[list[Tensor], list[Tensor | None], list[Tensor | None]]:
        """The factors of the update ``J``: ``s̄_k`` (``k = 0..N−1``), ``δ_k`` (None where it is exactly zero) and
        the drives ``a_k`` of the blocks that ``reads_drive`` (``[k−1]``; index 0 unused, None elsewhere),
        taken out of these states, which are emptied on the way: each neuron's compartments are released as
        soon as its ``s̄`` and ``δ`` exist, and the drives nothing reads are dropped first, so that the
        update's factors never coexist with all the compartments."""
        depth = len(self.plus) - 1
        current: list[Tensor | None] = self.drives[1:] or [None] * depth
        drives: list[Tensor | None] = [None, *(drive if reads else None for reads, drive in zip(reads_drive, current))]
        self.drives = []
        means: list[Tensor] = [self.plus[0]]
        deltas: list[Tensor | None] = [None]
        for k in range(1, depth + 1):
            if k < depth:
                means.append(self.mean(k))
            deltas.append(self.difference(k) if self.moved(k) else None)
            self.plus[k] = self.minus[k] = None  # type: ignore[call-overload]
        return means, deltas, drives

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


class StateVersions:
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

    @staticmethod
    def dependencies(graph: NeuronGraph) -> list[tuple[int, ...]]:
        """For each neuron ``k``, the neurons whose states its update reads: its parents (drive), its
        children and their other parents (the top-down signal ``Δ_k``), and ``k`` itself where a child's
        Jacobian depends on the point ``s⁺_k``. Unused index 0 holds ``()``."""
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

    def _parents_stamp(self, k: int) -> tuple[int, ...]:
        return tuple(self.counts[p] for p in self.graph.parents[k - 1])

    def drive(self, k: int, compute: Callable[[], Tensor]) -> Tensor:
        """``a_k``, recomputed only if a parent of ``k`` has changed since it was last computed."""
        stamp = self._parents_stamp(k)
        if stamp != self._drive_seen[k]:
            self.drives[k] = compute()
            self._drive_seen[k] = stamp
        drive = self.drives[k]
        assert drive is not None  # computed above unless its parents' stamp matched, which keeps it
        return drive

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
