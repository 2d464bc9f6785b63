"""The learning step under ``torch.compile``: one graph for a fixed deterministic schedule, and the same
updates as the eager step."""

import copy
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch

from dualprop import Learner, models
from dualprop.cli import main
from dualprop.training import TrainConfig, load_config

torch._logging.set_logs(dynamo=logging.ERROR)
# torch's own tracing machinery calls a deprecated torch.jit entry point
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
    pytest.mark.slow,  # every test here compiles (about a second or more each)
]
needs_compiler = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="inductor's CPU code generation needs a C++ compiler",
)

ONE_GRAPH = [
    dict(rule="dpT", alpha=0.5, schedule="fw3"),
    dict(rule="dp", alpha=0.3, schedule="fwbw2"),
    dict(rule="dpT", alpha=0.5, schedule="odd-even", passes=2, feedback="kolen-pollack"),
    dict(rule="dpT", alpha=1.0, schedule="backward"),  # the fused sweep
    dict(rule="bp"),
]


def _mlp_batch(seed=0):
    torch.manual_seed(seed)
    return models.mlp([12, 16, 16, 4]), torch.randn(8, 12), torch.randint(0, 4, (8,))


def _residual_batch(seed=0):
    torch.manual_seed(seed)
    return models.resnet8(5, 3, 8), torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))


def _break_count(learner, x, y):
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(learner.objective)(x, y)
    return explanation.graph_count, explanation.graph_break_count


@pytest.mark.parametrize("settings", ONE_GRAPH, ids=lambda s: "-".join(map(str, s.values())))
def test_the_step_of_a_fixed_schedule_traces_to_one_graph(settings):
    model, x, y = _mlp_batch()
    assert _break_count(Learner(model, **settings), x, y) == (1, 0)


@pytest.mark.parametrize("feedback", ["symmetric", "kolen-pollack"])
def test_a_residual_network_with_batch_normalisation_traces_to_one_graph(feedback):
    model, x, y = _residual_batch()
    learner = Learner(model.train(), rule="dpT", schedule="fwbw2", feedback=feedback)
    assert _break_count(learner, x, y) == (1, 0)


def _train_both(model, x, y, settings, compile_eager_copy, steps=3):
    eager = Learner(copy.deepcopy(model), **settings)
    compiled = Learner(copy.deepcopy(model), **settings)
    compiled.load_state_dict(eager.state_dict())  # the same feedback weights
    compile_eager_copy(compiled)
    for _ in range(steps):
        for learner in (eager, compiled):
            learner.zero_grad()
            result = learner.step(x, y)
            with torch.no_grad():
                for p in learner.parameters():
                    p -= 0.1 * p.grad
    return eager, compiled, result


def _assert_same_training(eager, compiled, tolerance):
    for a, b in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=tolerance, atol=tolerance)
        torch.testing.assert_close(b, a, rtol=tolerance, atol=tolerance)
    for a, b in zip(eager.buffers(), compiled.buffers()):
        torch.testing.assert_close(b, a, rtol=tolerance, atol=tolerance)


def _trace_only(learner):
    """Dynamo's graph run by the plain ATen kernels: what compilation captures, without code generation."""
    learner.objective = torch.compile(learner.objective, backend="aot_eager")


@pytest.mark.parametrize("settings", ONE_GRAPH[:3], ids=lambda s: "-".join(map(str, s.values())))
def test_the_captured_step_updates_the_weights_exactly_as_the_eager_step(settings):
    model, x, y = _mlp_batch(1)
    torch._dynamo.reset()
    eager, compiled, result = _train_both(model, x, y, settings, _trace_only)
    _assert_same_training(eager, compiled, 0.0)
    assert isinstance(result.loss_tensor, torch.Tensor) and result.loss == float(result.loss_tensor)
    assert result.states_finite


@pytest.mark.parametrize("feedback", ["symmetric", "kolen-pollack"])
def test_the_captured_step_of_a_residual_network_keeps_running_statistics_exact(feedback):
    model, x, y = _residual_batch(2)
    torch._dynamo.reset()
    eager, compiled, _ = _train_both(
        model.train(), x, y, dict(rule="dpT", schedule="fw2", feedback=feedback), _trace_only
    )
    _assert_same_training(eager, compiled, 0.0)
    norms = [m for m in compiled.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(int(m.num_batches_tracked) == 3 for m in norms)  # one update per step


@needs_compiler
def test_compile_objective_generates_code_that_matches_the_eager_step():
    model, x, y = _mlp_batch(3)
    torch._dynamo.reset()
    eager, compiled, _ = _train_both(
        model, x, y, dict(rule="dpT", schedule="fw3"), lambda learner: learner.compile_objective("default")
    )
    _assert_same_training(eager, compiled, 1e-5)


@needs_compiler
def test_a_copy_of_a_compiled_learner_steps_its_own_model():
    model, x, y = _mlp_batch(5)
    torch._dynamo.reset()
    original = Learner(model, rule="dpT", schedule="fw2")
    original.compile_objective("default")
    copied = copy.deepcopy(original)
    copied.step(x, y)
    assert all(p.grad is not None for p in copied.parameters())
    assert all(p.grad is None for p in original.parameters())


@needs_compiler
def test_train_compiles_the_step_when_asked_and_records_the_mode(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--compile",
                "default",
                "--epochs",
                "1",
                "--limit-batches",
                "3",
                "--hidden",
                "16",
                "--no-baseline",
                "--no-progress",
                "--no-tensorboard",
                "--out",
                str(tmp_path),
                "--json",
            ]
        )
        == 0
    )
    (run,) = tmp_path.iterdir()
    assert load_config(run / "config.toml").compile == "default"
    assert "test_acc" in capsys.readouterr().out


def test_train_without_a_working_compiler_stops_with_one_line_before_writing_anything(tmp_path):
    env = {
        **os.environ,
        "CXX": str(tmp_path / "no-such-compiler"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor-cache"),
    }  # nothing cached to fall back on
    out = tmp_path / "runs"
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "dualprop",
            "train",
            "--compile",
            "default",
            "--epochs",
            "1",
            "--limit-batches",
            "2",
            "--hidden",
            "8",
            "--no-baseline",
            "--no-progress",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert finished.returncode == 2
    assert finished.stderr.count("\n") == 1 and finished.stderr.startswith("dualprop: error: torch.compile in mode")
    assert "train without compiling" in finished.stderr and "Traceback" not in finished.stderr
    assert not out.exists()


def test_labels_out_of_range_are_refused_inside_the_captured_step():
    model, x, y = _mlp_batch(4)
    torch._dynamo.reset()
    learner = Learner(model, rule="dpT", schedule="fw2")
    _trace_only(learner)
    learner.step(x, y)
    with pytest.raises(RuntimeError, match=r"class labels must lie in \[0, 3\]"):
        learner.step(x, torch.full_like(y, 4))


def test_an_unknown_compile_mode_is_refused_by_learner_and_config():
    model, _, _ = _mlp_batch()
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        Learner(model).compile_objective("fast")
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        TrainConfig(compile="fast").resolved()
