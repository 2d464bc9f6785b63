"""Step time and peak memory of each learning rule against backprop, measured in the same run.

A *step* is one full training step: ``optimizer.zero_grad()``, ``Learner.step(x, y)`` (inference and the
weight update) and ``optimizer.step()`` (SGD with momentum). Each variant trains its own copy of the same
initial model on the same random batch.

* **Time**: after warm-up, the variants take turns round-robin, one step each per repeat, starting from a
  different variant every repeat, so drift in machine load hits all of them alike. The median step time
  and its ratio to ``bp``'s median from the same run are reported.
* **Peak memory**: each variant alone (the others not yet built), after warm-up, one step. On CUDA,
  ``torch.cuda.max_memory_allocated`` after a reset. On CPU, the bytes of tensor storage live at the start
  of the step (parameters, optimizer state, batch) plus the highest net allocation through PyTorch's CPU
  allocator during the step, read from the profiler's allocation events. Memory that libraries take
  outside PyTorch's allocator (e.g. oneDNN scratch space) is not counted; the process RSS is not used
  because the C allocator keeps freed pages.
* **Predicted ratio** of the generic state loop on a chain of ``L`` Linear blocks: the block-sized matrix
  products of its step over backprop's ``3L`` (one forward and two backward per block), counted by
  :func:`predicted_ratio` from the visits the schedule makes. The fused sweep and ``bp`` predict ``1``.
"""

from __future__ import annotations

import copy
import gc
import math
import os
import platform
import re
import statistics
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from dualprop import models
from dualprop.graph import capture_graph
from dualprop.learner import COMPILE_MODES, Learner
from dualprop.schedules import layer_order, parse_schedule

MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "digits-mlp": (lambda: models.mlp([64, 256, 256, 10]), (64,)),
    "mnist-mlp": (lambda: models.mlp([784, 1024, 1024, 10]), (784,)),
    "vgg-like": (lambda: models.vgg_like(10, 3, 32), (3, 32, 32)),
    "vgg16": (lambda: models.vgg16(10, 3, 32), (3, 32, 32)),
    "resnet20": (lambda: models.resnet20(10, 3, 32), (3, 32, 32)),
    "vit": (lambda: models.vit(10, 1, 28), (1, 28, 28)),
    "mixer": (lambda: models.mixer(10, 1, 28), (1, 28, 28)),
    "convnext": (lambda: models.convnext(10, 3, 32), (3, 32, 32)),
}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_VARIANT_PATTERN = re.compile(r"(bp|dpT|dp)(?:-(fused|[a-z]+\d*))?")


def default_variants(passes: int = 3) -> list[str]:
    """``bp``, fused DP⊤, generic DP⊤ with ``forward`` and ``forward-backward`` ×K, generic DP ``forward`` ×K."""
    return ["bp", "dpT-fused", f"dpT-fw{passes}", f"dpT-fwbw{passes}", f"dp-fw{passes}"]


@dataclass(frozen=True)
class Variant:
    """A rule with its schedule and implementation, named like ``bp``, ``dpT-fused``, ``dp-fwbw3``."""

    name: str
    rule: str
    schedule: str
    passes: int
    implementation: str

    def learner(self, model: nn.Module, alpha: float, beta: float) -> Learner:
        """A ``Learner`` for this variant on ``model``."""
        return Learner(
            model,
            rule=self.rule,
            alpha=alpha,
            beta=beta,
            schedule=self.schedule,
            passes=self.passes,
            implementation=self.implementation,
        )


def parse_variant(name: str) -> Variant:
    """``bp``; ``dpT-fused`` / ``dp-fused`` (one backward sweep); ``<rule>-<schedule alias>`` (generic)."""
    match = _VARIANT_PATTERN.fullmatch(name)
    if match is None or (match.group(1) == "bp") != (match.group(2) is None):
        raise ValueError(
            f"unknown variant {name!r}; use bp, dpT-fused, dp-fused or <rule>-<schedule> such as dpT-fw3, dp-fwbw2"
        )
    rule, how = match.groups()
    if rule == "bp":
        return Variant(name, "bp", "backward", 1, "generic")
    if how == "fused":
        return Variant(name, rule, "backward", 1, "fused")
    schedule, passes = parse_schedule(how)
    return Variant(name, rule, schedule, passes, "generic")


