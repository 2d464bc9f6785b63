"""dualprop: single-phase contrastive Hebbian learning (dual propagation, DP and DP⊤) for PyTorch.

The public names are imported on first use (``dualprop.Learner``, ``from dualprop import Learner``), so
that ``import dualprop.cli`` stays light and the command line installs its signal handlers before torch
is imported."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dualprop import models
    from dualprop.graph import NeuronGraph, capture_graph, neuron, register_activation, register_block_module
    from dualprop.learner import DyadicStates, Learner, LearnerSettings, StepResult

__version__ = "0.1.0"
_HOMES = {
    "Learner": "dualprop.learner",
    "LearnerSettings": "dualprop.learner",
    "DyadicStates": "dualprop.learner",
    "StepResult": "dualprop.learner",
    "neuron": "dualprop.graph",
    "register_activation": "dualprop.graph",
    "register_block_module": "dualprop.graph",
    "capture_graph": "dualprop.graph",
    "NeuronGraph": "dualprop.graph",
}
__all__ = [
    "Learner",
    "LearnerSettings",
    "DyadicStates",
    "StepResult",
    "models",
    "neuron",
    "register_activation",
    "register_block_module",
    "capture_graph",
    "NeuronGraph",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """The public name ``name``, imported from its module on first use."""
    if name == "models":
        return import_module("dualprop.models")
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'dualprop' has no attribute {name!r}")
