"""The Markdown report: grouping by setting, mean ± std over seeds computed by hand, curves as PNG."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualprop.analysis.report import collect_runs, markdown_table
from dualprop.cli import main
from dualprop.training.config import TrainConfig, save_config
from dualprop.training.rundir import MetricsLog


def fake_run(root: Path, name: str, seed: int, test_acc: float | None, status: str = "finished",
             **settings) -> None:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = TrainConfig(seeds=[seed], baseline=False, **settings).resolved()
    save_config(config, run_dir / "config.toml")
    (run_dir / "summary.json").write_text(json.dumps(
        {"status": status, "test_acc": test_acc, "test_top5": None if test_acc is None else 100.0,
         "best_val_acc": test_acc}))
    log = MetricsLog(run_dir)
    log.start()
    for epoch in (1, 2):
        log.append({"epoch": epoch, "train_loss": 1.0 / epoch, "val_acc": 50.0 * epoch})


def test_mean_and_std_over_seeds_per_setting(tmp_path):
    fake_run(tmp_path, "a0", 0, 90.0, alpha=0.0)
    fake_run(tmp_path, "a1", 1, 92.0, alpha=0.0, device="cpu")  # bookkeeping keys do not split a setting
    fake_run(tmp_path, "b0", 0, 80.0, alpha=1.0)
    fake_run(tmp_path, "b1", 1, None, "diverged", alpha=1.0)
    fake_run(tmp_path, "p0", 0, 95.0, rule="bp", alpha=0.3)  # α means nothing to backprop
    fake_run(tmp_path, "p1", 1, 97.0, rule="bp", alpha=0.7)
    table = markdown_table(collect_runs([tmp_path]))
    lines = table.strip().splitlines()
    assert lines[0].startswith("| dataset | model | rule | α | β |")
    assert len(lines) == 2 + 3
    rows = {line.split(" | ")[2] + line.split(" | ")[3]: line for line in lines[2:]}
    # mean 91, sample std sqrt(((90-91)^2 + (92-91)^2) / 1) = 1.414
    assert "| 2 | 91.00 ± 1.41 | 100.00 ± 0.00 |" in rows["dpT0"]
    assert "| 2 | 80.00 | 100.00 | 80.00 | 1/2 |" in rows["dpT1"]
    assert "| 2 | 96.00 ± 1.41 |" in rows["bp–"]


def test_report_command_and_plot(tmp_path, capsys):
    fake_run(tmp_path / "runs", "a", 0, 90.0)
    status = main(["report", str(tmp_path / "runs"), "--output", str(tmp_path / "t.md"),
                   "--plot", str(tmp_path / "curves.png")])
    assert status == 0
    out = capsys.readouterr().out
    assert out == (tmp_path / "t.md").read_text() and "| 90.00 |" in out
    pytest.importorskip("matplotlib")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_runs_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no run directories" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is not a directory"):
        collect_runs([tmp_path / "missing"])


def test_report_never_overwrites_a_users_file(tmp_path, capsys):
    fake_run(tmp_path / "runs", "a", 0, 90.0)
    mine = tmp_path / "t.md"
    mine.write_text("my notes\n")
    assert main(["report", str(tmp_path / "runs"), "--output", str(mine)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert mine.read_text() == "my notes\n"
