"""Graph capture of any nn.Module and dual propagation on it, against autograd of the same model."""

import copy
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dualprop
from dualprop import Learner, capture_graph, models

from conftest import rule_grads


class ResidualMLP(nn.Module):
    """``h = relu(l1 x); h = h + relu(l2 h); logits = l3 h`` — a small benchmark's reference MLP."""

    def __init__(self):
        super().__init__()
        self.linear1, self.linear2, self.linear3 = nn.Linear(5, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.linear1(x).relu()
        h = h + self.linear2(h).relu()
        return self.linear3(h)


class NormalisedConcatMLP(nn.Module):
    """Residual MLP with BatchNorm, LayerNorm, a concatenation, a constant scale, dropout and functional,
    in-place and method activations."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.inp = nn.Linear(5, 8)
        self.bn = nn.BatchNorm1d(8)
        self.mid = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.side = nn.Linear(8, 4)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(12, 3)
        self.act = nn.Tanh()

    def forward(self, x):
        h = F.relu(self.bn(self.inp(x)), inplace=True)
        g = torch.sigmoid(self.norm(self.mid(h))) + h
        k = self.act(self.side(g) * 0.5)
        return self.out(self.drop(torch.cat([g, k], dim=1)))


def test_a_sequential_becomes_a_chain():
    graph = capture_graph(models.mlp([4, 6, 5, 3]))
    assert graph.is_chain and graph.depth == 3 and graph.levels == [0, 1, 2, 3]


def test_residual_mlp_is_captured_with_a_block_of_two_parents_and_trains():
    model = ResidualMLP()
    graph = capture_graph(model)
    assert graph.depth == 3 and graph.parents == [(0,), (1,), (1, 2)] and not graph.is_chain
    assert graph.levels == [0, 1, 2, 3]
    x = torch.randn(6, 5)
    torch.testing.assert_close(graph.feed_forward(x)[0][-1], model(x))
    for rule in ("bp", "dpT", "dp"):
        learner = Learner(copy.deepcopy(model), rule=rule, schedule="fw2")
        assert learner.step(x, torch.randint(0, 3, (6,))).states_finite


def test_functional_in_place_and_method_activations_are_neurons():
    model = NormalisedConcatMLP().eval()
    graph = capture_graph(model)
    assert graph.depth == 5
    # g = n2 + n1 feeds both k and the output: an identity neuron (3), which both blocks read
    assert graph.parents == [(0,), (1,), (1, 2), (3,), (3, 4)]
    assert graph.identity_neurons == [3]
    x = torch.randn(7, 5)
    states, drives = graph.feed_forward(x)
    torch.testing.assert_close(states[-1], model(x))
    torch.testing.assert_close(states[1], F.relu(drives[1]))  # the in-place site did not clobber its drive
    assert not torch.equal(drives[1], states[1])


def _autograd_grads(model, x, y):
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def _assert_parameterwise_aligned(model, grads, reference):
    """Cosine > 0.9999 for every parameter; where autograd's gradient is exactly zero (a bias before
    BatchNorm in training mode), the update must vanish too."""
    scale = max(float(r.norm()) for r in reference)
    for name, (g, r) in zip([n for n, _ in model.named_parameters()], zip(grads, reference)):
        if float(r.norm()) < 1e-9 * scale:
            assert float(g.norm()) < 1e-6 * scale, name
            continue
        cosine = float(F.cosine_similarity(g.flatten(), r.flatten(), dim=0))
        assert cosine > 0.9999, (name, cosine)


class ResidualCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        h = F.relu(self.bn0(self.stem(x)))
        h = torch.tanh(self.bn1(self.conv(h)) + h)
        h = F.avg_pool2d(F.max_pool2d(h, 2), 2)
        return self.head(h.flatten(1))


@pytest.mark.parametrize(
    "make, shape",
    [(NormalisedConcatMLP, (10, 5)), (ResidualCNN, (6, 2, 12, 12))],
    ids=["residual-mlp-bn-concat", "residual-cnn-bn2d"],
)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_dpT_at_small_beta_is_autograd_of_the_same_model_in_the_same_mode(make, shape, mode, alpha):
    torch.manual_seed(3)
    model = make().double()
    model.train(mode == "train")
    x = torch.randn(shape, dtype=torch.float64)
    y = torch.randint(0, 3, (shape[0],))
    reference = _autograd_grads(copy.deepcopy(model), x, y)
    grads = rule_grads(model, x, y, rule="dpT", alpha=alpha, beta=1e-5, schedule="fwbw3", implementation="generic")
    _assert_parameterwise_aligned(model, grads, reference)


def test_batch_norm_running_statistics_change_once_per_step_as_in_one_forward():
    torch.manual_seed(4)
    model = ResidualCNN().double()
    x, y = torch.randn(6, 2, 12, 12, dtype=torch.float64), torch.randint(0, 3, (6,))
    reference = copy.deepcopy(model)
    reference(x)
    Learner(model, rule="dp", alpha=0.5, schedule="fw3").step(x, y)
    for ours, theirs in ((model.bn0, reference.bn0), (model.bn1, reference.bn1)):
        torch.testing.assert_close(ours.running_mean, theirs.running_mean)
        torch.testing.assert_close(ours.running_var, theirs.running_var)
        assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 1


def test_dropout_mask_is_drawn_once_per_step_and_the_update_is_autograd_with_that_mask():
    torch.manual_seed(5)
    model = NormalisedConcatMLP(dropout=0.5).double().train()
    x, y = torch.randn(10, 5, dtype=torch.float64), torch.randint(0, 3, (10,))
    learner = Learner(model, rule="dpT", alpha=0.5, beta=1e-5, schedule="fwbw3", implementation="generic")
    (dropout,) = learner.network.draws
    draws = []
    original = dropout.forward

    def counted(s):
        before = dropout.mask
        out = original(s)
        draws.append(dropout.mask is not before)
        return out

    dropout.forward = counted
    model.zero_grad()
    learner.step(x, y)
    grads = [p.grad.clone() for p in model.parameters()]
    assert draws[0] and not any(draws[1:]) and len(draws) > 2  # one mask, reused by every evaluation
    mask = dropout.mask
    assert 0 < int((mask == 0).sum()) < mask.numel()
    reference_model = copy.deepcopy(model)
    reference_model.drop.register_forward_hook(lambda module, inputs, output: inputs[0] * mask)
    reference_model.bn.running_mean.copy_(model.bn.running_mean)  # not read in training mode
    _assert_parameterwise_aligned(model, grads, _autograd_grads(reference_model, x, y))
    model.eval()
    assert torch.equal(learner(x), model(x))  # in eval mode the dropout site is the identity


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_fused_sweep_equals_generic_backward_sweep_on_a_residual_graph(alpha):
    torch.manual_seed(6)
    model = ResidualMLP().double()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    settings = dict(rule="dpT", alpha=alpha, beta=0.3, schedule="backward")
    fused = Learner(copy.deepcopy(model), **settings)
    assert fused.implementation == "fused"
    generic = rule_grads(copy.deepcopy(model), x, y, implementation="generic", **settings)
    fused.step(x, y)
    for g, p in zip(generic, fused.model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)


def test_auto_picks_fused_for_one_forward_backward_pass_and_a_resnet():
    assert Learner(ResidualMLP(), rule="dpT", alpha=1.0, schedule="fwbw1").implementation == "fused"
    assert Learner(models.resnet8(), rule="dpT", alpha=1.0, schedule="backward").implementation == "fused"
    assert Learner(ResidualMLP(), rule="dpT", alpha=1.0, schedule="fwbw2").implementation == "generic"
    # at α = 0 the feedback point s⁺ moves, so a block with several parents must have a constant Jacobian
    assert Learner(ResidualMLP(), rule="dpT", alpha=0.0, schedule="backward").implementation == "fused"
    assert Learner(models.resnet8(), rule="dpT", alpha=0.0, schedule="backward").implementation == "generic"


def test_resnet_trains_with_fused_dpT_and_every_parameter_gets_an_update():
    torch.manual_seed(7)
    model = models.resnet8(num_classes=3, in_channels=1)
    x, y = torch.randn(4, 1, 12, 12), torch.randint(0, 3, (4,))
    learner = Learner(model, rule="dpT", alpha=1.0, beta=0.1, schedule="backward")
    result = learner.step(x, y)
    assert result.states_finite and all(p.grad is not None for p in model.parameters())
    reference = _autograd_grads(copy.deepcopy(model), x, y)
    grads = [p.grad for p in model.parameters()]
    total = float(
        F.cosine_similarity(torch.cat([g.flatten() for g in grads]), torch.cat([r.flatten() for r in reference]), dim=0)
    )
    assert total > 0.9


def test_kolen_pollack_on_a_graph_with_matching_feedback_equals_symmetric_feedback():
    torch.manual_seed(8)
    model = ResidualMLP().double()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    symmetric = rule_grads(copy.deepcopy(model), x, y, rule="dp", alpha=0.5, schedule="fw2")
    kp = Learner(model, rule="dp", alpha=0.5, schedule="fw2", feedback="kolen-pollack")
    # linear1 feeds back nothing (it reads only the input): feedback weights for linear2 and linear3
    assert [w.shape for w in kp.feedback_parameters()] == [model.linear2.weight.shape, model.linear3.weight.shape]
    with torch.no_grad():
        kp.feedback_parameters()[0].copy_(model.linear2.weight)
        kp.feedback_parameters()[1].copy_(model.linear3.weight)
    model.zero_grad()
    kp.step(x, y)
    for p, g in zip(model.parameters(), symmetric):
        torch.testing.assert_close(p.grad, g)
    torch.testing.assert_close(kp.feedback_parameters()[1].grad, model.linear3.weight.grad)


def test_damped_dp_on_a_graph_in_eval_mode_and_refused_with_batch_statistics():
    torch.manual_seed(9)
    model = ResidualCNN().double().eval()
    x, y = torch.randn(4, 2, 12, 12, dtype=torch.float64), torch.randint(0, 3, (4,))
    learner = Learner(model, rule="dp-damped", alpha=0.5, schedule="fw2")
    assert learner.step(x, y).states_finite
    assert any(name.startswith("damping.vector_") and v.numel() for name, v in learner.state_dict().items())
    model.train()
    with pytest.raises(ValueError, match="batch normalisation"):
        learner.step(x, y)
    with pytest.raises(ValueError, match="batch normalisation"):  # refused before any step
        Learner(model, rule="dp-damped")


def test_odd_even_schedule_runs_over_depth_levels():
    learner = Learner(ResidualMLP(), rule="dp", schedule="odd-even")
    assert learner.network.levels == [0, 1, 2, 3]
    assert learner.order == [1, 3, 2]


class ControlFlow(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.linear(x)
        return self.linear(-x)


class Rounded(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)).round())


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 2)

    def forward(self, x):
        return self.a(x), x


@pytest.mark.parametrize(
    "model, fragments",
    [
        (ControlFlow(), ["control flow", "test_graph.py", "if x.sum() > 0"]),
        (Rounded(), ["round", "not differentiable", "test_graph.py", "torch.relu(self.a(x)).round()"]),
        (TwoOutputs(), ["several outputs", "test_graph.py", "def forward(self, x)"]),
    ],
)
def test_constructs_that_cannot_be_expressed_are_refused_naming_the_operation_and_line(model, fragments):
    with pytest.raises(ValueError) as error:
        Learner(model)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_a_registered_activation_extends_the_set_in_a_graph():
    class Cube(nn.Module):
        def forward(self, x):
            return x * x * x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.cube, self.b = nn.Linear(3, 4), Cube(), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(self.cube(self.a(x)) + self.a(x))

    assert capture_graph(Net()).parents == [(0,)]  # undeclared, the cube is a part of the one block
    dualprop.register_activation(Cube)
    assert capture_graph(Net()).parents == [(0,), (0, 1)]


@pytest.mark.slow
def test_a_residual_network_trains_and_is_diagnosed_and_attacked_from_the_command_line(tmp_path, capsys):
    from dualprop.cli import main
    from dualprop.training import TrainConfig, train

    config = TrainConfig(
        model="resnet8",
        rule="dpT",
        alpha=0.5,
        beta=0.1,
        epochs=1,
        limit_batches=4,
        baseline=False,
        out=str(tmp_path),
        tensorboard=False,
        threads=1,
    )
    (summary,) = train(config)
    assert summary["status"] == "finished" and summary["test_acc"] > 0
    run_dir = summary["run_dir"]
    assert (
        main(["robustness", run_dir, "--eps", "0.1", "--pgd-steps", "2", "--lipschitz-samples", "4", "--limit", "16"])
        == 0
    )
    report = capsys.readouterr().out
    assert "spectral norms per block input" in report and "product bound" in report
    assert main(["diagnose", run_dir, "--batches", "1", "--output-dir", str(tmp_path / "angles")]) == 0
    assert "block" in capsys.readouterr().out


def test_register_activation_takes_module_types_only():
    for wrong in (42, "relu", torch.relu, nn.ReLU()):
        with pytest.raises(TypeError, match="subclass of torch.nn.Module"):
            dualprop.register_activation(wrong)


def test_a_declared_activation_with_parameters_is_refused_and_undeclared_it_is_trained():
    class Scaled(nn.Module):  # elementwise, but with a parameter of its own (like PReLU)
        def __init__(self):
            super().__init__()
            self.slope = nn.Parameter(torch.tensor(0.7, dtype=torch.float64))

        def forward(self, x):
            return torch.tanh(x) * self.slope

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 5), Scaled(), nn.Linear(5, 3)).double()

    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    net = model()
    learner = Learner(net, rule="dpT", alpha=0.5, beta=1e-6, schedule="fwbw1")
    learner.step(x, y)  # undeclared: the tanh is a neuron and the scale a part of the next block
    reference = model()
    F.cross_entropy(reference(x), y).backward()
    for got, expected in zip(net.parameters(), reference.parameters()):
        torch.testing.assert_close(got.grad, expected.grad, rtol=1e-4, atol=1e-8)
    dualprop.register_activation(Scaled)
    with pytest.raises(ValueError, match=r"test_graph.py:\d+ is declared an activation but has parameters \(slope\)"):
        Learner(model())


def test_a_declared_activation_that_is_not_elementwise_is_refused_at_the_first_step():
    class Mixing(nn.Module):  # mixes features: a softmax across them
        def forward(self, x):
            return torch.softmax(x, dim=-1)

    dualprop.register_activation(Mixing)
    learner = Learner(nn.Sequential(nn.Linear(4, 5), Mixing(), nn.Linear(5, 3)))
    with pytest.raises(ValueError, match="declared an activation but is not elementwise"):
        learner.step(torch.randn(6, 4), torch.randint(0, 3, (6,)))


def test_a_neuron_marker_places_an_identity_neuron_by_hand():
    class Marked(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 5), nn.Linear(5, 3)

        def forward(self, x):
            h = dualprop.neuron(self.b(self.a(x)))  # one reader only: no neuron without the marker
            h = dualprop.neuron(torch.relu(self.c(h)))  # already a neuron: the marker marks nothing
            return self.d(h)

    torch.manual_seed(0)
    model = Marked().double()
    graph = capture_graph(model)
    assert graph.depth == 3 and graph.identity_neurons == [1]
    assert [len(block.weighted_parts()) for block in graph.blocks] == [2, 1, 1]
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    torch.testing.assert_close(graph.feed_forward(x)[0][-1], model(x))
    reference = copy.deepcopy(model)
    F.cross_entropy(reference(x), y).backward()
    Learner(model, rule="dpT", alpha=0.5, beta=1e-6, schedule="fwbw1").step(x, y)
    for got, expected in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got.grad, expected.grad, rtol=1e-4, atol=1e-8)


def test_refusals_name_code_inside_other_installed_packages():
    """A model zoo installed beside torch (its path starts with torch's directory name) is the user's code."""
    from dualprop.graph import _TORCH_DIR, _location

    zoo_file = _TORCH_DIR.rstrip("/") + "vision/models/resnet.py"
    torch_file = _TORCH_DIR + "nn/modules/module.py"
    node = types.SimpleNamespace(
        stack_trace=f'  File "{zoo_file}", line 12, in forward\n    out = self.block(x)\n'
        f'  File "{torch_file}", line 99, in _call_impl\n    return forward_call(*args)\n',
        meta={},
    )
    assert _location(node) == f" at {zoo_file}:12 (out = self.block(x))"


def test_shape_arithmetic_asserts_and_optional_arguments_are_constants():
    class Shaped(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.m, self.b = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)

        def forward(self, x, scale=None):
            b, c = x.shape  # read at the top, used by the last block
            torch._assert(c == 6, "six features")
            h = torch.relu(self.a(x))
            width = h.size(1)  # a read of neuron 1, used by the last block too
            g = torch.relu(self.m(h))
            g = g.view(b, 2, width // 2).flip(1).reshape(b, width)  # a shuffle by shape arithmetic
            if scale is not None:
                g = g * scale
            return self.b(g)

    torch.manual_seed(0)
    model = Shaped().double()
    graph = capture_graph(model)
    assert graph.parents == [(0,), (1,), (2,)]  # shapes are no reasons to read a neuron
    for batch in (5, 3):  # the shapes follow the batch
        x = torch.randn(batch, 6, dtype=torch.float64)
        torch.testing.assert_close(graph.feed_forward(x)[0][-1], model(x))
    y = torch.randint(0, 3, (3,))
    reference = copy.deepcopy(model)
    F.cross_entropy(reference(x), y).backward()
    Learner(model, rule="dpT", alpha=0.5, beta=1e-6, schedule="fwbw2").step(x, y)
    for got, expected in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got.grad, expected.grad, rtol=1e-4, atol=1e-8)


class FunctionalParts(nn.Module):
    """timm-style functional batch norm on registered buffers, a gated product (addcmul, GLU) and a PReLU:
    block parts, whose parameters the rule trains."""

    def __init__(self):
        super().__init__()
        self.a, self.g, self.b = nn.Linear(5, 8), nn.Linear(5, 8), nn.Linear(4, 3)
        self.weight, self.bias = nn.Parameter(torch.rand(8) + 0.5), nn.Parameter(0.1 * torch.randn(8))
        self.register_buffer("running_mean", torch.zeros(8))
        self.register_buffer("running_var", torch.ones(8))
        self.prelu = nn.PReLU(4)

    def forward(self, x):
        h = F.batch_norm(self.a(x), self.running_mean, self.running_var, self.weight, self.bias, self.training, 0.1)
        h = torch.addcmul(h, h, torch.sigmoid(self.g(x)))
        return self.b(self.prelu(F.glu(torch.tanh(h), dim=-1)))


@pytest.mark.parametrize("train", [True, False])
def test_functional_batch_norm_gates_and_prelu_are_block_parts_trained_as_autograd(train):
    torch.manual_seed(0)
    model = FunctionalParts().double().train(train)
    x, y = torch.randn(7, 5, dtype=torch.float64), torch.randint(0, 3, (7,))
    reference = copy.deepcopy(model)
    F.cross_entropy(reference(x), y).backward()
    Learner(model, rule="dpT", alpha=0.5, beta=1e-6, schedule="fwbw2").step(x, y)
    for (name, got), expected in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(got.grad, expected.grad, rtol=1e-4, atol=1e-8, msg=name)
    torch.testing.assert_close(model.running_mean, reference.running_mean)  # moved once in the step
    torch.testing.assert_close(model.running_var, reference.running_var)


class WindowedSoftmax(nn.Module):
    """Swin-style shifted windows (a roll and a window partition by shape arithmetic), an ``nn.Softmax`` inside
    a Sequential, and a channel-wise ``Dropout2d``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.drop = nn.Dropout2d(0.5)
        self.mix = nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=-1), nn.Linear(4, 4))
        self.head = nn.Linear(4 * 16, 3)

    def forward(self, x):
        h = self.drop(torch.tanh(self.conv(x)))  # (B, 4, 4, 4)
        b, c, height, width = h.shape
        h = torch.roll(h.permute(0, 2, 3, 1), shifts=(1, 1), dims=(1, 2))
        windows = h.view(b, height // 2, 2, width // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 4, c)
        windows = windows + self.mix(windows)
        return self.head(windows.reshape(b, -1))


@pytest.mark.parametrize("train", [True, False])
def test_windows_rolls_a_softmax_module_and_channel_dropout_are_trained_as_autograd(train):
    torch.manual_seed(0)
    model = WindowedSoftmax().double().train(train)
    x, y = torch.randn(6, 2, 4, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    learner = Learner(model, rule="dpT", alpha=0.5, beta=1e-6, schedule="fwbw2")
    learner.step(x, y)
    rule = [p.grad.clone() for p in model.parameters()]
    (dropout,) = learner.graph.draws
    if train:  # one mask per sample and channel, kept for the whole step
        assert dropout.mask.shape == (6, 4, 1, 1) and (dropout.mask == 0).any()
        model.drop.forward = lambda h: h * dropout.mask  # the model itself, with the step's mask
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    for got, expected in zip(rule, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-8)
