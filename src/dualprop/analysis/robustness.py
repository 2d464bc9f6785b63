"""Robustness of a trained run: clean and FGSM / PGD accuracy per ε, spectral norms and Lipschitz estimates.

Attacks act in the data range: the loaders hand out normalised inputs ``(x/pixel_max − μ_c)/σ_c``, so the
model is wrapped as ``x ↦ model((x − μ)/σ)`` (:class:`NormalizedModel`) and fed ``x`` on the ``[0, 1]``
scale of ``pixel/pixel_max``; ε is measured on that scale and adversarial inputs are clamped to ``[0, 1]``.
(A user's floating-point arrays are their own scale: ``μ = 0``, ``σ = 1`` and the range is that of the
training inputs, :attr:`dualprop.data.DatasetSplits.value_range`.)

Lipschitz numbers are for that same map data-range input → logits: the empirical estimate
``max_n σ_max(J(x_n))`` over test samples (a lower bound) and the product bound
``Π_k γ_k / min_c σ_c`` (γ_k the spectral norm of block ``B_k``; an upper bound for affine blocks and
1-Lipschitz activations, for other blocks γ_k is measured at one point).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from dualprop.analysis.attacks import NORMS, adversarial_accuracy, fgsm, pgd
from dualprop.analysis.lipschitz import empirical_lipschitz
from dualprop.analysis.outputs import write_new_file
from dualprop.blocks import BlockInput
from dualprop.data import DatasetSplits
from dualprop.graph import NeuronGraph, capture_graph
from dualprop.losses import batch_loss
from dualprop.spectral import spectral_norm
from dualprop.training.checkpoint import CheckpointError, load_checkpoint, model_state, state_mismatch
from dualprop.training.config import TrainConfig, load_config
from dualprop.training.rundir import BEST_CHECKPOINT, CONFIG_FILE, LAST_CHECKPOINT
from dualprop.training.trainer import build_model, load_splits

CHECKPOINTS = {"best": BEST_CHECKPOINT, "last": LAST_CHECKPOINT}
ROBUSTNESS_STEM = "robustness"


class NormalizedModel(nn.Module):
    """``x ↦ model((x − mean)/std)``: the model on data-range inputs (``mean``, ``std`` broadcast per feature)."""

    def __init__(self, model: nn.Module, mean: Tensor, std: Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


def feature_statistics(
    mean: Sequence[float], std: Sequence[float], input_shape: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """Per-channel statistics shaped to broadcast over one sample of ``input_shape``: ``C×1×1`` for images,
    each channel repeated over its ``H·W`` features for flattened (channel-major) vectors."""
    channels = len(mean)
    if len(input_shape) == 1:
        features = int(input_shape[0])
        if features % channels:
            raise ValueError(f"{features} input features cannot be split into {channels} channels")
        repeat = features // channels
        return (torch.tensor(mean).repeat_interleave(repeat), torch.tensor(std).repeat_interleave(repeat))
    return torch.tensor(mean).view(channels, 1, 1), torch.tensor(std).view(channels, 1, 1)


@dataclass
class TrainedRun:
    """A run's resolved config, its network with checkpoint weights (in eval mode) and its test data."""

    run_dir: Path
    config: TrainConfig
    model: nn.Module
    data: DatasetSplits
    checkpoint: Path
    epoch: int | None


