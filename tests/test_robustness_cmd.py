import importlib.util
import json

import pytest
import torch

from dualprop.analysis import GradientAngleLog
from dualprop.analysis.robustness import data_range_model, feature_statistics, load_trained_run
from dualprop.cli import main
from dualprop.training import TrainConfig, load_config, train
from dualprop.training.trainer import load_splits


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = TrainConfig(
        rule="dpT",
        alpha=0.5,
        beta=0.1,
        epochs=2,
        hidden=[24],
        limit_batches=8,
        diagnose_every=4,
        baseline=False,
        out=str(out),
        tensorboard=False,
        threads=1,
    )
    return train(config, GradientAngleLog())[0]


def test_feature_statistics_hand_worked():
    mean, std = feature_statistics((0.1, 0.2), (0.5, 0.25), (8,))
    assert mean.tolist() == pytest.approx([0.1] * 4 + [0.2] * 4)
    assert std.tolist() == pytest.approx([0.5] * 4 + [0.25] * 4)
    mean, std = feature_statistics((0.1, 0.2, 0.3), (1.0, 2.0, 3.0), (3, 4, 4))
    assert mean.shape == (3, 1, 1) and std[2, 0, 0] == 3.0


def test_data_range_inputs_are_the_pixels(trained_run):
    run = load_trained_run(trained_run["run_dir"])
    model, raw, labels = data_range_model(run)
    # digits pixels are integers 0..16 divided by pixel_max = 16
    assert float(raw.min()) >= 0.0 and float(raw.max()) <= 1.0
    torch.testing.assert_close(raw * 16, (raw * 16).round(), atol=1e-4, rtol=0)
    inputs, _ = run.data.test.tensors
    torch.testing.assert_close(model(raw), run.model(inputs), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_robustness_command_writes_json_without_overwriting(trained_run, capsys):
    run_dir = trained_run["run_dir"]
    config = load_config(f"{run_dir}/config.toml")
    tested = len(load_splits(config, config.seeds[0]).test)  # the trainer's test samples under limit_batches
    assert (
        main(
            [
                "robustness",
                run_dir,
                "--eps",
                "0.02",
                "0.2",
                "--pgd-steps",
                "5",
                "--lipschitz-samples",
                "64",
                "--limit",
                str(tested),
            ]
        )
        == 0
    )
    first = json.loads(open(f"{run_dir}/robustness.json").read())
    # the clean accuracy in the data range equals the trainer's test accuracy of the best checkpoint
    assert first["clean_acc"] == pytest.approx(trained_run["test_acc"])
    assert [row["eps"] for row in first["attacks"]] == [0.02, 0.2]
    for row in first["attacks"]:
        assert first["clean_acc"] >= row["fgsm_acc"] and first["clean_acc"] >= row["pgd_acc"]
    assert first["attacks"][1]["pgd_acc"] < first["clean_acc"]  # ε = 0.2 does hurt
    assert 0 < first["lipschitz_max"] <= first["product_bound"]
    assert len(first["spectral_norms"]) == 2
    assert "clean accuracy" in capsys.readouterr().out
    assert main(["robustness", run_dir, "--eps", "0.1", "--limit", "40", "--norm", "l2", "--json"]) == 0
    second = json.loads(open(f"{run_dir}/robustness-2.json").read())
    assert second["test_samples"] == 40 and second["norm"] == "l2"
    assert json.loads(open(f"{run_dir}/robustness.json").read()) == first


def test_robustness_command_bad_settings(trained_run, tmp_path, capsys):
    assert main(["robustness", trained_run["run_dir"], "--eps", "-0.1"]) == 2
    assert main(["robustness", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_diagnose_command_on_a_run(trained_run, tmp_path, capsys):
    out = tmp_path / "diag"
    assert main(["diagnose", trained_run["run_dir"], "--rule", "bp", "--batches", "2", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "block 1" in printed and "block 2" in printed
    rows = (out / "diagnose.csv").read_text().splitlines()
    assert rows[0] == "batch,layer,cosine,angle" and len(rows) == 1 + 2 * 2
    assert all(abs(float(r.split(",")[3])) < 1e-2 for r in rows[1:])  # bp against itself
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "diagnose-batches.png").stat().st_size > 0
        assert (out / "diagnostics-epochs.png").stat().st_size > 0  # from the run's diagnostics.csv


def test_float_arrays_are_attacked_in_their_own_range(tmp_path):
    import numpy as np
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16 * 6 - 3).astype(np.float32)  # features in [-3, 3], used as given
    np.savez(
        tmp_path / "wide.npz",
        x_train=x[:1400],
        y_train=bunch.target[:1400],
        x_test=x[1400:1600],
        y_test=bunch.target[1400:1600],
    )
    config = TrainConfig(
        dataset=str(tmp_path / "wide.npz"),
        epochs=1,
        hidden=[16],
        baseline=False,
        out=str(tmp_path / "runs"),
        tensorboard=False,
        threads=1,
    )
    summary = train(config)[0]
    run = load_trained_run(summary["run_dir"])
    assert run.data.value_range == (-3.0, 3.0)
    _, raw, _ = data_range_model(run)
    torch.testing.assert_close(raw, torch.from_numpy(x[1400:1600]))  # nothing clipped to [0, 1]
    assert main(["robustness", summary["run_dir"], "--eps", "0.5", "--pgd-steps", "2", "--json"]) == 0
    report = json.loads(open(f"{summary['run_dir']}/robustness.json").read())
    assert report["input_range"] == [-3.0, 3.0] and report["eps_scale"] == "the inputs' own scale"
    assert report["clean_acc"] == pytest.approx(summary["test_acc"])
