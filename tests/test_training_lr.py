"""The warm-up + cosine learning-rate schedule against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from dualprop.training.lr_schedule import learning_rate


def lr(step: int) -> float:
    # 2 steps per epoch, 4 epochs (8 steps), 1 warm-up epoch (2 steps) from 0.1 to 1.0, decay to 0.
    return learning_rate(step, steps_per_epoch=2, epochs=4, lr=1.0, final_lr=0.0, warmup_epochs=1, warmup_lr=0.1)


def test_warm_up_is_linear_from_warmup_lr():
    assert lr(0) == pytest.approx(0.1)
    assert lr(1) == pytest.approx(0.55)  # 0.1 + 0.9 * 1/2


def test_cosine_decay_after_warm_up():
    # decay over 6 steps: lr = (1 + cos(pi * (t - 2) / 6)) / 2
    assert lr(2) == pytest.approx(1.0)
    assert lr(3) == pytest.approx((1 + math.cos(math.pi / 6)) / 2)
    assert lr(5) == pytest.approx(0.5)
    assert lr(7) == pytest.approx((1 + math.cos(5 * math.pi / 6)) / 2)
    assert lr(8) == pytest.approx(0.0)


def test_final_lr_is_the_floor_and_no_warm_up_starts_at_lr():
    values = [learning_rate(t, 10, 3, 0.5, 0.01) for t in range(30)]
    assert values[0] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert min(values) > 0.01
    assert learning_rate(30, 10, 3, 0.5, 0.01) == pytest.approx(0.01)
