"""dualprop: single-phase contrastive Hebbian learning (dual propagation, DP and DP⊤) for PyTorch."""

from dualprop import models
from dualprop.graph import NeuronGraph, capture_graph, neuron, register_activation, register_block_module
from dualprop.learner import DyadicStates, Learner, LearnerSettings, StepResult

__version__ = "0.1.0"
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
