"""Dataset preparation: split, normalisation, padding, flattening, augmentation and batch iteration."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dualprop.data import BatchLoader, get_spec, load_dataset, random_crop_flip
from dualprop.data.digits import read_digits


def write_cifar10(root: Path, per_batch: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(folder / name, "wb") as file:
            pickle.dump({b"data": batches[name], b"labels": labels}, file)
    return batches


def write_mnist(directory: Path, n_train: int = 10, n_test: int = 4) -> np.ndarray:
    directory.mkdir(parents=True)
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    for prefix, images in (("train", train), ("t10k", rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8))):
        n = len(images)
        image_header = struct.pack(">BBBBIII", 0, 0, 8, 3, n, 28, 28)
        (directory / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(image_header + images.tobytes()))
        label_header = struct.pack(">BBBBI", 0, 0, 8, 1, n)
        (directory / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(label_header + bytes(n)))
    return train


def test_registry_normalisation_by_hand(tmp_path: Path) -> None:
    batches = write_cifar10(tmp_path)
    splits = load_dataset("cifar10", root=tmp_path, validation_percent=0, augment=False)
    spec = get_spec("cifar10")
    raw = np.concatenate([batches[f"data_batch_{i}"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    expected = (raw / 255.0 - np.array(spec.mean)[:, None, None]) / np.array(spec.std)[:, None, None]
    inputs = splits.train.tensors[0]
    assert inputs.dtype == torch.float32 and inputs.shape == (30, 3, 32, 32)
    np.testing.assert_allclose(inputs.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert splits.validation is None and splits.mean == spec.mean
    assert splits.augmentation is None  # augment=False


def test_train_statistics_give_zero_mean_unit_std(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    splits = load_dataset("cifar10", root=tmp_path, validation_percent=20, normalization="train")
    inputs = splits.train.tensors[0].double()
    per_channel = inputs.transpose(0, 1).reshape(3, -1)
    np.testing.assert_allclose(per_channel.mean(1).numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(per_channel.std(1, correction=0).numpy(), 1.0, atol=1e-5)
    assert splits.mean != get_spec("cifar10").mean


def test_split_sizes_and_determinism() -> None:
    first = load_dataset("digits", validation_percent=10, seed=3)
    again = load_dataset("digits", validation_percent=10, seed=3)
    other = load_dataset("digits", validation_percent=10, seed=4)
    assert (len(first.train), len(first.validation), len(first.test)) == (1438 - 144, 144, 359)
    assert torch.equal(first.validation.tensors[0], again.validation.tensors[0])
    assert not torch.equal(first.validation.tensors[0], other.validation.tensors[0])
    # train and validation partition the official training images
    raw_train = read_digits()["train"].images.reshape(1438, -1)
    spec = get_spec("digits")

    def restore(t):
        return np.rint((t.numpy().reshape(len(t), -1) * spec.std[0] + spec.mean[0]) * 16)

    together = np.concatenate([restore(first.train.tensors[0]), restore(first.validation.tensors[0])])
    assert sorted(map(bytes, together.astype(np.uint8))) == sorted(map(bytes, raw_train))


def test_flatten_limit_and_shapes() -> None:
    splits = load_dataset("digits", flatten=True, limit=100, validation_percent=0)
    assert splits.input_shape == (64,) and splits.train.tensors[0].shape == (100, 64)
    assert len(splits.test) == 100 and splits.num_classes == 10 and splits.augmentation is None


def test_pad_to_32_torchvision_layout(tmp_path: Path) -> None:
    train = write_mnist(tmp_path / "MNIST" / "raw")
    splits = load_dataset("mnist", root=tmp_path, pad_to=32, validation_percent=0)
    inputs = splits.train.tensors[0]
    assert splits.input_shape == (1, 32, 32) and inputs.shape == (10, 1, 32, 32)
    background = (0 - 0.1307) / 0.3081
    border = torch.tensor(background)
    assert torch.allclose(inputs[:, :, :2], border) and torch.allclose(inputs[..., 30:], border)
    np.testing.assert_allclose(inputs[:, 0, 2:30, 2:30].numpy(), (train / 255 - 0.1307) / 0.3081, rtol=1e-5, atol=1e-5)


def test_bad_settings_are_value_errors() -> None:
    with pytest.raises(ValueError, match="validation_percent"):
        load_dataset("digits", validation_percent=100)
    with pytest.raises(ValueError, match="normalization"):
        load_dataset("digits", normalization="batch")
    with pytest.raises(ValueError, match="pad_to=4"):
        load_dataset("digits", pad_to=4)


def test_crop_flip_keeps_shape_and_draws_from_padded_image() -> None:
    n, padding = 64, 2
    images = torch.arange(n * 2 * 5 * 5, dtype=torch.float32).view(n, 2, 5, 5) + 1
    out = random_crop_flip(images, padding, True, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    found = set()
    for k in range(n):
        matches = [
            (dy, dx, mirror)
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            for mirror in (False, True)
            if torch.equal(out[k], (lambda c: c.flip(-1) if mirror else c)(padded[k, :, dy : dy + 5, dx : dx + 5]))
        ]
        assert len(matches) == 1, k
        found.add(matches[0])
    assert {m for _, _, m in found} == {False, True} and len({(dy, dx) for dy, dx, _ in found}) > 10
    again = random_crop_flip(images, padding, True, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_crop_without_flip_never_mirrors() -> None:
    images = torch.rand(32, 3, 6, 6) + 1
    out = random_crop_flip(images, 0, False, torch.Generator().manual_seed(1))
    assert torch.equal(out, images)


def test_loader_augments_training_batches_only(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    splits = load_dataset("cifar10", root=tmp_path, validation_percent=0, flatten=True)
    assert splits.augmentation.flip and splits.augmentation.crop_padding == 4
    train, validation, test = splits.loaders(batch_size=8, seed=0)
    assert validation is None and len(train) == 4 and len(test) == 1
    seen = torch.cat([x for x, _ in train])
    assert seen.shape == (30, 3072)
    assert not torch.equal(seen.sort(0).values, splits.train.tensors[0].sort(0).values)  # augmented
    test_inputs, test_labels = next(iter(test))
    assert torch.equal(test_inputs, splits.test.tensors[0]) and torch.equal(test_labels, splits.test.tensors[1])


def test_batch_loader_epochs_and_shards() -> None:
    dataset = torch.utils.data.TensorDataset(torch.arange(10.0)[:, None], torch.arange(10))
    loader = BatchLoader(dataset, batch_size=3, shuffle=True, seed=5)
    epoch0 = torch.cat([y for _, y in loader])
    epoch1 = torch.cat([y for _, y in loader])
    loader.set_epoch(0)
    assert torch.equal(torch.cat([y for _, y in loader]), epoch0) and not torch.equal(epoch0, epoch1)
    assert sorted(epoch0.tolist()) == list(range(10)) and len(loader) == 4
    shards = [
        torch.cat([y for _, y in BatchLoader(dataset, 2, shuffle=True, seed=5, rank=r, world_size=3)]) for r in range(3)
    ]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert len(set(torch.cat(shards).tolist())) == 9


def test_channel_stats_in_chunks_match_numpy() -> None:
    from dualprop.data import channel_stats

    images = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8)
    mean, std = channel_stats(images, 255.0, chunk=7)
    values = images.numpy().transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
    np.testing.assert_allclose(mean, values.mean(1), rtol=1e-12)
    np.testing.assert_allclose(std, values.std(1), rtol=1e-10)
