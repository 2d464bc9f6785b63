"""The ``dualprop`` command line: the only place that prints for users and chooses exit codes.

Exit codes: 0 success, 2 bad settings or data (one line ``dualprop: error: …`` on stderr), 3 a run
diverged, 4 a distributed job failed on another rank or timed out, 128 + the signal's number (130 for
SIGINT, 143 for SIGTERM) when interrupted. The handlers of SIGINT and SIGTERM are installed before torch
is imported, and an error raised after an interrupt arrived (a library that turned the interrupt into
another exception) still ends as the interrupt. Each subcommand is an
``_add_<name>_parser(subparsers)`` / ``_run_<name>(args)`` pair listed in ``COMMANDS``; adding a command
is one pair and one table entry.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

if TYPE_CHECKING:
    from dualprop.training.config import Setting

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_DISTRIBUTED = 4
INTERRUPTING_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class UsageError(Exception):
    """A command-line mistake, reported as one line with exit status 2."""


def _refuse_existing(path: str) -> str:
    """An output file the user named must not exist yet: dualprop never overwrites a user's file."""
    if Path(path).exists():
        raise UsageError(f"{path} already exists; choose a new file name (dualprop never overwrites files)")
    return path


def _check_writable_directory(directory: str | Path, flag: str) -> None:
    """Fail before any work when no file can be created in ``directory`` (or, while it does not exist
    yet, in its nearest existing parent, where it will be created): a file in the way, a missing or
    read-only place. A probe file is created there and removed at once."""
    existing = Path(directory)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {directory}: {existing} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UsageError(f"{flag} {directory}: cannot write in {existing} ({error.strerror or error})") from None


def _check_new_file(path: str, flag: str) -> None:
    """An output file must not exist yet and its directory must exist and be writable."""
    _refuse_existing(path)
    parent = Path(path).parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: the directory {parent} does not exist")
    _check_writable_directory(parent, flag)


def _write_new_file(path: str, text: str) -> None:
    """Write ``text`` to the new file ``path`` atomically: complete or not at all, never over a file."""
    from dualprop.atomic import atomic_write

    try:
        atomic_write(_refuse_existing(path), lambda file: file.write(text), text=True, replace=False)
    except FileExistsError:
        raise UsageError(f"{path} already exists; choose a new file name (dualprop never overwrites files)") from None


