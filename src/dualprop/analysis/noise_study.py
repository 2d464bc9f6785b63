"""The noise-robustness study: dual propagation on noisy, asynchronous, low-precision dyadic neurons.

Grid (one training run each, in a study directory of :mod:`dualprop.analysis.study`):

* DP⊤ at every α of ``dpt_alphas`` and DP at every α of ``dp_alphas``, over ``betas`` × ``sigmas``
  (compartment noise ``state_noise = σ``, synchronous ``schedule`` × ``passes``);
* the fair reference: backprop with the same noise on every neuron's activation and per-sample gradient,
  at every σ (and every quantum ``q``);
* asynchronous against synchronous: each rule over ``async_betas`` × ``async_sigmas`` with
  ``schedule="random"`` and ``async_passes`` (``K·L`` visits to uniformly random neurons);
* resolution: each rule over ``quantum_betas`` × ``quanta`` (stochastic rounding to multiples of q, σ = 0).

The reading the findings test: with compartments perturbed independently, ``s⁺ − s⁻`` carries the signal
``β ∇ℓ`` (times the Jacobian) against noise of standard deviation ``√2 σ``, so learning should need
``β / (√2 σ)`` above some threshold — a small β, the limit in which DP approximates backprop, drowns.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dualprop.analysis.heatmap import HeatmapPanel, plot_heatmaps
from dualprop.analysis.study import Setting, train_setting
from dualprop.data import DataError, get_spec
from dualprop.rules import display_name
from dualprop.training.config import TrainConfig
from dualprop.training.trainer import TrainingObserver

SYNC, ASYNC = "sync", "async"
MATCH_POINTS = 5.0
"""A noisy setting is near its rule's noise-free accuracy when it is at most this many points below."""
LEARNING_MARGIN = 0.1
"""A setting learns when its accuracy is this share of the way from chance to 100 % or more."""


@dataclass(frozen=True)
class NoiseSetting:
    """One cell: a rule variant (``alpha``/``beta`` None for bp), noise σ, quantum q, sync or async order."""

    rule: str
    alpha: float | None
    beta: float | None
    sigma: float
    quantum: float
    timing: str = SYNC

    @property
    def key(self) -> str:
        """The robustness study's ``rule-aα-bβ`` followed by ``-sσ-qq-sync`` (or ``-async``)."""
        return f"{Setting(self.rule, self.alpha, self.beta).key}-s{self.sigma:g}-q{self.quantum:g}-{self.timing}"


