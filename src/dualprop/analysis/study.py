"""Studies: grids of training runs in a resumable directory, and the robustness study of the MLP.

A study is a grid of settings, one training run each, in its own directory (never reused)::

    study.toml        the study's kind (``study = "robustness-mlp"`` when absent) and settings
    runs/             one run directory per setting (config, metrics, checkpoints, measurements)
    results.json      one record per finished setting, rewritten atomically after each
    results.md        the Markdown table and the findings paragraph derived from the numbers
    study.png         the study's plot (with matplotlib)

An interrupted study continues with :func:`run_study` on its directory: finished settings are kept,
a half-trained run resumes from its last checkpoint. A kind of study is a config dataclass with a
``KIND`` name and the methods of :class:`StudyKind`; this module's :class:`StudyConfig` is the robustness
study: one training run per setting (``bp`` once, ``adversarial`` per β, ``dp``/``dpT``/``dp-damped`` per
(α, β)), then for its best checkpoint the clean and PGD accuracy at two ε and the Lipschitz estimates
of :mod:`dualprop.analysis.robustness`; its plot shows them against β.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from dualprop.analysis.plotting import pyplot, save_png
from dualprop.analysis.robustness import evaluate_run_robustness, write_robustness_json
from dualprop.atomic import atomic_write
from dualprop.data import DataError, find_dataset_dir, get_spec
from dualprop.rules import RULE_TABLE
from dualprop.training.config import TrainConfig, dumps_toml, from_mapping, read_toml
from dualprop.training.rundir import CONFIG_FILE, SUMMARY_FILE, create_run_directory, write_json_atomic
from dualprop.training.runlock import run_directory_lock
from dualprop.training.trainer import TrainingObserver, resume_run, start_run

STUDY_FILE = "study.toml"
KIND_KEY = "study"
RESULTS_FILE = "results.json"
TABLE_FILE = "results.md"
PLOT_FILE = "study.png"
# the rules' display names; adversarial is the training method here, against which robustness is compared
_RULE_NAMES = {name: rule.display_name for name, rule in RULE_TABLE.items()} | {"adversarial": "adversarial training"}


class StudySetting(Protocol):
    """One cell of a study's grid."""

    @property
    def key(self) -> str:
        """A short unique name of the cell (the key of its record in ``results.json``)."""


class StudyKind(Protocol):
    """What :func:`create_study` and :func:`run_study` need of a study's config dataclass."""

    KIND: ClassVar[str]
    dataset: str

    def check(self) -> "StudyKind":
        """A checked copy; ``ValueError`` naming a bad setting."""

    def settings(self) -> list[StudySetting]:
        """The grid, in the order of the table."""

    def run_setting(self, setting: Any, directory: Path, observer: TrainingObserver | None) -> dict[str, Any]:
        """Train (or resume) and measure one setting; its record for ``results.json``."""

    def markdown(self, records: Sequence[dict[str, Any]]) -> str:
        """``results.md``: the table and the findings."""

    def plot(self, records: Sequence[dict[str, Any]], path: Path) -> bool:
        """Draw ``study.png``; False when matplotlib is missing."""


Kind = TypeVar("Kind", bound=StudyKind)


