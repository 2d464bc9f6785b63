"""Gradient angles while training: the observer that carries out a config's ``diagnose_every``.

Every ``diagnose_every``-th optimizer step, the update the learner just put in ``.grad`` is compared per
block with backprop's gradient on the same batch at the same weights
(:func:`dualprop.analysis.gradient_angles.gradient_angles`) and the rows are appended to the run's
``diagnostics.csv``. A resumed run first drops the rows of epochs its checkpoint had not finished.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dualprop.analysis.gradient_angles import current_update, gradient_angles
from dualprop.learner import Learner
from dualprop.training.config import TrainConfig
from dualprop.training.rundir import DiagnosticsLog
from dualprop.training.trainer import TrainingObserver


class GradientAngleLog(TrainingObserver):
    """Appends per-block angles to ``diagnostics.csv`` every ``config.diagnose_every`` steps (0: never)."""

    settings_carried_out = frozenset({"diagnose_every"})

    def __init__(self) -> None:
        self.log: DiagnosticsLog | None = None
        self.every = 0

    def run_started(
        self, run_dir: Path, config: TrainConfig, seed: int, start_epoch: int, steps_per_epoch: int
    ) -> None:
        self.every = config.diagnose_every
        self.log = DiagnosticsLog(run_dir) if self.every else None
        if self.log is not None:
            self.log.truncate_to(start_epoch)

    def update_computed(self, learner: Learner, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int) -> None:
        if self.log is not None and step % self.every == 0:
            self.log.append(epoch, step, gradient_angles(learner, x, y, update=current_update(learner.model)))
