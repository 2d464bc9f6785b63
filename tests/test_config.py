"""TrainConfig: TOML round trip, the hand-written TOML writer, and one clear sentence per bad setting."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from dualprop.training.config import TrainConfig, dumps_toml, load_config, save_config, settings

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def test_round_trip_keeps_every_setting(tmp_path):
    config = TrainConfig(
        rule="dp",
        alpha=0.25,
        beta=0.5,
        schedule="fwbw3",
        hidden=[7, 5],
        seeds=[3, 1],
        data_dir="/data/x y",
        name='quote"d',
        augment=False,
        lr=1e-3,
    ).resolved()
    path = tmp_path / "config.toml"
    save_config(config, path)
    assert load_config(path) == config
    assert (config.schedule, config.passes) == ("forward-backward", 3)


def test_writer_matches_a_standard_toml_parser():
    values = {"a": 1, "b": 0.1, "c": True, "d": 'back\\slash "q"\n', "e": [1, 2], "f": 1e-300}
    text = dumps_toml(values)
    assert tomllib.loads(text) == values
    assert text.splitlines()[0] == "a = 1"


def test_none_values_are_omitted_and_read_back_as_default(tmp_path):
    path = tmp_path / "c.toml"
    save_config(TrainConfig(data_dir=None), path)
    assert "data_dir" not in path.read_text()
    assert load_config(path).data_dir is None


def test_unknown_key_in_file_is_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('rule = "dpT"\nlearning_rate = 0.1\n')
    with pytest.raises(ValueError, match="unknown setting 'learning_rate'"):
        load_config(path)


def test_malformed_file_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("rule = \n")
    with pytest.raises(ValueError, match="broken.toml is not valid TOML"):
        load_config(path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"alpha": 1.5}, "alpha must be a number in \\[0, 1\\]"),
        ({"beta": 0.0}, "beta must be a finite number > 0"),
        ({"rule": "hebb"}, "unknown rule 'hebb'"),
        ({"schedule": "sideways"}, "unknown schedule 'sideways'"),
        ({"passes": 0}, "passes must be an integer >= 1"),
        ({"schedule": "fw3", "passes": 2}, "means 3 passes but passes=2"),
        ({"dataset": "imagenet-21k"}, "unknown dataset 'imagenet-21k'"),
        ({"model": "resnet"}, "unknown model 'resnet'"),
        ({"loss": "hinge"}, "unknown loss 'hinge'"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"lr": -1.0}, "lr must be a finite number >= 0"),
        ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
        ({"seeds": []}, "seeds must list one or more distinct integers"),
        ({"hidden": [10, "x"]}, "hidden must be a list of integers"),
        ({"epochs": 2.5}, "epochs must be of type int"),
        ({"warmup_epochs": 5, "epochs": 3}, "warmup_epochs \\(5\\) must not exceed epochs \\(3\\)"),
        ({"validation_percent": 100}, "validation_percent must lie in \\[0, 100\\)"),
    ],
)
def test_bad_settings_raise_one_clear_sentence(changes, message):
    with pytest.raises(ValueError, match=message) as error:
        TrainConfig(**changes).resolved()
    assert "\n" not in str(error.value)


def test_integers_are_accepted_where_floats_are_expected():
    config = TrainConfig(alpha=1, beta=2, lr=1).resolved()
    assert isinstance(config.alpha, float) and config.beta == 2.0


def test_replace_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown setting 'alpah'"):
        TrainConfig().replace(alpah=0.3)


def test_every_setting_declares_its_type_default_and_help():
    described = settings()
    assert [s.name for s in described] == [f.name for f in dataclasses.fields(TrainConfig)]
    assert all(s.help and s.kind in (bool, int, float, str) for s in described)
    assert all(s.unset for s in described if s.default is None)  # --help says what unset means
    by_name = {s.name: s for s in described}
    assert (by_name["passes"].kind, by_name["passes"].optional) == (int, True)
    assert (by_name["hidden"].kind, by_name["hidden"].is_list, by_name["hidden"].default) == (int, True, [256, 256])
    assert (by_name["alpha"].kind, by_name["alpha"].default) == (float, 0.5)
    assert TrainConfig().hidden is not TrainConfig().hidden  # list defaults are not shared


def test_command_line_flags_are_generated_from_the_settings():
    from dualprop.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "--passes", "3", "--hidden", "7", "5", "--alpha", "1", "--no-augment"])
    assert (args.passes, args.hidden, args.alpha, args.augment) == (3, [7, 5], 1.0, False)
    assert isinstance(args.alpha, float)
    train_help = " ".join(parser._subparsers._group_actions[0].choices["train"].format_help().split())
    for setting in settings():
        assert "--" + setting.name.replace("_", "-") in train_help
    assert "nudging strength β > 0" in train_help