class DistributedJobFailure(Exception):
    """This rank stops because the data-parallel job failed elsewhere or timed out (exit status 4)."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors become :class:`UsageError` (one line, no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; the command stops with exit status 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_INTERRUPTS: list[int] = []  # the signals received while a command runs, in order


@contextmanager
def _interrupt_handlers() -> Iterator[list[int]]:
    """Within the block SIGINT and SIGTERM raise :class:`Interrupted` and are recorded in the yielded list
    (in the main thread; elsewhere handlers cannot be set). The previous handlers come back on leaving."""
    _INTERRUPTS.clear()
    if threading.current_thread() is not threading.main_thread():
        yield _INTERRUPTS
        return

    def interrupt(signum: int, frame: Any) -> None:
        _INTERRUPTS.append(signum)
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, interrupt) for signum in INTERRUPTING_SIGNALS}
    try:
        yield _INTERRUPTS
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _import_capture_machinery() -> None:
    """Import torch's compiler stack, which graph capture imports on first use, before any work starts.
    An interrupt inside that import can be swallowed by it (leaving a half-initialised module behind), so
    one that arrived meanwhile is raised here."""
    import torch._dynamo  # noqa: F401

    if _INTERRUPTS:
        raise Interrupted(_INTERRUPTS[0])


def _error(message: str) -> None:
    print(f"dualprop: error: {message}", file=sys.stderr)


def _file_system_error(error: OSError) -> str:
    """One line for a failed read or write: the reason and the file (full disk, read-only, no such place)."""
    where = f" ({error.filename})" if error.filename else ""
    return f"file system error: {error.strerror or error}{where}"


class _ClosedPipeTolerantStream:
    """Wraps ``sys.stdout`` or ``sys.stderr``: once the reader has gone (``dualprop train | head -1``),
    later output is dropped instead of raising ``BrokenPipeError``, so the run finishes and records its
    results. The stream's descriptor is pointed at ``os.devnull`` so that no later flush fails either."""

    def __init__(self, stream: Any):
        self._stream = stream

    def _reader_gone(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_gone()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


# -- progress -----------------------------------------------------------------------------------------


def _training_observer(show_bar: bool = True) -> Any:
    """What watches a command's trainings: the progress display and the gradient-angle log that carries
    out ``diagnose_every``."""
    from dualprop.analysis import GradientAngleLog
    from dualprop.training import Observers

    return Observers(_progress_observer(show_bar), GradientAngleLog())


def _progress_observer(show_bar: bool = True) -> Any:
    """A :class:`TrainingObserver` drawing a tqdm bar per epoch and one line per epoch on stderr."""
    from tqdm import tqdm

    from dualprop.training import TrainingObserver

    class ProgressObserver(TrainingObserver):
        def __init__(self) -> None:
            self.bar: Any = None
            self.epochs = 0
            self.label = ""

        def run_started(self, run_dir, config, seed, start_epoch, steps_per_epoch) -> None:  # noqa: ANN001
            self.epochs = config.epochs
            self.label = _network_label(config.rule, config.alpha, config.beta)
            resumed = f", resuming after epoch {start_epoch}" if start_epoch else ""
            tqdm.write(f"{self.label} seed {seed}: {run_dir}{resumed}", file=sys.stderr)

        def epoch_started(self, epoch: int, steps: int) -> None:
            if show_bar:
                self.bar = tqdm(
                    total=steps,
                    desc=f"epoch {epoch}/{self.epochs}",
                    file=sys.stderr,
                    leave=False,
                    dynamic_ncols=True,
                    disable=None,
                )

        def step_finished(self, epoch: int, step: int, loss: float) -> None:
            if self.bar is not None:
                self.bar.update(1)
                if step % 10 == 0:
                    self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        def _close_bar(self) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

        def epoch_finished(self, row: dict[str, Any]) -> None:
            self._close_bar()
            val = f"  val {row['val_acc']:.2f}%" if row["val_acc"] is not None else ""
            tqdm.write(
                f"  epoch {row['epoch']:>3}/{self.epochs}  loss {row['train_loss']:.4f}  "
                f"train {row['train_acc']:.2f}%{val}  lr {row['lr']:.3g}  {row['seconds']:.1f}s",
                file=sys.stderr,
            )

        def run_finished(self, summary: dict[str, Any]) -> None:
            self._close_bar()
            if summary["status"] == "diverged":
                where = summary["diverged_at"]
                tqdm.write(
                    f"  diverged: {where['reason']} at epoch {where['epoch']}, step {where['step']}", file=sys.stderr
                )

    return ProgressObserver()


def _network_label(rule: str, alpha: float | None, beta: float | None) -> str:
    if rule == "bp" or alpha is None:
        return rule
    return f"{rule} (alpha={alpha:g}, beta={beta:g})"


def _run_record(summary: dict[str, Any]) -> dict[str, Any]:
    """The per-network entry of ``--json`` output."""
    keys = (
        "rule",
        "alpha",
        "beta",
        "seed",
        "status",
        "test_acc",
        "test_top5",
        "best_val_acc",
        "epochs_completed",
        "seconds",
        "run_dir",
        "diverged_at",
    )
    return {key: summary.get(key) for key in keys}


def _report_runs(summaries: list[dict[str, Any]], as_json: bool) -> int:
    """Print the final results (text or one JSON object) and return the exit status."""
    if as_json:
        print(json.dumps({"runs": [_run_record(s) for s in summaries]}))
    else:
        for s in summaries:
            label = _network_label(s["rule"], s.get("alpha"), s.get("beta"))
            if s.get("test_acc") is None:
                result = "no test accuracy (no epoch finished)"
            else:
                top5 = f", top-5 {s['test_top5']:.2f} %" if s.get("test_top5") is not None else ""
                result = f"test accuracy {s['test_acc']:.2f} %{top5}"
            status = "" if s["status"] == "finished" else f" [{s['status']}]"
            print(f"{label}, seed {s['seed']}: {result}{status} ({s['seconds']:.1f} s) -> {s['run_dir']}")
    return EXIT_DIVERGED if any(s["status"] == "diverged" for s in summaries) else EXIT_OK


# -- train ----------------------------------------------------------------------------------------------


def _add_setting_flags(group: Any, names: Sequence[str] | None = None, show_defaults: bool = True) -> None:
    """One flag per ``TrainConfig`` setting (or per setting in ``names``), typed and documented by the
    setting itself; unset flags stay absent so config files keep their values."""
    from dualprop.training.config import settings

    for setting in settings():
        if names is not None and setting.name not in names:
            continue
        default = f" (default: {_default_text(setting)})" if show_defaults else ""
        common = {"dest": setting.name, "default": argparse.SUPPRESS, "help": setting.help + default}
        flag = "--" + setting.name.replace("_", "-")
        if setting.kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        else:
            metavar = {int: "N", float: "X"}.get(setting.kind, "VALUE")
            group.add_argument(
                flag, type=setting.kind, metavar=metavar, nargs="+" if setting.is_list else None, **common
            )


def _default_text(setting: Setting) -> str:
    """A setting's default as a user types it: ``on``/``off``, space-separated lists, what None means."""
    default = setting.default
    if default is None:
        return setting.unset
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, list):
        return " ".join(map(str, default))
    return str(default) if default != "" else "none"


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Every ``TrainConfig`` setting as a flag, plus ``--seed``."""
    group = parser.add_argument_group("settings (also keys of a --config TOML file)")
    _add_setting_flags(group)
    group.add_argument(
        "--seed", type=int, dest="seed", default=argparse.SUPPRESS, help="a single random seed (same as --seeds N)"
    )


def _config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from dualprop.training.config import field_names

    overrides = {name: getattr(args, name) for name in field_names() if hasattr(args, name)}
    if hasattr(args, "seed"):
        if "seeds" in overrides:
            raise UsageError("give either --seed or --seeds, not both")
        overrides["seeds"] = [args.seed]
    return overrides


def _add_train_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a network (no arguments: the digits quick start)",
        description="Train a network with a dual-propagation rule (and, with --baseline, backprop). "
        "Without arguments: an MLP on scikit-learn's digits with DP⊤ and a backprop baseline.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file of settings (flags override it)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (epoch lines remain)")
    from dualprop.training.distributed import DEFAULT_TIMEOUT_S

    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="under torchrun: how long a rank waits for the others before the job fails "
        f"(default: {DEFAULT_TIMEOUT_S:g})",
    )
    _add_config_flags(parser)


def _run_train(args: argparse.Namespace) -> int:
    from dualprop.training import TrainConfig, load_config, resume_run, train
    from dualprop.training.distributed import describe_failure, process_group

    if not (math.isfinite(args.dist_timeout) and args.dist_timeout > 0):
        raise UsageError(f"--dist-timeout must be a finite number of seconds > 0, got {args.dist_timeout:g}")
    overrides = _config_overrides(args)
    observer = _training_observer(show_bar=not args.no_progress)
    if args.resume:
        if args.config or overrides:
            raise UsageError("--resume continues a run with its own config.toml; give no other settings")
        saved = Path(args.resume) / "config.toml"
        device = load_config(saved).device if saved.is_file() else "auto"
    else:
        config = load_config(args.config) if args.config else TrainConfig()
        config = config.replace(**overrides).resolved()
        if "momentum" in overrides and config.optimizer != "sgd":
            raise UsageError(f"--momentum is a setting of optimizer 'sgd'; {config.optimizer!r} has none")
        _check_writable_directory(config.out, "--out")
        device = config.device
    _import_capture_machinery()
    with process_group(device, args.dist_timeout) as context:
        try:
            summaries = [resume_run(args.resume, observer)] if args.resume else train(config, observer)
        except RuntimeError as error:
            if context is None:
                raise
            raise DistributedJobFailure(describe_failure(error, context, args.dist_timeout)) from None
        if context is not None and not context.is_main:  # rank 0 reports for the job
            return EXIT_DIVERGED if any(s["status"] == "diverged" for s in summaries) else EXIT_OK
        return _report_runs(summaries, args.json)


# -- experiment -----------------------------------------------------------------------------------------


def _add_experiment_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "experiment",
        help="run a paper's setting shipped as a config",
        description="Run one of the papers' settings (all its configurations and seeds).",
    )
    parser.add_argument("name", nargs="?", help="experiment name (see --list) or a TOML file of that form")
    parser.add_argument("--list", action="store_true", help="list the shipped experiments")
    parser.add_argument(
        "--only",
        type=int,
        nargs="+",
        metavar="I",
        help="run only these configurations (1-based, in the order of --show)",
    )
    parser.add_argument("--show", action="store_true", help="print the configurations, train nothing")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (epoch lines remain)")
    _add_setting_flags(
        parser.add_argument_group("settings that override the experiment's"), _EXPERIMENT_OVERRIDES, show_defaults=False
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="train the runs (configurations × seeds) in N parallel processes, each with "
        "CPUs / N threads unless --threads says otherwise (default: 1)",
    )
    parser.add_argument(
        "--resume",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="continue an interrupted experiment in its --out folder (runs that ended are "
        "kept, unfinished ones continue from their last checkpoint, missing ones start), "
        "or an interrupted study in its directory",
    )
    study = parser.add_argument_group("study options (robustness-mlp, noise-robustness)")
    study.add_argument(
        "--dataset",
        default=argparse.SUPPRESS,
        help="mnist, fashion-mnist or digits (default: mnist for robustness-mlp, fashion-mnist "
        "for noise-robustness, where its files exist, else digits)",
    )
    study.add_argument(
        "--hidden", type=int, nargs="+", default=argparse.SUPPRESS, metavar="N", help="hidden widths of the MLP"
    )
    study.add_argument("--rules", nargs="+", default=argparse.SUPPRESS, help="rules of the grid")
    study.add_argument("--alphas", type=float, nargs="+", default=argparse.SUPPRESS, help="α values of the grid")
    study.add_argument("--betas", type=float, nargs="+", default=argparse.SUPPRESS, help="β values of the grid")
    study.add_argument(
        "--eps", type=float, nargs=2, default=argparse.SUPPRESS, help="the two PGD radii on the [0, 1] pixel scale"
    )
    study.add_argument("--lr", type=float, default=argparse.SUPPRESS, help="peak learning rate")
    study.add_argument(
        "--test-limit", type=int, default=argparse.SUPPRESS, help="test samples for the attacks (0: all)"
    )
    study.add_argument(
        "--sigmas",
        type=float,
        nargs="+",
        default=argparse.SUPPRESS,
        help="compartment noise σ values of the grid (noise-robustness)",
    )
    study.add_argument(
        "--quanta",
        type=float,
        nargs="+",
        default=argparse.SUPPRESS,
        help="stochastic-rounding resolutions q (noise-robustness)",
    )


_EXPERIMENT_OVERRIDES = ("epochs", "limit_batches", "data_dir", "out", "device", "seeds", "threads")
_STUDY_ONLY_FLAGS = ("dataset", "hidden", "rules", "alphas", "betas", "eps", "lr", "test_limit", "sigmas", "quanta")
_STUDY_SETTINGS = (*_STUDY_ONLY_FLAGS, "epochs", "limit_batches", "device", "data_dir")
STUDIES = {
    "robustness-mlp": "ICML 2024 MLP study: bp, dp, dpT, dp-damped, adversarial over α and β; "
    "stability, Lipschitz estimates and PGD accuracy",
    "noise-robustness": "DP⊤ and DP over β × compartment noise σ, asynchronous order and stochastic "
    "rounding, against backprop with the same noise",
}


def _study_kind(name: str) -> Any:
    """The config dataclass of the study ``name`` and its preferred dataset."""
    if name == "noise-robustness":
        from dualprop.analysis.noise_study import NoiseStudyConfig

        return NoiseStudyConfig, "fashion-mnist"
    from dualprop.analysis.study import StudyConfig

    return StudyConfig, "mnist"


def _run_study(args: argparse.Namespace) -> int:
    from dualprop.analysis.study import PLOT_FILE, TABLE_FILE, create_study, default_dataset, run_study, study_kind

    if args.jobs != 1 or hasattr(args, "threads"):
        raise UsageError("--jobs and --threads apply to experiments, not to the studies")
    if getattr(args, "resume", None):
        if any(hasattr(args, key) for key in (*_STUDY_SETTINGS, "seeds")):
            raise UsageError("--resume continues a study with its own study.toml; give no other settings")
        directory = args.resume
        try:
            kind_name = study_kind(directory)
        except ValueError as error:
            raise UsageError(str(error)) from None
        if kind_name != args.name:
            raise UsageError(
                f"{directory} holds a {kind_name} study; resume it with `dualprop experiment "
                f"{kind_name} --resume {directory}`"
            )
        kind, _ = _study_kind(kind_name)
    else:
        kind, preferred = _study_kind(args.name)
        values = {key: getattr(args, key) for key in _STUDY_SETTINGS if hasattr(args, key)}
        if hasattr(args, "seeds"):
            if len(args.seeds) != 1:
                raise UsageError("a study trains one seed per setting; give one --seeds value")
            values["seed"] = args.seeds[0]
        known = {f.name for f in fields(kind)}
        foreign = [key for key in values if key not in known]
        if foreign:
            raise UsageError(f"--{foreign[0].replace('_', '-')} is not a setting of the {args.name} study")
        if "dataset" not in values:
            values["dataset"], why = default_dataset(values.get("data_dir"), preferred)
            print(f"dualprop: {why}", file=sys.stderr)
        directory = create_study(kind(**values), getattr(args, "out", "studies"))
    print(f"study directory: {directory}", file=sys.stderr)
    observer = _training_observer(show_bar=not args.no_progress)

    def setting_done(setting: Any, record: dict[str, Any]) -> None:
        status = record["status"] + (
            f" at epoch {record['diverged_at']['epoch']}, step {record['diverged_at']['step']}"
            if record["diverged_at"]
            else ""
        )
        accuracy = "–" if record["test_acc"] is None else f"{record['test_acc']:.2f} %"
        print(f"  {setting.key}: {status}, test accuracy {accuracy}", file=sys.stderr)

    run_study(directory, observer, setting_done, kind)
    table = Path(directory) / TABLE_FILE
    print(table.read_text(encoding="utf-8"), end="")
    plot = f", {PLOT_FILE}" if (Path(directory) / PLOT_FILE).exists() else ""
    print(f"study written to {directory} ({TABLE_FILE}, results.json{plot})")
    return EXIT_OK


def _run_experiment(args: argparse.Namespace) -> int:
    from dualprop.analysis import GradientAngleLog
    from dualprop.training.experiments import experiment_names, load_experiment, run_experiment

    if args.list:
        width = max(map(len, [*experiment_names(), *STUDIES]))
        for name in experiment_names():
            experiment = load_experiment(name)
            print(f"{name:{width}s} {len(experiment.configs):2d} configs  {experiment.description}")
        for name, description in sorted(STUDIES.items()):
            print(f"{name:{width}s}      study    {description}")
        return EXIT_OK
    if not args.name:
        raise UsageError("experiment: give an experiment NAME or --list")
    if args.name in STUDIES:
        return _run_study(args)
    given = [key for key in _STUDY_ONLY_FLAGS if hasattr(args, key)]
    if given:
        raise UsageError(f"--{given[0].replace('_', '-')} applies to the studies ({', '.join(STUDIES)}) only")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    experiment = load_experiment(args.name)
    overrides = {key: getattr(args, key) for key in _EXPERIMENT_OVERRIDES if hasattr(args, key)}
    if hasattr(args, "resume"):
        if not Path(args.resume).is_dir():
            raise UsageError(f"--resume {args.resume}: no such directory")
        if "out" in overrides and Path(overrides["out"]).resolve() != Path(args.resume).resolve():
            raise UsageError("--resume DIR continues the runs in DIR; give no other --out")
        overrides["out"] = args.resume
    selected = list(enumerate(experiment.configs, start=1))
    if args.only:
        unknown = [i for i in args.only if not 1 <= i <= len(experiment.configs)]
        if unknown:
            raise UsageError(
                f"experiment {experiment.name} has configurations 1..{len(experiment.configs)}, not {unknown[0]}"
            )
        selected = [(i, c) for i, c in selected if i in args.only]
    configs = []
    for index, config in selected:
        changes = dict(overrides)
        if "epochs" in changes:  # keep the warm-up inside a shortened run
            changes["warmup_epochs"] = min(config.warmup_epochs, changes["epochs"])
        configs.append((index, config.replace(**changes).resolved()))
    if args.show:
        for index, config in configs:
            print(
                f"{index:2d}  {config.dataset} {config.model} {_network_label(config.rule, config.alpha, config.beta)}"
                f" schedule={config.schedule} passes={config.passes} epochs={config.epochs} "
                f"seeds={config.seeds}"
            )
        return EXIT_OK
    observer = _training_observer(show_bar=not args.no_progress and args.jobs == 1)

    def run_done(summary: dict[str, Any]) -> None:
        if args.jobs > 1:
            accuracy = "–" if summary.get("test_acc") is None else f"{summary['test_acc']:.2f} %"
            print(
                f"  {_network_label(summary['rule'], summary.get('alpha'), summary.get('beta'))}, seed "
                f"{summary['seed']}: {summary['status']}, test accuracy {accuracy}",
                file=sys.stderr,
            )

    if args.jobs == 1:  # the workers of --jobs N import it themselves
        _import_capture_machinery()
    summaries = run_experiment(
        [config for _, config in configs],
        jobs=args.jobs,
        resume=hasattr(args, "resume"),
        observer=observer,
        run_done=run_done,
        worker_observer=GradientAngleLog(),
    )
    return _report_runs(summaries, args.json)


# -- report ---------------------------------------------------------------------------------------------


def _add_report_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="mean ± std over seeds as a Markdown table, and training curves",
        description="Summarise run directories (or folders of them): one Markdown table row per setting, "
        "mean ± std over seeds; training curves as PNG when matplotlib is installed.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories or folders holding them")
    parser.add_argument("--plot", metavar="PNG", help="write training curves to this PNG file")
    parser.add_argument(
        "--plot-beta",
        metavar="PNG",
        help="write test accuracy against β (one line per α, one panel per rule) to this PNG file",
    )
    parser.add_argument("--output", metavar="FILE", help="also write the Markdown table to FILE")


def _run_report(args: argparse.Namespace) -> int:
    from dualprop.analysis.report import collect_runs, markdown_table, plot_accuracy_against_beta, plot_curves

    for path, flag in ((args.output, "--output"), (args.plot, "--plot"), (args.plot_beta, "--plot-beta")):
        if path:
            _check_new_file(path, flag)
    runs = collect_runs(args.runs)
    table = markdown_table(runs)
    print(table, end="")
    if args.output:
        _write_new_file(args.output, table)
    for path, plot in ((args.plot, plot_curves), (args.plot_beta, plot_accuracy_against_beta)):
        if path and not plot(runs, path):
            print(
                f"dualprop: no plot written to {path} (matplotlib is not installed"
                + (", or no run has both α and β)" if plot is plot_accuracy_against_beta else ")"),
                file=sys.stderr,
            )
    return EXIT_OK


# -- bench ----------------------------------------------------------------------------------------------


def _add_bench_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="step time and peak memory of each rule against backprop",
        description="Time full training steps (inference, update, optimizer step) of bp, fused DP⊤ and the "
        "generic state loop, interleaved round-robin; report median step time, peak memory and "
        "their ratios to bp of the same run, next to the ratio the matrix products of a chain predict.",
    )
    parser.add_argument(
        "--model",
        default="mnist-mlp",
        help="digits-mlp, mnist-mlp, vgg-like, vgg16, resnet20, vit, mixer, convnext, or mlp:<sizes> such as "
        "mlp:64-32-10 (default: mnist-mlp)",
    )
    parser.add_argument("--batch-size", type=int, default=256, metavar="N", help="(default: 256)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float64", "bfloat16"],
        help="parameter and input dtype (default: float32)",
    )
    parser.add_argument(
        "--autocast",
        default="none",
        choices=["none", "bf16", "fp16"],
        help="mixed precision for the learner step (default: none)",
    )
    from dualprop.learner import COMPILE_MODES

    parser.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default="none",
        metavar="MODE",
        choices=COMPILE_MODES,
        help="torch.compile every variant's learning step (Learner.compile_objective) in MODE: "
        "default, reduce-overhead (CUDA graphs) or max-autotune; --compile alone is "
        "default (default: none)",
    )
    parser.add_argument("--repeats", type=int, default=20, metavar="N", help="timed steps per rule (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed steps per rule (default: 3)")
    parser.add_argument(
        "--passes", type=int, default=3, metavar="K", help="passes K of the default generic variants (default: 3)"
    )
    parser.add_argument(
        "--variants",
        metavar="LIST",
        help="comma-separated, e.g. bp,dpT-fused,dpT-fw3,dp-fwbw2 (default: bp, dpT-fused, dpT-fwK, dpT-fwbwK, dp-fwK)",
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="(default: 0.5)")
    parser.add_argument("--beta", type=float, default=0.1, help="(default: 0.1)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="(default: 0)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--output", metavar="FILE", help="also write the results as JSON to FILE")


def _run_bench(args: argparse.Namespace) -> int:
    from dualprop.benchmark import BenchSettings, format_report, run_benchmark

    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else []
    settings = BenchSettings(
        model=args.model,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        autocast=args.autocast,
        compile=args.compile,
        repeats=args.repeats,
        warmup=args.warmup,
        passes=args.passes,
        alpha=args.alpha,
        beta=args.beta,
        seed=args.seed,
        threads=args.threads,
        variants=variants,
    )
    if args.output:
        _check_new_file(args.output, "--output")
    _import_capture_machinery()
    report = run_benchmark(settings)
    if args.output:
        _write_new_file(args.output, json.dumps(report.to_dict(), indent=2))
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return EXIT_OK


# -- diagnose -------------------------------------------------------------------------------------------


def _add_diagnose_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "diagnose",
        help="per-layer angle between a rule's update and backprop's gradient",
        description="Compare a rule's weight update with backprop's gradient of the batch-mean loss, layer by "
        "layer, on the first training batches at fixed weights: a run's checkpoint (RUN_DIR) or a "
        "fresh network from the settings. Prints cosine and angle per layer, writes a CSV and "
        "heat maps (layer × batch; layer × epoch from a run's diagnostics.csv) with matplotlib.",
    )
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="run directory (default: a fresh network)")
    parser.add_argument("--config", metavar="FILE", help="TOML file of settings for a fresh network")
    parser.add_argument("--checkpoint", default="best", help="best, last or a checkpoint file (default: best)")
    parser.add_argument("--batches", type=int, default=8, help="training batches to compare on (default: 8)")
    parser.add_argument(
        "--per",
        choices=("block", "parameter"),
        default="block",
        help="a layer is a block or a single parameter tensor (default: block)",
    )
    parser.add_argument("--float64", action="store_true", help="compute in double precision")
    parser.add_argument(
        "--output-dir", metavar="DIR", help="where the CSV and heat maps go (default: RUN_DIR, else OUT/diagnose)"
    )
    _add_config_flags(parser)


_NETWORK_SETTINGS = ("dataset", "pad_to", "model", "hidden", "activation")  # what a checkpoint's weights fix


def _run_diagnose(args: argparse.Namespace) -> int:
    import torch

    from dualprop.analysis.diagnosis import diagnose, write_diagnosis
    from dualprop.training import TrainConfig, load_config

    overrides = _config_overrides(args)
    if args.run_dir:
        if args.config:
            raise UsageError("diagnose: give RUN_DIR or --config, not both")
        network = [key for key in _NETWORK_SETTINGS if key in overrides]
        if network:
            raise UsageError(
                f"diagnose RUN_DIR: --{network[0].replace('_', '-')} would change the run's network; it is "
                f"the one of {Path(args.run_dir) / 'config.toml'} (give no RUN_DIR for a fresh network)"
            )
        config = load_config(Path(args.run_dir) / "config.toml")
    else:
        config = load_config(args.config) if args.config else TrainConfig()
    config = config.replace(**overrides).resolved()
    directory = args.output_dir or args.run_dir or str(Path(config.out) / "diagnose")
    _check_writable_directory(directory, "--output-dir" if args.output_dir else "output directory")
    _import_capture_machinery()
    result = diagnose(
        config, args.run_dir, args.checkpoint, args.batches, args.per, torch.float64 if args.float64 else torch.float32
    )
    print(f"{result.learner!r}: mean over {len(result.batches)} batches of {config.batch_size}")
    print(f"{'layer':24s} {'cosine':>10s} {'angle (°)':>10s}")
    for angle in result.mean_per_layer():
        print(f"{angle.layer:24s} {angle.cosine:10.6f} {angle.angle:10.3f}")
    for path in write_diagnosis(result, directory, args.run_dir):
        print(f"wrote {path}")
    return EXIT_OK


# -- robustness -----------------------------------------------------------------------------------------


def _add_robustness_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "robustness",
        help="clean, FGSM and PGD accuracy; spectral norms and Lipschitz estimates",
        description="Evaluate a run's checkpoint on the test set in the data range ([0, 1] pixel scale): clean "
        "accuracy, FGSM and PGD accuracy at each ε, per-layer spectral norms, their product bound "
        "and the empirical Lipschitz estimate. Writes robustness.json into RUN_DIR "
        "(robustness-2.json, … if it exists).",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory")
    parser.add_argument(
        "--eps",
        type=float,
        nargs="+",
        default=[0.01, 0.03, 0.1],
        help="attack radii on the [0, 1] pixel scale (default: 0.01 0.03 0.1)",
    )
    from dualprop.analysis.attacks import NORMS

    parser.add_argument("--norm", choices=NORMS, default="linf", help="attack norm (default: linf)")
    parser.add_argument("--checkpoint", default="best", help="best, last or a checkpoint file (default: best)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N test samples")
    parser.add_argument("--pgd-steps", type=int, default=10, help="PGD steps (default: 10)")
    parser.add_argument(
        "--lipschitz-samples",
        type=int,
        default=256,
        help="test inputs for the empirical Lipschitz estimate (default: 256)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of PGD starts and power iterations")
    parser.add_argument("--data-dir", help="data root directory (default: the run's)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


def _run_robustness(args: argparse.Namespace) -> int:
    from dualprop.analysis.robustness import evaluate_run_robustness, write_robustness_json

    for flag, value in (
        ("--limit", args.limit),
        ("--pgd-steps", args.pgd_steps),
        ("--lipschitz-samples", args.lipschitz_samples),
    ):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    bad_eps = [eps for eps in args.eps if not 0 <= eps < float("inf")]
    if bad_eps:
        raise UsageError(f"--eps must be finite radii >= 0, got {bad_eps[0]}")
    if Path(args.run_dir).is_dir():
        _check_writable_directory(args.run_dir, "RUN_DIR")
    _import_capture_machinery()
    report = evaluate_run_robustness(
        args.run_dir,
        args.eps,
        args.norm,
        args.checkpoint,
        args.limit,
        args.pgd_steps,
        args.lipschitz_samples,
        args.seed,
        args.data_dir,
    )
    path = write_robustness_json(args.run_dir, report)
    if args.json:
        print(json.dumps(report))
        return EXIT_OK
    print(
        f"{_network_label(report['rule'], report['alpha'], report['beta'])} on {report['dataset']}, "
        f"checkpoint epoch {report['checkpoint_epoch']}, {report['test_samples']} test samples"
    )
    print(f"clean accuracy {report['clean_acc']:.2f} %")
    print(
        f"{'eps':>8s} {'FGSM acc (%)':>13s} {'PGD acc (%)':>12s}   ({report['norm']}, PGD {report['pgd_steps']} steps)"
    )
    for row in report["attacks"]:
        print(f"{row['eps']:8g} {row['fgsm_acc']:13.2f} {row['pgd_acc']:12.2f}")
    norms = ", ".join(f"{n:.3f}" for n in report["spectral_norms"])
    print(f"spectral norms per block input: {norms}")
    print(
        f"Lipschitz: empirical max {report['lipschitz_max']:.3f} (mean {report['lipschitz_mean']:.3f}) "
        f"<= product bound {report['product_bound']:.3f}  (data range)"
    )
    print(f"wrote {path}")
    return EXIT_OK


# -- dispatch -------------------------------------------------------------------------------------------

COMMANDS: dict[str, tuple[Callable[[Any], None], Callable[[argparse.Namespace], int]]] = {
    "train": (_add_train_parser, _run_train),
    "experiment": (_add_experiment_parser, _run_experiment),
    "report": (_add_report_parser, _run_report),
    "bench": (_add_bench_parser, _run_bench),
    "diagnose": (_add_diagnose_parser, _run_diagnose),
    "robustness": (_add_robustness_parser, _run_robustness),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``dualprop`` parser with one subparser per entry of ``COMMANDS``."""
    from dualprop import __version__

    parser = _Parser(prog="dualprop", description="Dual propagation (DP, DP⊤) training for PyTorch.")
    parser.add_argument("--version", action="version", version=f"dualprop {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add_parser, _ in COMMANDS.values():
        add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad settings or data, 3 diverged,
    4 a distributed job failed, 128 + the signal's number when interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    streams = sys.stdout, sys.stderr
    with _interrupt_handlers() as received:
        sys.stdout, sys.stderr = _ClosedPipeTolerantStream(sys.stdout), _ClosedPipeTolerantStream(sys.stderr)
        try:
            return _dispatch(argv)
        except SystemExit as exit_request:  # --help and --version
            return exit_request.code if isinstance(exit_request.code, int) else EXIT_OK
        except BaseException as error:
            if received or isinstance(error, KeyboardInterrupt):
                signum = received[0] if received else signal.SIGINT
                _error(f"interrupted ({signal.Signals(signum).name})")
                return 128 + signum
            status, message = _failure(error, argv)
            _error(message)
            return status
        finally:
            sys.stdout, sys.stderr = streams


SIZE_FLAGS = ("--model", "--hidden", "--batch-size", "--pad-to", "--limit", "--lipschitz-samples", "--batches")


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says an allocation failed (host memory or a GPU's)."""
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        phrase in text for phrase in ("can't allocate memory", "out of memory", "not enough memory")
    )


def _memory_message(error: BaseException, argv: Sequence[str]) -> str:
    """One line for a failed allocation: how much was asked for and the size settings the user gave."""
    found = re.search(r"allocate (\d+) bytes", str(error))
    amount = f" {int(found.group(1)) / 2**30:.1f} GiB at once" if found else " more than is free"
    given: dict[str, str] = {}  # the last value of each flag, the one argparse keeps
    for index, argument in enumerate(argv):
        flag, _, value = argument.partition("=")
        if flag in SIZE_FLAGS and (value or index + 1 < len(argv)):
            given[flag] = value or argv[index + 1]
    settings = (
        "a size setting asks for more than this machine has ("
        + ", ".join(f"{flag} {value}" for flag, value in given.items())
        + ")"
        if given
        else "the network or data is too large for this machine"
    )
    return f"not enough memory: the command tried to allocate{amount}; {settings}"


def _dispatch(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        raise UsageError(f"choose a command: {', '.join(COMMANDS)} (dualprop train is the quick start)")
    return COMMANDS[args.command][1](args)


def _failure(error: BaseException, argv: Sequence[str]) -> tuple[int, str]:
    """The exit status and the one line for an error that ends a command; anything unforeseen is raised."""
    if _out_of_memory(error):
        return EXIT_USAGE, _memory_message(error, argv)
    checkpoint = sys.modules.get("dualprop.training.checkpoint")  # not imported: no CheckpointError either
    if isinstance(error, (UsageError, ValueError)) or (checkpoint and isinstance(error, checkpoint.CheckpointError)):
        return EXIT_USAGE, str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, OSError):
        return EXIT_USAGE, _file_system_error(error)
    if isinstance(error, DistributedJobFailure):
        return EXIT_DISTRIBUTED, str(error)
    experiments = sys.modules.get("dualprop.training.experiments")
    if experiments and isinstance(error, experiments.WorkerDied):
        return EXIT_USAGE, str(error)
    raise error
