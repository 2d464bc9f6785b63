"""Dead-unit fractions checked against units made dead (or alive) by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dualprop.analysis.activity import dead_fractions


def test_units_with_negative_bias_and_zero_weights_are_dead():
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([-1.0, 1, -1, 1, 1, 1, -1, 1]))  # 3 of 8 dead for every input
        model[2].weight.fill_(1.0)
        model[2].bias.copy_(torch.tensor([0.0, -100, 0, 0]))  # 1 of 4 dead
    model.train()
    batches = [torch.randn(5, 3), torch.randn(7, 3)]
    assert dead_fractions(model, batches) == pytest.approx([3 / 8, 1 / 4])
    assert model.training


def test_a_unit_alive_on_one_batch_only_counts_as_alive():
    model = nn.Sequential(nn.Linear(1, 2, bias=False), nn.ReLU())
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
    assert dead_fractions(model, [torch.ones(4, 1)]) == [0.5]
    assert dead_fractions(model, [torch.ones(4, 1), -torch.ones(1, 1)]) == [0.0]
    with pytest.raises(ValueError, match="at least one input batch"):
        dead_fractions(model, [])