def predicted_ratio(variant: Variant, depth: int) -> float:
    """Matrix products of one step over backprop's ``3L`` (forward, input and weight gradients), for a chain
    of ``L`` Linear blocks: ``(L + U + R + V + S) / 3L`` with ``L`` feed-forward products, ``U`` closed-form
    updates (one per layer the schedule moves; a layer never moved has an exactly zero update, not
    computed), ``R`` drives recomputed and ``V`` feedback products by the visits that can change a layer,
    and ``S`` drives of moved layers left out of date for ``J``; ``1`` for ``bp`` and the fused sweep. (A
    graph with skip connections has no such count: the benchmark prints NaN there.)"""
    if variant.rule == "bp" or variant.implementation == "fused":
        return 1.0
    updated, recomputed, feedback, stale = _visit_costs(layer_order(variant.schedule, depth, variant.passes), depth)
    return (depth + updated + recomputed + feedback + stale) / (3.0 * depth)


def _visit_costs(order: list[int], depth: int) -> tuple[int, int, int, int]:
    """``(U, R, V, S)`` of a chain: a layer is visited only if a neighbour changed since its last visit (a
    hidden layer starts at its visit with every δ zero); its drive is recomputed if the layer below changed."""
    changed = [0] * (depth + 2)
    last_read: dict[int, tuple[int, ...]] = {k: (0, 0) for k in range(1, depth)}
    drive_read = {k: 0 for k in range(1, depth + 1)}
    recomputed = feedback = 0
    for k in order:
        read = (changed[k - 1], changed[k + 1]) if k < depth else (changed[k - 1],)
        if last_read.get(k) == read:
            continue
        last_read[k] = read
        if drive_read[k] != changed[k - 1]:
            recomputed += 1
            drive_read[k] = changed[k - 1]
        feedback += k < depth
        changed[k] += 1
    moved = [k for k in range(1, depth + 1) if changed[k]]
    stale = sum(drive_read[k] != changed[k - 1] for k in moved)
    return len(moved), recomputed, feedback, stale


def build_model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A zoo model by name, or ``mlp:64-32-10`` for an MLP of those sizes; returns it and its input shape."""
    if name.startswith("mlp:"):
        try:
            sizes = [int(n) for n in name[4:].split("-")]
        except ValueError:
            raise ValueError(f"model {name!r}: expected mlp:<sizes joined by ->, e.g. mlp:64-32-10") from None
        return models.mlp(sizes), (sizes[0],)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)} or mlp:<sizes>")
    make, shape = MODELS[name]
    return make(), shape


@dataclass
class BenchSettings:
    """What to measure; ``variants`` empty means :func:`default_variants` of ``passes``."""

    model: str = "mnist-mlp"
    batch_size: int = 256
    device: str = "cpu"
    dtype: str = "float32"
    autocast: str = "none"
    compile: str = "none"
    repeats: int = 20
    warmup: int = 3
    passes: int = 3
    alpha: float = 0.5
    beta: float = 0.1
    lr: float = 0.01
    seed: int = 0
    threads: int | None = None
    variants: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Raise ``ValueError`` for a setting that cannot be measured."""
        for name in ("batch_size", "repeats", "passes", "threads"):
            value = getattr(self, name)
            if name == "threads" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an integer >= 0, got {self.warmup!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"unknown autocast {self.autocast!r}; choose one of {', '.join(AUTOCAST_DTYPES)}")
        if not (isinstance(self.alpha, (int, float)) and 0 <= self.alpha <= 1):
            raise ValueError(f"alpha must be a number in [0, 1], got {self.alpha!r}")
        if not (isinstance(self.beta, (int, float)) and 0 < self.beta < math.inf):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta!r}")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"unknown device {self.device!r}; choose cpu or cuda[:i]") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} was asked for but CUDA is not available")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {self.compile!r}; choose one of {', '.join(COMPILE_MODES)}")
        variants = [parse_variant(v) for v in self.variants or default_variants(self.passes)]
        if "bp" not in [v.name for v in variants]:
            raise ValueError("the variants must include bp, the reference of every ratio")


