import json

import pytest

from dualprop.analysis.study import (
    RESULTS_FILE,
    TABLE_FILE,
    Setting,
    StudyConfig,
    create_study,
    findings,
    run_study,
    study_settings,
)
from dualprop.cli import main


def tiny(**changes) -> StudyConfig:
    values = dict(
        dataset="digits",
        hidden=[16],
        rules=["dp", "dpT"],
        alphas=[1.0],
        betas=[0.5],
        epochs=1,
        limit_batches=3,
        batch_size=32,
        test_limit=60,
        pgd_steps=3,
        lipschitz_samples=16,
        warmup_epochs=0,
    )
    values.update(changes)
    return StudyConfig(**values)


def table_rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| rule")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_grid_has_bp_once_and_adversarial_over_beta_only():
    settings = study_settings(StudyConfig())
    keys = [s.key for s in settings]
    assert keys.count("bp") == 1
    assert [k for k in keys if k.startswith("adversarial")] == [
        "adversarial-b0.1",
        "adversarial-b0.5",
        "adversarial-b1",
        "adversarial-b2",
    ]
    assert len(settings) == 1 + 3 * 3 * 4 + 4
    assert Setting("dp-damped", 0.5, 2.0).key == "dp-damped-a0.5-b2"


@pytest.mark.slow
def test_tiny_study_writes_one_row_per_setting_and_resumes(tmp_path):
    directory = create_study(tiny(), tmp_path)
    results = run_study(directory)
    rows = table_rows((directory / TABLE_FILE).read_text())
    assert [(r[0], r[1], r[2]) for r in rows] == [("dp", "1", "0.5"), ("dpT", "1", "0.5")]
    for row, key in zip(rows, ("dp-a1-b0.5", "dpT-a1-b0.5")):
        record = results[key]
        assert row[3] == f"{record['test_acc']:.2f}" and row[4] == "no"
        robustness = record["robustness"]
        assert robustness["lipschitz_max"] <= robustness["product_bound"]
        assert robustness["clean_acc"] >= robustness["attacks"][1]["pgd_acc"]
    saved = json.loads((directory / RESULTS_FILE).read_text())
    assert saved == results
    # Running it again trains nothing: every setting is already recorded.
    assert run_study(directory, setting_done=lambda s, r: pytest.fail(f"retrained {s.key}")) == results
    # A new study never reuses the directory.
    assert create_study(tiny(), tmp_path) != directory


def test_diverging_setting_is_reported_not_raised(tmp_path, capsys):
    code = main(
        [
            "experiment",
            "robustness-mlp",
            "--dataset",
            "digits",
            "--rules",
            "dp",
            "--alphas",
            "1",
            "--betas",
            "2",
            "--lr",
            "1e30",
            "--epochs",
            "1",
            "--limit-batches",
            "3",
            "--test-limit",
            "30",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    (row,) = table_rows(out.split("## Findings")[0])
    assert row[:3] == ["dp", "1", "2"]
    assert row[4].startswith("yes: epoch 1, step ")
    assert row[3] == "–" and row[5] == "–"  # no checkpoint survived, so nothing to measure
    assert "DP diverged in 1 of 1 settings (α=1 β=2 at epoch 1)" in out


def test_findings_follow_the_numbers():
    def record(rule, alpha, beta, lipschitz, pgd, diverged=False, acc=90.0):
        return {
            "rule": rule,
            "alpha": alpha,
            "beta": beta,
            "status": "diverged" if diverged else "finished",
            "test_acc": None if diverged else acc,
            "diverged_at": {"epoch": 2, "step": 7, "reason": "non-finite loss"} if diverged else None,
            "robustness": None
            if diverged
            else {"lipschitz_max": lipschitz, "attacks": [{"pgd_acc": pgd}, {"pgd_acc": pgd / 2}]},
        }

    config = StudyConfig(alphas=[1.0], betas=[0.5, 2.0])
    records = [
        record("bp", None, None, 10.0, 40.0),
        record("dp", 1.0, 0.5, 9.0, 42.0),
        record("dp", 1.0, 2.0, None, None, diverged=True),
        record("dpT", 1.0, 0.5, 8.0, 44.0),
        record("dpT", 1.0, 2.0, 12.0, 30.0, acc=85.5),
    ]
    text = findings(config, records)
    assert "DP diverged in 1 of 2 settings (α=1 β=2 at epoch 2)" in text
    assert "DP⊤ diverged in 0 of 2 settings" in text
    assert "its failures sit at asymmetric α with large β" in text
    assert "DP⊤ α=1: rises, 8.00 at β=0.5 → 12.00 at β=2" in text
    assert "does not support a general shrinking" in text
    assert (
        "Lowest test accuracy against backprop's 90.00 %, in points: DP +0.00 (α=1 β=0.5); DP⊤ -4.50 (α=1 β=2)." in text
    )
    assert "Backprop's Lipschitz estimate is 10.00; 2 of 3 other non-diverged settings lie below it" in text
