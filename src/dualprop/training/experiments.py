"""The papers' settings, shipped as TOML files in ``dualprop/experiments/``.

An experiment file holds ``description`` (one line), the shared settings as top-level keys (any
``TrainConfig`` key) and optionally an array of ``[[runs]]`` tables, each overriding some settings —
one trained configuration per table (all seeds of it). Without ``[[runs]]`` it is a single setting.

:func:`run_experiment` trains every (configuration, seed) pair, seed by seed — all configurations of
the first seed, then of the second, … — so an interrupted experiment holds whole grids; in one process
or in several. Continued in its output folder, it keeps the runs already there.

Worker processes never outlive the process that started them: on Linux the kernel sends each one
``SIGKILL`` when its parent dies (``PR_SET_PDEATHSIG``), every worker also checks once a second that its
parent is still the one that started it, and a parent that stops on an exception or a signal ends its
workers before it leaves (the workers ignore SIGINT: Ctrl-C is the parent's to handle). A run cut short
this way keeps its last checkpoint and continues on ``--resume``.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from dualprop.training.config import BOOKKEEPING_KEYS, TrainConfig, from_mapping, load_config, read_toml
from dualprop.training.rundir import CONFIG_FILE
from dualprop.training.trainer import TrainingObserver, resume_run, start_run

EXPERIMENT_SUFFIX = ".toml"
PARENT_CHECK_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1  # prctl option of <linux/prctl.h>


class WorkerDied(RuntimeError):
    """A worker process of a parallel experiment ended without reporting (a signal, the OOM killer)."""


@dataclass
class Experiment:
    """A named set of training configurations."""

    name: str
    description: str
    configs: list[TrainConfig]


def _experiment_files() -> dict[str, Any]:
    directory = resources.files("dualprop") / "experiments"
    return {
        entry.name[: -len(EXPERIMENT_SUFFIX)]: entry
        for entry in directory.iterdir()
        if entry.name.endswith(EXPERIMENT_SUFFIX)
    }


def experiment_names() -> list[str]:
    """Names of the shipped experiments, sorted."""
    return sorted(_experiment_files())


def parse_experiment(name: str, values: dict[str, Any], source: str) -> Experiment:
    """Build an :class:`Experiment` from parsed TOML (``description``, shared keys, ``runs``)."""
    values = dict(values)
    description = values.pop("description", "")
    runs = values.pop("runs", [{}])
    if not isinstance(description, str):
        raise ValueError(f"{source}: description must be a string")
    if not isinstance(runs, list) or not runs or not all(isinstance(run, dict) for run in runs):
        raise ValueError(f"{source}: runs must be a non-empty array of tables ([[runs]])")
    configs = [from_mapping({**values, **run}, source=source).resolved() for run in runs]
    for later, config in enumerate(configs):
        for earlier in range(later):
            if configs[earlier] == config:
                raise ValueError(
                    f"{source}: [[runs]] {earlier + 1} and {later + 1} are the same setting; remove one "
                    "(every run of an experiment must differ)"
                )
    return Experiment(name, description, configs)


def load_experiment(name: str) -> Experiment:
    """The shipped experiment ``name``, or an experiment file given by path; ``ValueError`` if unknown."""
    files = _experiment_files()
    if name in files:
        with resources.as_file(files[name]) as path:
            return parse_experiment(name, read_toml(path), f"experiment {name}")
    path = Path(name)
    if path.suffix == EXPERIMENT_SUFFIX and path.is_file():
        return parse_experiment(path.stem, read_toml(path), f"experiment file {path}")
    raise ValueError(f"unknown experiment {name!r}; `dualprop experiment --list` shows the shipped ones")


def experiment_runs(configs: Sequence[TrainConfig]) -> list[TrainConfig]:
    """One single-seed config per run, seed by seed (every configuration of a seed before the next
    seed); a config with ``baseline`` is followed by its backprop twin."""
    runs = []
    longest = max((len(c.seeds) for c in configs), default=0)
    for index in range(longest):
        for config in configs:
            if index < len(config.seeds):
                single = config.replace(seeds=[config.seeds[index]], baseline=False)
                runs.append(single)
                if config.baseline and config.rule != "bp":
                    runs.append(single.replace(rule="bp"))
    return runs


def _setting(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if key not in BOOKKEEPING_KEYS or key == "seeds"}


def existing_run(parent: str | Path, config: TrainConfig) -> Path | None:
    """The run directory under ``parent`` whose saved config equals the single-seed ``config`` up to
    bookkeeping keys (output folder, device, threads, …), or None."""
    wanted = _setting(config.resolved().to_dict())
    for path in sorted(Path(parent).glob(f"*/{CONFIG_FILE}")):
        try:  # resolved, so that a config written by an earlier version gets the settings it lacks
            saved = load_config(path).resolved().to_dict()
        except ValueError:
            continue
        if _setting(saved) == wanted:
            return path.parent
    return None


def run_one(config: TrainConfig, resume: bool = False, observer: TrainingObserver | None = None) -> dict[str, Any]:
    """Train the single-seed ``config`` in a new run directory under ``config.out``; with ``resume``,
    a matching run already there is kept when it has ended, or continued from its last checkpoint."""
    found = existing_run(config.out, config) if resume else None
    if found is not None:
        return resume_run(found, observer)
    return start_run(config, config.seeds[0], observer)


def _die_with_parent(parent: int) -> None:
    """Initializer of a worker process: end this process when ``parent`` (the pid that started it) dies.
    Ctrl-C reaches the whole process group; the parent alone handles it and ends its workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl in this C library: the watcher below still ends the worker
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watcher", daemon=True).start()


