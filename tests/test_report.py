"""The Markdown report: grouping by setting, mean ± std over seeds computed by hand, curves as PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualprop.analysis.report import collect_runs, markdown_table, plot_accuracy_against_beta
from dualprop.cli import main
from dualprop.training.config import TrainConfig, save_config
from dualprop.training.rundir import MetricsLog


def fake_run(
    root: Path,
    name: str,
    seed: int,
    test_acc: float | None,
    status: str = "finished",
    seconds: tuple[float, ...] = (),
    **settings,
) -> None:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = TrainConfig(seeds=[seed], baseline=False, **settings).resolved()
    save_config(config, run_dir / "config.toml")
    (run_dir / "summary.json").write_text(
        json.dumps(
            {
                "status": status,
                "test_acc": test_acc,
                "test_top5": None if test_acc is None else 100.0,
                "best_val_acc": test_acc,
            }
        )
    )
    log = MetricsLog(run_dir)
    log.start()
    for epoch, epoch_seconds in enumerate(seconds or (float("nan"),) * 2, start=1):
        log.append({"epoch": epoch, "train_loss": 1.0 / epoch, "val_acc": 50.0 * epoch, "seconds": epoch_seconds})


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
    assert "| 2 | 91.00 ± 1.41 | 100.00 ± 0.00 | 91.00 ± 1.41 | 100.00 ± 0.00 | 0/2 | 0/2 |" in rows["dpT0"]
    # the diverged run is not averaged; the finished one's last epoch reached 100 % validation accuracy
    assert "| 1 | 80.00 | 100.00 | 80.00 | 100.00 | 1/2 | 0/2 |" in rows["dpT1"]
    assert "| 2 | 96.00 ± 1.41 |" in rows["bp–"]


def test_report_command_and_plot(tmp_path, capsys):
    fake_run(tmp_path / "runs", "a", 0, 90.0)
    status = main(
        ["report", str(tmp_path / "runs"), "--output", str(tmp_path / "t.md"), "--plot", str(tmp_path / "curves.png")]
    )
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


def test_time_per_epoch_against_backprop(tmp_path):
    # Median epoch time per run (a slow epoch does not count), mean over seeds, divided by backprop's.
    fake_run(tmp_path, "p0", 0, 90.0, seconds=(10.0, 30.0, 12.0), rule="bp")  # median 12
    fake_run(tmp_path, "p1", 1, 91.0, seconds=(8.0, 8.0, 8.0), rule="bp")  # median 8 -> mean 10
    fake_run(tmp_path, "d0", 0, 89.0, seconds=(25.0, 26.0, 24.0), alpha=1.0)  # 25
    fake_run(tmp_path, "d1", 1, 88.0, seconds=(24.0, 23.0, 100.0), alpha=1.0)  # 24 -> mean 24.5
    fake_run(tmp_path, "o0", 0, 80.0, seconds=(5.0,), alpha=1.0, optimizer="adam")  # no backprop twin
    lines = markdown_table(collect_runs([tmp_path])).strip().splitlines()
    assert lines[0].endswith("| best val acc (%) | last val acc (%) | diverged | unfinished | s / epoch | × bp |")
    rows = {line.split(" | ")[2] + ("adam" if "| adam |" in line else "sgd"): line for line in lines[2:]}
    assert rows["bpsgd"].endswith("| 10.0 | 1.00 |")
    assert rows["dpTsgd"].endswith("| 24.5 | 2.45 |")
    assert rows["dpTadam"].endswith("| 5.0 | – |")


def test_accuracy_against_beta_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    fake_run(tmp_path / "runs", "p", 0, 90.0, rule="bp")
    assert not plot_accuracy_against_beta(collect_runs([tmp_path / "runs"]), tmp_path / "none.png")
    for seed in (0, 1):
        for alpha in (0.0, 1.0):
            for beta in (0.1, 1.0):
                fake_run(tmp_path / "runs", f"d{seed}{alpha}{beta}", seed, 80.0 + seed + beta, alpha=alpha, beta=beta)
    assert main(["report", str(tmp_path / "runs"), "--plot-beta", str(tmp_path / "beta.png")]) == 0
    assert (tmp_path / "beta.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "none.png").exists()