@dataclass
class NoiseStudyConfig:
    """Settings of a noise-robustness study (the grid and the training shared by all its runs)."""

    KIND: ClassVar[str] = "noise-robustness"

    dataset: str = "fashion-mnist"
    data_dir: str = ""
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    dpt_alphas: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    dp_alphas: list[float] = field(default_factory=lambda: [0.5])
    betas: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0])
    sigmas: list[float] = field(default_factory=lambda: [0.0, 0.001, 0.01, 0.1])
    bp_reference: bool = True
    schedule: str = "forward-backward"
    passes: int = 2
    async_passes: int = 3
    async_betas: list[float] = field(default_factory=lambda: [0.1, 1.0])
    async_sigmas: list[float] = field(default_factory=lambda: [0.0, 0.01])
    quanta: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1])
    quantum_betas: list[float] = field(default_factory=lambda: [0.1, 1.0])
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.05
    warmup_epochs: int = 1
    limit_batches: int = 156
    seed: int = 0
    noise_seed: int = 0
    device: str = "auto"

    _LISTS: ClassVar[tuple[str, ...]] = (
        "dpt_alphas",
        "dp_alphas",
        "betas",
        "sigmas",
        "async_betas",
        "async_sigmas",
        "quanta",
        "quantum_betas",
    )

    def check(self) -> "NoiseStudyConfig":
        """A checked copy: a non-empty β × σ grid and rules, every setting valid for TrainConfig and Learner."""
        config = dataclasses.replace(
            self, hidden=list(self.hidden), **{name: [float(v) for v in getattr(self, name)] for name in self._LISTS}
        )
        for name in ("betas", "sigmas"):
            if not getattr(config, name):
                raise ValueError(f"study {name} must list at least one value")
        if not config.dpt_alphas and not config.dp_alphas:
            raise ValueError("study dpt_alphas and dp_alphas must not both be empty")
        for setting in config.settings():  # TrainConfig and the Learner check every value
            config.train_config(setting).resolved()
        return config

    def variants(self) -> list[tuple[str, float]]:
        """The dual-propagation rule variants ``(rule, α)``, DP⊤ first."""
        return [("dpT", a) for a in self.dpt_alphas] + [("dp", a) for a in self.dp_alphas]

    def settings(self) -> list[NoiseSetting]:
        """Main grid (variant × β × σ), bp reference (σ, then q), asynchronous block, quantum block; a block's
        synchronous or q = 0 partner outside the main grid is added to it."""
        grid = [
            NoiseSetting(rule, a, b, s, 0.0) for rule, a in self.variants() for b in self.betas for s in self.sigmas
        ]
        reference = (
            (
                [NoiseSetting("bp", None, None, s, 0.0) for s in self.sigmas]
                + [NoiseSetting("bp", None, None, 0.0, q) for q in self.quanta]
            )
            if self.bp_reference
            else []
        )
        asynchronous = [
            NoiseSetting(rule, a, b, s, 0.0, timing)
            for rule, a in self.variants()
            for b in self.async_betas
            for s in self.async_sigmas
            for timing in (SYNC, ASYNC)
        ]
        quantised = [
            NoiseSetting(rule, a, b, 0.0, q)
            for rule, a in self.variants()
            for b in self.quantum_betas
            for q in (0.0, *self.quanta)
        ]
        return list(dict.fromkeys(grid + reference + asynchronous + quantised))  # each partner once

    def train_config(self, setting: NoiseSetting) -> TrainConfig:
        """The training configuration of one setting (written to its run directory)."""
        schedule, passes = ("random", self.async_passes) if setting.timing == ASYNC else (self.schedule, self.passes)
        return TrainConfig(
            rule=setting.rule,
            alpha=0.5 if setting.alpha is None else setting.alpha,
            beta=0.1 if setting.beta is None else setting.beta,
            schedule=schedule,
            passes=passes,
            state_noise=setting.sigma,
            state_quantum=setting.quantum,
            noise_seed=self.noise_seed,
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
            name="noise",
            device=self.device,
            tensorboard=False,
        )

    def run_setting(
        self, setting: NoiseSetting, directory: Path, observer: TrainingObserver | None = None
    ) -> dict[str, Any]:
        """Train (or resume) one setting; its record: the setting, status and test accuracy."""
        summary = train_setting(self.train_config(setting), directory, observer)
        return {
            **dataclasses.asdict(setting),
            "run_dir": summary["run_dir"],
            "status": summary["status"],
            "test_acc": summary.get("test_acc"),
            "diverged_at": summary.get("diverged_at"),
            "epochs_completed": summary.get("epochs_completed"),
            "seconds": summary.get("seconds"),
        }

    def markdown(self, records: Sequence[dict[str, Any]]) -> str:
        """See :func:`noise_markdown`."""
        return noise_markdown(self, records)

    def plot(self, records: Sequence[dict[str, Any]], path: Path) -> bool:
        """See :func:`plot_noise_heatmap`."""
        return plot_noise_heatmap(self, records, path)


# -- reading the records -----------------------------------------------------------------------------------


def _variant_label(rule: str, alpha: float | None) -> str:
    if alpha is None:
        return display_name(rule)
    return f"{display_name(rule)} α={alpha:g}"


def _find(
    records: Sequence[dict[str, Any]],
    rule: str,
    alpha: float | None,
    beta: float | None,
    sigma: float,
    quantum: float = 0.0,
    timing: str = SYNC,
) -> dict[str, Any] | None:
    for r in records:
        if (r["rule"], r["alpha"], r["beta"], r["sigma"], r["quantum"], r["timing"]) == (
            rule,
            alpha,
            beta,
            sigma,
            quantum,
            timing,
        ):
            return r
    return None


def _accuracy(record: dict[str, Any] | None) -> float:
    """Test accuracy in %, NaN when missing or the run diverged (no usable network)."""
    if record is None or record["test_acc"] is None or record["status"] == "diverged":
        return math.nan
    return float(record["test_acc"])


