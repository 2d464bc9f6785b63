"""Kolen–Pollack feedback weights: separate weights ``V`` that carry the top-down signal ``Δ`` in place of
the forward weights ``W``, trained by the same local update as ``W``.

With symmetric feedback there is no such module: ``Δ_k = Σ_c J_{B_c, k}ᵀ δ_c`` is taken through the forward
weights. With Kolen–Pollack feedback each weighted part (Linear, Conv) of a block that feeds back to a
neuron has its own ``V`` of ``W``'s shape, used in the transposed map only (``Block.input_vjp``). In the
surrogate ``J`` each ``W`` enters as ``W + (V − sg(V))`` (``sg``: stop-gradient): the value is unchanged and
``∂J/∂V = ∂J/∂W``, so one ``backward()`` gives both sets the same update, and with weight decay the two
sets come to agree.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dualprop.blocks import BlockLike
from dualprop.graph import NeuronGraph


class KolenPollackFeedback(nn.Module):
    """The feedback weights ``V`` of one graph: ``weights[i]`` belongs to the ``i``-th weighted part (in
    block order) of the blocks that feed back to a neuron (a block reading only the input feeds back
    nothing), drawn like PyTorch's own Linear and Conv weights (Kaiming-uniform with ``a = √5``)."""

    def __init__(self, graph: NeuronGraph):
        super().__init__()
        self.weights = nn.ParameterList()
        self._index: dict[nn.Module, int] = {}
        self.add_parts(graph)

    def add_parts(self, graph: NeuronGraph) -> None:
        """Feedback weights for the weighted parts of ``graph`` that feed back and have none yet (a graph of
        the same model captured in another mode may call parts the first one did not)."""
        for block, parents in zip(graph.blocks, graph.parents):
            if parents == (0,):
                continue
            for part in block.weighted_parts():
                if part not in self._index:
                    self._index[part] = len(self.weights)
                    self.weights.append(
                        nn.Parameter(nn.init.kaiming_uniform_(torch.empty_like(_weight(part)), a=math.sqrt(5)))
                    )

    def _weight_of(self, part: nn.Module) -> Tensor | None:
        index = self._index.get(part)
        return None if index is None else self.weights[index]

    def transposed_weights(self, block: BlockLike) -> list[Tensor]:
        """The ``V`` that replace each of ``block``'s weights in its transposed map (one per weighted part).

        A ``ValueError`` if they differ from the model in dtype or device (the model was moved alone)."""
        parts = block.weighted_parts()
        weights = [self.weights[self._index[part]] for part in parts]
        for weight, part in zip(weights, parts):
            forward = _weight(part)
            if weight.dtype != forward.dtype or weight.device != forward.device:
                raise ValueError(
                    f"the feedback weights are {weight.dtype} on {weight.device} but the model "
                    f"is {forward.dtype} on {forward.device}; move the Learner with "
                    f"learner.to(...) rather than the model alone"
                )
        return weights

    def tied_parameters(self, block: BlockLike) -> list[Tensor]:
        """The ``V`` tied to ``block``'s weights in ``J`` (which share their update)."""
        return [weight for part in block.weighted_parts() if (weight := self._weight_of(part)) is not None]

    def closed_form_weight(self, block: BlockLike) -> Tensor | None:
        """The ``V`` of the block's closed-form part (see :class:`dualprop.blocks.HebbianTerm`), if it has one."""
        part = block.closed_form_part
        return None if part is None else self._weight_of(part)

    def tied_forward(self, block: BlockLike, inputs: list[Tensor]) -> Tensor:
        """``block(*inputs)`` with each weight ``W`` that has a ``V`` replaced by ``W + (V − sg(V))``."""
        assert isinstance(block, nn.Module)
        names = {module: name for name, module in block.named_modules()}
        tied = {}
        for part in block.weighted_parts():
            weight = self._weight_of(part)
            if weight is not None:
                tied[f"{names[part]}.weight"] = _weight(part) + (weight - weight.detach())
        if not tied:
            return block(*inputs)
        result: Tensor = torch.func.functional_call(block, tied, tuple(inputs))
        return result


def _weight(part: nn.Module) -> Tensor:
    """The weight ``W`` of a weighted part (Linear, Conv)."""
    weight = part.weight
    assert isinstance(weight, Tensor)
    return weight
