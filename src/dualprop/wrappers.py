"""The wrappers a model may come in (``DistributedDataParallel``, ``torch.compile``) and running a rebuilt
graph as the forward of the caller's own module, so that forward hooks and DDP's gradient averaging see an
ordinary forward."""

from __future__ import annotations

from typing import Callable, Iterator

from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


def _wrapper_chain(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` and each module it wraps in turn (DDP's ``module``, ``torch.compile``'s ``_orig_mod``)."""
    while True:
        yield model
        inner = model.module if isinstance(model, DistributedDataParallel) else getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):  # DDP's module, torch.compile's OptimizedModule's _orig_mod
            return
        model = inner


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``DistributedDataParallel`` and ``torch.compile`` wrappers (in any nesting),
    or the model itself. Other wrappers that hide the module (``nn.DataParallel``, FSDP) are refused."""
    *_, model = _wrapper_chain(model)
    if isinstance(model, nn.DataParallel) or type(model).__name__ == "FullyShardedDataParallel":
        raise ValueError(
            f"a model wrapped in {type(model).__name__} cannot be trained by a Learner; "
            f"pass the module itself, or wrap it in DistributedDataParallel"
        )
    return model


def find_ddp(model: nn.Module) -> DistributedDataParallel | None:
    """The ``DistributedDataParallel`` wrapper in a chain of wrappers (DDP, ``torch.compile``), if any."""
    return next((m for m in _wrapper_chain(model) if isinstance(m, DistributedDataParallel)), None)


def forward_module(model: nn.Module) -> nn.Module:
    """The module whose forward a rebuilt graph runs as (see :func:`run_as_forward`): the DDP wrapper if
    there is one, else the plain module (a compiled wrapper's code would not be the rebuilt graph)."""
    return find_ddp(model) or unwrap(model)


def run_as_forward(module: nn.Module, compute: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """Evaluate ``compute(*args)`` as the forward of ``module`` (a plain module or a DDP wrapper).

    The module's (for DDP: its inner module's) ``forward`` is swapped for ``compute`` during the call, so
    forward hooks see a normal forward and a ``DistributedDataParallel`` wrapper prepares its bucketed
    all-reduce for the following ``backward()`` exactly as for a loss.
    """
    inner = module.module if isinstance(module, DistributedDataParallel) else module
    inner.__dict__["forward"] = compute  # an instance attribute, never a registered submodule
    try:
        return module(*args)
    finally:
        del inner.__dict__["forward"]
