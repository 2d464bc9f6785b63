"""A user's own arrays: .npz files and torch Datasets, checked at load, prepared as one path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from dualprop.cli import main
from dualprop.data import DataError, array_splits, from_datasets, load_dataset, read_npz
from dualprop.training import TrainConfig, resume_run, train


def images(count: int, seed: int, shape: tuple[int, ...] = (6, 6)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, *shape), dtype=np.uint8), rng.integers(0, 3, count)


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture
def image_file(tmp_path):
    (x_train, y_train), (x_test, y_test) = images(40, 0), images(10, 1)
    y_train[:3] = [0, 1, 2]
    return write_npz(tmp_path / "mine.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def test_uint8_images_are_scaled_and_standardised_with_the_training_split(image_file):
    raw = np.load(image_file)
    splits = load_dataset(image_file, validation_percent=25.0, seed=3)
    assert splits.input_shape == (1, 6, 6) and splits.num_classes == 3 and splits.value_range == (0.0, 1.0)
    assert len(splits.train) == 30 and len(splits.validation) == 10 and len(splits.test) == 10
    # the training split, read back to the [0, 1] scale, has the recorded statistics (independent numpy)
    train_x = splits.train.tensors[0].numpy() * splits.std[0] + splits.mean[0]
    pool = raw["x_train"].astype(np.float64) / 255
    kept = [i for i in range(40) if any(np.allclose(train_x[j, 0], pool[i], atol=1e-5) for j in range(30))]
    assert len(kept) == 30
    assert splits.mean[0] == pytest.approx(pool[kept].mean(), abs=1e-6)
    assert splits.std[0] == pytest.approx(pool[kept].std(), abs=1e-6)
    test_x = splits.test.tensors[0].numpy()[:, 0]
    np.testing.assert_allclose(test_x, (raw["x_test"] / 255 - pool[kept].mean()) / pool[kept].std(), atol=1e-5)
    assert splits.test.tensors[1].tolist() == raw["y_test"].tolist()


def test_float_features_are_used_as_given_and_x_val_is_the_validation_set(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 5)).astype(np.float64)
    y = np.arange(30) % 4
    path = write_npz(
        tmp_path / "f.npz", x_train=x[:20], y_train=y[:20], x_test=x[20:25], y_test=y[20:25], x_val=x[25:], y_val=y[25:]
    )
    splits = load_dataset(path, validation_percent=50.0)  # ignored: the file brings its own validation set
    assert splits.input_shape == (5,) and splits.num_classes == 4
    np.testing.assert_array_equal(splits.train.tensors[0].numpy(), x[:20].astype(np.float32))
    np.testing.assert_array_equal(splits.validation.tensors[0].numpy(), x[25:].astype(np.float32))
    assert splits.validation.tensors[1].tolist() == y[25:].tolist()
    assert splits.value_range == (float(np.float32(x[:20].min())), float(np.float32(x[:20].max())))


def test_channels_first_images_keep_per_channel_statistics(tmp_path):
    (x, y), (xt, yt) = images(20, 0, (2, 4, 4)), images(5, 1, (2, 4, 4))
    x[:, 1] //= 4  # a darker second channel
    y[:3] = [0, 1, 2]
    splits = load_dataset(
        write_npz(tmp_path / "c.npz", x_train=x, y_train=y, x_test=xt, y_test=yt), validation_percent=0.0, flatten=True
    )
    assert splits.input_shape == (32,)
    for c in range(2):
        assert splits.mean[c] == pytest.approx((x[:, c] / 255).mean(), abs=1e-6)
        assert splits.std[c] == pytest.approx((x[:, c] / 255).std(), abs=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.pop("y_test"), r"bad.npz: missing key 'y_test'; expected x_train, y_train, x_test, y_test"),
        (lambda a: a.update(x_valid=a["x_test"]), r"bad.npz: unexpected key 'x_valid'"),
        (lambda a: a.update(x_val=a["x_test"]), r"missing key 'y_val'"),
        (lambda a: a.update(y_test=a["y_test"] + 7), r"y_test in .*bad.npz holds label 9, but the classes of y_train"),
        (
            lambda a: a.update(y_train=a["y_train"].astype(np.float32)),
            r"y_train in .*has dtype torch.float32; expected integer",
        ),
        (lambda a: a.update(y_train=-a["y_train"]), r"y_train in .*holds the negative label -2"),
        (lambda a: a.update(y_train=a["y_train"][:-1]), r"y_train in .*has shape \(39,\); expected \(40,\)"),
        (
            lambda a: a.update(x_test=a["x_test"][:, :5]),
            r"x_test in .*holds torch.uint8 samples of shape \(1, 5, 6\), but x_train",
        ),
        (
            lambda a: a.update(x_train=a["x_train"].astype(np.int64)),
            r"x_train in .*has dtype torch.int64; expected floating point or uint8",
        ),
        (lambda a: a.update(x_train=np.full((40, 3), np.nan)), r"x_train in .*holds NaN or infinite values"),
        (lambda a: a.update(y_train=np.zeros(40, dtype=np.int64)), r"y_train in .*holds only class 0"),
        (lambda a: a.update(x_test=a["x_test"][:0], y_test=a["y_test"][:0]), r"x_test in .*has no samples"),
    ],
)
def test_bad_arrays_get_one_clear_error_naming_the_key_and_file(image_file, tmp_path, change, message):
    arrays = dict(np.load(image_file))
    change(arrays)
    path = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message) as error:
        read_npz(path)
    assert "\n" not in str(error.value) and isinstance(error.value, ValueError)


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(DataError, match=r"cannot read .*absent.npz"):
        read_npz(tmp_path / "absent.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(DataError, match=r"text.npz is not a readable .npz file"):
        read_npz(tmp_path / "text.npz")
    np.savez(tmp_path / "objects.npz", x_train=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match=r"x_train in .*objects.npz has dtype object; expected plain numbers"):
        read_npz(tmp_path / "objects.npz")


class PairsDataset(Dataset):
    """A map-style dataset yielding (numpy-free tensor, int) pairs, as a user would write one."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.x[index], int(self.y[index])


