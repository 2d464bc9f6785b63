"""``torch.compile`` of a Learner's step: the modes, and a check that code can be built before training."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


def check_compiler(mode: str, device: torch.device) -> None:
    """``ValueError`` naming the cause when ``torch.compile`` in ``mode`` cannot build code for ``device`` here
    (no C++ compiler for the CPU, no Triton for a GPU), found by compiling a one-line function before any
    training starts."""
    try:
        torch.compile(torch.add, mode=mode)(torch.ones(2, device=device), 1)
    except Exception as error:  # the code generators' own errors differ by backend and torch version
        cause = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"torch.compile in mode {mode!r} cannot build code on {device} here "
            f"({type(error).__name__}: {cause}); train without compiling"
        ) from None


def compiled(function: Callable[..., Any], mode: str, parameters: Iterator[torch.nn.Parameter]) -> Callable[..., Any]:
    """``torch.compile(function, mode=mode)``, after checking the mode and that code can be built on the device
    of the first of ``parameters`` (the CPU if there are none)."""
    if mode not in COMPILE_MODES[1:]:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES[1:])}")
    parameter = next(iter(parameters), None)
    check_compiler(mode, parameter.device if parameter is not None else torch.device("cpu"))
    return torch.compile(function, mode=mode)
