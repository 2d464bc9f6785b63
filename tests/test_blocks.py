import copy

import pytest
import torch
from torch import nn

import dualprop
from dualprop.graph import capture_graph


def test_split_at_activations_including_nested_sequentials():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Sequential(nn.Flatten(), nn.Linear(8, 5)),
        nn.Tanh(),
        nn.Linear(5, 3),
    )
    net = capture_graph(model)
    assert net.depth == 3
    assert [type(m).__name__ for m in net.blocks[0].parts] == ["Conv2d", "MaxPool2d"]
    assert [type(m).__name__ for m in net.blocks[1].parts] == ["Flatten", "Linear"]
    assert [type(a).__name__ for a in net.activations] == ["ReLU", "Tanh"]
    x = torch.randn(2, 1, 4, 4)
    s = x
    for k, block in enumerate(net.blocks):
        s = block(s)
        if k < 2:
            s = net.activations[k](s)
    torch.testing.assert_close(s, model(x))


@pytest.mark.parametrize(
    "model, fragment",
    [
        (nn.Sequential(nn.Linear(3, 3), nn.ReLU()), "ends with activation"),
        (nn.Sequential(nn.ReLU(), nn.Linear(3, 3)), "no block before it"),
        (nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Tanh(), nn.Linear(3, 3)), "no block before it"),
    ],
)
def test_non_layered_models_are_rejected_with_the_module_named(model, fragment):
    with pytest.raises(ValueError, match=fragment):
        capture_graph(model)


def test_registered_elementwise_activation_is_accepted():
    class Square(nn.Module):
        def forward(self, x):
            return x * x

    model = nn.Sequential(nn.Linear(3, 4), Square(), nn.Linear(4, 2))
    assert capture_graph(model).depth == 1  # undeclared, the square is a part of the one block
    dualprop.register_activation(Square)
    assert capture_graph(model).depth == 2


def _autograd_vjp(block, s, v):
    point = s.clone().requires_grad_(True)
    return torch.autograd.grad(block(point), point, v)[0]


@pytest.mark.parametrize(
    "modules, shape",
    [
        ([nn.Linear(6, 4)], (3, 6)),
        ([nn.Flatten(), nn.Linear(18, 4)], (3, 2, 3, 3)),
        ([nn.Conv2d(2, 3, 3, padding=1, stride=2)], (3, 2, 5, 5)),
        ([nn.Conv1d(2, 3, 3, padding=1)], (3, 2, 7)),
        ([nn.Conv2d(2, 3, 3, padding=1), nn.MaxPool2d(2)], (3, 2, 4, 4)),
        ([nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")], (3, 2, 4, 4)),
    ],
)
def test_block_vjp_equals_autograd_at_the_point(modules, shape):
    torch.manual_seed(0)
    block = dualprop.blocks.Block([m.double() for m in modules])
    s = torch.randn(shape, dtype=torch.float64)
    out = block(torch.randn(shape, dtype=torch.float64))  # records shapes at another point
    v = torch.randn(out.shape, dtype=torch.float64)
    torch.testing.assert_close(block.vjp(s, v), _autograd_vjp(block, s, v))


@pytest.mark.parametrize(
    "modules, shape",
    [
        ([nn.Linear(6, 4)], (3, 6)),
        ([nn.Flatten(), nn.Linear(18, 4)], (3, 2, 3, 3)),
        ([nn.Conv2d(2, 3, 3, padding=1, stride=2)], (3, 2, 5, 5)),
        ([nn.Conv1d(2, 3, 3, padding=1, bias=False)], (3, 2, 7)),
    ],
)
@pytest.mark.parametrize("with_feedback", [False, True])
def test_hebbian_term_writes_the_autograd_update_without_running_the_block(modules, shape, with_feedback):
    from dualprop.blocks import hebbian_term

    torch.manual_seed(1)
    block = dualprop.blocks.Block([copy.deepcopy(m).double() for m in modules])
    s = torch.randn(shape, dtype=torch.float64)
    drive = block(s).detach()
    delta = torch.randn(drive.shape, dtype=torch.float64)
    part = block.weighted_parts()[0]
    feedback = torch.randn_like(part.weight, requires_grad=True) if with_feedback else None
    expected = torch.autograd.grad((delta * block(s)).sum() * 0.7, [p for p in block.parameters()])
    calls = []
    part.register_forward_hook(lambda *args: calls.append(1))
    term = hebbian_term(block, [s], delta, drive, feedback)
    (term * 0.7).backward()
    assert calls == []  # the drive was reused
    torch.testing.assert_close(term, (delta * drive).sum())
    for p, g in zip(block.parameters(), expected):
        torch.testing.assert_close(p.grad, g)
    if with_feedback:
        torch.testing.assert_close(feedback.grad, part.weight.grad)


def test_hebbian_term_declines_blocks_it_cannot_write_in_closed_form():
    from dualprop.blocks import hebbian_term

    block = dualprop.blocks.Block([nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2)])
    s = torch.randn(2, 1, 4, 4)
    assert hebbian_term(block, [s], torch.randn(2, 2, 2, 2), None) is None
