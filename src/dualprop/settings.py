"""``LearnerSettings``: the settings of a :class:`dualprop.Learner`, checked without a model.

Every setting of the Learner is one field here; the Learner's keyword arguments and the training
config's Learner fields are derived from these fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

from dualprop import checks
from dualprop.graph import NeuronGraph
from dualprop.hardware import CompartmentPerturbation
from dualprop.losses import check_loss
from dualprop.rules import FUSED_RULES, RULES, Rule, find_rule
from dualprop.schedules import parse_schedule

IMPLEMENTATIONS = ("auto", "generic", "fused")
FEEDBACK_MODES = ("symmetric", "kolen-pollack")


@dataclass(frozen=True)
class LearnerSettings:
    """The settings of a :class:`dualprop.Learner`, checked without a model: a bad one, or a bad
    combination, is a ``ValueError`` naming it. ``schedule`` and ``passes`` come out resolved
    (``fw3`` → ``forward``, 3). The field order is the order of the Learner's positional arguments."""

    rule: str = "dpT"
    alpha: float = 0.5
    beta: float = 0.1
    schedule: str = "forward"
    passes: int | None = None
    loss: str = "cross_entropy"
    implementation: str = "auto"
    feedback: str = "symmetric"
    power_iterations: int = 1
    state_noise: float = 0.0
    state_quantum: float = 0.0
    noise_seed: int = 0

    def __post_init__(self) -> None:
        checks.one_of("rule", self.rule, RULES)
        checks.one_of("implementation", self.implementation, IMPLEMENTATIONS)
        schedule, passes = parse_schedule(self.schedule, self.passes)
        for name, value in (
            ("alpha", checks.unit_interval("alpha", self.alpha)),
            ("beta", checks.positive_finite("beta", self.beta)),
            ("schedule", schedule),
            ("passes", passes),
            ("loss", check_loss(self.loss)),
            ("power_iterations", checks.positive_int("power_iterations", self.power_iterations)),
        ):
            object.__setattr__(self, name, value)
        checks.one_of("feedback", self.feedback, FEEDBACK_MODES)
        rule = self.learning_rule
        if self.feedback != "symmetric" and not rule.dyadic:
            raise ValueError(f"feedback={self.feedback!r} needs a dual-propagation rule, not {self.rule!r}")
        perturbed = self.perturbation().active
        if perturbed and rule.moves_input:
            perturbable = ", ".join(name for name in RULES if not find_rule(name).moves_input)
            raise ValueError(f"state_noise and state_quantum apply to {perturbable}, not to rule {self.rule!r}")
        if self.implementation == "fused":
            if not rule.fused:
                raise ValueError(f"implementation='fused' supports rules {', '.join(FUSED_RULES)}, not {self.rule!r}")
            if self.feedback != "symmetric":
                raise ValueError(
                    f"implementation='fused' feeds back through the forward weights; "
                    f"feedback={self.feedback!r} needs implementation='generic'"
                )
            if not self.one_sweep:
                raise ValueError(
                    f"implementation='fused' is a single backward sweep: it needs "
                    f"schedule='backward' with passes=1, got schedule={self.schedule!r} "
                    f"with passes={self.passes}"
                )
            if perturbed:
                raise ValueError(
                    "implementation='fused' has no state loop to perturb: state_noise and "
                    "state_quantum need implementation='generic' (or 'auto')"
                )

    @property
    def learning_rule(self) -> Rule:
        """The facts of the rule (:class:`dualprop.rules.Rule`)."""
        return find_rule(self.rule)

    @property
    def one_sweep(self) -> bool:
        """Whether the schedule is one backward sweep (``backward``, or ``forward-backward`` with one pass)."""
        return self.passes == 1 and self.schedule in ("backward", "forward-backward")

    def perturbation(self) -> CompartmentPerturbation:
        """The compartment noise and rounding these settings ask for (checked on construction)."""
        return CompartmentPerturbation(self.state_noise, self.state_quantum, self.noise_seed)

    def resolved_implementation(self, graph: NeuronGraph) -> str:
        """``fused`` where asked or, for ``auto``, where it equals the generic sweep on ``graph``: a rule
        with a fixed output nudge (DP⊤) at ``α ∈ {0, 1}`` with one backward sweep (``backward``, or
        ``forward-backward`` with one pass, the same visit order), symmetric feedback, no perturbation —
        and at ``α = 0``, where ``s⁺`` leaves the feed-forward value, only if every block with several
        parents has a constant Jacobian. Else ``generic``."""
        if self.implementation != "auto":
            return self.implementation
        points_fixed = self.alpha == 1.0 or all(
            affine for affine, parents in zip(graph.affine, graph.parents) if len(parents) > 1
        )
        rule = self.learning_rule
        exact = (
            rule.fused
            and rule.fixed_output_nudge
            and self.alpha in (0.0, 1.0)
            and self.one_sweep
            and points_fixed
            and self.feedback == "symmetric"
            and not self.perturbation().active
        )
        return "fused" if exact else "generic"


def setting_view(name: str) -> Any:
    """A read-only attribute of an object with ``settings`` (the Learner) that reads ``settings.<name>``; assigning
    to it is an ``AttributeError`` that says how to change it."""

    def read(learner: Any) -> Any:
        return getattr(learner.settings, name)

    def refuse(learner: Any, value: object) -> NoReturn:
        raise AttributeError(
            f"Learner.{name} is read-only: it is learner.settings.{name}; build a new Learner "
            f"with {name}={value!r} (e.g. Learner(model, settings=dataclasses.replace(learner.settings, ...)))"
        )

    return property(read, refuse, doc=f"``settings.{name}`` (read-only).")
