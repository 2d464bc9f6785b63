"""CIFAR-10 and CIFAR-100: the official python pickles, read with a data-only unpickler.

Each file holds a dict with bytes keys: b'data' (N x 3072 uint8, channel-major 3 x 32 x 32 rows) and
b'labels' (CIFAR-10) or b'fine_labels' (CIFAR-100).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .imageset import ImageSet, checked_image_set, concatenate, first

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct


def latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """The bytes object that a protocol-2 pickle rebuilds as ``_codecs.encode(text, "latin1")``; any
    other encoding or argument is refused (data files need no more)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError(f"_codecs.encode is admitted for latin1 text only, got {type(text).__name__} and {encoding!r}")
    return text.encode("latin1")


DATA_ONLY_GLOBALS: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): latin1_bytes,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"{CIFAR10_DIR}/data_batch_{index}" for index in range(1, 6))
CIFAR10_TEST = f"{CIFAR10_DIR}/test_batch"
CIFAR100_DIR = "cifar-100-python"
CIFAR100_TRAIN = f"{CIFAR100_DIR}/train"
CIFAR100_TEST = f"{CIFAR100_DIR}/test"


class DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler whose only importable globals are numpy's array and dtype reconstructors and the
    latin1 encoding that protocol 2 uses for bytes (:func:`latin1_bytes`).

    Containers, bytes, str and numbers are built from opcodes and need no globals, so any other
    global (a class, a function such as os.system) means the file is not plain data.
    """

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return DATA_ONLY_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(f"{self.source}: carries a non-data object ({module}.{name})") from None


def load_data_pickle(path: Path) -> Any:
    """Unpickle `path` admitting only plain containers, bytes, str, numbers and numpy arrays."""
    try:
        with open(path, "rb") as file:
            return DataOnlyUnpickler(file, str(path)).load()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except DataError:
        raise
    except Exception as error:  # truncated or corrupt streams raise many exception types
        raise DataError(f"{path}: truncated or corrupt pickle ({type(error).__name__}: {error})") from None


def read_cifar_batch(path: Path, label_key: bytes) -> ImageSet:
    """One CIFAR pickle as N x 3 x 32 x 32 uint8 images and int64 labels."""
    batch = load_data_pickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        found = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path}: expected a dict with keys b'data' and {label_key!r}, found {found}")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: expected b'data' as an N x 3072 uint8 array, found {type(data).__name__} {shape}")
    return checked_image_set(data.reshape(-1, 3, 32, 32), np.asarray(batch[label_key]), str(path))


def read_cifar10(directory: Path, limit: int | None = None) -> dict[str, ImageSet]:
    """CIFAR-10 train (data_batch_1..5) and test (test_batch); stops reading once `limit` is reached."""
    parts: list[ImageSet] = []
    for name in CIFAR10_TRAIN:
        parts.append(read_cifar_batch(directory / name, b"labels"))
        if limit is not None and sum(len(p.labels) for p in parts) >= limit:
            break
    return {
        "train": first(concatenate(parts), limit),
        "test": first(read_cifar_batch(directory / CIFAR10_TEST, b"labels"), limit),
    }


def read_cifar100(directory: Path, limit: int | None = None) -> dict[str, ImageSet]:
    """CIFAR-100 train and test with the 100 fine labels."""
    return {
        "train": first(read_cifar_batch(directory / CIFAR100_TRAIN, b"fine_labels"), limit),
        "test": first(read_cifar_batch(directory / CIFAR100_TEST, b"fine_labels"), limit),
    }
