"""The noise-robustness study: its grid, a tiny resumable run through the command line, and findings that
follow the numbers."""

import importlib.util
import json

import pytest

from dualprop.analysis.noise_study import ASYNC, NoiseSetting, NoiseStudyConfig, noise_findings
from dualprop.analysis.study import RESULTS_FILE, TABLE_FILE, StudyConfig, create_study, load_study, run_study
from dualprop.cli import main


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


def test_findings_follow_the_numbers():
    config = NoiseStudyConfig(
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
    text = noise_findings(config, records)
    assert (
        "At σ = 0.01 the smallest β that learns (test accuracy ≥ 20 %) is — DP⊤ α=0.5: β ≥ 0.1 "
        "(within 5 points of its noise-free best from β = 0.1)." in text
    )
    assert "At σ = 0.1 the smallest β that learns (test accuracy ≥ 20 %) is — DP⊤ α=0.5: β ≥ 1." in text
    # Learning cells: ratios 0.1/(√2·0.01) = 7.07, 1/(√2·0.01) = 70.7, 1/(√2·0.1) = 7.07;
    # failing: 0.01/(√2·0.01) = 0.707, 0.01/(√2·0.1) = 0.0707, 0.1/(√2·0.1) = 0.707.
    assert "every noisy cell with β/(√2σ) ≥ 7.07 learned and every one with β/(√2σ) ≤ 0.707 did not" in text
    assert "β/σ = 1: 10.0–12.0 % over 2 cells; β/σ = 10: 60.0–79.0 % over 2 cells." in text
    assert "σ=0.1: 70.0 % (best dual propagation 60.0 %)" in text
    assert "mean difference -11.0 points over 1 pairs (σ=0: -11.0 over 1), 1 more than 5 points worse" in text
    assert "q=0.1: mean -2.0, worst -2.0" in text
    mixed = records + [_record("dpT", 0.5, 1.0, 0.01, 15)]  # a learning ratio that now fails
    mixed = [r for r in mixed if not (r["beta"] == 1.0 and r["sigma"] == 0.01 and r["test_acc"] == 80)]
    assert "does not separate the cells cleanly" in noise_findings(config, mixed)
    records[-2] = _record("dpT", 0.5, 1.0, 0.0, None, timing=ASYNC, status="diverged")
    assert "1 asynchronous run(s) diverged where the synchronous one did not (DP⊤ α=0.5 β=1 σ=0)" in noise_findings(
        config, records
    )
