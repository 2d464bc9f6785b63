"""The Learner as a PyTorch citizen: ``objective()`` for external ``backward()``, registered state,
wrapped models (DDP, ``torch.compile``)."""

import copy

import pytest
import torch
from torch import nn

from dualprop import Learner, models

SETTINGS = [
    dict(rule="bp"),
    dict(rule="adversarial", beta=0.05),
    dict(rule="dp", alpha=0.3, schedule="fw2"),
    dict(rule="dpT", alpha=0.5, schedule="fwbw2"),
    dict(rule="dpT", alpha=1.0, schedule="backward"),  # the fused sweep
    dict(rule="dp-damped", alpha=0.8, schedule="fw2"),
    dict(rule="dpT", alpha=0.0, schedule="fw2", feedback="kolen-pollack"),
]


def _setup(seed=0):
    torch.manual_seed(seed)
    model = models.mlp([5, 7, 6, 3]).double()
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    return model, x, y


def _grads(learner):
    return [p.grad.detach().clone() for p in learner.parameters()]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_objective_backward_accumulates_exactly_what_step_accumulates(settings):
    model, x, y = _setup()
    stepped = Learner(copy.deepcopy(model), **settings)
    by_step = stepped.step(x, y)
    learner = Learner(copy.deepcopy(model), **settings)
    learner.load_state_dict(stepped.state_dict())  # the same feedback weights
    for p in learner.parameters():
        p.grad = None
    result = learner.objective(x, y)
    assert result.objective.dim() == 0 and result.objective.requires_grad
    assert all(p.grad is None for p in learner.parameters())  # nothing accumulated before backward()
    result.objective.backward()
    for a, b in zip(_grads(stepped), _grads(learner)):
        torch.testing.assert_close(a, b)
    assert result.loss == pytest.approx(by_step.loss)


def test_kolen_pollack_feedback_receives_the_forward_weights_update_through_objective():
    model, x, y = _setup(1)
    learner = Learner(model, rule="dpT", alpha=0.5, schedule="fw2", feedback="kolen-pollack")
    learner.objective(x, y).objective.backward()
    forward_weights = [model[2].weight, model[4].weight]
    assert len(learner.feedback_parameters()) == 2
    for feedback, weight in zip(learner.feedback_parameters(), forward_weights):
        torch.testing.assert_close(feedback.grad, weight.grad)
        assert not torch.equal(feedback, weight)


def test_grad_scaler_scales_the_objective_and_unscales_to_the_step_update():
    torch.manual_seed(2)
    model = models.mlp([5, 7, 3])
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    reference = copy.deepcopy(model)
    Learner(reference, rule="dpT", alpha=0.5, schedule="fw2").step(x, y)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    learner = Learner(model, rule="dpT", alpha=0.5, schedule="fw2")
    scaler.scale(learner.objective(x, y).objective).backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, 1024.0 * q.grad)
    scaler.unscale_(optimizer)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    scaler.step(optimizer)
    scaler.update()


def test_objective_through_a_ddp_wrapper_matches_the_plain_model(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model, x, y = _setup(3)
    plain = Learner(copy.deepcopy(model), rule="dp", alpha=0.5, schedule="fw2")
    plain.step(x, y)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(copy.deepcopy(model))
        calls = []
        wrapped.register_forward_hook(lambda module, inputs, output: calls.append(1))
        learner = Learner(wrapped, rule="dp", alpha=0.5, schedule="fw2")
        assert learner.model is wrapped.module
        learner.objective(x, y).objective.backward()
        grads = [p.grad.clone() for p in wrapped.module.parameters()]
    finally:
        dist.destroy_process_group()
    assert calls == [1]  # J ran through the wrapper, so its gradient hooks were armed
    for a, b in zip(grads, _grads(plain)):
        torch.testing.assert_close(a, b)


def test_feedback_weights_and_spectral_estimates_are_registered_state():
    model, x, y = _setup(4)
    learner = Learner(model, rule="dp-damped", alpha=0.5, schedule="fw2")
    learner.step(x, y)
    keys = set(learner.state_dict())
    assert {"damping.vector_1_2", "damping.vector_2_3"} <= keys  # neuron k, its child c
    assert learner.state_dict()["damping.vector_1_2"].shape == (1, 7)  # one sample of s_1
    assert {f"model.{name}" for name, _ in model.named_parameters()} <= keys
    restored = Learner(copy.deepcopy(model), rule="dp-damped", alpha=0.5, schedule="fw2")
    assert restored.state_dict()["damping.vector_1_2"].numel() == 0  # made at construction, empty until a step
    restored.load_state_dict(learner.state_dict())
    torch.testing.assert_close(restored.damping.vector_1_2, learner.damping.vector_1_2)

    kp = Learner(models.mlp([5, 7, 6, 3]), rule="dpT", feedback="kolen-pollack")
    names = [name for name, _ in kp.named_parameters()]
    assert names[-2:] == ["kolen_pollack.weights.0", "kolen_pollack.weights.1"]
    assert kp.feedback_weights[0] is kp.kolen_pollack.weights[0]
    assert Learner(models.mlp([5, 7, 6, 3]), rule="dpT").kolen_pollack is None  # symmetric: no module
    assert len(list(kp.parameters())) == len(list(kp.model.parameters())) + 2


def test_learner_to_moves_feedback_weights_and_model_alone_gets_a_clear_error():
    torch.manual_seed(5)
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.randint(0, 3, (4,))
    learner = Learner(models.mlp([5, 7, 6, 3]), rule="dpT", schedule="fw2", feedback="kolen-pollack")
    learner.model.double()
    with pytest.raises(ValueError, match=r"learner\.to"):
        learner.step(x, y)
    learner.to(torch.float64)
    assert all(w.dtype == torch.float64 for w in learner.feedback_parameters())
    assert learner.step(x, y).states_finite
    torch.testing.assert_close(learner(x), learner.model(x))


def test_compiled_model_is_unwrapped_and_trained_through_its_wrapper():
    model, x, y = _setup(6)
    plain = Learner(copy.deepcopy(model), rule="bp")
    plain.step(x, y)
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, backend="eager")
    learner = Learner(compiled, rule="bp")
    assert learner.model is twin
    learner.step(x, y)
    for a, b in zip(_grads(plain), _grads(learner)):
        torch.testing.assert_close(a, b)
    dyadic = Learner(torch.compile(copy.deepcopy(model), backend="eager"), rule="dpT", schedule="fw2")
    assert dyadic.step(x, y).states_finite


