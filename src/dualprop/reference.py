"""The reference rules a Learner runs besides dual propagation: backprop (``bp``, with noisy neurons when
the settings perturb them) and adversarial training (``adversarial``), each as the step's objective."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dualprop.graph import NeuronGraph
from dualprop.hardware import ActivationSite, CompartmentPerturbation, noisy_backprop
from dualprop.losses import batch_loss, target_distribution
from dualprop.states import StepResult
from dualprop.wrappers import forward_module, run_as_forward


class Backprop:
    """``bp``: the batch-mean loss of the model's output. With an active perturbation the model's captured
    graph runs instead, with every activation site and the output perturbed forward and backward
    (:func:`dualprop.hardware.noisy_backprop`)."""

    def __init__(self, graph: NeuronGraph, perturbation: CompartmentPerturbation, loss: str):
        self.graph, self.perturbation, self.loss = graph, perturbation, loss
        self._sites = [ActivationSite(f) for f in graph.activations] if perturbation.active else []
        self._noisy_forward = graph.with_activations(self._sites) if self._sites else None

    def objective(self, model: nn.Module, x: Tensor, y: Tensor) -> StepResult:
        """The step of ``model`` (the caller's module, run as its own forward) on the batch ``(x, y)``."""
        if self._noisy_forward is None:
            logits = model(x)
        else:
            self.graph.new_step()
            with noisy_backprop(self.perturbation, self._sites, x.shape[0]) as neuron:
                logits = neuron(run_as_forward(forward_module(model), self._noisy_forward, x))
        loss = batch_loss(self.loss, logits, y)
        return StepResult(loss.detach(), logits.detach(), objective=loss)


def adversarial_input(model: nn.Module, loss: str, beta: float, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(x + β ∇ₓℓ, clean logits)`` with ``∇ₓℓ`` the per-sample loss gradient (not scaled by 1/B)."""
    with torch.enable_grad():
        point = x.detach().requires_grad_(True)
        logits = model(point)
        (grad,) = torch.autograd.grad(batch_loss(loss, logits, y), point)
    return (x + beta * x.shape[0] * grad).detach(), logits.detach()


def adversarial_objective(
    model: nn.Module, wrapper: nn.Module, loss: str, beta: float, x: Tensor, y: Tensor
) -> StepResult:
    """``adversarial``: the batch-mean loss at the moved input ``x + β ∇ₓℓ`` (through ``wrapper``), with the
    clean loss and logits reported. The input gradient runs on the unwrapped ``model``, so a DDP wrapper is
    not armed by it."""
    moved, clean_logits = adversarial_input(model, loss, beta, x, y)
    target = target_distribution(clean_logits, y)
    objective = batch_loss(loss, wrapper(moved), target)
    with torch.no_grad():
        clean_loss = batch_loss(loss, clean_logits, target)
    return StepResult(clean_loss, clean_logits, objective=objective)
