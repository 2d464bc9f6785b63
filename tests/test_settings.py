"""The Learner's settings are held once: ``LearnerSettings`` is their single source, the Learner's arguments,
read-only attributes and the training config's Learner fields are derived from its fields; the rule facts
come from one table; number checks say what is wrong."""

import dataclasses

import pytest
import torch

from dualprop import Learner, LearnerSettings, checks, models
from dualprop.fused import finite_difference_weights
from dualprop.rules import DYADIC_RULES, FUSED_RULES, RULE_TABLE, RULES, display_name, find_rule, nudge_weights
from dualprop.training.config import TrainConfig


def test_positional_keyword_and_settings_forms_build_the_same_learner():
    torch.manual_seed(0)
    model = models.mlp([4, 5, 3])
    by_position = Learner(model, "dp", 0.3, 0.2, "fw2")
    by_name = Learner(model, rule="dp", alpha=0.3, beta=0.2, schedule="fw2")
    by_settings = Learner(model, settings=LearnerSettings(rule="dp", alpha=0.3, beta=0.2, schedule="fw2"))
    assert by_position.settings == by_name.settings == by_settings.settings
    assert (by_name.rule, by_name.alpha, by_name.beta, by_name.schedule, by_name.passes) == (
        "dp",
        0.3,
        0.2,
        "forward",
        2,
    )
    with pytest.raises(TypeError, match="either settings"):
        Learner(model, "dp", settings=LearnerSettings())
    with pytest.raises(TypeError, match="unexpected keyword argument 'alhpa'"):
        Learner(model, alhpa=0.3)


@pytest.mark.parametrize(
    "name", ["rule", "alpha", "beta", "schedule", "passes", "loss", "feedback", "power_iterations"]
)
def test_settings_are_read_only_views_on_the_learner(name):
    learner = Learner(models.mlp([4, 5, 3]), rule="dp", alpha=0.3)
    assert getattr(learner, name) == getattr(learner.settings, name)
    with pytest.raises(AttributeError, match=f"Learner.{name} is read-only: it is learner.settings.{name}"):
        setattr(learner, name, getattr(learner.settings, name))
    assert getattr(learner, name) == getattr(learner.settings, name)
    with pytest.raises(AttributeError):
        learner.settings = LearnerSettings()


def test_train_config_sets_every_learner_setting():
    config_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    names = [f.name for f in dataclasses.fields(LearnerSettings)]
    assert set(names) <= config_fields
    config = TrainConfig(rule="dp", alpha=0.25, state_noise=0.5, noise_seed=4)
    assert config.learner_settings() == {name: getattr(config, name) for name in names}
    assert LearnerSettings(**config.learner_settings()).state_noise == 0.5


def test_the_rule_table_is_the_one_source_of_rule_facts():
    assert RULES == ("bp", "adversarial", "dp", "dpT", "dp-damped")
    assert DYADIC_RULES == ("dp", "dpT", "dp-damped") and FUSED_RULES == ("dp", "dpT")
    assert [find_rule(name).name for name in RULES] == list(RULES)
    assert display_name("dpT") == "DP⊤" and display_name("bp") == "backprop"
    assert [name for name, rule in RULE_TABLE.items() if rule.fixed_output_nudge] == ["dpT"]
    assert [name for name, rule in RULE_TABLE.items() if rule.damped] == ["dp-damped"]
    # (c⁺, c⁻) = (α, 1−α) for DP and damped DP, (1−α, α) for DP⊤; the fused sweep swaps them
    assert nudge_weights("dp", 0.2) == nudge_weights("dp-damped", 0.2) == pytest.approx((0.2, 0.8))
    assert nudge_weights(find_rule("dpT"), 0.2) == pytest.approx((0.8, 0.2))
    assert finite_difference_weights("dpT", 0.2) == pytest.approx((0.2, 0.8))
    with pytest.raises(ValueError, match="rule 'bp' has no dyadic compartments"):
        nudge_weights("bp", 0.5)
    with pytest.raises(ValueError, match="unknown rule 'dpt'; choose one of bp, adversarial, dp, dpT, dp-damped"):
        find_rule("dpt")


@pytest.mark.parametrize(
    "check, value, message",
    [
        (checks.unit_interval, 1.5, "x must be a number in [0, 1], got 1.5"),
        (checks.unit_interval, True, "x must be a number in [0, 1], got True"),
        (checks.positive_finite, 0.0, "x must be a finite number > 0, got 0.0"),
        (checks.positive_finite, float("inf"), "x must be a finite number > 0, got inf"),
        (checks.non_negative_finite, -1, "x must be a finite number >= 0, got -1"),
        (checks.non_negative_finite, float("nan"), "x must be a finite number >= 0, got nan"),
        (checks.positive_int, 0, "x must be an integer >= 1, got 0"),
        (checks.positive_int, 2.0, "x must be an integer >= 1, got 2.0"),
        (checks.non_negative_int, -1, "x must be an integer >= 0, got -1"),
        (checks.non_negative_int, False, "x must be an integer >= 0, got False"),
    ],
)
def test_checks_name_the_setting_the_rule_and_the_value(check, value, message):
    with pytest.raises(ValueError) as error:
        check("x", value)
    assert str(error.value) == message


def test_checks_return_the_value_in_its_type():
    assert checks.unit_interval("x", 1) == 1.0 and isinstance(checks.unit_interval("x", 1), float)
    assert checks.positive_finite("x", 2) == 2.0 and checks.non_negative_finite("x", 0) == 0.0
    assert checks.positive_int("x", 3) == 3 and checks.non_negative_int("x", 0) == 0
    assert checks.one_of("mode", "b", ("a", "b")) == "b"
    with pytest.raises(ValueError, match="unknown mode 'c'; choose one of a, b"):
        checks.one_of("mode", "c", ("a", "b"))
