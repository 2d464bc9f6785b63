"""The training loop: one run per seed (plus a backprop baseline), each in its own run directory.

Per epoch: the training batches (shuffled and augmented per ``(seed, epoch)``, so a resumed run sees
the same batches), one ``Learner.step`` and one optimizer step per batch with the learning rate of
:func:`dualprop.training.lr_schedule.learning_rate`, then the validation accuracy. The epoch's row is
appended to ``metrics.csv``, the best-validation weights go to ``checkpoint-best.pt`` and everything
needed to resume to ``checkpoint-last.pt``. At the end the best checkpoint is evaluated on the test set.
Each step's update, while it sits in ``.grad`` before the optimizer applies it, is shown to the
observer: that is how diagnostics (``diagnose_every``, carried out by an observer of
:mod:`dualprop.analysis`) see training without the trainer knowing them.

A non-finite loss, non-finite dyadic states or non-finite weights stop the run, and so does a finite
blow-up: an epoch whose mean training loss exceeds ``divergence_factor`` times the feed-forward loss of
the run's first step (the untrained network's). ``summary.json`` then gets status ``diverged`` with the
epoch, step and reason, and the checkpoints of the last good epoch stay.

A run directory is used by one process at a time (:mod:`dualprop.training.runlock`). Resuming checks the
settings of ``config.toml`` against those saved in the checkpoint: only :data:`RESUMABLE_SETTINGS` may
differ (``epochs`` to lengthen or shorten a run, and bookkeeping such as the device).
Progress is reported through a :class:`TrainingObserver`; nothing here prints.

The data are ``config.dataset`` (a registered name or an ``.npz`` file) or the user's own, handed over
as torch ``Dataset``s (:func:`train`'s ``data``); either way they become one :class:`DatasetSplits`.

Inside an initialised process group (:mod:`dualprop.training.distributed`) the run is data-parallel:
each rank trains its shard of every epoch through a ``DistributedDataParallel`` wrapper, the training
metrics are summed over the ranks, divergence is agreed by all ranks at the same step, and rank 0
alone creates the run directory, writes files, reports progress and evaluates the test set.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from dualprop.data import (
    PYTHON_DATA,
    ArrayData,
    BatchLoader,
    DatasetSplits,
    array_splits,
    dataset_label,
    from_datasets,
    load_dataset,
)
from dualprop.data.fingerprint import dataset_fingerprint
from dualprop.learner import Learner
from dualprop.losses import batch_loss
from dualprop.models import CONV_MODELS, mlp
from dualprop.training import distributed
from dualprop.training.checkpoint import (
    CheckpointError,
    atomic_save,
    load_checkpoint,
    load_resumable_checkpoint,
    rng_state,
    set_rng_state,
    state_mismatch,
)
from dualprop.training.config import RESUMABLE_SETTINGS, TrainConfig, from_mapping, load_config, save_config
from dualprop.training.lr_schedule import learning_rate
from dualprop.training.rundir import (
    BEST_CHECKPOINT,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    SUMMARY_FILE,
    MetricsLog,
    check_data_fingerprint,
    create_run_directory,
    read_summary,
    write_data_fingerprint,
    write_json_atomic,
)
from dualprop.training.runlock import run_directory_lock


class TrainingObserver:
    """Receives progress from the trainer; the default ignores everything (subclass to display it).

    An observer that carries out a setting of the config (``diagnose_every``) names it in
    ``settings_carried_out``; the trainer refuses a config whose such setting no observer carries out."""

    settings_carried_out: frozenset[str] = frozenset()

    def run_started(
        self, run_dir: Path, config: TrainConfig, seed: int, start_epoch: int, steps_per_epoch: int
    ) -> None:
        """A run begins (or resumes after ``start_epoch`` finished epochs)."""

    def epoch_started(self, epoch: int, steps: int) -> None:
        """Epoch ``epoch`` (1-based) of ``steps`` optimizer steps begins."""

    def update_computed(self, learner: Learner, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int) -> None:
        """Global step ``step``'s update on the batch ``(x, y)`` is in the ``.grad`` of the parameters of
        ``learner.model``, before the optimizer applies it (leave ``.grad`` as it is)."""

    def step_finished(self, epoch: int, step: int, loss: float) -> None:
        """Step ``step`` (1-based within the epoch) finished with feed-forward loss ``loss``."""

    def epoch_finished(self, row: dict[str, Any]) -> None:
        """An epoch finished; ``row`` is its ``metrics.csv`` row."""

    def run_finished(self, summary: dict[str, Any]) -> None:
        """A run ended (finished or diverged); ``summary`` is its ``summary.json``."""


class Divergence(Exception):
    """Raised inside the loop when a step produced non-finite values."""

    def __init__(self, epoch: int, step: int, step_in_epoch: int, reason: str):
        super().__init__(f"{reason} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.step_in_epoch, self.reason = epoch, step, step_in_epoch, reason


@dataclass
class Evaluation:
    """Batch-mean loss and top-1 / top-5 accuracy (in %) of the feed-forward network on a split."""

    loss: float
    top1: float
    top5: float | None


class Observers(TrainingObserver):
    """Several observers as one: each call goes to each of them in order."""

    def __init__(self, *observers: TrainingObserver):
        self.observers = observers
        self.settings_carried_out = frozenset().union(*(o.settings_carried_out for o in observers))

    def run_started(
        self, run_dir: Path, config: TrainConfig, seed: int, start_epoch: int, steps_per_epoch: int
    ) -> None:
        for observer in self.observers:
            observer.run_started(run_dir, config, seed, start_epoch, steps_per_epoch)

    def epoch_started(self, epoch: int, steps: int) -> None:
        for observer in self.observers:
            observer.epoch_started(epoch, steps)

    def update_computed(self, learner: Learner, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int) -> None:
        for observer in self.observers:
            observer.update_computed(learner, x, y, epoch, step)

    def step_finished(self, epoch: int, step: int, loss: float) -> None:
        for observer in self.observers:
            observer.step_finished(epoch, step, loss)

    def epoch_finished(self, row: dict[str, Any]) -> None:
        for observer in self.observers:
            observer.epoch_finished(row)

    def run_finished(self, summary: dict[str, Any]) -> None:
        for observer in self.observers:
            observer.run_finished(summary)


def seed_generators(seed: int) -> None:
    """Seed torch's, numpy's and Python's global generators from the run's ``seed`` (any int in [0, 2^63))."""
    torch.manual_seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32])
    random.seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; a device this machine lacks is a ``ValueError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; choose auto, cpu, cuda[:i] or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} was asked for but this machine has {torch.cuda.device_count()} GPUs")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} was asked for but MPS (Apple's GPU backend) is not available")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu, cuda[:i] or mps")
    return device


@contextmanager
def cpu_threads(config: TrainConfig) -> Iterator[None]:
    """Use ``config.threads`` CPU threads while training, then restore the previous count; 0 means one
    for an MLP (its small matrix products run fastest single-threaded, above all on a busy machine)
    and torch's current setting otherwise."""
    previous = torch.get_num_threads()
    wanted = config.threads or (1 if config.model == "mlp" else previous)
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_model(config: TrainConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """The network named by ``config.model`` for inputs of ``input_shape`` and ``num_classes`` outputs."""
    if config.model == "mlp":
        return mlp([math.prod(input_shape), *config.hidden, num_classes], config.activation)
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise ValueError(f"model {config.model!r} needs square C x H x W images, got shape {input_shape}")
    channels, size, _ = input_shape
    return CONV_MODELS[config.model](
        num_classes=num_classes, in_channels=channels, size=size, activation=config.activation
    )


def build_optimizer(config: TrainConfig, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay, or Adam (weight decay as L2), over the network's parameters
    and any Kolen–Pollack feedback weights (which need the same weight decay to align)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def load_splits(
    config: TrainConfig,
    seed: int,
    world_size: int = 1,
    *,
    evaluation: bool = False,
    limit: int | None = None,
    data_dir: str | None = None,
    data: ArrayData | None = None,
) -> DatasetSplits:
    """The data of ``config`` for ``seed``: the user's arrays ``data`` when given, else the dataset
    ``config.dataset`` from ``data_dir`` (default: ``config.data_dir``), its first ``limit`` samples.

    For training, ``validation_percent`` % of the training set is held out, ``augment`` applies and, with
    ``limit_batches``, only the samples those batches need on ``world_size`` ranks are read. For
    ``evaluation`` (the analysis tools) the whole training set is kept and nothing is augmented."""
    validation_percent = 0.0 if evaluation else config.validation_percent
    flatten, pad_to = config.model == "mlp", config.pad_to or None
    if data is not None:
        return array_splits(data, validation_percent, seed, flatten, pad_to)
    if limit is None and config.limit_batches and not evaluation:
        needed = config.limit_batches * config.batch_size * world_size
        limit = math.ceil(needed / (1 - config.validation_percent / 100)) + 1
    return load_dataset(
        config.dataset,
        root=data_dir or config.data_dir,
        validation_percent=validation_percent,
        seed=seed,
        flatten=flatten,
        pad_to=pad_to,
        augment=config.augment and not evaluation,
        limit=limit,
    )


def as_array_data(data: ArrayData | Sequence[Dataset]) -> ArrayData:
    """The user's data as checked arrays: ``ArrayData`` as it is, or torch ``Dataset``s ``(train, test)``
    or ``(train, test, validation)`` of ``(input, label)`` items."""
    if isinstance(data, ArrayData):
        return data
    if not isinstance(data, (tuple, list)) or not 2 <= len(data) <= 3:
        raise ValueError(
            f"data must be torch Datasets (train, test) or (train, test, validation), got {type(data).__name__}"
        )
    return from_datasets(*data)


def evaluate(model: nn.Module, loader: BatchLoader, loss_name: str, limit_batches: int = 0) -> Evaluation:
    """Feed-forward loss and accuracy over ``loader`` (at most ``limit_batches`` batches when > 0)."""
    model.eval()
    total_loss, top1, top5, count = 0.0, 0, 0, 0
    with torch.no_grad():
        for index, (x, y) in enumerate(loader):
            if limit_batches and index >= limit_batches:
                break
            logits = model(x)
            total_loss += float(batch_loss(loss_name, logits, y)) * len(y)
            ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
            top1 += int((ranked[:, 0] == y).sum())
            top5 += int((ranked == y[:, None]).any(dim=1).sum())
            count += len(y)
    model.train()
    if count == 0:
        return Evaluation(float("nan"), float("nan"), None)
    has_top5 = logits.shape[1] >= 5
    return Evaluation(total_loss / count, 100.0 * top1 / count, 100.0 * top5 / count if has_top5 else None)


def parameters_finite(model: nn.Module) -> torch.Tensor:
    """Whether every parameter of ``model`` is finite, as a 0-dim bool tensor (no device sync until read)."""
    return torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()


# Steps between two reads of the step results (loss, accuracy, finiteness) from the device: the loop reads
# the device once per this many steps and at the end of an epoch, never between two steps in between.
READ_EVERY = 16
_DIVERGENCE_REASONS = ("non-finite loss", "non-finite dyadic states", "non-finite weights")


@dataclass
class _PendingStep:
    """A step whose results are still on the device: ``finite`` holds whether its loss, its dyadic states
    and the weights after it are finite; ``correct`` its number of correct predictions."""

    index: int
    step: int
    lr: float
    batch: int
    loss: torch.Tensor
    correct: torch.Tensor
    finite: torch.Tensor


def run_name(config: TrainConfig, seed: int) -> str:
    """Directory name: ``name`` (else dataset and model), rule and its settings, seed."""
    prefix = config.name or f"{dataset_label(config.dataset)}-{config.model}"
    rule = config.rule if config.rule == "bp" else f"{config.rule}-a{config.alpha:g}-b{config.beta:g}"
    return f"{prefix}-{rule}-seed{seed}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Run:
    """One network trained with one seed in one run directory."""

    def __init__(self, config: TrainConfig, observer: TrainingObserver, data: ArrayData | None = None):
        """Load the data (``data`` when given) and build model, learner and optimizer (before any file is
        written, so bad data leaves no half-made run directory); :meth:`attach` then binds the run
        directory."""
        self.context = distributed.current_context()
        self.is_main = self.context is None or self.context.is_main
        if config.diagnose_every and "diagnose_every" not in observer.settings_carried_out:
            raise ValueError(
                "diagnose_every is carried out by an observer: hand "
                "dualprop.analysis.GradientAngleLog() to the trainer (the command line does)"
            )
        if self.context is not None and config.diagnose_every:
            raise ValueError("diagnose_every needs a single process; run diagnostics without torchrun")
        self.config, self.observer = config, observer if self.is_main else TrainingObserver()
        self.seed = config.seeds[0]
        self.device = self.context.device if self.context else resolve_device(config.device)
        seed_generators(self.seed)
        self.data = load_splits(config, self.seed, self.context.world_size if self.context else 1, data=data)
        self.model = build_model(config, self.data.input_shape, self.data.num_classes).to(self.device)
        trained = distributed.data_parallel(self.model, self.context) if self.context else self.model
        self.learner = Learner(trained, **config.learner_settings())
        if config.compile != "none":
            self.learner.compile_objective(config.compile)
        self.optimizer = build_optimizer(config, list(self.learner.parameters()))
        rank, world_size = (self.context.rank, self.context.world_size) if self.context else (0, 1)
        self.train_loader, self.validation_loader, self.test_loader = self.data.loaders(
            config.batch_size,
            seed=self.seed,
            eval_batch_size=max(config.batch_size, 256),
            rank=rank,
            world_size=world_size,
            device=self.device,
        )
        self.steps_per_epoch = len(self.train_loader)
        if config.limit_batches:
            self.steps_per_epoch = min(self.steps_per_epoch, config.limit_batches)
        if self.steps_per_epoch == 0:
            raise ValueError(f"dataset {config.dataset!r} has no training samples")
        self.epoch = 0
        self.global_step = 0
        self.best_val_acc = -math.inf
        self.best_epoch = 0
        self.reference_loss: float | None = None
        self.elapsed = 0.0
        self.started = _now()

    def attach(self, run_dir: Path) -> None:
        """Write this run's files into ``run_dir``."""
        self.run_dir = run_dir
        self.metrics = MetricsLog(run_dir)
        self.writer = _tensorboard_writer(run_dir) if self.config.tensorboard and self.is_main else None

    # -- persistence ------------------------------------------------------------------------------

    def _checkpoint(self) -> dict[str, Any]:
        return {
            "learner": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "elapsed": self.elapsed,
            "rng": rng_state(),
            "started": self.started,
            "reference_loss": self.reference_loss,
            "config": self.config.to_dict(),
        }

    def restore(self) -> None:
        """Continue from ``checkpoint-last.pt``; ``metrics.csv`` is cut back to its epoch."""
        path = self.run_dir / LAST_CHECKPOINT
        state = load_resumable_checkpoint(path, map_location=self.device)
        if "config" in state:
            saved = from_mapping(state["config"], source=f"checkpoint {path}").resolved()
            check_resumable(saved, self.config, int(state["epoch"]))
        try:
            self.learner.load_state_dict(state["learner"])
        except RuntimeError as error:
            raise CheckpointError(
                f"checkpoint {path} does not fit the network of {CONFIG_FILE}: {state_mismatch(error)}"
            ) from None
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"])
        except (ValueError, KeyError, TypeError, RuntimeError) as error:
            raise CheckpointError(
                f"checkpoint {path} cannot be resumed: {(str(error).splitlines() or [type(error).__name__])[0]}"
            ) from None
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.best_val_acc, self.best_epoch = float(state["best_val_acc"]), int(state["best_epoch"])
        self.elapsed, self.started = float(state["elapsed"]), str(state["started"])
        # Checkpoints written before the loss-growth criterion have no reference: the check stays off.
        self.reference_loss = state.get("reference_loss", math.inf)
        if not self.is_main:
            return
        self.metrics.truncate_to(self.epoch)

    def _summary(
        self, status: str, test: Evaluation | None = None, divergence: Divergence | None = None
    ) -> dict[str, Any]:
        dyadic = self.config.rule != "bp"
        return {
            "status": status,
            "run_dir": str(self.run_dir),
            "rule": self.config.rule,
            "alpha": self.config.alpha if dyadic else None,
            "beta": self.config.beta if dyadic else None,
            "schedule": self.config.schedule if dyadic else None,
            "passes": self.config.passes if dyadic else None,
            "dataset": self.config.dataset,
            "model": self.config.model,
            "seed": self.seed,
            "epochs": self.config.epochs,
            "epochs_completed": self.epoch,
            "steps": self.global_step,
            "best_epoch": self.best_epoch or None,
            "best_val_acc": self.best_val_acc if self.best_epoch and math.isfinite(self.best_val_acc) else None,
            "test_loss": test.loss if test else None,
            "test_acc": test.top1 if test else None,
            "test_top5": test.top5 if test else None,
            "seconds": round(self.elapsed, 3),
            "diverged_at": None
            if divergence is None
            else {
                "epoch": divergence.epoch,
                "step": divergence.step,
                "step_in_epoch": divergence.step_in_epoch,
                "reason": divergence.reason,
            },
            "started": self.started,
            "updated": _now(),
        }

    # -- the loop ---------------------------------------------------------------------------------

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the training batches; returns (mean loss, accuracy %) of the feed-forward net."""
        self.model.train()
        self.train_loader.set_epoch(epoch - 1)
        self.observer.epoch_started(epoch, self.steps_per_epoch)
        totals = [0.0, 0.0, 0.0, 0.0]  # Σ loss·batch, correct, count, first step's loss
        pending: list[_PendingStep] = []
        for index, (x, y) in enumerate(self.train_loader):
            if index >= self.steps_per_epoch:
                break
            lr = self._set_learning_rate()
            self.optimizer.zero_grad(set_to_none=True)
            result = self.learner.step(x, y)
            step = self.global_step + 1
            self.observer.update_computed(self.learner, x, y, epoch, step)
            self.optimizer.step()
            loss = result.loss_tensor.detach()
            no_states = torch.ones((), dtype=torch.bool, device=loss.device)
            states = result.finite_tensor if result.finite_tensor is not None else no_states
            finite = torch.stack([torch.isfinite(loss), states.to(loss.device), parameters_finite(self.model)])
            correct = (result.logits.argmax(dim=1) == y).sum()
            pending.append(_PendingStep(index, step, lr, len(y), loss, correct, finite))
            self.global_step = step
            if len(pending) == READ_EVERY:
                self._read_steps(epoch, pending, totals)
        self._read_steps(epoch, pending, totals)
        total_loss, correct, count, first_loss = totals
        if self.context is not None:
            total_loss, correct, count, first_loss = distributed.sum_across_ranks(
                [total_loss, correct, count, first_loss / self.context.world_size]
            )
        if self.reference_loss is None:
            self.reference_loss = first_loss
        return total_loss / count, 100.0 * correct / count

    def _read_steps(self, epoch: int, pending: list[_PendingStep], totals: list[float]) -> None:
        """Read the ``pending`` steps' results from the device at once (one transfer; with several ranks, one
        collective of the divergence flags), add them to ``totals`` and report them, in order; empties
        ``pending``. The first step with a non-finite loss, dyadic state or weight (on any rank) raises
        :class:`Divergence` for that step, which then counts as not taken."""
        if not pending:
            return
        flags = torch.stack([p.finite for p in pending]).logical_not()
        dtype = torch.promote_types(pending[0].loss.dtype, torch.float32)  # the loss exactly, counts < 2²⁴
        values = torch.stack([p.loss.to(dtype) for p in pending] + [p.correct.to(dtype) for p in pending])
        read = torch.cat([flags.flatten().to(values), values]).tolist()
        diverged = [bool(v) for v in read[: flags.numel()]]
        if self.context is not None:
            diverged = distributed.any_rank(diverged)
        losses, corrects = read[flags.numel() :][: len(pending)], read[flags.numel() :][len(pending) :]
        steps, pending[:] = list(pending), []
        for position, (step, loss, correct) in enumerate(zip(steps, losses, corrects)):
            flags_of_step = diverged[3 * position : 3 * position + 3]
            reasons = [reason for reason, bad in zip(_DIVERGENCE_REASONS, flags_of_step) if bad]
            if reasons:
                self.global_step = step.step - 1
                raise Divergence(epoch, step.step, step.index + 1, reasons[0])
            if self.reference_loss is None and step.index == 0:
                totals[3] = loss
            totals[0] += loss * step.batch
            totals[1] += correct
            totals[2] += step.batch
            self.observer.step_finished(epoch, step.index + 1, loss)
            if self.writer is not None:
                self.writer.add_scalar("train/step_loss", loss, step.step)
                self.writer.add_scalar("train/lr", step.lr, step.step)

    def _check_loss_growth(self, epoch: int, train_loss: float) -> None:
        """Raise :class:`Divergence` when the epoch's mean training loss exceeds ``divergence_factor``
        times the loss of the run's first step (a check that is off for a factor of 0)."""
        factor, reference = self.config.divergence_factor, self.reference_loss
        if factor and reference and train_loss > factor * reference:
            reason = f"training loss {train_loss:.4g} above {factor:g} × the first step's {reference:.4g}"
            raise Divergence(epoch, self.global_step, self.steps_per_epoch, reason)

    def _set_learning_rate(self) -> float:
        c = self.config
        lr = learning_rate(
            self.global_step, self.steps_per_epoch, c.epochs, c.lr, c.final_lr, c.warmup_epochs, c.warmup_lr
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train(self) -> dict[str, Any]:
        """Train the remaining epochs, test the best checkpoint and return the summary."""
        self.observer.run_started(self.run_dir, self.config, self.seed, self.epoch, self.steps_per_epoch)
        if self.is_main:
            write_json_atomic(self._summary("running"), self.run_dir / SUMMARY_FILE)
        divergence = None
        try:
            while self.epoch < self.config.epochs:
                self._finish_epoch(self.epoch + 1)
        except Divergence as error:
            divergence = error
        test = self._test_best() if self.is_main else None
        summary = self._summary("diverged" if divergence else "finished", test, divergence)
        if self.is_main:
            write_json_atomic(summary, self.run_dir / SUMMARY_FILE)
        if self.writer is not None:
            self.writer.close()
        self.observer.run_finished(summary)
        return summary

    def _finish_epoch(self, epoch: int) -> None:
        start = time.perf_counter()
        train_loss, train_acc = self._train_epoch(epoch)
        self._check_loss_growth(epoch, train_loss)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate of the epoch's last step
        validation = (
            evaluate(self.model, self.validation_loader, self.config.loss, self.config.limit_batches)
            if self.validation_loader is not None
            else None
        )
        seconds = time.perf_counter() - start
        self.epoch = epoch
        self.elapsed += seconds
        row = {
            "epoch": epoch,
            "step": self.global_step,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": validation.loss if validation else None,
            "val_acc": validation.top1 if validation else None,
            "lr": lr,
            "seconds": seconds,
            "elapsed": self.elapsed,
        }
        if self.is_main:
            self.metrics.append(row)
        # Without a validation split the latest epoch counts as the best.
        score = validation.top1 if validation and math.isfinite(validation.top1) else math.inf
        if score >= self.best_val_acc or not self.best_epoch:
            self.best_val_acc, self.best_epoch = score, epoch
            if self.is_main:
                atomic_save(
                    {"learner": self.learner.state_dict(), "epoch": epoch, "val_acc": score},
                    self.run_dir / BEST_CHECKPOINT,
                )
        if self.is_main:
            atomic_save(self._checkpoint(), self.run_dir / LAST_CHECKPOINT)
        if self.writer is not None:
            for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
                if row[key] is not None:
                    self.writer.add_scalar(f"epoch/{key}", row[key], epoch)
        self.observer.epoch_finished(row)

    def _test_best(self) -> Evaluation | None:
        path = self.run_dir / BEST_CHECKPOINT
        if not path.exists():
            return None
        self.learner.load_state_dict(load_checkpoint(path, map_location=self.device)["learner"])
        return evaluate(self.model, self.test_loader, self.config.loss, self.config.limit_batches)


def _tensorboard_writer(run_dir: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` under ``run_dir/tensorboard`` when tensorboard is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def start_run(
    config: TrainConfig,
    seed: int,
    observer: TrainingObserver | None = None,
    data: ArrayData | Sequence[Dataset] | None = None,
) -> dict[str, Any]:
    """Train ``config`` with ``seed`` in a new run directory under ``config.out``; return its summary.
    ``data``: the user's own data instead of ``config.dataset``, as for :func:`train`."""
    arrays = as_array_data(data) if data is not None else None
    changes: dict[str, Any] = {"dataset": arrays.name} if arrays is not None else {}
    config = config.replace(seeds=[seed], baseline=False, **changes).resolved()
    with cpu_threads(config):
        fingerprint = data_fingerprint(config)
        run = Run(config, observer or TrainingObserver(), arrays)
        run_dir = None
        if run.is_main:
            run_dir = create_run_directory(config.out, run_name(config, seed))
            save_config(config, run_dir / CONFIG_FILE)
            write_data_fingerprint(run_dir, fingerprint)
        run_dir = distributed.broadcast_from_main(run_dir)
        with _exclusive_use(run_dir):
            run.attach(run_dir)
            if run.is_main:
                run.metrics.start()
            return run.train()


def resume_run(
    run_dir: str | Path, observer: TrainingObserver | None = None, data: ArrayData | Sequence[Dataset] | None = None
) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its last checkpoint (a finished run is returned as is); a run
    trained on data handed over from Python needs the same ``data`` again."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise ValueError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    with _exclusive_use(run_dir):
        summary = read_summary(run_dir) if (run_dir / SUMMARY_FILE).exists() else {}
        config = load_config(run_dir / CONFIG_FILE).resolved()
        completed = summary.get("epochs_completed", 0)
        if not isinstance(completed, int) or isinstance(completed, bool):
            raise ValueError(f"{run_dir / SUMMARY_FILE}: epochs_completed must be an integer, got {completed!r}")
        lengthened = summary.get("status") == "finished" and config.epochs > completed
        if summary.get("status") in ("finished", "diverged") and not lengthened:
            _check_settings_unchanged(run_dir, config)
            return summary
        context = distributed.current_context()
        check_data_fingerprint(run_dir, data_fingerprint(config), record=context is None or context.is_main)
        with cpu_threads(config):
            run = Run(config, observer or TrainingObserver(), as_array_data(data) if data is not None else None)
            run.attach(run_dir)
            if (run_dir / LAST_CHECKPOINT).exists():
                run.restore()
            elif run.is_main:
                run.metrics.start()
            return run.train()


def data_fingerprint(config: TrainConfig) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file the data of ``config`` are read from (none for data from Python)."""
    return {} if config.dataset == PYTHON_DATA else dataset_fingerprint(config.dataset, config.data_dir)


def _check_settings_unchanged(run_dir: Path, config: TrainConfig) -> None:
    """A run that has ended is reported as it is, unless ``config.toml`` no longer says what it was trained
    with (then ``ValueError`` naming the changed settings)."""
    path = run_dir / LAST_CHECKPOINT
    if path.exists():
        state = load_checkpoint(path)
        if "config" in state:
            saved = from_mapping(state["config"], source=f"checkpoint {path}").resolved()
            check_resumable(saved, config, int(state.get("epoch", 0)))


def _exclusive_use(run_dir: Path) -> AbstractContextManager[None]:
    """The run directory's lock, taken by the process that writes its files (rank 0 of a job)."""
    context = distributed.current_context()
    return run_directory_lock(run_dir) if context is None or context.is_main else nullcontext()


def check_resumable(saved: TrainConfig, current: TrainConfig, finished_epochs: int) -> None:
    """Refuse to continue a checkpoint made with ``saved`` settings under ``current`` ones unless they
    differ only in :data:`RESUMABLE_SETTINGS` (``ValueError`` naming the keys and both values)."""
    old, new = saved.to_dict(), current.to_dict()
    changed = [
        key for key in sorted(old.keys() | new.keys()) if key not in RESUMABLE_SETTINGS and old.get(key) != new.get(key)
    ]
    if changed:
        details = ", ".join(f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in changed)
        raise ValueError(
            f"{CONFIG_FILE} differs from the checkpoint's settings in {details}; restore them "
            f"(on resume only {', '.join(RESUMABLE_SETTINGS)} may change)"
        )
    if current.epochs < finished_epochs:
        raise ValueError(
            f"epochs = {current.epochs} is fewer than the {finished_epochs} epochs this run has "
            "finished; give at least that many"
        )


def train(
    config: TrainConfig, observer: TrainingObserver | None = None, data: ArrayData | Sequence[Dataset] | None = None
) -> list[dict[str, Any]]:
    """Every run of ``config``: for each seed the network with its rule, then (``baseline``) with ``bp``.

    ``data``: the user's own data instead of ``config.dataset``: torch ``Dataset``s ``(train, test)`` or
    ``(train, test, validation)`` whose items are ``(input, label)`` pairs (inputs float or uint8 tensors
    of one shape, labels integer class indices 0, 1, …), checked and prepared as an ``.npz`` file's
    arrays are (:func:`dualprop.data.array_splits`). The runs then record ``dataset = "python"``."""
    arrays = as_array_data(data) if data is not None else None
    config = config.resolved()
    summaries = []
    for seed in config.seeds:
        summaries.append(start_run(config, seed, observer, arrays))
        if config.baseline and config.rule != "bp":
            summaries.append(start_run(config.replace(rule="bp"), seed, observer, arrays))
    return summaries
