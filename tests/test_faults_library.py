"""Library misuse: wrong batches and targets raise a ValueError saying what to change."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dualprop.inputs import check_batch
from dualprop.losses import batch_loss, output_gradient

# -- 7. library ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x, y, message",
    [
        (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), "the batch is empty"),
        (torch.zeros(3, 4, dtype=torch.long), None, "not floating point: convert them with x.to(torch.float32)"),
        (torch.zeros(3, 4, dtype=torch.float64), None, "convert them with x.to(torch.float32)"),
        (torch.zeros(3, 4, device="meta"), None, "inputs are on meta but the network is on cpu"),
        (torch.zeros(3, 4), torch.zeros(2, dtype=torch.long), "there are 2 targets for 3 samples"),
        ([[0.0] * 4] * 3, None, "inputs must be a torch.Tensor"),
    ],
)
def test_check_batch_says_what_to_change(x, y, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_batch(nn.Linear(4, 2), x, y)


def test_check_batch_accepts_a_fitting_batch_and_mixed_precision():
    model = nn.Linear(4, 2)
    check_batch(model, torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        check_batch(model, torch.zeros(3, 4, dtype=torch.bfloat16))


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_boolean_targets_are_refused(loss):
    logits = torch.zeros(3, 2)
    for function in (batch_loss, output_gradient):
        with pytest.raises(ValueError, match=r"targets are boolean: give class indices as integers \(y.long\(\)\)"):
            function(loss, logits, torch.tensor([True, False, True]))


def test_float_labels_with_cross_entropy_are_refused_but_distributions_work():
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"convert them with y.long\(\)"):
        batch_loss("cross_entropy", logits, torch.tensor([0.0, 2.0]))
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    assert float(batch_loss("cross_entropy", logits, soft)) == pytest.approx(np.log(3))  # uniform softmax
