"""The noise-robustness study: its grid, a tiny resumable run through the command line, and findings that
follow the numbers."""

import importlib.util
import json
import math

import numpy as np
import pytest

from dualprop.analysis.noise_study import (
    ASYNC,
    NoiseSetting,
    NoiseStudyConfig,
    by_rule,
    chance_accuracy,
    dataset_classes,
    learning_threshold,
    learns,
    noise_findings,
)
from dualprop.analysis.study import RESULTS_FILE, TABLE_FILE, StudyConfig, create_study, load_study, run_study
from dualprop.cli import main
from dualprop.data import DataError


def test_grid_holds_every_block_once():
    config = NoiseStudyConfig()
    keys = [s.key for s in config.settings()]
    assert len(keys) == len(set(keys))
    main_grid = 4 * 4 * 4  # (DP⊤ ×3, DP ×1) × β × σ
    bp = 4 + 3  # every σ, every q
    asynchronous = 4 * 2 * 2  # the synchronous partners are in the main grid
    quantised = 4 * 2 * 3  # the q = 0 partners are in the main grid
    assert len(keys) == main_grid + bp + asynchronous + quantised
    assert "dpT-a0.5-b0.1-s0.01-q0-async" in keys and "bp-s0.1-q0-sync" in keys
    assert NoiseSetting("dp", 0.5, 1.0, 0.0, 0.1).key == "dp-a0.5-b1-s0-q0.1-sync"
    setting = NoiseSetting("dpT", 1.0, 0.5, 0.01, 0.0, ASYNC)
    train = config.train_config(setting).resolved()
    assert (train.schedule, train.passes, train.state_noise, train.state_quantum) == ("random", 3, 0.01, 0.0)


def test_tiny_study_runs_resumes_and_reports(tmp_path, capsys):
    assert main(["experiment", "noise-robustness", "--alphas", "1", "--out", str(tmp_path)]) == 2
    assert "--alphas is not a setting of the noise-robustness study" in capsys.readouterr().err
    tiny = NoiseStudyConfig(
        dataset="digits",
        hidden=[8],
        dpt_alphas=[0.5],
        dp_alphas=[],
        betas=[0.5],
        sigmas=[0.0, 0.05],
        async_betas=[0.5],
        async_sigmas=[0.05],
        quanta=[0.1],
        quantum_betas=[0.5],
        epochs=1,
        limit_batches=2,
        warmup_epochs=0,
    )
    directory = create_study(tiny, tmp_path)
    assert main(["experiment", "noise-robustness", "--resume", str(directory), "--no-progress"]) == 0
    assert "## Findings" in capsys.readouterr().out
    config = load_study(directory, NoiseStudyConfig)
    results = json.loads((directory / RESULTS_FILE).read_text())
    assert set(results) == {s.key for s in config.settings()}
    table = (directory / TABLE_FILE).read_text()
    record = results["dpT-a0.5-b0.5-s0.05-q0-sync"]
    assert (
        f"| DP⊤ α=0.5 | 0.5 | {results['dpT-a0.5-b0.5-s0-q0-sync']['test_acc']:.1f} | "
        f"{record['test_acc']:.1f} |" in table
    )
    assert "| backprop (same noise on activations and gradients) | – |" in table
    if importlib.util.find_spec("matplotlib") is not None:
        assert (directory / "study.png").stat().st_size > 0
    saved = directory / "runs"
    assert len(list(saved.glob("*/config.toml"))) == len(results)
    # Nothing is retrained when resumed; a study of another kind is refused.
    assert (
        run_study(directory, setting_done=lambda s, r: pytest.fail(f"retrained {s.key}"), kind=NoiseStudyConfig)
        == results
    )
    with pytest.raises(ValueError, match="holds a noise-robustness study, not robustness-mlp"):
        load_study(directory, StudyConfig)
    capsys.readouterr()
    assert main(["experiment", "robustness-mlp", "--resume", str(directory)]) == 2
    assert "resume it with `dualprop experiment noise-robustness --resume" in capsys.readouterr().err


def _record(rule, alpha, beta, sigma, acc, quantum=0.0, timing="sync", status="finished"):
    return {
        "rule": rule,
        "alpha": alpha,
        "beta": beta,
        "sigma": sigma,
        "quantum": quantum,
        "timing": timing,
        "status": status,
        "test_acc": acc,
    }


def _small_study(dataset="fashion-mnist"):
    """A hand-made study of DP⊤ α=0.5 over β × σ, with backprop, one asynchronous and one rounded cell."""
    config = NoiseStudyConfig(
        dataset=dataset,
        dpt_alphas=[0.5],
        dp_alphas=[],
        betas=[0.01, 0.1, 1.0],
        sigmas=[0.0, 0.01, 0.1],
        async_betas=[1.0],
        async_sigmas=[0.0],
        quanta=[0.1],
        quantum_betas=[1.0],
    )
    acc = {
        (0.01, 0.0): 80,
        (0.1, 0.0): 82,
        (1.0, 0.0): 81,
        (0.01, 0.01): 10,
        (0.1, 0.01): 79,
        (1.0, 0.01): 80,
        (0.01, 0.1): 10,
        (0.1, 0.1): 12,
        (1.0, 0.1): 60,
    }
    records = [_record("dpT", 0.5, b, s, a) for (b, s), a in acc.items()]
    records += [_record("bp", None, None, s, a) for s, a in ((0.0, 85), (0.01, 84), (0.1, 70))]
    records += [_record("dpT", 0.5, 1.0, 0.0, 70, timing=ASYNC), _record("dpT", 0.5, 1.0, 0.0, 79, quantum=0.1)]
    return config, records


