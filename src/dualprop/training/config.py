"""``TrainConfig``: every setting of a training run, read from and written to TOML.

A config is plain data. ``resolved()`` checks it (reusing the checks of :class:`dualprop.learner.LearnerSettings`,
:func:`dualprop.schedules.parse_schedule` and the dataset registry) and returns a copy whose schedule is
canonical and whose ``passes`` is explicit, which is what a run directory stores as ``config.toml``.
The defaults are the quick start: an MLP trained on scikit-learn's digits with DP⊤, compared against
backprop on the same network and seed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


from dualprop.atomic import atomic_write
from dualprop.data import canonical_dataset_name
from dualprop.learner import COMPILE_MODES, LearnerSettings
from dualprop.models import ACTIVATIONS, CONV_MODELS
from dualprop.schedules import parse_schedule

OPTIMIZERS = ("sgd", "adam")
# Settings that do not change what a run computes (where it is written, on which device, with how many
# threads, …); runs that differ only in these and the seed are the same setting.
BOOKKEEPING_KEYS = ("seeds", "out", "name", "device", "threads", "compile", "data_dir", "tensorboard", "baseline")
SGD_MOMENTUM = 0.9
# Settings that may differ between a checkpoint and config.toml when a run is resumed: the length of
# the run, its diagnostics and the bookkeeping (all but the seed).
RESUMABLE_SETTINGS = ("epochs", "diagnose_every", *(key for key in BOOKKEEPING_KEYS if key != "seeds"))
DEVICES = ("auto", "cpu", "cuda", "mps")
MODELS = ("mlp", *CONV_MODELS)


def _setting(default: Any, help: str, unset: str = "") -> Any:
    """A ``TrainConfig`` field: its default, its one-line help (the ``--flag`` help of the CLI) and, for a
    ``None`` default, what leaving it unset means.

    A list default is copied for every new config. The field's type is its annotation."""
    metadata = {"help": help, "unset": unset}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """All settings of one training run (one network, one or more seeds).

    Each field is the single source of its type (the annotation), default and help text; the command
    line builds one flag per field from them (:func:`settings`)."""

    # learning rule (see dualprop.Learner)
    rule: str = _setting("dpT", "learning rule: dpT, dp, dp-damped, bp or adversarial")
    alpha: float = _setting(0.5, "nudging weight α in [0, 1]")
    beta: float = _setting(0.1, "nudging strength β > 0")
    schedule: str = _setting("forward-backward", "inference schedule or alias (fw3, bw, fwbw2, random, …)")
    passes: int | None = _setting(
        None, "passes of the inference schedule", unset="1, or the number in an alias such as fw3"
    )
    loss: str = _setting("cross_entropy", "cross_entropy or mse")
    implementation: str = _setting("auto", "auto, generic or fused")
    feedback: str = _setting(
        "symmetric", "symmetric, or kolen-pollack (separate feedback weights learned by the same rule)"
    )
    power_iterations: int = _setting(1, "power-iteration steps per update for the spectral norms of dp-damped")
    # hardware realism (see dualprop.hardware)
    state_noise: float = _setting(
        0.0, "σ of the Gaussian noise added to every compartment update (bp: activations and gradients)"
    )
    state_quantum: float = _setting(0.0, "resolution q: compartments stochastically rounded to multiples of q (0: off)")
    noise_seed: int = _setting(0, "seed of the noise, rounding and random-schedule generator")
    # data
    dataset: str = _setting("digits", "dataset name (digits, mnist, cifar10, …) or an .npz file of arrays")
    data_dir: str | None = _setting(None, "data root directory", unset="$DUALPROP_DATA, else ~/.cache/dualprop")
    validation_percent: float = _setting(10.0, "percent of training data held out")
    augment: bool = _setting(True, "random crop/flip where the dataset allows it")
    pad_to: int = _setting(0, "zero-pad images to this size")
    # network
    model: str = _setting(
        "mlp",
        "mlp, a conv model (vgg16, vgg_like, cnn, mini_cnn), a residual network (resnet20, resnet8), "
        "or a patch-based net (vit, mixer, convnext; activation sets their MLPs', gelu in the papers)",
    )
    hidden: list[int] = _setting([256, 256], "hidden widths of the MLP")
    activation: str = _setting("relu", "activation function")
    # optimisation
    epochs: int = _setting(15, "training epochs")
    batch_size: int = _setting(32, "mini-batch size")
    optimizer: str = _setting("sgd", "sgd or adam")
    lr: float = _setting(0.05, "peak learning rate")
    final_lr: float = _setting(1e-4, "learning rate at the end of the cosine decay")
    warmup_epochs: int = _setting(1, "epochs of linear warm-up")
    warmup_lr: float = _setting(0.005, "learning rate at the start of warm-up")
    momentum: float | None = _setting(None, "SGD momentum in [0, 1) (sgd only)", unset="0.9 with sgd")
    weight_decay: float = _setting(1e-4, "weight decay")
    divergence_factor: float = _setting(
        10.0,
        "stop as diverged when an epoch's mean training loss exceeds this factor times the first step's loss (0: off)",
    )
    # runs
    seeds: list[int] = _setting([0], "random seeds, one run each")
    limit_batches: int = _setting(0, "at most this many batches per epoch and evaluation (0: all)")
    diagnose_every: int = _setting(
        0, "every N steps append per-layer angles to backprop's gradient to diagnostics.csv (0: off)"
    )
    baseline: bool = _setting(True, "also train the same network and seed with backprop")
    out: str = _setting("runs", "directory that receives the run directories")
    name: str = _setting("", "prefix of run directory names")
    device: str = _setting("auto", "auto, cpu, cuda or mps")
    threads: int = _setting(0, "CPU threads (0: 1 for an MLP, else torch's default)")
    compile: str = _setting(
        "none", "torch.compile the learning step: none, default, reduce-overhead (CUDA graphs on a GPU) or max-autotune"
    )
    tensorboard: bool = _setting(True, "write TensorBoard logs when tensorboard is installed")

    # -- validation -------------------------------------------------------------------------------

    def resolved(self) -> "TrainConfig":
        """A checked copy with canonical schedule and explicit passes; ``ValueError`` names the setting."""
        config = dataclasses.replace(self)
        _check_types(config)
        config.hidden, config.seeds = list(config.hidden), list(config.seeds)
        config.schedule, config.passes = parse_schedule(config.schedule, config.passes)
        if config.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {config.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        LearnerSettings(**config.learner_settings())  # the Learner's own checks of its settings
        config.dataset = canonical_dataset_name(config.dataset)
        if config.model not in MODELS:
            raise ValueError(f"unknown model {config.model!r}; choose one of {', '.join(MODELS)}")
        if config.model == "mlp" and (not config.hidden or any(h < 1 for h in config.hidden)):
            raise ValueError(f"hidden must list at least one positive layer width for model 'mlp', got {config.hidden}")
        for name in ("epochs", "batch_size"):
            if getattr(config, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
        for name in ("warmup_epochs", "limit_batches", "diagnose_every", "pad_to", "threads"):
            if getattr(config, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(config, name)}")
        if config.warmup_epochs > config.epochs:
            raise ValueError(f"warmup_epochs ({config.warmup_epochs}) must not exceed epochs ({config.epochs})")
        if config.optimizer == "sgd" and config.momentum is None:
            config.momentum = SGD_MOMENTUM
        if config.optimizer != "sgd" and config.momentum == SGD_MOMENTUM:
            config.momentum = None  # what earlier versions wrote into every config.toml; Adam never used it
        if config.optimizer != "sgd" and config.momentum is not None:
            raise ValueError(
                f"momentum is a setting of optimizer 'sgd'; {config.optimizer!r} has none: "
                "remove momentum or choose optimizer 'sgd'"
            )
        for name in ("lr", "final_lr", "warmup_lr", "weight_decay"):
            value = getattr(config, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if config.momentum is not None and not 0 <= config.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {config.momentum}")
        if not (config.divergence_factor == 0 or 1 < config.divergence_factor < math.inf):
            raise ValueError(
                f"divergence_factor must be a finite number > 1 (or 0: no check), got {config.divergence_factor}"
            )
        if config.lr <= 0:
            raise ValueError(f"lr must be > 0, got {config.lr}")
        if not 0 <= config.validation_percent < 100:
            raise ValueError(f"validation_percent must lie in [0, 100), got {config.validation_percent}")
        if config.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if config.compile not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {config.compile!r}; choose one of {', '.join(COMPILE_MODES)}")
        if config.device not in DEVICES:
            raise ValueError(f"unknown device {config.device!r}; choose one of {', '.join(DEVICES)}")
        if not config.seeds or len(set(config.seeds)) != len(config.seeds):
            raise ValueError(f"seeds must list one or more distinct integers, got {config.seeds}")
        if any(not 0 <= seed < 2**63 for seed in config.seeds):
            raise ValueError(f"seeds must be integers in [0, 2^63), got {config.seeds}")
        if not config.out:
            raise ValueError("out must name a directory for the runs")
        return config

    # -- conversion -------------------------------------------------------------------------------

    def learner_settings(self) -> dict[str, Any]:
        """The keyword arguments of :class:`dualprop.Learner` that this config sets: one per field of
        :class:`dualprop.LearnerSettings` (each is also a field of this config)."""
        return {f.name: getattr(self, f.name) for f in fields(LearnerSettings)}

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (``None`` values omitted, as TOML has no null)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some settings changed (unknown names are a ``ValueError``)."""
        return from_mapping({**self.to_dict(), **changes}, source="overrides")


@dataclass(frozen=True)
class Setting:
    """One ``TrainConfig`` field as a value of kind ``kind``: ``bool``, ``int``, ``float`` or ``str``, or a
    list of ``int`` (``is_list``); ``optional`` when ``None`` (unset, meaning ``unset``) is allowed."""

    name: str
    kind: type
    is_list: bool
    optional: bool
    default: Any
    help: str
    unset: str


@functools.cache
def settings() -> tuple[Setting, ...]:
    """Every ``TrainConfig`` field in declaration order, read from its annotation, default and help."""
    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig()
    result = []
    for f in fields(TrainConfig):
        kind, optional = hints[f.name], False
        if type(None) in typing.get_args(kind):
            optional = True
            (kind,) = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        is_list = typing.get_origin(kind) is list
        if is_list:
            (kind,) = typing.get_args(kind)
        result.append(
            Setting(f.name, kind, is_list, optional, getattr(defaults, f.name), f.metadata["help"], f.metadata["unset"])
        )
    return tuple(result)


def field_names() -> list[str]:
    """The names of all ``TrainConfig`` settings, in declaration order."""
    return [f.name for f in fields(TrainConfig)]


def _is_kind(value: Any, kind: type) -> bool:
    """``isinstance`` where a bool is not an int (nor a float)."""
    return isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)


def _check_types(config: TrainConfig) -> None:
    """Coerce ints to floats where a float is expected; reject values of the wrong kind."""
    for setting in settings():
        value = getattr(config, setting.name)
        if value is None and setting.optional:
            continue
        if setting.is_list:
            if not isinstance(value, list) or not all(_is_kind(v, setting.kind) for v in value):
                noun = "integers" if setting.kind is int else f"{setting.kind.__name__} values"
                raise ValueError(f"{setting.name} must be a list of {noun}, got {value!r}")
        elif setting.kind is float and _is_kind(value, int):
            setattr(config, setting.name, float(value))
        elif not _is_kind(value, setting.kind):
            raise ValueError(f"{setting.name} must be of type {setting.kind.__name__}, got {value!r}")


def from_mapping(values: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """Build a config from a dict of settings; a key that is not a setting is a ``ValueError``."""
    known = set(field_names())
    for key in values:
        if key not in known:
            raise ValueError(f"{source}: unknown setting {key!r}")
    return TrainConfig(**{k: (list(v) if isinstance(v, list) else v) for k, v in values.items()})


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file into a dict; unreadable or malformed files are a ``ValueError`` naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise ValueError(f"cannot read config file {path}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"config file {path} is not valid TOML: {error}") from None


def load_config(path: str | Path) -> TrainConfig:
    """Read a ``TrainConfig`` from a flat TOML file (keys are the setting names)."""
    values = read_toml(path)
    nested = [key for key, value in values.items() if isinstance(value, dict)]
    if nested:
        raise ValueError(f"config file {path}: unknown setting {nested[0]!r} (tables are not settings)")
    return from_mapping(values, source=f"config file {path}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        escaped = (
            value.replace("\\", "\\\\")
            .replace('"', '\\"')
            .replace("\n", "\\n")
            .replace("\t", "\\t")
            .replace("\r", "\\r")
        )
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as a TOML value")


def dumps_toml(values: Mapping[str, Any]) -> str:
    """Flat ``key = value`` TOML for scalars (bool, int, float, str) and lists of them."""
    return "".join(f"{key} = {_toml_value(value)}\n" for key, value in values.items() if value is not None)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write ``config`` as flat TOML that :func:`load_config` reads back to an equal config."""
    text = dumps_toml(config.to_dict())
    atomic_write(path, lambda file: file.write(text), text=True)
