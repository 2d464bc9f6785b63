"""Data checked when it is read: every fault in a dataset file is one line naming the file."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from faults_support import (
    TINY,
    one_error_line,
)

from dualprop.cli import main
from dualprop.data import DataError, load_dataset

# -- 5. data checked when it is read ---------------------------------------------------------------


def idx_file(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def mnist_files(directory: Path, test_size: int = 28, test_label: int = 3) -> None:
    directory.mkdir(parents=True)
    idx_file(directory / "train-images-idx3-ubyte.gz", np.zeros((8, 28, 28)))
    idx_file(directory / "train-labels-idx1-ubyte.gz", np.arange(8) % 10)
    idx_file(directory / "t10k-images-idx3-ubyte.gz", np.zeros((4, test_size, test_size)))
    idx_file(directory / "t10k-labels-idx1-ubyte.gz", np.full(4, test_label))


@pytest.mark.parametrize(
    "test_size, test_label, message",
    [
        (32, 3, "test images are 1 x 32 x 32 (C x H x W), expected 1 x 28 x 28"),
        (28, 12, "test labels must lie in 0..9, found 12..12"),
    ],
)
def test_a_test_split_that_does_not_fit_is_found_when_read(tmp_path, capsys, test_size, test_label, message):
    mnist_files(tmp_path / "data" / "mnist", test_size, test_label)
    args = ["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "runs")]
    assert main([*args, *TINY]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "t10k-images-idx3-ubyte.gz" in line and message in line
    assert not (tmp_path / "runs").exists()


def cifar_batch(labels: list, data: np.ndarray | None = None) -> dict:
    if data is None:
        data = np.zeros((len(labels), 3072), np.uint8)
    return {b"data": data, b"labels": labels, b"batch_label": b"training batch"}


def cifar10_files(root: Path, test_labels: list, protocol: int = 4) -> Path:
    directory = root / "cifar10" / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        content = cifar_batch(test_labels if name == "test_batch" else [1, 2])
        (directory / name).write_bytes(pickle.dumps(content, protocol=protocol))
    return directory


def test_a_protocol_2_cifar_pickle_is_data(tmp_path):
    directory = cifar10_files(tmp_path, [4, 5], protocol=2)
    assert b"_codecs" in (directory / "test_batch").read_bytes()  # how protocol 2 writes bytes
    splits = load_dataset("cifar10", root=tmp_path, validation_percent=0)
    assert splits.test.tensors[1].tolist() == [4, 5] and len(splits.train) == 10


@pytest.mark.parametrize(
    "test_labels, message", [([10, 1], "labels must lie in 0..9"), ([1.5, 2.0], "expected integer class labels")]
)
def test_cifar_labels_are_refused_not_cast(tmp_path, test_labels, message):
    cifar10_files(tmp_path, test_labels)
    with pytest.raises(DataError, match=message) as error:
        load_dataset("cifar10", root=tmp_path)
    assert "test_batch" in str(error.value)


@pytest.mark.parametrize(
    "x, y, message",
    [
        (np.full((32, 32, 3, 2), 300.0), np.array([[1], [2]]), "integers in 0..255, found float64 values 300.0..300.0"),
        (np.zeros((32, 32, 3, 2)), np.array([[1.5], [2.0]]), "expected integer class labels"),
    ],
)
def test_svhn_values_are_refused_not_cast(tmp_path, x, y, message):
    directory = tmp_path / "svhn"
    directory.mkdir()
    for name in ("train_32x32.mat", "test_32x32.mat"):
        scipy.io.savemat(directory / name, {"X": x, "y": y})
    with pytest.raises(DataError, match=message) as error:
        load_dataset("svhn", root=tmp_path)
    assert "train_32x32.mat" in str(error.value)


# -- .npz files checked before their arrays are read -------------------------------------------------


def good_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.random((40, 5)).astype(np.float32),
        "y_train": np.arange(40) % 3,
        "x_test": rng.random((10, 5)).astype(np.float32),
        "y_test": np.arange(10) % 3,
    }


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def npz_with(path: Path, **changes: np.ndarray | bytes) -> Path:
    """An .npz file of ``good_arrays()`` with some members replaced (bytes are stored as they are)."""
    members = {**good_arrays(), **changes}
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in members.items():
            archive.writestr(f"{key}.npy", value if isinstance(value, bytes) else npy_bytes(value))
    return path


def huge_header() -> bytes:
    """The .npy header of a 72 TiB uint8 array, followed by 8 bytes of data."""
    header = {"descr": "|u1", "fortran_order": False, "shape": (72 * 2**40,)}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + bytes(8)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: os.mkfifo(p), "is a named pipe; a dataset file must be a regular file"),
        (lambda p: p.mkdir(), "is a directory; a dataset file must be a regular file"),
        (lambda p: p.write_bytes(npy_bytes(np.zeros(3))), "is not a readable .npz file"),
        (lambda p: npz_with(p, x_train=b"\x93NUMPY garbage"), "x_train in {path} is not a readable .npy array"),
        (lambda p: npz_with(p, x_train=np.array(["a"] * 40)), "x_train in {path} has dtype <U1; expected plain"),
        (lambda p: npz_with(p, x_test=np.zeros(10, "datetime64[s]")), "x_test in {path} has dtype datetime64[s]"),
        (lambda p: npz_with(p, y_train=np.zeros(40, [("a", "i4")])), "y_train in {path} has dtype [('a', '<i4')]"),
        (lambda p: npz_with(p, y_test=np.zeros(10, object)), "y_test in {path} has dtype object"),
        (lambda p: npz_with(p, x_train=huge_header()), "x_train in {path} declares shape (79164837199872,)"),
        (lambda p: npz_with(p, x_train=np.zeros((40, 0), np.float32)), "its samples have no features"),
        (lambda p: npz_with(p, y_train=np.full(40, 10**12)), "holds the label 1000000000000; class indices must"),
        (lambda p: npz_with(p, y_train=np.ones(40, int)), "holds only class 1; a classifier needs at least two"),
    ],
    ids=[
        "fifo",
        "directory",
        "plain-npy",
        "garbage-member",
        "strings",
        "datetimes",
        "structured",
        "objects",
        "72-TiB-header",
        "no-features",
        "huge-label",
        "single-class",
    ],
)
def test_a_bad_npz_file_is_one_line_naming_it_before_anything_is_written(tmp_path, capsys, make, message):
    path = tmp_path / "mine.npz"
    make(path)
    assert main(["train", "--dataset", str(path), "--out", str(tmp_path / "runs"), *TINY]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(path) in line and message.format(path=path) in line
    assert not (tmp_path / "runs").exists()


def test_an_npz_larger_than_memory_is_refused_from_its_headers(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("dualprop.data.arrays._physical_memory", lambda: 1000)  # a machine with 1000 bytes
    path = npz_with(tmp_path / "mine.npz")  # x_train: 40 x 5 float32 = 800 bytes, y_train: 40 int64 = 320 bytes
    assert main(["train", "--dataset", str(path), "--out", str(tmp_path / "runs"), *TINY]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{path} holds 1.1 KiB of arrays (up to y_train), more than this machine's 1000 bytes of memory" in line