def _cell(record: dict[str, Any] | None) -> str:
    if record is None:
        return "…"
    if record["status"] == "diverged":
        return "diverged"
    return "–" if record["test_acc"] is None else f"{record['test_acc']:.1f}"


def dataset_classes(dataset: str) -> int:
    """The number of classes of ``dataset``: the registry's count for a named dataset, ``max(y_train) + 1``
    (the rule of :mod:`dualprop.data.arrays`) for an ``.npz`` file; ``DataError`` if that file is unreadable."""
    if not dataset.lower().endswith(".npz"):
        return get_spec(dataset).num_classes
    try:
        with np.load(dataset, allow_pickle=False) as archive:
            labels = archive["y_train"]
    except (OSError, KeyError, ValueError) as error:
        raise DataError(f"cannot read the training labels y_train of {dataset}: {error}") from None
    if not labels.size:
        raise DataError(f"{dataset} holds no training labels y_train")
    return int(labels.max()) + 1


def chance_accuracy(classes: int) -> float:
    """Test accuracy in % of guessing among ``classes`` equally frequent classes: ``100 / classes``."""
    return 100.0 / classes


def learning_threshold(classes: int) -> float:
    """The accuracy in % from which a setting counts as learning: ``LEARNING_MARGIN`` of the way from chance
    to 100 % (19 % with 10 classes, 10.9 % with 100)."""
    chance = chance_accuracy(classes)
    return chance + LEARNING_MARGIN * (100.0 - chance)


def learns(accuracy: float, classes: int) -> bool:
    """Whether a test accuracy (in %; NaN for a diverged or missing run) is clearly above chance."""
    return math.isfinite(accuracy) and accuracy >= learning_threshold(classes)


# -- the report --------------------------------------------------------------------------------------------


def noise_markdown(config: NoiseStudyConfig, records: Sequence[dict[str, Any]]) -> str:
    """``results.md``: accuracy over β × σ per rule (with the bp line), asynchronous against synchronous,
    quantisation, and the findings paragraph computed from the same numbers."""
    sigmas, lines = config.sigmas, []
    lines += [
        f"# Noise robustness: MLP {'–'.join(map(str, config.hidden))} on {config.dataset}",
        "",
        f"{config.epochs} epochs, batch {config.batch_size}, lr {config.lr:g}"
        + (
            f", {config.limit_batches} batches per epoch (≈{config.limit_batches * config.batch_size} training samples)"
            if config.limit_batches
            else ""
        )
        + f", seed {config.seed}, noise seed {config.noise_seed}. Synchronous: schedule {config.schedule} × "
        f"{config.passes}; asynchronous: `random` × {config.async_passes} (K·L visits to uniformly random "
        f"neurons). σ: standard deviation of the Gaussian noise added to s⁺ and s⁻ at every update; "
        f"q: stochastic rounding of the compartments to multiples of q. Test accuracy in %.",
        "",
        "## Accuracy over β and σ (synchronous, q = 0)",
        "",
        "| rule | β | " + " | ".join(f"σ={s:g}" for s in sigmas) + " |",
        "|---|---|" + "---|" * len(sigmas),
    ]
    for rule, alpha in config.variants():
        for beta in config.betas:
            lines.append(
                f"| {_variant_label(rule, alpha)} | {beta:g} | "
                + " | ".join(_cell(_find(records, rule, alpha, beta, s)) for s in sigmas)
                + " |"
            )
    if config.bp_reference:
        lines.append(
            "| backprop (same noise on activations and gradients) | – | "
            + " | ".join(_cell(_find(records, "bp", None, None, s)) for s in sigmas)
            + " |"
        )
    if config.async_betas and config.async_sigmas:
        lines += [
            "",
            f"## Asynchronous (`random` × {config.async_passes}) against synchronous "
            f"({config.schedule} × {config.passes})",
            "",
            "| rule | β | σ | synchronous | asynchronous | difference |",
            "|---|---|---|---|---|---|",
        ]
        for rule, alpha in config.variants():
            for beta in config.async_betas:
                for sigma in config.async_sigmas:
                    sync = _find(records, rule, alpha, beta, sigma)
                    late = _find(records, rule, alpha, beta, sigma, timing=ASYNC)
                    difference = _accuracy(late) - _accuracy(sync)
                    lines.append(
                        f"| {_variant_label(rule, alpha)} | {beta:g} | {sigma:g} | {_cell(sync)} | "
                        f"{_cell(late)} | {'–' if math.isnan(difference) else f'{difference:+.1f}'} |"
                    )
    if config.quanta:
        quanta = [0.0] + config.quanta
        lines += [
            "",
            "## Resolution: stochastic rounding to multiples of q (σ = 0, synchronous)",
            "",
            "| rule | β | " + " | ".join(f"q={q:g}" for q in quanta) + " |",
            "|---|---|" + "---|" * len(quanta),
        ]
        for rule, alpha in config.variants():
            for beta in config.quantum_betas:
                lines.append(
                    f"| {_variant_label(rule, alpha)} | {beta:g} | "
                    + " | ".join(_cell(_find(records, rule, alpha, beta, 0.0, q)) for q in quanta)
                    + " |"
                )
        if config.bp_reference:
            lines.append(
                "| backprop | – | " + " | ".join(_cell(_find(records, "bp", None, None, 0.0, q)) for q in quanta) + " |"
            )
    lines += ["", "## Findings", "", noise_findings(config, records), ""]
    return "\n".join(lines)


