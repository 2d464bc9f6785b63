"""Readers of the official file formats, checked against tiny files written in exactly those formats."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from dualprop.data import (
    DataError,
    read_cifar10,
    read_cifar100,
    read_digits,
    read_idx,
    read_imagenet32,
    read_mnist,
    read_svhn,
)
from dualprop.data.cifar import load_data_pickle
from dualprop.data.imagenet32 import read_imagenet32_batch


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding written by hand: 0, 0, type 0x08 (uint8), rank, big-endian uint32 dims, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(directory: Path, n_train: int, n_test: int, compress: bool = True, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        if compress:
            (directory / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (directory / name).write_bytes(idx_bytes(array))
    return arrays


def write_pickle(path: Path, content: object, protocol: int = 4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        pickle.dump(content, file, protocol=protocol)


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_idx_roundtrip(tmp_path: Path, compress: bool) -> None:
    arrays = write_mnist(tmp_path, 5, 3, compress=compress)
    splits = read_mnist(tmp_path)
    assert splits["train"].images.shape == (5, 1, 28, 28) and splits["train"].images.dtype == np.uint8
    np.testing.assert_array_equal(splits["train"].images[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(splits["test"].images[:, 0], arrays["t10k-images-idx3-ubyte"])
    assert splits["test"].labels.dtype == np.int64
    np.testing.assert_array_equal(splits["test"].labels, arrays["t10k-labels-idx1-ubyte"])


def test_idx_other_types_and_byte_order(tmp_path: Path) -> None:
    values = np.array([[1, -2, 70000], [3, 4, -5]], dtype=">i4")
    path = tmp_path / "ints.idx"
    path.write_bytes(struct.pack(">BBBBII", 0, 0, 0x0C, 2, 2, 3) + values.tobytes())
    result = read_idx(path)
    assert result.shape == (2, 3)
    np.testing.assert_array_equal(result, [[1, -2, 70000], [3, 4, -5]])


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    write_mnist(tmp_path, 5, 3)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*truncated or corrupt gzip"):
        read_mnist(tmp_path)


def test_truncated_idx_data_reports_expected_bytes(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(idx_bytes(np.arange(10, dtype=np.uint8))[:-3])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: expected 10 data bytes for shape \(10,\), found 7"):
        read_idx(path)


def test_bad_magic_number_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 0))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: not an IDX file.*0x12340801"):
        read_idx(path)


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    write_mnist(tmp_path, 5, 3)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(4, np.uint8))))
    with pytest.raises(DataError, match="expected 3 labels"):
        read_mnist(tmp_path)


def cifar_batch(rng: np.random.Generator, n: int, label_key: bytes, classes: int) -> dict:
    return {
        b"batch_label": b"training batch",
        label_key: [int(v) for v in rng.integers(0, classes, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


def test_cifar10_pickles(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    batches = [cifar_batch(rng, 4, b"labels", 10) for _ in range(6)]
    for index, batch in enumerate(batches[:5], start=1):
        write_pickle(tmp_path / "cifar-10-batches-py" / f"data_batch_{index}", batch)
    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", batches[5])
    splits = read_cifar10(tmp_path)
    train = splits["train"]
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == np.uint8
    # row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32 x 32
    sample = batches[2][b"data"][1]
    np.testing.assert_array_equal(train.images[9, 1, 3, 5], sample[1024 + 3 * 32 + 5])
    np.testing.assert_array_equal(train.labels, sum((b[b"labels"] for b in batches[:5]), []))
    np.testing.assert_array_equal(splits["test"].labels, batches[5][b"labels"])


def test_cifar10_limit_stops_reading_early(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        write_pickle(tmp_path / "cifar-10-batches-py" / name, cifar_batch(rng, 4, b"labels", 10))
    splits = read_cifar10(tmp_path, limit=6)  # batches 3..5 are absent and must not be needed
    assert len(splits["train"].labels) == 6 and len(splits["test"].labels) == 4


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    train, test = cifar_batch(rng, 5, b"fine_labels", 100), cifar_batch(rng, 2, b"fine_labels", 100)
    train[b"coarse_labels"] = [0] * 5
    write_pickle(tmp_path / "cifar-100-python" / "train", train)
    write_pickle(tmp_path / "cifar-100-python" / "test", test)
    splits = read_cifar100(tmp_path)
    np.testing.assert_array_equal(splits["train"].labels, train[b"fine_labels"])
    np.testing.assert_array_equal(splits["test"].images.reshape(2, -1), test[b"data"])


def test_legacy_numpy_module_name_is_accepted(tmp_path: Path) -> None:
    """The official files (numpy 1.x) name numpy.core.multiarray._reconstruct in a GLOBAL opcode;
    protocol 3 writes the same opcode without framing, so the module name can be swapped in place."""
    data = np.arange(3072 * 2, dtype=np.uint32).astype(np.uint8).reshape(2, 3072)
    raw = pickle.dumps({b"data": data, b"labels": [3, 7]}, protocol=3)
    legacy = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert legacy != raw
    path = tmp_path / "test_batch"
    path.write_bytes(legacy)
    content = load_data_pickle(path)
    np.testing.assert_array_equal(content[b"data"], data)


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Innocent:
    pass


def test_pickle_with_code_is_rejected_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    write_pickle(path, {b"data": Payload(marker), b"labels": []})
    expected = f"{os.system.__module__}.system"
    with pytest.raises(DataError, match=rf"data_batch_1: carries a non-data object \({expected}\)"):
        load_data_pickle(path)
    assert not marker.exists()


def test_pickle_with_class_instance_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "train"
    write_pickle(path, {b"data": Innocent(), b"fine_labels": []})
    with pytest.raises(DataError, match=r"non-data object \(.*Innocent\)"):
        load_data_pickle(path)


def test_truncated_pickle_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "test_batch"
    write_pickle(path, cifar_batch(np.random.default_rng(4), 2, b"labels", 10))
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="test_batch: truncated or corrupt pickle"):
        load_data_pickle(path)


def test_svhn_mat(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    for name, n in (("train_32x32.mat", 4), ("test_32x32.mat", 3)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10], [1], [9], [10]][:n], dtype=np.uint8)
        scipy.io.savemat(tmp_path / name, {"X": x, "y": y})
        if name.startswith("train"):
            train_x = x
    splits = read_svhn(tmp_path)
    assert splits["train"].images.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(splits["train"].images[2, 1, 5, 7], train_x[5, 7, 1, 2])
    np.testing.assert_array_equal(splits["train"].labels, [0, 1, 9, 0])
    np.testing.assert_array_equal(splits["test"].labels, [0, 1, 9])


def test_corrupt_mat_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "train_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 20)
    with pytest.raises(DataError, match="train_32x32.mat: truncated or corrupt"):
        read_svhn(tmp_path)


def test_imagenet32_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    written = {}
    for name in [f"train_data_batch_{i}.npz" for i in (1, 2)] + ["val_data.npz"]:
        written[name] = (rng.integers(0, 256, (3, 3072), dtype=np.uint8), rng.integers(1, 1001, 3))
        np.savez(tmp_path / name, data=written[name][0], labels=written[name][1], mean=np.zeros(3072))
    splits = read_imagenet32(tmp_path, limit=5)  # batches 3..10 absent: the limit is reached first
    data, labels = written["train_data_batch_2.npz"]
    assert splits["train"].images.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(splits["train"].images[4].reshape(-1), data[1])
    np.testing.assert_array_equal(splits["train"].labels[3:], labels[:2] - 1)
    np.testing.assert_array_equal(splits["test"].labels, written["val_data.npz"][1] - 1)


def test_imagenet32_rejects_object_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "val_data.npz", data=np.array([object()], dtype=object), labels=np.ones(1))
    with pytest.raises(DataError, match="val_data.npz: truncated or corrupt npz"):
        read_imagenet32_batch(tmp_path / "val_data.npz")


def test_digits_split_is_fixed_and_disjoint() -> None:
    from sklearn.datasets import load_digits

    first, second = read_digits(), read_digits()
    assert first["train"].images.shape == (1438, 1, 8, 8) and first["test"].images.shape == (359, 1, 8, 8)
    np.testing.assert_array_equal(first["test"].labels, second["test"].labels)
    assert first["train"].images.max() == 16
    reference = load_digits()
    rows = {
        row.tobytes() + bytes([label])
        for row, label in zip(reference.images.astype(np.uint8), reference.target.astype(np.uint8))
    }
    seen = [img[0].tobytes() + bytes([lab]) for part in first.values() for img, lab in zip(part.images, part.labels)]
    assert set(seen) == rows and len(seen) == 1797