def _watch_parent(parent: int) -> None:
    """Once a second: a worker whose parent has gone (it was re-parented) ends at once."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)


def _end_workers(workers: set[multiprocessing.process.BaseProcess]) -> None:
    """Terminate the pool's worker processes and reap them (a run cut short keeps its last checkpoint)."""
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    for worker in workers:
        worker.join(timeout=10)


def run_experiment(
    configs: Sequence[TrainConfig],
    jobs: int = 1,
    resume: bool = False,
    observer: TrainingObserver | None = None,
    run_done: Callable[[dict[str, Any]], None] | None = None,
    worker_observer: TrainingObserver | None = None,
) -> list[dict[str, Any]]:
    """Every run of ``configs`` (see :func:`experiment_runs`), returning their summaries in that order.

    With ``jobs > 1`` the runs go to that many worker processes (``observer`` is not used there but a
    copy of the picklable ``worker_observer`` is, e.g. one that writes files; each run's summary reaches
    ``run_done`` as it ends), and a config with ``threads = 0`` gets
    ``cpu_count // jobs`` threads per process. ``resume`` keeps or continues matching runs already in
    each config's ``out`` folder (see :func:`run_one`).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    runs = experiment_runs(configs)
    if jobs == 1 or len(runs) <= 1:
        summaries = []
        for config in runs:
            summaries.append(run_one(config, resume, observer))
            if run_done is not None:
                run_done(summaries[-1])
        return summaries
    threads = max(1, (os.cpu_count() or 1) // jobs)
    runs = [c.replace(threads=threads) if c.threads == 0 else c for c in runs]
    results: dict[int, dict[str, Any]] = {}
    context = multiprocessing.get_context("spawn")
    other_children = set(multiprocessing.active_children())
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, initializer=_die_with_parent, initargs=(os.getpid(),)
    ) as pool:
        pending: dict[Future, int] = {pool.submit(run_one, c, resume, worker_observer): i for i, c in enumerate(runs)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    results[pending.pop(future)] = future.result()
                    if run_done is not None:
                        run_done(future.result())
        except BaseException as error:
            pool.shutdown(wait=False, cancel_futures=True)
            _end_workers(set(multiprocessing.active_children()) - other_children)
            if isinstance(error, BrokenProcessPool):
                raise WorkerDied(
                    "a worker process of the experiment died (killed by a signal or the out-of-memory killer); "
                    "the runs keep their last checkpoints: continue with --resume"
                ) from None
            raise
    return [results[i] for i in range(len(runs))]
