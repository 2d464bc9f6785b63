"""Every model of the look-alike zoo (torchvision, timm and GPT-style blocks) is captured without recomputed
work and trained exactly: DP⊤ at β → 0 equals autograd of the same model in the same mode, in float64."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from zoo import ZOO, ZooModel, zoo_batch

from dualprop import Learner, capture_graph
from dualprop.blocks import WEIGHTED_TYPES
from dualprop.losses import batch_loss

pytestmark = pytest.mark.slow
NAMES = sorted(ZOO)


def _model(entry: ZooModel, train: bool, seed: int = 0) -> nn.Module:
    """The model in float64, its normalisation layers given random statistics and affine parameters: a fresh
    batch norm in ``eval()`` maps an exact zero (a ReLU's output) to an exact zero, a kink of the next ReLU,
    where the rule takes a one-sided or central difference and autograd ``f'(0) = 0``."""
    torch.manual_seed(seed)
    model = entry.make().double().train(train)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
    return model


def _autograd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    batch_loss("cross_entropy", model(x), y).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _rule(learner: Learner, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    learner.step(x, y)
    return {name: p.grad.clone() for name, p in learner.model.named_parameters() if p.grad is not None}


def _assert_same_update(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], cosine: float) -> None:
    """Every parameter with a non-negligible reference gradient gets it, up to a cosine of ``cosine``."""
    largest = max(g.norm() for g in reference.values())
    for name, expected in reference.items():
        if expected.norm() <= 1e-6 * largest:
            continue
        assert name in grads, f"{name} has no gradient"
        got = grads[name]
        similarity = torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0)
        assert similarity > cosine, f"{name}: cosine {float(similarity):.6f}"
        assert torch.allclose(got.norm(), expected.norm(), rtol=1e-3), name


@pytest.mark.parametrize("name", NAMES)
def test_no_block_recomputes_another_blocks_weights(name):
    model = _model(ZOO[name], train=False)
    graph = capture_graph(model)
    in_blocks = [part for block in graph.blocks for part in block.weighted_parts()]
    unused = ZOO[name].unused_in_eval
    inside_leaves = {id(m) for a in model.modules() if isinstance(a, nn.MultiheadAttention) for m in a.modules()}
    distinct = [
        m
        for n, m in model.named_modules()
        if isinstance(m, WEIGHTED_TYPES) and not f"{n}.".startswith(unused) and id(m) not in inside_leaves
    ]
    assert len(in_blocks) == len({id(m) for m in in_blocks}) == len(distinct)
    assert {id(m) for m in in_blocks} == {id(m) for m in distinct}


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", NAMES)
def test_dp_top_at_small_beta_is_autograd_in_the_same_mode(name, train):
    entry = ZOO[name]
    x, y = zoo_batch(entry)
    model = _model(entry, train)
    reference = _autograd(copy.deepcopy(model), x, y, seed=1)
    for alpha in (0.0, 0.5, 1.0):
        learner = Learner(
            copy.deepcopy(model), rule="dpT", alpha=alpha, beta=1e-6, schedule="fwbw1", implementation="generic"
        )
        _assert_same_update(_rule(learner, x, y, seed=1), reference, cosine=0.9999)


@pytest.mark.parametrize("name", NAMES)
def test_fused_sweep_equals_the_generic_backward_sweep(name):
    entry = ZOO[name]
    x, y = zoo_batch(entry)
    model = _model(entry, train=False)
    for alpha in (0.0, 1.0):
        generic = Learner(
            copy.deepcopy(model), rule="dpT", alpha=alpha, beta=0.05, schedule="backward", implementation="generic"
        )
        if alpha == 0.0 and generic.implementation != "fused" and _has_nonlinear_join(generic):
            continue  # s⁺ of one parent moves before a nonlinear join reads it: the sweeps differ by design
        fused = Learner(
            copy.deepcopy(model), rule="dpT", alpha=alpha, beta=0.05, schedule="backward", implementation="fused"
        )
        expected = _rule(generic, x, y, seed=1)
        got = _rule(fused, x, y, seed=1)
        assert expected.keys() == got.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-7, atol=1e-10)


def _has_nonlinear_join(learner: Learner) -> bool:
    graph = learner.network
    return any(not affine and len(parents) > 1 for affine, parents in zip(graph.affine, graph.parents))


@pytest.mark.parametrize("name", [n for n in NAMES if not ZOO[n].tokens])
def test_normalisation_statistics_move_once_per_step(name):
    entry = ZOO[name]
    x, y = zoo_batch(entry)
    model = _model(entry, train=True)
    reference = copy.deepcopy(model)
    torch.manual_seed(1)
    reference(x)
    learner = Learner(model, rule="dpT", alpha=0.5, beta=0.1, schedule="fwbw2")
    torch.manual_seed(1)
    learner.step(x, y)
    for (key, got), expected in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(got, expected, msg=key)


@pytest.mark.parametrize("name", ["training_branch", "efficientnet", "convnext", "vit"])
def test_a_learner_built_in_one_mode_follows_the_model_into_the_other(name):
    entry = ZOO[name]
    x, y = zoo_batch(entry)
    for built, stepped in ((True, False), (False, True)):
        model = _model(entry, train=built)
        learner = Learner(copy.deepcopy(model), rule="dpT", alpha=0.5, beta=1e-6, schedule="fwbw1")
        learner.model.train(stepped)
        reference = _autograd(copy.deepcopy(model).train(stepped), x, y, seed=3)
        _assert_same_update(_rule(learner, x, y, seed=3), reference, cosine=0.9999)


def test_a_dropout_probability_changed_after_building_is_followed():
    entry = ZOO["training_branch"]
    x, y = zoo_batch(entry)
    model = _model(entry, train=True)
    learner = Learner(model, rule="dpT", alpha=0.5, beta=1e-6, schedule="fwbw1")
    model.p = 0.0  # read by F.dropout(x, self.p, self.training) in forward
    reference = _autograd(copy.deepcopy(model), x, y, seed=4)
    model.zero_grad()
    _assert_same_update(_rule(learner, x, y, seed=4), reference, cosine=0.9999)
    dropout = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Dropout(0.5), nn.Linear(5, 3)).double()
    learner = Learner(dropout, rule="dpT", alpha=0.5, beta=1e-6, schedule="fwbw1")
    dropout[2].p = 0.0
    data, labels = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    reference = _autograd(copy.deepcopy(dropout), data, labels, seed=5)
    dropout.zero_grad()
    _assert_same_update(_rule(learner, data, labels, seed=5), reference, cosine=0.9999)


def test_stochastic_depth_draws_once_per_step():
    """With a drop probability of ½ some residual branches of the batch are dropped: the rule's update is
    autograd's only if every visit of the step sees the feed-forward pass's draw."""
    entry = ZOO["efficientnet"]
    x, y = zoo_batch(entry, batch=8)
    model = _model(entry, train=True)
    for module in model.modules():
        if hasattr(module, "p") and type(module).__name__ == "DropPath":
            module.p = 0.5
    reference = _autograd(copy.deepcopy(model), x, y, seed=6)
    learner = Learner(copy.deepcopy(model), rule="dpT", alpha=0.5, beta=1e-6, schedule="fwbw2")
    _assert_same_update(_rule(learner, x, y, seed=6), reference, cosine=0.9999)
