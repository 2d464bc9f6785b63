"""Checks of user-given numbers and names: each returns the value (as ``float`` or ``int``) or raises a
``ValueError`` that names the setting, what it must be and what was given.

A ``bool`` is never accepted as a number (``True`` is an ``int`` to Python, not to a user).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeGuard


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def unit_interval(name: str, value: object) -> float:
    """``value`` as a float in ``[0, 1]``."""
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def positive_finite(name: str, value: object) -> float:
    """``value`` as a finite float ``> 0``."""
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def non_negative_finite(name: str, value: object) -> float:
    """``value`` as a finite float ``>= 0``."""
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def positive_int(name: str, value: object) -> int:
    """``value`` as an integer ``>= 1``."""
    if not _is_integer(value) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def non_negative_int(name: str, value: object) -> int:
    """``value`` as an integer ``>= 0``."""
    if not _is_integer(value) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def one_of(what: str, value: object, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``; else ``unknown <what> 'value'; choose one of a, b, …``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value
