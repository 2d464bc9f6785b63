"""Shipped experiment configs: all parse and validate, hold the papers' grids, and one runs small on
tiny MNIST files written in the official IDX format."""
from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from dualprop.cli import main
from dualprop.training.experiments import experiment_names, load_experiment, parse_experiment

EXPECTED = {"icml2023-cifar10", "icml2023-cifar100", "icml2023-imagenet32", "icml2024-cifar10",
            "icml2024-cifar100", "icml2024-imagenet32", "icml2024-mnist-cnn"}


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
        assert (c.model, c.epochs, c.batch_size, c.lr, c.warmup_epochs, c.warmup_lr, c.final_lr) == \
            ("vgg16", 130, 100, 0.025, 10, 1e-3, 2e-6)
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


def test_mnist_cnn_experiment_runs_one_epoch_on_tiny_idx_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    mnist = tmp_path / "data" / "mnist"
    mnist.mkdir(parents=True)
    for prefix, count in (("train", 120), ("t10k", 20)):
        write_idx(mnist / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)))
        write_idx(mnist / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, count))
    status = main(["experiment", "icml2024-mnist-cnn", "--epochs", "1", "--limit-batches", "1", "--seeds", "7",
                   "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "runs"), "--json",
                   "--no-progress"])
    assert status == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [(r["rule"], r["alpha"], r["beta"], r["seed"], r["status"]) for r in runs] == [
        ("bp", None, None, 7, "finished"), ("dpT", 1.0, 0.5, 7, "finished")]
    for run in runs:
        summary = json.loads((Path(run["run_dir"]) / "summary.json").read_text())
        assert summary["epochs_completed"] == 1 and summary["steps"] == 1
        assert 0.0 <= summary["test_acc"] <= 100.0


def test_list_and_show(capsys):
    assert main(["experiment", "--list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listing] == sorted(EXPECTED | {"robustness-mlp"})
    assert listing[-1].split()[1] == "study"
    assert main(["experiment", "icml2024-cifar10", "--show", "--epochs", "2", "--only", "1", "2"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 2 and "epochs=2" in shown[0] and " bp " in shown[0]