def noise_findings(config: NoiseStudyConfig, records: Sequence[dict[str, Any]], classes: int | None = None) -> str:
    """What the numbers show, one short bullet per question: the smallest β that learns at each σ, whether
    ``β/(√2σ)`` decides, the bp reference, asynchronous against synchronous, and the cost of rounding.
    ``classes`` (default: those of the study's dataset) sets chance and the learning threshold."""
    classes = dataset_classes(config.dataset) if classes is None else classes
    findings = [
        smallest_beta_finding(config, records, classes),
        signal_to_noise_finding(records, classes),
        backprop_finding(config, records),
        asynchrony_finding(config, records),
        rounding_finding(config, records),
    ]
    bullets = [f"- {finding}" for finding in findings if finding]
    return "\n".join(bullets) if bullets else "No setting finished, so there is nothing to report."


def by_rule(texts: Sequence[tuple[str, str]]) -> str:
    """``[(rule label, text)]`` as ``text for every rule`` when all of several rules agree, else each distinct
    text ``for`` its rules, in order of first appearance."""
    groups: dict[str, list[str]] = {}
    for label, text in texts:
        groups.setdefault(text, []).append(label)
    if len(groups) == 1 and len(texts) > 1:
        return f"{next(iter(groups))} for every rule"
    return "; ".join(f"{text} for {_and(labels)}" for text, labels in groups.items())


def smallest_beta_finding(config: NoiseStudyConfig, records: Sequence[dict[str, Any]], classes: int) -> str | None:
    """Per σ, the smallest β whose run learns and (σ > 0) the smallest within ``MATCH_POINTS`` of the rule's
    best noise-free accuracy."""
    parts = []
    for sigma in config.sigmas:
        texts = []
        for rule, alpha in config.variants():
            runs = [(b, _find(records, rule, alpha, b, sigma)) for b in sorted(config.betas)]
            accuracies = [(b, _accuracy(r)) for b, r in runs if r is not None]
            if not accuracies:
                continue
            learning = [b for b, acc in accuracies if learns(acc, classes)]
            text = f"β ≥ {learning[0]:g}" if learning else "none"
            clean = max((_accuracy(_find(records, rule, alpha, b, 0.0)) for b in config.betas), key=_finite_key)
            matching = [b for b, acc in accuracies if math.isfinite(clean) and acc >= clean - MATCH_POINTS]
            if sigma > 0 and matching:
                text += f" (near its noise-free accuracy from β = {matching[0]:g})"
            texts.append((_variant_label(rule, alpha), text))
        if texts:
            parts.append(f"σ = {sigma:g}: {by_rule(texts)}")
    if not parts:
        return None
    return (
        f"**Smallest β that learns** (test accuracy ≥ {learning_threshold(classes):.3g} %; chance is "
        f"{chance_accuracy(classes):.3g} % with {classes} classes; near: within {MATCH_POINTS:g} points of the "
        f"rule's best noise-free accuracy). " + ". ".join(parts) + "."
    )


