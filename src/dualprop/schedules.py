"""Inference schedules: the order in which the layers ``1..L`` of a dyadic network are updated.

With ``L`` blocks and ``K`` passes:

* ``forward``  (``fwK``):   ``[1..L] × K``
* ``backward`` (``bwK``):   ``[L..1] × K`` (one sweep by default)
* ``forward-backward`` (``fwbwK``): ``[L..2] + ([1..L−1] + [L..1]) × (K−1) + [1]``
* ``odd-even`` (``oddevenK``) / ``even-odd`` (``evenoddK``): odd layers then even layers (or the reverse), × K
* ``random`` (``randomK``): asynchronous updates, ``K·L`` visits to neurons drawn independently and
  uniformly from ``1..L`` — a new order every step (:func:`random_order`), so no fixed order exists

On a graph of neurons (``1..N`` in topological order) the same orders run over neurons, and ``odd-even``
groups them by depth level (the longest path from the input); for a chain the level of ``k`` is ``k``.
"""

from __future__ import annotations

import re

import torch

from dualprop import checks

SCHEDULES = ("forward", "backward", "forward-backward", "odd-even", "even-odd", "random")
_ALIASES = {
    "fw": "forward",
    "bw": "backward",
    "fwbw": "forward-backward",
    "oddeven": "odd-even",
    "evenodd": "even-odd",
    "random": "random",
}


def parse_schedule(name: str, passes: int | None = None) -> tuple[str, int]:
    """Resolve a schedule name or alias (``fw3``, ``fwbw2``, ``oddeven``…) to ``(schedule, passes)``.

    ``passes`` defaults to the alias's number, else 1; a number in the alias that contradicts an
    explicit ``passes`` is an error.
    """
    if not isinstance(name, str):
        raise ValueError(f"schedule must be a string, got {name!r}")
    if passes is not None:
        checks.positive_int("passes", passes)
    if name in SCHEDULES:
        return name, passes or 1
    match = re.fullmatch(r"(fwbw|fw|bw|oddeven|evenodd|random)(\d*)", name)
    if match is None:
        raise ValueError(
            f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)} "
            f"or an alias fwK, bwK, fwbwK, oddevenK, evenoddK, randomK"
        )
    canonical = _ALIASES[match.group(1)]
    if not match.group(2):
        return canonical, passes or 1
    alias_passes = int(match.group(2))
    if alias_passes < 1:
        raise ValueError(f"schedule {name!r} asks for {alias_passes} passes; passes must be >= 1")
    if passes is not None and passes != alias_passes:
        raise ValueError(f"schedule {name!r} means {alias_passes} passes but passes={passes} was given")
    return canonical, alias_passes


def layer_order(schedule: str, depth: int, passes: int = 1, levels: list[int] | None = None) -> list[int]:
    """The 1-based layer (neuron) ids visited by ``schedule`` on a network of ``depth`` blocks; ``levels``
    (index 0 the input) gives each neuron's depth level for ``odd-even``/``even-odd`` (default: ``k``).

    ``random`` has no fixed order (see :func:`random_order`); asking for one is a ``ValueError``.
    """
    schedule, passes = parse_schedule(schedule, passes)
    _check_depth(depth)
    if schedule == "random":
        raise ValueError("schedule 'random' draws a new order every step; it has no fixed layer order")
    up = list(range(1, depth + 1))
    down = up[::-1]
    if schedule == "forward":
        return up * passes
    if schedule == "backward":
        return down * passes
    if schedule == "forward-backward":
        return down[:-1] + (up[:-1] + down) * (passes - 1) + [1]
    level = levels if levels is not None else list(range(depth + 1))
    odd = [k for k in up if level[k] % 2 == 1]
    even = [k for k in up if level[k] % 2 == 0]
    return (odd + even if schedule == "odd-even" else even + odd) * passes


def random_order(depth: int, passes: int, generator: torch.Generator) -> list[int]:
    """``K·L`` neuron ids drawn independently and uniformly from ``1..L`` (``K = passes``, ``L = depth``).

    The asynchronous schedule: each visit picks any neuron with probability ``1/L``, so a neuron is
    visited ``K`` times per step on average (Binomial(K·L, 1/L)) and may be skipped in a given step.
    """
    _check_depth(depth)
    checks.positive_int("passes", passes)
    order: list[int] = torch.randint(1, depth + 1, (passes * depth,), generator=generator).tolist()
    return order


def last_visits(order: list[int]) -> dict[int, int]:
    """The position of each neuron's last visit in ``order``."""
    return {k: position for position, k in enumerate(order)}


def _check_depth(depth: int) -> None:
    if depth < 1:
        raise ValueError(f"a network needs at least one block, got depth {depth}")
