"""The examples run and learn: each trains on the digits for three epochs and must beat 85 % test
accuracy (chance: 10 %). An example whose framework is not installed is skipped."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_plain_loop_learns(capsys):
    assert load_example("plain_loop").main(epochs=3) > 0.85
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.slow
def test_lightning_module_learns(tmp_path):
    pytest.importorskip("lightning")
    assert load_example("lightning_module").main(epochs=3, root=str(tmp_path)) > 0.85


def test_accelerate_loop_learns():
    pytest.importorskip("accelerate")
    assert load_example("accelerate_loop").main(epochs=3) > 0.85