@dataclass
class StudyConfig:
    """Settings of a robustness study (the grid and the training shared by all its runs)."""

    KIND: ClassVar[str] = "robustness-mlp"

    dataset: str = "mnist"
    hidden: list[int] = field(default_factory=lambda: [512, 512])
    rules: list[str] = field(default_factory=lambda: ["bp", "dp", "dpT", "dp-damped", "adversarial"])
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    betas: list[float] = field(default_factory=lambda: [0.1, 0.5, 1.0, 2.0])
    eps: list[float] = field(default_factory=lambda: [0.05, 0.1])
    schedule: str = "forward-backward"
    passes: int = 2
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    warmup_epochs: int = 1
    limit_batches: int = 0
    seed: int = 0
    test_limit: int = 1000
    pgd_steps: int = 10
    lipschitz_samples: int = 256
    data_dir: str = ""
    device: str = "auto"

    def check(self) -> "StudyConfig":
        """A checked copy: a non-empty grid of valid training settings and two ε > 0."""
        config = dataclasses.replace(
            self,
            hidden=list(self.hidden),
            rules=list(self.rules),
            alphas=[float(a) for a in self.alphas],
            betas=[float(b) for b in self.betas],
            eps=[float(e) for e in self.eps],
        )
        for name in ("rules", "alphas", "betas"):
            if not getattr(config, name):
                raise ValueError(f"study {name} must list at least one value")
        if len(config.eps) != 2 or any(not (e > 0 and math.isfinite(e)) for e in config.eps):
            raise ValueError(f"study eps must be two numbers > 0, got {config.eps}")
        for name, least in (("test_limit", 0), ("pgd_steps", 1), ("lipschitz_samples", 1)):
            value = getattr(config, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"study {name} must be an integer >= {least}, got {value!r}")
        for setting in study_settings(config):  # the Learner and TrainConfig check rule, α, β and the rest
            config.train_config(setting).resolved()
        return config

    def train_config(self, setting: "Setting") -> TrainConfig:
        """The training configuration of one setting (written to its run directory)."""
        alpha = setting.alpha if setting.alpha is not None else 0.5
        beta = setting.beta if setting.beta is not None else 0.1
        return TrainConfig(
            rule=setting.rule,
            alpha=alpha,
            beta=beta,
            schedule=self.schedule,
            passes=self.passes,
            dataset=self.dataset,
            data_dir=self.data_dir or None,
            augment=False,
            model="mlp",
            hidden=list(self.hidden),
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            warmup_epochs=min(self.warmup_epochs, self.epochs),
            seeds=[self.seed],
            limit_batches=self.limit_batches,
            baseline=False,
            name="study",
            device=self.device,
            tensorboard=False,
        )

    def settings(self) -> list["Setting"]:
        """The grid (see :func:`study_settings`)."""
        return study_settings(self)

    def run_setting(
        self, setting: "Setting", directory: Path, observer: TrainingObserver | None = None
    ) -> dict[str, Any]:
        """Train and measure one setting (see :func:`run_setting`)."""
        return run_setting(self, setting, directory, observer)

    def markdown(self, records: Sequence[dict[str, Any]]) -> str:
        """The table and findings (see :func:`study_markdown`)."""
        return study_markdown(self, records)

    def plot(self, records: Sequence[dict[str, Any]], path: Path) -> bool:
        """The plot against β (see :func:`plot_study`)."""
        return plot_study(self, records, path)


@dataclass(frozen=True)
class Setting:
    """One cell of the grid; ``alpha`` / ``beta`` are None where the rule has no such parameter."""

    rule: str
    alpha: float | None
    beta: float | None

    @property
    def key(self) -> str:
        parts = [self.rule]
        if self.alpha is not None:
            parts.append(f"a{self.alpha:g}")
        if self.beta is not None:
            parts.append(f"b{self.beta:g}")
        return "-".join(parts)


def study_settings(config: StudyConfig) -> list[Setting]:
    """``bp`` once, ``adversarial`` per β, every nudged rule per (α, β), in the order of ``config.rules``."""
    settings = []
    for rule in config.rules:
        if rule == "bp":
            settings.append(Setting("bp", None, None))
        elif rule == "adversarial":
            settings.extend(Setting(rule, None, b) for b in config.betas)
        else:
            settings.extend(Setting(rule, a, b) for a in config.alphas for b in config.betas)
    return settings


def default_dataset(data_dir: str | None = None, preferred: str = "mnist") -> tuple[str, str]:
    """``(preferred, why)`` when that dataset's files are found, else ``("digits", why)``."""
    label = get_spec(preferred).name
    try:
        find_dataset_dir(get_spec(preferred), data_dir)
    except (DataError, ValueError, OSError):
        return "digits", (
            f"{label} files not found; using scikit-learn's digits with a 64-input MLP "
            f"(--dataset {label} --data-dir DIR for {label})"
        )
    return preferred, f"{label} files found"


# -- running ---------------------------------------------------------------------------------------------


def create_study(config: StudyKind, parent: str | Path) -> Path:
    """A new study directory ``parent/<KIND>-<dataset>`` (``-2``, … if taken) with ``study.toml``."""
    config = config.check()
    directory = create_run_directory(parent, f"{config.KIND}-{config.dataset}")
    values = {KIND_KEY: config.KIND, **dataclasses.asdict(config)}
    text = dumps_toml(values)
    atomic_write(directory / STUDY_FILE, lambda file: file.write(text), text=True)
    (directory / "runs").mkdir()
    return directory


