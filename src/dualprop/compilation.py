"""``torch.compile`` of a Learner's step: the modes, and a check that code can be built before training."""

from __future__ import annotations

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
