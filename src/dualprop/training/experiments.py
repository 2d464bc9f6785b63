"""The papers' settings, shipped as TOML files in ``dualprop/experiments/``.

An experiment file holds ``description`` (one line), the shared settings as top-level keys (any
``TrainConfig`` key) and optionally an array of ``[[runs]]`` tables, each overriding some settings —
one trained configuration per table (all seeds of it). Without ``[[runs]]`` it is a single setting.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from dualprop.training.config import TrainConfig, from_mapping, read_toml

EXPERIMENT_SUFFIX = ".toml"


@dataclass
class Experiment:
    """A named set of training configurations."""

    name: str
    description: str
    configs: list[TrainConfig]


def _experiment_files() -> dict[str, Any]:
    directory = resources.files("dualprop") / "experiments"
    return {entry.name[: -len(EXPERIMENT_SUFFIX)]: entry for entry in directory.iterdir()
            if entry.name.endswith(EXPERIMENT_SUFFIX)}


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
