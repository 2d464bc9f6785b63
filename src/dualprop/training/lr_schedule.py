"""The learning-rate schedule: linear warm-up, then cosine decay, evaluated per optimizer step.

With ``S`` steps per epoch, ``W = warmup_epochs·S`` warm-up steps and ``T = epochs·S`` steps in all,
the rate used for step ``t = 0 … T−1`` is

* ``warmup_lr + (lr − warmup_lr) · t / W`` for ``t < W``,
* ``final_lr + (lr − final_lr) · (1 + cos(π · (t − W) / (T − W))) / 2`` for ``t ≥ W``,

so it starts at ``warmup_lr``, reaches ``lr`` after the warm-up, and ends just above ``final_lr``.
Being a function of the global step only, it needs no state to resume.
"""

from __future__ import annotations

import math


def learning_rate(
    step: int,
    steps_per_epoch: int,
    epochs: int,
    lr: float,
    final_lr: float,
    warmup_epochs: int = 0,
    warmup_lr: float = 0.0,
) -> float:
    """The rate for the 0-based optimizer step ``step`` (see the module docstring)."""
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError("steps_per_epoch and epochs must be >= 1")
    warmup = warmup_epochs * steps_per_epoch
    total = epochs * steps_per_epoch
    if step < warmup:
        return warmup_lr + (lr - warmup_lr) * step / warmup
    decay = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / decay)
    return final_lr + (lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