def signal_to_noise_finding(records: Sequence[dict[str, Any]], classes: int) -> str | None:
    """Whether ``β/(√2σ)`` separates the noisy synchronous cells that learn from those that do not, and the
    spread of accuracy along each diagonal of constant ``β/σ`` (diverged runs counted at chance)."""
    noisy = [r for r in records if r["rule"] != "bp" and r["timing"] == SYNC and r["quantum"] == 0 and r["sigma"] > 0]
    if not noisy:
        return None
    cells = [(r["beta"] / (math.sqrt(2) * r["sigma"]), learns(_accuracy(r), classes)) for r in noisy]
    good = [ratio for ratio, ok in cells if ok]
    bad = [ratio for ratio, ok in cells if not ok]
    text = "**Signal to noise.** s⁺ − s⁻ carries β·∇ℓ against noise of standard deviation √2·σ."
    if good and bad and min(good) > max(bad):
        text += (
            f" Here β/(√2σ) alone decides: every noisy cell at {min(good):.3g} or above learned, every one at "
            f"{max(bad):.3g} or below did not."
        )
    elif good and bad:
        exceptions = sum(1 for ratio, ok in cells if ratio >= min(good) and not ok)
        text += (
            f" β/(√2σ) does not separate the cells cleanly: the smallest learning ratio is {min(good):.3g}, the "
            f"largest failing one {max(bad):.3g}; {exceptions} of {len(cells)} noisy cells at or above "
            f"{min(good):.3g} failed."
        )
    elif good:
        text += f" Every noisy cell learned (smallest ratio {min(good):.3g})."
    else:
        text += f" No noisy cell learned (largest ratio {max(bad):.3g})."
    diagonals: dict[float, list[float]] = {}
    for r in noisy:
        accuracy = _accuracy(r)
        diagonals.setdefault(float(f"{r['beta'] / r['sigma']:.3g}"), []).append(
            accuracy if math.isfinite(accuracy) else chance_accuracy(classes)
        )
    spans = [(ratio, values) for ratio, values in sorted(diagonals.items()) if len(values) >= 2]
    if spans:
        text += (
            " Accuracy by β/σ (diverged runs at chance): "
            + ", ".join(f"{_span(values)} at {ratio:g}" for ratio, values in spans)
            + "."
        )
    return text


def backprop_finding(config: NoiseStudyConfig, records: Sequence[dict[str, Any]]) -> str | None:
    """Backprop's accuracy at each σ beside the best dual-propagation setting at that σ."""
    sigmas = [s for s in config.sigmas if _find(records, "bp", None, None, s) is not None]
    if not sigmas:
        return None
    bp = [_accuracy(_find(records, "bp", None, None, s)) for s in sigmas]
    best = [
        max(
            (_accuracy(_find(records, rule, alpha, b, s)) for rule, alpha in config.variants() for b in config.betas),
            key=_finite_key,
            default=math.nan,
        )
        for s in sigmas
    ]
    return (
        f"**Backprop with the same noise** on activations and per-sample gradients: {_numbers(bp)} % at "
        f"σ = {', '.join(f'{s:g}' for s in sigmas)}; the best dual-propagation setting: {_numbers(best)} %."
    )