def test_data_parallel_wrapper_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="DataParallel"):
        Learner(nn.DataParallel(models.mlp([3, 4, 2])))


@pytest.mark.parametrize("rule", ["bp", "dpT", "dp"])
@pytest.mark.parametrize(
    "x, y, message",
    [
        (torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), "empty"),
        (torch.zeros(4, 5, dtype=torch.float64), torch.zeros(4, dtype=torch.long), "float64"),
        (torch.zeros(4, 5, dtype=torch.long), torch.zeros(4, dtype=torch.long), "floating point"),
        (torch.zeros(4, 5), torch.zeros(4, dtype=torch.bool), "boolean"),
        (torch.zeros(4, 5), torch.zeros(4), "class indices"),
        (torch.zeros(4, 5), torch.zeros(3, dtype=torch.long), "one target per sample"),
    ],
)
def test_a_batch_that_does_not_fit_is_a_value_error_saying_what_to_change(rule, x, y, message):
    learner = Learner(models.mlp([5, 6, 3]), rule=rule, schedule="fw2")
    with pytest.raises(ValueError, match=message):
        learner.step(x, y)


def test_noise_and_random_order_generators_are_saved_so_a_resumed_step_draws_the_same():
    model, x, y = _setup(7)
    settings = dict(rule="dpT", alpha=0.5, schedule="random", passes=2, state_noise=0.01, noise_seed=3)
    learner = Learner(copy.deepcopy(model), **settings)
    learner.step(x, y)  # the generators move on
    state = copy.deepcopy(learner.state_dict())
    assert {"noise_generator_cpu", "order_generator"} <= set(state)
    resumed = Learner(copy.deepcopy(model), **settings)
    resumed.load_state_dict(state)
    fresh = Learner(copy.deepcopy(model), **settings)
    for each in (learner, resumed, fresh):
        for p in each.parameters():
            p.grad = None
        each.step(x, y)
    for a, b in zip(_grads(learner), _grads(resumed)):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, c) for a, c in zip(_grads(learner), _grads(fresh)))
    assert "noise_generator_cpu" not in Learner(copy.deepcopy(model)).state_dict()


def test_settings_are_checked_and_resolved_without_a_model():
    from dualprop import LearnerSettings

    settings = LearnerSettings(rule="dp", alpha=1, schedule="fwbw2")
    assert (settings.schedule, settings.passes, settings.alpha) == ("forward-backward", 2, 1.0)
    assert LearnerSettings(schedule="fwbw").one_sweep and not settings.one_sweep
    for bad, fragment in [
        (dict(rule="bp", feedback="kolen-pollack"), "dual-propagation rule"),
        (dict(implementation="fused", schedule="fw2"), "single backward sweep"),
        (dict(rule="adversarial", state_noise=0.1), "adversarial"),
        (dict(state_quantum=-1.0), "state_quantum"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            LearnerSettings(**bad)


def test_surrogate_objective_of_inferred_states_is_the_step_and_leaves_the_states_whole():
    model, x, y = _setup(5)
    stepped = Learner(copy.deepcopy(model), rule="dpT", alpha=0.5, schedule="fwbw2")
    stepped.step(x, y)
    learner = Learner(copy.deepcopy(model), rule="dpT", alpha=0.5, schedule="fwbw2")
    states = learner.infer(x, y)
    kept = [s.clone() for s in states.plus + states.minus]
    learner.surrogate_objective(states).backward()
    assert all(torch.equal(a, b) for a, b in zip(kept, states.plus + states.minus))
    for a, b in zip(_grads(learner), _grads(stepped)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_every_captured_block_meets_the_block_contract_and_graph_is_the_learners_neuron_graph():
    from dualprop.blocks import BlockLike

    for model in (models.mlp([5, 7, 6, 3]), models.resnet8(num_classes=3, size=8)):
        learner = Learner(model, rule="dpT")
        assert learner.graph is learner.network
        assert learner.graph.blocks and all(isinstance(block, BlockLike) for block in learner.graph.blocks)
    assert not isinstance(nn.Linear(2, 2), BlockLike)  # no input_vjp: not a block