def load_trained_run(
    run_dir: str | Path, checkpoint: str = "best", limit: int | None = None, data_dir: str | None = None
) -> TrainedRun:
    """Rebuild the run's network, load ``checkpoint`` (``best``, ``last`` or a file path) with
    ``weights_only=True`` and read its dataset (the first ``limit`` test samples, no augmentation)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise ValueError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    config = load_config(run_dir / CONFIG_FILE).resolved()
    path = run_dir / CHECKPOINTS[checkpoint] if checkpoint in CHECKPOINTS else Path(checkpoint)
    state = load_checkpoint(path)
    data = load_splits(config, config.seeds[0], evaluation=True, limit=limit, data_dir=data_dir)
    model = build_model(config, data.input_shape, data.num_classes)
    try:
        model.load_state_dict(model_state(state))
    except RuntimeError as error:  # another network's weights: missing, unexpected or misshapen entries
        raise CheckpointError(
            f"checkpoint {path} does not fit the network of {run_dir / CONFIG_FILE}: {state_mismatch(error)}"
        ) from None
    model.eval()
    epoch = state.get("epoch")
    return TrainedRun(run_dir, config, model, data, path, int(epoch) if epoch is not None else None)


def data_range_model(run: TrainedRun) -> tuple[NormalizedModel, Tensor, Tensor]:
    """``(Normalize→model, test inputs in the data range (the [0, 1] pixel scale), test labels)``."""
    mean, std = feature_statistics(run.data.mean, run.data.std, run.data.input_shape)
    inputs, labels = run.data.test.tensors
    raw = (inputs * std + mean).clamp(*run.data.value_range)
    return NormalizedModel(run.model, mean, std).eval(), raw, labels


def neuron_shapes(graph: NeuronGraph, sample: Tensor) -> list[tuple[int, ...]]:
    """The shape of one sample at each neuron ``0..N`` of ``graph`` (its model in eval mode)."""
    with torch.no_grad():
        states, _ = graph.feed_forward(sample.unsqueeze(0))
    return [tuple(state.shape[1:]) for state in states]


def lipschitz_summary(
    model: NormalizedModel, raw: Tensor, samples: int = 256, iterations: int = 20, seed: int = 0
) -> dict[str, Any]:
    """Spectral norms ``γ_{k,p}`` of every block with respect to each input, the data-range bound and the
    empirical estimate over the first ``samples`` inputs (max and mean of ``σ_max(J(x_n))``).

    The bound follows the graph with 1-Lipschitz activations: ``L_0 = 1``, ``L_k = Σ_{p ∈ P(k)} γ_{k,p} L_p``,
    reported as ``L_N / min σ`` (``product_bound``; for a chain ``Π_k γ_k / min σ``)."""
    graph = capture_graph(model.model)
    shapes = neuron_shapes(graph, raw[0])
    generator = torch.Generator().manual_seed(seed)
    norms: list[float] = []
    bounds = [1.0]
    for block, parents in zip(graph.blocks, graph.parents):
        bound = 0.0
        for position, p in enumerate(parents):
            target = block if len(parents) == 1 else BlockInput(block, position, [shapes[q] for q in parents])
            gamma = spectral_norm(target, shapes[p], iterations=max(iterations, 50), generator=generator)
            norms.append(gamma)
            bound += gamma * bounds[p]
        bounds.append(bound)
    scale = 1.0 / float(model.std.min())
    estimate = empirical_lipschitz(
        model, raw[:samples], iterations=iterations, generator=torch.Generator().manual_seed(seed)
    )
    return {
        "spectral_norms": norms,
        "product_bound": bounds[-1] * scale,
        "lipschitz_max": estimate.max,
        "lipschitz_mean": estimate.mean,
        "lipschitz_samples": int(min(samples, raw.shape[0])),
    }


def attack_accuracies(
    model: NormalizedModel,
    raw: Tensor,
    labels: Tensor,
    loss: str,
    eps: Sequence[float],
    norm: str = "linf",
    pgd_steps: int = 10,
    seed: int = 0,
    batch_size: int = 256,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> dict[str, Any]:
    """Clean accuracy and, per ε, FGSM and PGD accuracy (%) on ``(raw, labels)``, adversarial inputs kept
    in ``value_range``.

    PGD: ``pgd_steps`` steps of size ``2.5 ε / pgd_steps`` from a random start in the ε-ball.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if not eps or any(not math.isfinite(e) or e <= 0 for e in eps):
        raise ValueError(f"eps must list one or more positive numbers, got {list(eps)}")

    def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
        return batch_loss(loss, logits, y)

    data = (raw, labels)
    rows = []
    for e in eps:
        generator = torch.Generator().manual_seed(seed)
        fgsm_acc = adversarial_accuracy(
            model, data, lambda m, x, y, e=e: fgsm(m, loss_fn, x, y, e, value_range, norm), batch_size
        )
        pgd_acc = adversarial_accuracy(
            model,
            data,
            lambda m, x, y, e=e, generator=generator: pgd(
                m, loss_fn, x, y, e, 2.5 * e / pgd_steps, pgd_steps, norm=norm, clamp=value_range, generator=generator
            ),
            batch_size,
        )
        rows.append({"eps": e, "fgsm_acc": 100.0 * fgsm_acc, "pgd_acc": 100.0 * pgd_acc})
    clean = adversarial_accuracy(model, data, None, batch_size)
    return {"clean_acc": 100.0 * clean, "norm": norm, "pgd_steps": pgd_steps, "attacks": rows}


def evaluate_run_robustness(
    run_dir: str | Path,
    eps: Sequence[float],
    norm: str = "linf",
    checkpoint: str = "best",
    limit: int | None = None,
    pgd_steps: int = 10,
    lipschitz_samples: int = 256,
    seed: int = 0,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Everything ``dualprop robustness`` reports for one run, as a JSON-ready dict."""
    run = load_trained_run(run_dir, checkpoint, limit, data_dir)
    model, raw, labels = data_range_model(run)
    report: dict[str, Any] = {
        "run_dir": str(run.run_dir),
        "checkpoint": str(run.checkpoint),
        "checkpoint_epoch": run.epoch,
        "dataset": run.config.dataset,
        "model": run.config.model,
        "rule": run.config.rule,
        "alpha": run.config.alpha,
        "beta": run.config.beta,
        "test_samples": int(labels.shape[0]),
        "input_range": list(run.data.value_range),
        "eps_scale": "pixel / pixel_max" if run.data.value_range == (0.0, 1.0) else "the inputs' own scale",
    }
    report.update(
        attack_accuracies(
            model, raw, labels, run.config.loss, eps, norm, pgd_steps, seed, value_range=run.data.value_range
        )
    )
    report.update(lipschitz_summary(model, raw, lipschitz_samples, seed=seed))
    return report


def write_robustness_json(run_dir: str | Path, report: dict[str, Any]) -> Path:
    """Write ``report`` to ``robustness.json`` in ``run_dir`` (``robustness-2.json``, … if taken)."""
    text = json.dumps(report, indent=2) + "\n"
    return write_new_file(run_dir, ROBUSTNESS_STEM, ".json", lambda file: file.write(text))