def asynchrony_finding(config: NoiseStudyConfig, records: Sequence[dict[str, Any]]) -> str | None:
    """The mean accuracy change from synchronous to asynchronous updates per σ, the largest loss, and the runs
    that diverged only when asynchronous."""
    pairs = [
        (rule, alpha, b, s, _find(records, rule, alpha, b, s, timing=ASYNC), _find(records, rule, alpha, b, s))
        for rule, alpha in config.variants()
        for b in config.async_betas
        for s in config.async_sigmas
    ]
    pairs = [p for p in pairs if p[4] is not None and p[5] is not None]
    lost = [p for p in pairs if p[4]["status"] == "diverged" and p[5]["status"] != "diverged"]
    changes = [(*p[:4], _accuracy(p[4]) - _accuracy(p[5])) for p in pairs]
    changes = [c for c in changes if math.isfinite(c[4])]
    sentences = []
    if changes:
        per_sigma = []
        for sigma in config.async_sigmas:
            values = [c[4] for c in changes if c[3] == sigma]
            if values:
                per_sigma.append(f"{sum(values) / len(values):+.1f} at σ = {sigma:g} ({_count(len(values), 'pair')})")
        worst = min(changes, key=lambda c: c[4])
        large = sum(c[4] < -MATCH_POINTS for c in changes)
        sentences.append(
            f"**Asynchronous updates** (random × {config.async_passes}) against synchronous ({config.schedule} × "
            f"{config.passes}), mean change in points: {', '.join(per_sigma)}; {large} of {len(changes)} "
            f"lost more than {MATCH_POINTS:g} points, the most {worst[4]:+.1f} "
            f"({_variant_label(worst[0], worst[1])}, β = {worst[2]:g}, σ = {worst[3]:g})."
        )
    if lost:
        sentences.append(
            ("" if changes else "**Asynchronous updates.** ")
            + "Diverged only when asynchronous: "
            + "; ".join(f"{_variant_label(p[0], p[1])}, β = {p[2]:g}, σ = {p[3]:g}" for p in lost)
            + "."
        )
    return " ".join(sentences) or None


def rounding_finding(config: NoiseStudyConfig, records: Sequence[dict[str, Any]]) -> str | None:
    """Per quantum q, the mean and the worst accuracy change against q = 0 over the rules and β of its block."""
    costs = []
    for q in config.quanta:
        changes = [
            _accuracy(_find(records, rule, alpha, b, 0.0, q)) - _accuracy(_find(records, rule, alpha, b, 0.0))
            for rule, alpha in config.variants()
            for b in config.quantum_betas
        ]
        changes = [c for c in changes if math.isfinite(c)]
        if changes:
            costs.append(f"q = {q:g}: {sum(changes) / len(changes):+.1f}, {min(changes):+.1f}")
    if not costs:
        return None
    return "**Stochastic rounding**, change in points against q = 0 (mean, worst): " + "; ".join(costs) + "."


def _and(labels: Sequence[str]) -> str:
    return labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} and {labels[-1]}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _finite_key(value: float) -> float:
    """Sort key that ranks NaN (a diverged or missing run) below every number."""
    return -math.inf if math.isnan(value) else value


def _span(values: Sequence[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.1f} %" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f}–{high:.1f} %"


def _numbers(values: Sequence[float]) -> str:
    return ", ".join("–" if not math.isfinite(v) else f"{v:.1f}" for v in values)


def plot_noise_heatmap(config: NoiseStudyConfig, records: Sequence[dict[str, Any]], path: str | Path) -> bool:
    """One heat map of test accuracy over (β, σ) per rule variant, plus backprop's row over σ; a shared
    colour scale from chance to 100 %, diverged runs marked. False (nothing written) without matplotlib."""

    def panel(cells: list[list[dict[str, Any] | None]], rows: list[str], title: str) -> HeatmapPanel:
        return HeatmapPanel(
            [[_accuracy(r) for r in row] for row in cells],
            rows,
            [f"{s:g}" for s in config.sigmas],
            title,
            [["div." if r is not None and r["status"] == "diverged" else "" for r in row] for row in cells],
        )

    panels = [
        panel(
            [[_find(records, rule, alpha, b, s) for s in config.sigmas] for b in config.betas],
            [f"{b:g}" for b in config.betas],
            _variant_label(rule, alpha),
        )
        for rule, alpha in config.variants()
    ]
    if config.bp_reference:
        panels.append(panel([[_find(records, "bp", None, None, s) for s in config.sigmas]], [""], "backprop (noisy)"))
    return plot_heatmaps(
        panels,
        path,
        row_label="β",
        column_label="σ",
        colour_label="test accuracy (%)",
        vmin=chance_accuracy(dataset_classes(config.dataset)),
        vmax=100.0,
        annotate=True,
        title=f"MLP {'–'.join(map(str, config.hidden))} on {config.dataset}: test accuracy "
        f"over nudging β and compartment noise σ (div.: diverged)",
    )
