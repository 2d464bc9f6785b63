"""Shipped experiment configs: all parse and validate, hold the papers' grids, and one runs small on
tiny MNIST files written in the official IDX format."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from dualprop.cli import main
from dualprop.training.config import TrainConfig
from dualprop.training.experiments import (
    experiment_names,
    experiment_runs,
    load_experiment,
    parse_experiment,
    run_experiment,
)

EXPECTED = {
    "icml2023-cifar10",
    "icml2023-cifar100",
    "icml2023-imagenet32",
    "icml2024-cifar10",
    "icml2024-cifar100",
    "icml2024-imagenet32",
    "icml2024-mnist-cnn",
    "icml2024-fashion-mnist-mlp",
    "icml2024-fashion-mnist-cnn",
    "fashion-mnist-resnet8",
    "fashion-mnist-vit",
}


def test_every_shipped_experiment_parses_and_validates():
    assert set(experiment_names()) == EXPECTED
    for name in experiment_names():
        experiment = load_experiment(name)
        assert experiment.description and experiment.configs
        for config in experiment.configs:
            assert config == config.resolved()


@pytest.mark.parametrize("name", ["icml2024-cifar10", "icml2024-cifar100"])
def test_icml2024_cifar_grid_and_recipe(name):
    configs = load_experiment(name).configs
    dpt = {(c.alpha, c.beta) for c in configs if c.rule == "dpT"}
    grid = {(a, b) for a in (0.0, 0.5, 1.0) for b in (0.01, 0.1, 1.0)} | {(0.0, 10.0)}
    assert dpt == grid and len(configs) == len(grid) + 1
    assert [c.rule for c in configs].count("bp") == 1
    for c in configs:
        assert (c.model, c.epochs, c.batch_size, c.lr, c.warmup_epochs, c.warmup_lr, c.final_lr) == (
            "vgg16",
            130,
            100,
            0.025,
            10,
            1e-3,
            2e-6,
        )
        assert (c.momentum, c.weight_decay, c.validation_percent, c.seeds) == (0.9, 5e-4, 10.0, [1988, 1542, 8697])
        assert (c.schedule, c.passes, c.loss, c.activation) == ("forward", 16, "cross_entropy", "relu")


def test_other_paper_settings():
    imagenet = {(c.rule, c.alpha, c.beta) for c in load_experiment("icml2024-imagenet32").configs if c.rule != "bp"}
    assert imagenet == {("dpT", 0.0, 0.1), ("dpT", 0.5, 0.01)}
    (mnist,) = [c for c in load_experiment("icml2024-mnist-cnn").configs if c.rule != "bp"]
    assert (mnist.dataset, mnist.rule, mnist.alpha, mnist.beta, mnist.passes) == ("mnist", "dpT", 1.0, 0.5, 8)
    for dataset in ("cifar10", "cifar100", "imagenet32"):
        dp = [c for c in load_experiment(f"icml2023-{dataset}").configs if c.rule != "bp"]
        assert [(c.rule, c.alpha, c.model, c.dataset) for c in dp] == [("dp", 0.5, "vgg16", dataset)]


def test_fashion_mnist_mlp_study_grid():
    configs = load_experiment("icml2024-fashion-mnist-mlp").configs
    grid = {(a, b) for a in (0.0, 0.5, 1.0) for b in (0.01, 0.1, 1.0)}
    for rule in ("dpT", "dp"):
        assert {(c.alpha, c.beta) for c in configs if c.rule == rule} == grid
    assert len(configs) == 2 * len(grid) + 1 and [c.rule for c in configs].count("bp") == 1
    for c in configs:
        assert (c.dataset, c.model, c.hidden, c.activation) == ("fashion-mnist", "mlp", [512, 512], "relu")
        assert (c.optimizer, c.lr, c.final_lr, c.warmup_epochs, c.weight_decay) == ("adam", 1e-3, 1e-3, 0, 0.0)
        assert (c.validation_percent, c.seeds, c.augment) == (10.0, [1988, 1542, 8697], False)
    cnn = load_experiment("icml2024-fashion-mnist-cnn").configs
    assert [(c.rule, c.model, c.dataset) for c in cnn] == [
        ("bp", "mini_cnn", "fashion-mnist"),
        ("dpT", "mini_cnn", "fashion-mnist"),
    ]
    assert (cnn[1].alpha, cnn[1].beta, cnn[1].schedule, cnn[1].passes) == (1.0, 0.5, "backward", 1)
    resnet = load_experiment("fashion-mnist-resnet8").configs
    assert [(c.rule, c.alpha, c.schedule, c.passes) for c in resnet] == [
        ("bp", 0.5, "backward", 1),
        ("dpT", 1.0, "backward", 1),
        ("dpT", 0.5, "forward-backward", 2),
    ]
    assert all((c.model, c.dataset, c.seeds) == ("resnet8", "fashion-mnist", [1988, 1542, 8697]) for c in resnet)


def test_fashion_mnist_vit_compares_backprop_with_generic_and_fused_dpT():
    configs = load_experiment("fashion-mnist-vit").configs
    assert [(c.rule, c.schedule, c.passes, c.implementation) for c in configs] == [
        ("bp", "backward", 1, "generic"),
        ("dpT", "forward-backward", 1, "generic"),
        ("dpT", "backward", 1, "fused"),
    ]
    assert [(c.alpha, c.beta) for c in configs[1:]] == [(0.5, 0.1), (1.0, 0.1)]
    for c in configs:
        assert (c.model, c.activation, c.dataset, c.seeds) == ("vit", "gelu", "fashion-mnist", [1988, 1542, 8697])
        assert (c.optimizer, c.lr, c.warmup_epochs, c.momentum, c.baseline) == ("adam", 1e-3, 1, None, False)
        # a 2-core budget: at most 3 epochs of 150 batches, and the training samples they need cover the
        # whole official test set of 10 000 images, which is read up to the same count
        assert c.epochs * c.limit_batches <= 450 and c.limit_batches * c.batch_size / 0.9 >= 10_000


def test_runs_go_seed_by_seed_with_baselines():
    configs = [TrainConfig(rule="dpT", seeds=[1, 2], baseline=True), TrainConfig(rule="bp", seeds=[1, 2, 3])]
    runs = experiment_runs(configs)
    assert [(r.rule, r.seeds) for r in runs] == [
        ("dpT", [1]),
        ("bp", [1]),
        ("bp", [1]),
        ("dpT", [2]),
        ("bp", [2]),
        ("bp", [2]),
        ("bp", [3]),
    ]
    assert not any(r.baseline for r in runs)


TINY = """description = "tiny"
dataset = "digits"
hidden = [16]
epochs = 1
limit_batches = 2
seeds = [1, 2]
baseline = false
[[runs]]
rule = "bp"
[[runs]]
rule = "dpT"
alpha = 1.0
"""


@pytest.mark.slow
def test_parallel_jobs_equal_one_process_and_resume_keeps_finished_runs(tmp_path, capsys):
    experiment = tmp_path / "tiny.toml"
    experiment.write_text(TINY)
    assert main(["experiment", str(experiment), "--out", str(tmp_path / "serial"), "--json", "--no-progress"]) == 0
    serial = json.loads(capsys.readouterr().out)["runs"]
    assert main(["experiment", str(experiment), "--jobs", "2", "--out", str(tmp_path / "parallel"), "--json"]) == 0
    parallel = json.loads(capsys.readouterr().out)["runs"]
    assert [(r["rule"], r["seed"]) for r in parallel] == [("bp", 1), ("dpT", 1), ("bp", 2), ("dpT", 2)]
    assert [(r["rule"], r["seed"], r["test_acc"]) for r in parallel] == [
        (r["rule"], r["seed"], r["test_acc"]) for r in serial
    ]
    # An interrupted experiment: one run of the four is missing; resuming trains only that one.
    kept = {Path(r["run_dir"]).name: (Path(r["run_dir"]) / "summary.json").read_text() for r in parallel[:3]}
    shutil.rmtree(parallel[3]["run_dir"])
    assert main(["experiment", str(experiment), "--resume", str(tmp_path / "parallel"), "--json", "--no-progress"]) == 0
    resumed = json.loads(capsys.readouterr().out)["runs"]
    assert sorted(p.name for p in (tmp_path / "parallel").iterdir()) == sorted(Path(r["run_dir"]).name for r in resumed)
    assert {name: (tmp_path / "parallel" / name / "summary.json").read_text() for name in kept} == kept
    assert resumed[3]["test_acc"] == parallel[3]["test_acc"]


def test_bad_jobs_and_resume_are_refused(tmp_path, capsys):
    assert main(["experiment", "icml2024-mnist-cnn", "--jobs", "0"]) == 2
    assert "--jobs must be >= 1" in capsys.readouterr().err
    assert main(["experiment", "icml2024-mnist-cnn", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        run_experiment([TrainConfig()], jobs=0)


def test_an_experiment_with_a_bad_run_is_rejected():
    with pytest.raises(ValueError, match="alpha must be a number in \\[0, 1\\]"):
        parse_experiment("x", {"description": "d", "runs": [{"alpha": 3}]}, "experiment x")
    with pytest.raises(ValueError, match="experiment x: unknown setting 'colour'"):
        parse_experiment("x", {"colour": "red"}, "experiment x")


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: two zero bytes, type 0x08 (uint8), rank, big-endian uint32 dims, then the bytes (gzip'd)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.slow
def test_mnist_cnn_experiment_runs_one_epoch_on_tiny_idx_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    mnist = tmp_path / "data" / "mnist"
    mnist.mkdir(parents=True)
    for prefix, count in (("train", 120), ("t10k", 20)):
        write_idx(mnist / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)))
        write_idx(mnist / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, count))
    status = main(
        [
            "experiment",
            "icml2024-mnist-cnn",
            "--epochs",
            "1",
            "--limit-batches",
            "1",
            "--seeds",
            "7",
            "--data-dir",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "runs"),
            "--json",
            "--no-progress",
        ]
    )
    assert status == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [(r["rule"], r["alpha"], r["beta"], r["seed"], r["status"]) for r in runs] == [
        ("bp", None, None, 7, "finished"),
        ("dpT", 1.0, 0.5, 7, "finished"),
    ]
    for run in runs:
        summary = json.loads((Path(run["run_dir"]) / "summary.json").read_text())
        assert summary["epochs_completed"] == 1 and summary["steps"] == 1
        assert 0.0 <= summary["test_acc"] <= 100.0


def test_list_and_show(capsys):
    assert main(["experiment", "--list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listing] == sorted(EXPECTED) + ["noise-robustness", "robustness-mlp"]
    assert [line.split()[1] for line in listing[-2:]] == ["study", "study"]
    assert main(["experiment", "icml2024-cifar10", "--show", "--epochs", "2", "--only", "1", "2"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 2 and "epochs=2" in shown[0] and " bp " in shown[0]
