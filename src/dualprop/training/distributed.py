"""Multi-process data-parallel training: the process group, the model wrapper and the few collectives.

A job launched by ``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``) runs one process per rank. Every rank builds the same network from
the same seed, ``DistributedDataParallel`` broadcasts rank 0's weights at wrapping time and then
averages the rule's update over the ranks in every ``backward()``: with equally sized per-rank batches
``B_r`` the averaged update is the update of the global batch ``∪_r B_r`` (the learning rules are
per-sample sums divided by the batch size). Rank ``r`` trains on its shard of each epoch's permutation.

The backend follows the device: NCCL on CUDA (device ``cuda:LOCAL_RANK``), gloo on the CPU. Every
collective waits at most ``timeout_s`` seconds, so a rank that fails or hangs ends the job instead of
leaving the others waiting forever.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Mapping, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

DEFAULT_TIMEOUT_S = 300.0
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE")

T = TypeVar("T")


class DistributedError(RuntimeError):
    """A collective did not complete: another rank failed or the timeout passed."""


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job: its rank among ``world_size`` and the device it trains on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and reports progress."""
        return self.rank == 0


def launched_distributed(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a launcher such as ``torchrun`` started this process as one rank of a job."""
    environ = os.environ if environ is None else environ
    return all(name in environ for name in LAUNCHER_VARIABLES)


def _environment_rank(environ: Mapping[str, str], name: str, default: str | None = None) -> int:
    value = environ.get(name, default)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def _device_for(device: str, local_rank: int) -> torch.device:
    """``cuda:LOCAL_RANK`` for ``cuda`` (or ``auto`` with CUDA present), else the CPU."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"distributed training runs on device 'auto', 'cpu' or 'cuda', not {device!r}")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {local_rank} has no GPU: this node has {torch.cuda.device_count()}")
    return torch.device("cuda", local_rank)


def init_process_group(
    device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S, environ: Mapping[str, str] | None = None
) -> DistributedContext:
    """Join the job described by the launcher's environment: NCCL on ``cuda:LOCAL_RANK``, else gloo."""
    environ = os.environ if environ is None else environ
    if not timeout_s > 0:
        raise ValueError(f"the distributed timeout must be > 0 seconds, got {timeout_s}")
    rank = _environment_rank(environ, "RANK")
    world_size = _environment_rank(environ, "WORLD_SIZE")
    local_rank = _environment_rank(environ, "LOCAL_RANK", "0")
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK must lie in 0..WORLD_SIZE-1, got RANK={rank}, WORLD_SIZE={world_size}")
    target = _device_for(device, local_rank)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    dist.init_process_group(
        "nccl" if target.type == "cuda" else "gloo",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    return DistributedContext(rank, world_size, target)


def current_context() -> DistributedContext | None:
    """The context of the initialised default process group, or ``None`` in a single-process run."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    on_cuda = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_cuda else torch.device("cpu")
    return DistributedContext(dist.get_rank(), dist.get_world_size(), device)


@contextmanager
def process_group(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[DistributedContext | None]:
    """Within the block, this process is a rank of the launched job (``None`` when not launched as one);
    the process group is destroyed on leaving, also after an error."""
    if not launched_distributed():
        yield None
        return
    context = init_process_group(device, timeout_s)
    try:
        yield context
    finally:
        dist.destroy_process_group()


def data_parallel(model: nn.Module, context: DistributedContext) -> DistributedDataParallel:
    """``model`` (already on ``context.device``) wrapped for gradient averaging; wrapping copies rank 0's
    parameters and buffers to every rank."""
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _collective(name: str, operation: Any) -> Any:
    """Run ``operation()``; a failure becomes a :class:`DistributedError` naming the collective."""
    try:
        return operation()
    except RuntimeError as error:
        raise DistributedError(f"{name} failed on rank {dist.get_rank()}: {_first_line(error)}") from error


def broadcast_from_main(value: T) -> T:
    """Rank 0's ``value`` on every rank (a picklable object); the value itself without a process group."""
    if current_context() is None:
        return value
    holder = [value]
    _collective("broadcast", lambda: dist.broadcast_object_list(holder, src=0))
    return holder[0]


def sum_across_ranks(values: Sequence[float]) -> list[float]:
    """``Σ_r values_r`` elementwise over the ranks (in float64)."""
    context = current_context()
    if context is None:
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=context.device)
    _collective("all-reduce of the training metrics", lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM))
    return tensor.tolist()


def any_rank(flags: Sequence[bool]) -> list[bool]:
    """Elementwise ``OR`` of ``flags`` over the ranks, so that all ranks take the same decision."""
    context = current_context()
    if context is None:
        return [bool(f) for f in flags]
    tensor = torch.tensor([float(bool(f)) for f in flags], device=context.device)
    _collective("all-reduce of the divergence flags", lambda: dist.all_reduce(tensor, op=dist.ReduceOp.MAX))
    return [bool(v) for v in tensor.tolist()]


def describe_failure(error: BaseException, context: DistributedContext, timeout_s: float) -> str:
    """One line for a rank that stops with ``error`` (its own, or a peer's failure or the timeout seen
    through a collective)."""
    return (
        f"rank {context.rank} of {context.world_size} stopped: {_first_line(error)[:300]} (a failing "
        f"rank or a wait past the {timeout_s:g} s timeout ends the job on every rank)"
    )
