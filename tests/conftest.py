"""Helpers shared by several test modules (imported as ``from conftest import ...``) and the ``slow`` marker's
meaning: a test that takes more than about 1.5 s here; ``pytest -m "not slow"`` runs the rest, which still
checks every equation."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from torch import Tensor, nn

from dualprop import Learner

SOURCE = Path(__file__).resolve().parents[1] / "src"


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m dualprop *args`` in a subprocess running this checkout's sources, output captured as text."""
    env = {**os.environ, "PYTHONPATH": str(SOURCE), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dualprop", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def model_grads(model: nn.Module) -> list[Tensor]:
    """Copies of the ``.grad`` of every parameter of ``model``."""
    return [p.grad.detach().clone() for p in model.parameters()]


def rule_grads(model: nn.Module, x: Tensor, y: Tensor, **settings) -> list[Tensor]:
    """The update one ``step`` of a new ``Learner(model, **settings)`` accumulates into the model's ``.grad``
    (zeroed first)."""
    model.zero_grad()
    Learner(model, **settings).step(x, y)
    return model_grads(model)