def test_datasets_and_npz_arrays_take_the_same_path(image_file):
    raw = np.load(image_file)
    x, y = torch.from_numpy(raw["x_train"]), torch.from_numpy(raw["y_train"])
    from_python = from_datasets(
        PairsDataset(x, y), TensorDataset(torch.from_numpy(raw["x_test"]), torch.from_numpy(raw["y_test"]))
    )
    a = array_splits(from_python, 25.0, seed=1)
    b = load_dataset(image_file, validation_percent=25.0, seed=1)
    for part in ("train", "validation", "test"):
        for got, expected in zip(getattr(a, part).tensors, getattr(b, part).tensors):
            torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="the labels of the test dataset holds label 5"):
        from_datasets(PairsDataset(x, y), PairsDataset(x[:4], torch.tensor([0, 1, 5, 2])))
    with pytest.raises(ValueError, match="the train dataset's items are not \\(input, label\\) pairs"):
        from_datasets(TensorDataset(x), PairsDataset(x, y))


def digits_datasets():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data / 16, dtype=torch.float32)
    y = torch.tensor(bunch.target)
    return PairsDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])


def test_train_takes_torch_datasets_and_learns(tmp_path):
    train_set, test_set = digits_datasets()
    config = TrainConfig(epochs=3, hidden=[32], baseline=False, out=str(tmp_path), tensorboard=False, threads=1)
    summary = train(config, data=(train_set, test_set))[0]
    assert summary["status"] == "finished" and summary["dataset"] == "python"
    assert summary["test_acc"] > 75.0  # chance is 10 %
    assert (tmp_path / "python-mlp-dpT-a0.5-b0.1-seed0").is_dir()
    with pytest.raises(ValueError, match="data must be torch Datasets \\(train, test\\)"):
        train(config, data=train_set)


def test_a_python_data_run_resumes_only_with_its_data(tmp_path):
    train_set, test_set = digits_datasets()
    config = TrainConfig(
        epochs=1, hidden=[8], limit_batches=2, baseline=False, out=str(tmp_path), tensorboard=False, threads=1
    )
    summary = train(config, data=(train_set, test_set))[0]
    run_dir = summary["run_dir"]
    (tmp_path / "summary-saved.json").write_bytes((tmp_path / run_dir / "summary.json").read_bytes())
    (tmp_path / run_dir / "summary.json").unlink()  # as if killed before the end
    with pytest.raises(ValueError, match="stands for data handed over from Python"):
        resume_run(run_dir)
    assert resume_run(run_dir, data=(train_set, test_set))["status"] == "finished"


def test_command_line_trains_on_an_npz_file_and_rejects_a_bad_one(tmp_path, capsys):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images * 255 / 16).round().astype(np.uint8)
    path = write_npz(
        tmp_path / "digits.npz",
        x_train=x[:1400],
        y_train=bunch.target[:1400],
        x_test=x[1400:],
        y_test=bunch.target[1400:],
    )
    status = main(
        [
            "train",
            "--dataset",
            path,
            "--epochs",
            "2",
            "--hidden",
            "32",
            "--no-baseline",
            "--out",
            str(tmp_path / "runs"),
            "--no-progress",
            "--no-tensorboard",
            "--json",
        ]
    )
    assert status == 0
    import json

    run = json.loads(capsys.readouterr().out)["runs"][0]
    assert run["test_acc"] > 85.0 and run["run_dir"].endswith("digits-mlp-dpT-a0.5-b0.1-seed0")
    bad = write_npz(tmp_path / "bad.npz", x_train=x[:10], y_train=bunch.target[:10], x_test=x[10:20])
    assert main(["train", "--dataset", bad, "--out", str(tmp_path / "runs2")]) == 2
    error = capsys.readouterr().err
    assert error.strip().splitlines() == [
        f"dualprop: error: {bad}: missing key 'y_test'; expected x_train, "
        "y_train, x_test, y_test and optionally x_val, y_val"
    ]
    assert not (tmp_path / "runs2").exists()


def test_a_config_records_the_npz_file_by_its_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(dataset="data/mine.npz").resolved()
    assert config.dataset == str(tmp_path / "data" / "mine.npz")
    assert config.resolved().dataset == config.dataset