def _study_values(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / STUDY_FILE
    if not path.is_file():
        raise ValueError(f"{directory} is not a study directory (no {STUDY_FILE})")
    return read_toml(path)


def study_kind(directory: str | Path) -> str:
    """The kind of the study in ``directory`` (``robustness-mlp`` for a study.toml without one)."""
    return str(_study_values(directory).get(KIND_KEY, StudyConfig.KIND))


def load_study(directory: str | Path, kind: type[Kind] = StudyConfig) -> Kind:
    """The settings of the study in ``directory``, which must be of ``kind``."""
    values = _study_values(directory)
    found = values.pop(KIND_KEY, StudyConfig.KIND)
    if found != kind.KIND:
        raise ValueError(f"{directory} holds a {found} study, not {kind.KIND}")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = [k for k in values if k not in known]
    if unknown:
        raise ValueError(f"{Path(directory) / STUDY_FILE}: unknown study setting {unknown[0]!r}")
    return kind(**values).check()


def read_results(directory: str | Path) -> dict[str, dict[str, Any]]:
    """Finished settings of a study, by setting key (empty for a new study)."""
    path = Path(directory) / RESULTS_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def _existing_run(runs: Path, config: TrainConfig) -> Path | None:
    """The run directory under ``runs`` already started with these Learner settings (for resuming)."""
    for candidate in sorted(runs.glob(f"*/{CONFIG_FILE}")):
        if (
            from_mapping(read_toml(candidate)).learner_settings() == config.learner_settings()
            and (candidate.parent / SUMMARY_FILE).exists()
        ):
            return candidate.parent
    return None


def train_setting(
    train_config: TrainConfig, directory: Path, observer: TrainingObserver | None = None
) -> dict[str, Any]:
    """Train ``train_config`` (first seed) into ``directory/runs``, resuming or reusing a run already
    started there with the same Learner settings; returns the run's summary, whose ``run_dir`` is the
    run's place as seen from here (a summary written from another working directory says otherwise)."""
    train_config = train_config.replace(out=str(directory / "runs")).resolved()
    run_dir = _existing_run(directory / "runs", train_config)
    if run_dir is None:
        return start_run(train_config, train_config.seeds[0], observer)
    return {**resume_run(run_dir, observer), "run_dir": str(run_dir)}


def run_setting(
    config: StudyConfig, setting: Setting, directory: Path, observer: TrainingObserver | None = None
) -> dict[str, Any]:
    """Train one setting (or resume / reuse its run) and measure it; returns its result record."""
    summary = train_setting(config.train_config(setting), directory, observer)
    record: dict[str, Any] = {
        "rule": setting.rule,
        "alpha": setting.alpha,
        "beta": setting.beta,
        "run_dir": summary["run_dir"],
        "status": summary["status"],
        "test_acc": summary.get("test_acc"),
        "diverged_at": summary.get("diverged_at"),
        "epochs_completed": summary.get("epochs_completed"),
        "seconds": summary.get("seconds"),
        "robustness": None,
    }
    if summary.get("best_epoch"):
        report = evaluate_run_robustness(
            summary["run_dir"],
            config.eps,
            limit=config.test_limit or None,
            pgd_steps=config.pgd_steps,
            lipschitz_samples=config.lipschitz_samples,
            seed=config.seed,
            data_dir=config.data_dir or None,
        )
        write_robustness_json(summary["run_dir"], report)
        record["robustness"] = {
            key: report[key]
            for key in (
                "clean_acc",
                "attacks",
                "lipschitz_max",
                "lipschitz_mean",
                "product_bound",
                "spectral_norms",
                "checkpoint_epoch",
                "test_samples",
            )
        }
    return record


def run_study(
    directory: str | Path,
    observer: TrainingObserver | None = None,
    setting_done: Callable[[Any, dict[str, Any]], None] | None = None,
    kind: type[StudyKind] = StudyConfig,
) -> dict[str, dict[str, Any]]:
    """Run every unfinished setting of the ``kind`` study in ``directory``, then write the table and plot.

    The study directory is locked meanwhile (:func:`run_directory_lock`): a second process on it stops
    with a ``ValueError`` naming the first."""
    directory = Path(directory)
    with run_directory_lock(directory):
        config = load_study(directory, kind)
        results = read_results(directory)
        for setting in config.settings():
            if setting.key in results:
                continue
            results[setting.key] = config.run_setting(setting, directory, observer)
            write_json_atomic(results, directory / RESULTS_FILE)
            if setting_done is not None:
                setting_done(setting, results[setting.key])
        ordered = [results[s.key] for s in config.settings() if s.key in results]
        markdown = config.markdown(ordered)
        atomic_write(directory / TABLE_FILE, lambda file: file.write(markdown), text=True)
        config.plot(ordered, directory / PLOT_FILE)
    return results


# -- reporting ------------------------------------------------------------------------------------------


def _pgd(record: dict[str, Any], index: int) -> float | None:
    robustness = record.get("robustness")
    return robustness["attacks"][index]["pgd_acc"] if robustness else None


def _lipschitz(record: dict[str, Any]) -> float | None:
    robustness = record.get("robustness")
    return robustness["lipschitz_max"] if robustness else None


def _number(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _diverged(record: dict[str, Any]) -> str:
    where = record.get("diverged_at")
    if record["status"] != "diverged" or not where:
        return "no"
    return f"yes: epoch {where['epoch']}, step {where['step']} ({where['reason']})"


def study_markdown(config: StudyConfig, records: Sequence[dict[str, Any]]) -> str:
    """The study table (one row per setting) followed by a findings paragraph computed from it."""
    eps1, eps2 = config.eps
    lines = [
        f"# Robustness study: MLP {'–'.join(map(str, config.hidden))} on {config.dataset}",
        "",
        f"{config.epochs} epochs, batch {config.batch_size}, lr {config.lr:g}, schedule {config.schedule} × "
        f"{config.passes}, seed {config.seed}"
        + (f", at most {config.limit_batches} batches per epoch" if config.limit_batches else "")
        + f". Robustness of each run's best checkpoint on {_test_samples(config, records)} test samples; "
        f"ε on the [0, 1] pixel scale, PGD ℓ∞ with {config.pgd_steps} steps. Lipschitz: empirical "
        f"max ‖J(x)‖₂ over {config.lipschitz_samples} test inputs (lower bound) and the product of the "
        f"layers' spectral norms (upper bound).",
        "",
        f"| rule | α | β | test acc (%) | diverged | Lipschitz (emp.) | Lipschitz (product) | "
        f"PGD acc ε={eps1:g} (%) | PGD acc ε={eps2:g} (%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        robustness = r.get("robustness") or {}
        alpha = "–" if r["alpha"] is None else f"{r['alpha']:g}"
        beta = "–" if r["beta"] is None else f"{r['beta']:g}"
        lines.append(
            f"| {r['rule']} | {alpha} | {beta} | {_number(r['test_acc'])} | {_diverged(r)} | "
            f"{_number(robustness.get('lipschitz_max'))} | {_number(robustness.get('product_bound'), 1)} | "
            f"{_number(_pgd(r, 0))} | {_number(_pgd(r, 1))} |"
        )
    lines += ["", "## Findings", "", findings(config, records), ""]
    return "\n".join(lines)


def _test_samples(config: StudyConfig, records: Sequence[dict[str, Any]]) -> str:
    """How many test samples the attacks used (as measured, else as configured)."""
    measured = {r["robustness"]["test_samples"] for r in records if r.get("robustness")}
    if len(measured) == 1:
        return str(measured.pop())
    return str(config.test_limit or "all")


def _series(records: Sequence[dict[str, Any]], rule: str, alpha: float | None) -> list[dict[str, Any]]:
    return sorted((r for r in records if r["rule"] == rule and r["alpha"] == alpha), key=lambda r: r["beta"])


def _trend(values: Sequence[float]) -> str:
    """``rises``, ``falls`` or ``is not monotone`` for a sequence ordered by β."""
    steps = [b - a for a, b in zip(values, values[1:])]
    if all(s > 0 for s in steps):
        return "rises"
    if all(s < 0 for s in steps):
        return "falls"
    return "is not monotone"


def findings(config: StudyConfig, records: Sequence[dict[str, Any]]) -> str:
    """A short paragraph that states what the numbers show (and where they do not show the expected)."""
    sentences = []
    chance = 100.0 / 10
    # Stability.
    for rule in ("dp", "dpT", "dp-damped"):
        runs = [r for r in records if r["rule"] == rule]
        if not runs:
            continue
        diverged = [r for r in runs if r["status"] == "diverged"]
        failed = [r for r in runs if r["status"] != "diverged" and (r["test_acc"] or 0.0) < 2 * chance]
        text = f"{_RULE_NAMES[rule]} diverged in {len(diverged)} of {len(runs)} settings"
        if diverged:
            text += (
                " ("
                + ", ".join(f"α={r['alpha']:g} β={r['beta']:g} at epoch {r['diverged_at']['epoch']}" for r in diverged)
                + ")"
            )
        if failed:
            text += "; it stayed finite but did not learn (test accuracy below twice chance) in " + ", ".join(
                f"α={r['alpha']:g} β={r['beta']:g}" for r in failed
            )
        sentences.append(text + ".")
    dp_bad = [
        r for r in records if r["rule"] == "dp" and (r["status"] == "diverged" or (r["test_acc"] or 0) < 2 * chance)
    ]
    dpt_bad = [
        r for r in records if r["rule"] == "dpT" and (r["status"] == "diverged" or (r["test_acc"] or 0) < 2 * chance)
    ]
    if any(r["rule"] == "dp" for r in records) and any(r["rule"] == "dpT" for r in records):
        asymmetric_large = [r for r in dp_bad if r["alpha"] != 0.5 and r["beta"] >= max(config.betas) / 2]
        if dp_bad and not dpt_bad:
            sentences.append(
                "As expected, DP failed only under nudging where DP⊤ with the same α and β stayed "
                "stable"
                + (
                    ", and its failures sit at asymmetric α with large β."
                    if len(asymmetric_large) == len(dp_bad)
                    else ", though not only at asymmetric α with large β."
                )
            )
        elif not dp_bad:
            sentences.append(
                f"The instability of DP under asymmetric nudging at large β that the paper reports "
                f"did not show in this measurement ({config.epochs} epochs"
                + (f", {config.limit_batches} batches each" if config.limit_batches else "")
                + ")."
            )
        else:
            sentences.append(f"Unlike the paper's claim of a stable DP⊤, DP⊤ also failed in {len(dpt_bad)} settings.")
    bp = next((r for r in records if r["rule"] == "bp"), None)
    # Accuracy cost against backprop.
    if bp is not None and bp["test_acc"] is not None:
        losses = []
        for rule in ("dp", "dpT", "dp-damped", "adversarial"):
            finished = [r for r in records if r["rule"] == rule and r["test_acc"] is not None]
            if finished:
                worst = min(finished, key=lambda r: r["test_acc"])
                where = ("" if worst["alpha"] is None else f"α={worst['alpha']:g} ") + f"β={worst['beta']:g}"
                losses.append(f"{_RULE_NAMES[rule]} {worst['test_acc'] - bp['test_acc']:+.2f} ({where})")
        if losses:
            sentences.append(
                f"Lowest test accuracy against backprop's {bp['test_acc']:.2f} %, in points: " + "; ".join(losses) + "."
            )
    # Lipschitz against β.
    bp_lipschitz = _lipschitz(bp) if bp else None
    trends = []
    for rule in ("dp", "dpT", "dp-damped", "adversarial"):
        alphas = [None] if rule == "adversarial" else config.alphas
        for alpha in alphas:
            series = [
                r
                for r in _series(records, rule, alpha)
                if _lipschitz(r) is not None and math.isfinite(_lipschitz(r)) and r["status"] != "diverged"
            ]
            if len(series) >= 2:
                values = [_lipschitz(r) for r in series]
                label = _RULE_NAMES[rule] + ("" if alpha is None else f" α={alpha:g}")
                trends.append((label, _trend(values), values[0], values[-1], series[0]["beta"], series[-1]["beta"]))
    if trends:
        falling = [t for t in trends if t[1] == "falls"]
        sentences.append(
            f"The empirical Lipschitz estimate falls monotonically with β in {len(falling)} of {len(trends)} "
            f"series ("
            + "; ".join(f"{t[0]}: {t[1]}, {t[2]:.2f} at β={t[4]:g} → {t[3]:.2f} at β={t[5]:g}" for t in trends)
            + ")."
        )
        if len(falling) * 2 < len(trends):
            sentences.append(
                "So this measurement does not support a general shrinking of the Lipschitz constant with larger β."
            )
    if bp_lipschitz is not None:
        nudged = [r for r in records if r["rule"] != "bp" and _lipschitz(r) is not None and r["status"] != "diverged"]
        below = [r for r in nudged if _lipschitz(r) < bp_lipschitz]
        sentences.append(
            f"Backprop's Lipschitz estimate is {bp_lipschitz:.2f}; {len(below)} of {len(nudged)} other "
            f"non-diverged settings lie below it."
        )
    # α at fixed β for DP⊤.
    dpt = [r for r in records if r["rule"] == "dpT" and _lipschitz(r) is not None and r["status"] != "diverged"]
    if len({r["alpha"] for r in dpt}) >= 2:
        by_alpha: dict[float, list[float]] = {}
        for r in dpt:
            by_alpha.setdefault(r["alpha"], []).append(_lipschitz(r))
        means = {a: sum(v) / len(v) for a, v in sorted(by_alpha.items())}
        sentences.append(
            "Mean DP⊤ Lipschitz estimate over β by α: " + ", ".join(f"α={a:g}: {m:.2f}" for a, m in means.items()) + "."
        )
    # Robustness against Lipschitz.
    pairs = [
        (_lipschitz(r), _pgd(r, 1))
        for r in records
        if _lipschitz(r) is not None
        and _pgd(r, 1) is not None
        and math.isfinite(_lipschitz(r))
        and r["status"] != "diverged"
    ]
    if len(pairs) >= 3:
        correlation = _pearson([math.log(max(p[0], 1e-12)) for p in pairs], [p[1] for p in pairs])
        if correlation is not None:
            sentences.append(
                f"Across settings, PGD accuracy at ε={config.eps[1]:g} and log Lipschitz estimate "
                f"correlate with r = {correlation:.2f}"
                + (
                    " (lower Lipschitz, more robust)."
                    if correlation < -0.3
                    else " (weak or no link between the estimate and robustness here)."
                    if correlation <= 0.3
                    else " (higher estimate, more robust: opposite to the expected link)."
                )
            )
    best = max((r for r in records if _pgd(r, 1) is not None), key=lambda r: _pgd(r, 1), default=None)
    if best is not None:
        label = (
            best["rule"]
            + (f" α={best['alpha']:g}" if best["alpha"] is not None else "")
            + (f" β={best['beta']:g}" if best["beta"] is not None else "")
        )
        sentences.append(
            f"The most robust setting at ε={config.eps[1]:g} is {label} with {_pgd(best, 1):.1f} % "
            f"PGD accuracy" + (f" (backprop: {_pgd(bp, 1):.1f} %)." if bp and _pgd(bp, 1) is not None else ".")
        )
    return " ".join(sentences) if sentences else "No setting finished, so there is nothing to report."


def _pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Sample Pearson correlation; None when either sequence is constant."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / math.sqrt(sxx * syy)


def plot_study(config: StudyConfig, records: Sequence[dict[str, Any]], path: str | Path) -> bool:
    """Lipschitz estimate, PGD accuracy (second ε) and test accuracy against β, one line per rule and α;
    backprop as a dashed line. Returns False (writing nothing) when matplotlib is not installed."""
    plt = pyplot()
    if plt is None:
        return False
    panels = (
        ("Lipschitz estimate (empirical)", _lipschitz),
        (f"PGD accuracy at ε={config.eps[1]:g} (%)", lambda r: _pgd(r, 1)),
        ("test accuracy (%)", lambda r: r["test_acc"]),
    )
    figure, axes = plt.subplots(1, 3, figsize=(17, 4.2))
    series_keys = list(dict.fromkeys((r["rule"], r["alpha"]) for r in records if r["beta"] is not None))
    bp = next((r for r in records if r["rule"] == "bp"), None)
    for axis, (label, value) in zip(axes, panels):
        for rule, alpha in series_keys:
            points = [
                (r["beta"], value(r))
                for r in _series(records, rule, alpha)
                if value(r) is not None and math.isfinite(value(r)) and r["status"] != "diverged"
            ]
            if points:
                name = _RULE_NAMES[rule] + ("" if alpha is None else f" α={alpha:g}")
                axis.plot(*zip(*points), marker="o", label=name)
        if bp is not None and value(bp) is not None:
            axis.axhline(value(bp), color="black", linestyle="--", label="backprop")
        axis.set(xlabel="β", ylabel=label, xscale="log")
    axes[0].set_yscale("log")
    if axes[-1].get_legend_handles_labels()[0]:
        axes[-1].legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.suptitle(f"MLP {'–'.join(map(str, config.hidden))} on {config.dataset}: diverged runs omitted")
    figure.tight_layout()
    save_png(figure, path)
    return True
