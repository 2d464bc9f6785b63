"""The damping of damped DP: ``L_k = max(0, (γ_k² − 1)/2)`` per hidden neuron, from spectral norms.

``γ_k`` is the spectral norm of the map from ``s_k`` to its children's drives: ``γ_{c,k}`` of the one child
``c`` (for a chain, ``B_{k+1}``), or the bound ``(Σ_c γ_{c,k}²)^{1/2}`` over several. Each ``γ_{c,k}`` comes
from a power iteration (:class:`dualprop.spectral.SpectralNormEstimator`) warm-started from the vector the
previous step ended with, kept as the buffer ``vector_{k}_{c}`` so that it is saved, loaded and moved
with the Learner.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from dualprop.blocks import BlockInput
from dualprop.graph import NeuronGraph
from dualprop.rules import damping_from_spectral_norm
from dualprop.spectral import SpectralNormEstimator


def vector_name(k: int, c: int) -> str:
    """The buffer holding the power-iteration vector of ``γ_{c,k}``."""
    return f"vector_{k}_{c}"


class SpectralDamping(nn.Module):
    """``L_k`` for the hidden neurons ``k = 1..N−1`` of ``graph``, each spectral norm from ``power_iterations``
    warm-started power-iteration steps per call. Every buffer exists from construction, empty until the
    first call sizes it to one sample of ``s_k``."""

    graph: NeuronGraph

    def __init__(self, graph: NeuronGraph, power_iterations: int):
        super().__init__()
        self.__dict__["graph"] = graph  # the model's blocks, kept out of this module's tree
        self.power_iterations = power_iterations
        self._estimators: dict[tuple[int, int], SpectralNormEstimator] = {}
        for k in range(1, graph.depth):
            for c in graph.children[k]:
                self.register_buffer(vector_name(k, c), torch.empty(0))
        self.check_norms()

    def follow(self, graph: NeuronGraph) -> None:
        """Take ``graph``, a capture of the same model in another mode with the same neurons and connections:
        the vectors stay, the estimators are made anew for its blocks."""
        self.__dict__["graph"] = graph
        self._estimators = {}
        self.check_norms()

    def check_norms(self) -> None:
        """``dp-damped`` needs a per-sample spectral norm of every block, which batch normalisation in
        training mode (normalising with the batch's statistics) does not have."""
        if any(m.training or not m.track_running_stats for m in self.graph.norms):
            raise ValueError(
                "rule 'dp-damped' needs the spectral norm of every block per sample, which "
                "batch normalisation in training mode does not have; use model.eval() or "
                "another rule"
            )

    def forward(self, states: list[Tensor]) -> list[float]:
        """``[L_1, …, L_{N−1}]`` with the Jacobians taken at (one sample shaped like) ``states``."""
        self.check_norms()
        result = []
        for k in range(1, self.graph.depth):
            norms = [self._spectral_norm(k, c, states) for c in self.graph.children[k]]
            gamma = norms[0] if len(norms) == 1 else math.sqrt(sum(g * g for g in norms))
            result.append(damping_from_spectral_norm(gamma))
        return result

    def _spectral_norm(self, k: int, c: int, states: list[Tensor]) -> float:
        """``γ_{c,k}``: the spectral norm of block ``c`` as a function of its input from neuron ``k``."""
        estimator = self._estimators.get((k, c))
        if estimator is None:
            parents = self.graph.parents[c - 1]
            block = self.graph.blocks[c - 1]
            assert isinstance(block, nn.Module)
            target = (
                block
                if len(parents) == 1
                else BlockInput(block, parents.index(k), [states[p].shape[1:] for p in parents])
            )
            estimator = SpectralNormEstimator(target, states[k].shape[1:], self.power_iterations)
            self._estimators[(k, c)] = estimator
        name = vector_name(k, c)
        saved: Tensor = getattr(self, name)
        estimator.vector = saved if saved.numel() else None
        gamma = estimator()
        setattr(self, name, estimator.vector if estimator.vector is not None else saved.new_empty(0))
        return gamma

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Take each saved vector at its own size (a buffer is empty until its first step)."""
        for name, buffer in self._buffers.items():
            saved = state_dict.get(prefix + name)
            if buffer is not None and isinstance(saved, Tensor):
                self._buffers[name] = torch.empty(saved.shape, dtype=saved.dtype, device=buffer.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