def test_chance_and_learning_threshold_follow_the_class_count():
    assert chance_accuracy(10) == pytest.approx(10.0) and chance_accuracy(100) == pytest.approx(1.0)
    assert learning_threshold(10) == pytest.approx(10 + 0.1 * 90)  # 19 %
    assert learning_threshold(100) == pytest.approx(1 + 0.1 * 99)  # 10.9 %
    assert learns(19.0, 10) and not learns(18.9, 10)
    assert learns(12.0, 100) and not learns(12.0, 10)
    assert not learns(math.nan, 100)


def test_dataset_classes_from_the_registry_or_the_training_labels(tmp_path):
    assert dataset_classes("fashion-mnist") == 10
    assert dataset_classes("cifar100") == 100
    assert dataset_classes("digits") == 10
    arrays = tmp_path / "three.npz"
    labels = np.array([0, 2, 1, 2])
    np.savez(arrays, x_train=np.zeros((4, 2)), y_train=labels, x_test=np.zeros((1, 2)), y_test=np.array([1]))
    assert dataset_classes(str(arrays)) == 3
    with pytest.raises(DataError, match="y_train"):
        dataset_classes(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "unlabelled.npz", x_train=np.zeros((4, 2)))
    with pytest.raises(DataError, match="y_train"):
        dataset_classes(str(tmp_path / "unlabelled.npz"))


def test_by_rule_names_the_rules_only_where_they_differ():
    assert by_rule([("DP⊤ α=0", "β ≥ 0.1"), ("DP α=0.5", "β ≥ 0.1")]) == "β ≥ 0.1 for every rule"
    assert by_rule([("DP⊤ α=0", "β ≥ 0.1")]) == "β ≥ 0.1 for DP⊤ α=0"
    assert (
        by_rule([("A", "β ≥ 0.1"), ("B", "β ≥ 1"), ("C", "β ≥ 0.1"), ("D", "β ≥ 0.1")])
        == "β ≥ 0.1 for A, C and D; β ≥ 1 for B"
    )


def test_findings_follow_the_numbers():
    config, records = _small_study()
    text = noise_findings(config, records)
    bullets = text.splitlines()
    assert len(bullets) == 5 and all(line.startswith("- **") for line in bullets)
    assert "(test accuracy ≥ 19 %; chance is 10 % with 10 classes;" in bullets[0]
    assert "σ = 0: β ≥ 0.01 for DP⊤ α=0.5." in bullets[0]
    assert "σ = 0.01: β ≥ 0.1 (near its noise-free accuracy from β = 0.1) for DP⊤ α=0.5." in bullets[0]
    # 60 % is learning but more than 5 points below the noise-free best of 82 %.
    assert bullets[0].endswith("σ = 0.1: β ≥ 1 for DP⊤ α=0.5.")
    # Learning cells: ratios 0.1/(√2·0.01) = 7.07, 1/(√2·0.01) = 70.7, 1/(√2·0.1) = 7.07;
    # failing: 0.01/(√2·0.01) = 0.707, 0.01/(√2·0.1) = 0.0707, 0.1/(√2·0.1) = 0.707.
    assert "every noisy cell at 7.07 or above learned, every one at 0.707 or below did not." in bullets[1]
    assert bullets[1].endswith("Accuracy by β/σ (diverged runs at chance): 10.0–12.0 % at 1, 60.0–79.0 % at 10.")
    assert bullets[2].endswith(
        "85.0, 84.0, 70.0 % at σ = 0, 0.01, 0.1; the best dual-propagation setting: 82.0, 80.0, 60.0 %."
    )
    assert (
        "mean change in points: -11.0 at σ = 0 (1 pair); 1 of 1 lost more than 5 points, the most -11.0" in (bullets[3])
    )
    assert "(DP⊤ α=0.5, β = 1, σ = 0)." in bullets[3]
    assert bullets[4].endswith("(mean, worst): q = 0.1: -2.0, -2.0.")


def test_learning_is_judged_against_chance_of_the_datasets_classes():
    config, records = _small_study(dataset="cifar100")
    text = noise_findings(config, records)
    # With 100 classes chance is 1 % and 12 % learns: the smallest learning β at σ = 0.1 drops to 0.1, and the
    # cell at ratio 0.707 that stayed at 10 % now breaks the clean separation.
    assert "(test accuracy ≥ 10.9 %; chance is 1 % with 100 classes;" in text
    assert "σ = 0.1: β ≥ 0.1 for DP⊤ α=0.5." in text
    assert "the smallest learning ratio is 0.707, the largest failing one 0.707; 1 of 6 noisy cells" in text
    assert "(diverged runs at chance)" in text
    assert noise_findings(config, records, classes=10) == noise_findings(_small_study()[0], records)


def test_findings_name_what_diverged_and_say_when_nothing_finished():
    config, records = _small_study()
    mixed = [r for r in records if not (r["beta"] == 1.0 and r["sigma"] == 0.01)]
    mixed.append(_record("dpT", 0.5, 1.0, 0.01, 15))  # a ratio of 70.7 that fails
    assert "does not separate the cells cleanly" in noise_findings(config, mixed)
    records[-2] = _record("dpT", 0.5, 1.0, 0.0, None, timing=ASYNC, status="diverged")
    text = noise_findings(config, records)
    assert "- **Asynchronous updates.** Diverged only when asynchronous: DP⊤ α=0.5, β = 1, σ = 0." in text
    diverged = [_record("dpT", 0.5, b, s, None, status="diverged") for b in config.betas for s in config.sigmas]
    assert "No noisy cell learned" in noise_findings(config, diverged)
    assert "10.0 % at 1" in noise_findings(config, diverged)  # diverged runs counted at chance
    assert noise_findings(config, []) == "No setting finished, so there is nothing to report."
