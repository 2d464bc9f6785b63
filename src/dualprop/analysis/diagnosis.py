"""``dualprop diagnose``: per-layer angles to backprop's gradient for a run's checkpoint or a fresh model.

The network (a run's checkpoint weights, or a fresh one built from a config) is held fixed; for each of
the first training batches (in file order, no augmentation) the chosen rule's update and backprop's
gradient are compared per layer (:mod:`dualprop.analysis.gradient_angles`). Results go to a CSV
(``layer × batch``) and, when matplotlib exists, heat maps: ``layer × batch`` and, for a run that logged
``diagnostics.csv`` while training, ``layer × epoch``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dualprop.analysis.gradient_angles import LayerAngle, epoch_matrix, gradient_angles
from dualprop.analysis.heatmap import plot_angle_heatmap
from dualprop.analysis.outputs import free_file_name, write_new_file
from dualprop.analysis.robustness import load_trained_run
from dualprop.data import BatchLoader
from dualprop.learner import Learner
from dualprop.training.config import TrainConfig
from dualprop.training.rundir import DIAGNOSTICS_FILE, read_diagnostics
from dualprop.training.trainer import build_model, load_splits


@dataclass
class Diagnosis:
    """Angles per batch (``batches[b][layer]``) and the files written."""

    learner: Learner
    batches: list[list[LayerAngle]]
    files: list[Path] = field(default_factory=list)

    def layers(self) -> list[str]:
        return [a.layer for a in self.batches[0]]

    def mean_per_layer(self) -> list[LayerAngle]:
        """Mean cosine and mean angle of each layer over the batches (NaNs skipped)."""
        result = []
        for i, layer in enumerate(self.layers()):
            cosines = [b[i].cosine for b in self.batches if math.isfinite(b[i].cosine)]
            angles = [b[i].angle for b in self.batches if math.isfinite(b[i].angle)]
            result.append(
                LayerAngle(
                    layer,
                    sum(cosines) / len(cosines) if cosines else math.nan,
                    sum(angles) / len(angles) if angles else math.nan,
                )
            )
        return result


def diagnosis_model(
    config: TrainConfig, run_dir: str | Path | None, checkpoint: str = "best"
) -> tuple[nn.Module, BatchLoader]:
    """The network (checkpoint weights of ``run_dir``, else fresh with ``config.seeds[0]``) and an
    unshuffled, unaugmented loader over the training set with ``config.batch_size``."""
    if run_dir is not None:
        run = load_trained_run(run_dir, checkpoint, data_dir=config.data_dir)
        model, train_set = run.model, run.data.train
    else:
        data = load_splits(config, config.seeds[0], evaluation=True)
        torch.manual_seed(config.seeds[0])
        model, train_set = build_model(config, data.input_shape, data.num_classes), data.train
    return model, BatchLoader(train_set, config.batch_size)


def diagnose(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    checkpoint: str = "best",
    batches: int = 8,
    per: str = "block",
    dtype: torch.dtype = torch.float32,
) -> Diagnosis:
    """Angles between ``config``'s rule (α, β, schedule, passes) and backprop on the first ``batches``
    training batches, at fixed weights."""
    if batches < 1:
        raise ValueError(f"batches must be >= 1, got {batches}")
    model, loader = diagnosis_model(config, run_dir, checkpoint)
    model = model.to(dtype)
    learner = Learner(model, **config.learner_settings())
    results = []
    for index, (x, y) in enumerate(loader):
        if index >= batches:
            break
        results.append(gradient_angles(learner, x.to(dtype), y, per=per))
    return Diagnosis(learner, results)


def write_diagnosis(diagnosis: Diagnosis, directory: str | Path, run_dir: str | Path | None = None) -> list[Path]:
    """Write ``diagnose.csv`` (batch, layer, cosine, angle) and the heat maps into ``directory``; never
    replaces a file (``diagnose-2.csv``, …). Returns the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    def write_rows(file: Any) -> None:
        writer = csv.writer(file)
        writer.writerow(("batch", "layer", "cosine", "angle"))
        for index, angles in enumerate(diagnosis.batches, start=1):
            for a in angles:
                writer.writerow((index, a.layer, f"{a.cosine:.8g}", f"{a.angle:.6g}"))

    path = write_new_file(directory, "diagnose", ".csv", write_rows)
    written = [path]
    learner = diagnosis.learner
    label = (
        learner.rule
        if learner.rule == "bp"
        else f"{learner.rule} α={learner.alpha:g} β={learner.beta:g} {learner.schedule}×{learner.passes}"
    )
    matrix = [[b[i].angle for b in diagnosis.batches] for i in range(len(diagnosis.layers()))]
    batch_png = free_file_name(directory, path.stem + "-batches", ".png")
    if plot_angle_heatmap(
        matrix,
        diagnosis.layers(),
        list(range(1, len(diagnosis.batches) + 1)),
        "batch",
        batch_png,
        f"angle to backprop (°), {label}",
    ):
        written.append(batch_png)
    log = Path(run_dir) / DIAGNOSTICS_FILE if run_dir is not None else None
    if log is not None and log.is_file():
        rows = read_diagnostics(log)
        if rows:
            layers, epochs, epoch_angles = epoch_matrix(rows)
            epoch_png = free_file_name(directory, "diagnostics-epochs", ".png")
            if plot_angle_heatmap(
                epoch_angles,
                layers,
                epochs,
                "epoch",
                epoch_png,
                "angle to backprop during training (°, mean per epoch)",
            ):
                written.append(epoch_png)
    return written