@dataclass
class VariantResult:
    """One variant's measurements; ratios are against ``bp`` of the same run."""

    name: str
    rule: str
    schedule: str
    passes: int
    implementation: str
    layer_updates: int
    predicted_ratio: float
    median_step_s: float = math.nan
    step_times_s: list[float] = field(default_factory=list)
    time_ratio: float = math.nan
    peak_bytes: int = 0
    memory_ratio: float = math.nan
    error: str | None = None


@dataclass
class BenchReport:
    """Settings, environment and per-variant results of one benchmark run."""

    settings: dict
    environment: dict
    depth: int
    results: list[VariantResult]

    def to_dict(self) -> dict:
        """Plain data for JSON."""
        return {
            "settings": self.settings,
            "environment": self.environment,
            "depth": self.depth,
            "results": [asdict(r) for r in self.results],
        }

    def result(self, name: str) -> VariantResult:
        """The result of the variant called ``name``."""
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)


class _Runner:
    """One variant training its own copy of the model: a step is zero_grad, ``Learner.step``, optimizer step."""

    def __init__(self, variant: Variant, initial: nn.Module, settings: BenchSettings, batch: tuple[Tensor, Tensor]):
        self.variant = variant
        self.model = copy.deepcopy(initial)
        self.learner = variant.learner(self.model, settings.alpha, settings.beta)
        if settings.compile != "none":
            self.learner.compile_objective(settings.compile)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=settings.lr, momentum=0.9)
        self.x, self.y = batch
        device_type = torch.device(settings.device).type
        autocast_dtype = AUTOCAST_DTYPES[settings.autocast]
        self._autocast = (lambda: torch.autocast(device_type, dtype=autocast_dtype)) if autocast_dtype else nullcontext

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            self.learner.step(self.x, self.y)
        self.optimizer.step()

    def live_bytes(self) -> int:
        """Bytes of the distinct storages of parameters, gradients, optimizer state and the batch."""
        tensors = [self.x, self.y]
        for p in self.model.parameters():
            tensors.append(p)
            if p.grad is not None:
                tensors.append(p.grad)
        for state in self.optimizer.state.values():
            tensors.extend(v for v in state.values() if isinstance(v, Tensor))
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        return sum(storages.values())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(runner: _Runner, device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    runner.step()
    _synchronize(device)
    return time.perf_counter() - start


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Some torch builds' CPU profiler logs each start and stop straight to file descriptor 2."""
    sys.stderr.flush()
    saved, sink = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(sink, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(sink)


def _cpu_allocation_peak(step: Callable[[], None]) -> int:
    """Highest net bytes allocated through PyTorch's CPU allocator while ``step`` runs (profiler events)."""
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings(), _native_stderr_silenced():
        warnings.simplefilter("ignore")  # frees of blocks allocated before profiling are expected
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        total = getattr(node.extra_fields, "total_allocated", None)
        if total is not None:
            events.append((node.start_time_ns, node.extra_fields.alloc_size, total))
        stack.extend(node.children)
    if not events:
        return 0
    events.sort()
    _, first_size, first_total = events[0]
    start = first_total - first_size  # the profiler's running total counts earlier profiled allocations
    return max(0, max(total for _, _, total in events) - start)


def _peak_step_bytes(runner: _Runner, device: torch.device) -> int:
    """Peak bytes of tensor memory during one step, counting what is live when it starts."""
    runner.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        runner.step()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    live = runner.live_bytes()
    return live + _cpu_allocation_peak(runner.step)


def _environment(device: torch.device) -> dict:
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if hasattr(os, "getloadavg"):
        env["load_average_1min_start"] = os.getloadavg()[0]
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    return env


def run_benchmark(settings: BenchSettings) -> BenchReport:
    """Measure every variant's step time and peak memory; ratios are to ``bp`` of this run.

    ``settings.threads`` sets torch's intra-op threads for the run only (restored afterwards).
    """
    settings.check()
    threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        return _run(settings)
    finally:
        torch.set_num_threads(threads)


def _run(settings: BenchSettings) -> BenchReport:
    device = torch.device(settings.device)
    variants = [parse_variant(v) for v in settings.variants or default_variants(settings.passes)]
    torch.manual_seed(settings.seed)
    initial, input_shape = build_model(settings.model)
    initial = initial.to(device=device, dtype=DTYPES[settings.dtype])
    graph = capture_graph(initial)
    depth = graph.depth
    generator = torch.Generator().manual_seed(settings.seed)
    classes = [m for m in initial.modules() if isinstance(m, nn.Linear)][-1].out_features
    x = torch.randn((settings.batch_size, *input_shape), generator=generator).to(device, DTYPES[settings.dtype])
    y = torch.randint(0, classes, (settings.batch_size,), generator=generator).to(device)
    results = {
        v.name: VariantResult(
            v.name,
            v.rule,
            v.schedule,
            v.passes,
            v.implementation,
            len(layer_order(v.schedule, depth, v.passes)) if v.rule != "bp" else 0,
            predicted_ratio(v, depth) if graph.is_chain or v.rule == "bp" or v.implementation == "fused" else math.nan,
        )
        for v in variants
    }
    environment = _environment(device)

    for variant in variants:  # memory: each variant alone
        try:
            runner = _Runner(variant, initial, settings, (x, y))
            for _ in range(max(1, settings.warmup)):
                runner.step()
            results[variant.name].peak_bytes = _peak_step_bytes(runner, device)
        except (RuntimeError, ValueError) as error:
            results[variant.name].error = f"{type(error).__name__}: {error}".splitlines()[0]
        finally:
            runner = None
            gc.collect()

    runners = [_Runner(v, initial, settings, (x, y)) for v in variants if results[v.name].error is None]
    if results["bp"].error is not None:  # the reference of every ratio
        raise ValueError(f"bp, the reference variant, failed: {results['bp'].error}")
    for runner in runners:
        for _ in range(settings.warmup):
            runner.step()
    for repeat in range(settings.repeats):
        shift = repeat % len(runners)
        for runner in runners[shift:] + runners[:shift]:
            results[runner.variant.name].step_times_s.append(_timed(runner, device))

    reference = results["bp"]
    for r in results.values():
        if r.step_times_s:
            r.median_step_s = statistics.median(r.step_times_s)
            r.time_ratio = r.median_step_s / reference.median_step_s
        if r.peak_bytes and reference.peak_bytes:
            r.memory_ratio = r.peak_bytes / reference.peak_bytes
    if hasattr(os, "getloadavg"):
        environment["load_average_1min_end"] = os.getloadavg()[0]
    return BenchReport(asdict(settings), environment, depth, list(results.values()))


def spread(times: list[float]) -> float:
    """Interquartile range over median: the noise of a step-time sample."""
    if len(times) < 2:
        return 0.0
    quartiles = statistics.quantiles(times, n=4)
    return (quartiles[2] - quartiles[0]) / statistics.median(times)


def format_report(report: BenchReport) -> str:
    """A plain-text table of the results."""
    s = report.settings
    env = report.environment
    lines = [
        f"model {s['model']} (L={report.depth}), batch {s['batch_size']}, {s['device']} {s['dtype']}, "
        f"autocast {s['autocast']}, compile {s['compile']}, {s['repeats']} repeats; torch {env['torch']}, "
        f"{env['torch_threads']} threads on {env['cpu_count']} CPUs"
        + (
            f", load {env['load_average_1min_start']:.2f}→{env.get('load_average_1min_end', math.nan):.2f}"
            if "load_average_1min_start" in env
            else ""
        )
        + (f", {env['device_name']}" if "device_name" in env else ""),
        f"{'variant':<14}{'U':>4}{'median ms':>11}{'spread':>8}{'time/bp':>9}{'predicted':>10}"
        f"{'peak MB':>10}{'mem/bp':>8}",
    ]
    for r in report.results:
        if r.error is not None:
            lines.append(f"{r.name:<14} failed: {r.error}")
            continue
        lines.append(
            f"{r.name:<14}{r.layer_updates:>4}{r.median_step_s * 1e3:>11.2f}{spread(r.step_times_s):>8.2f}"
            f"{r.time_ratio:>9.3f}{r.predicted_ratio:>10.3f}{r.peak_bytes / 2**20:>10.1f}"
            f"{r.memory_ratio:>8.3f}"
        )
    return "\n".join(lines)
