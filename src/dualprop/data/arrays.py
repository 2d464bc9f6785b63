"""A user's own labelled arrays: an ``.npz`` file or torch ``Dataset``s, checked once when they come in.

An ``.npz`` file holds ``x_train, y_train, x_test, y_test`` and optionally ``x_val, y_val`` (no other
keys). Inputs ``x_*`` are ``N × D`` feature vectors, ``N × H × W`` single-channel images (read as
``N × 1 × H × W``) or channels-first ``N × C × H × W`` images, of dtype ``uint8`` or floating point;
every split has the training inputs' sample shape, with at least one feature. Labels ``y_*`` are ``N``
integer class indices below ``2**31``; the classes are ``0 … max(y_train)``, the training labels hold at
least two of them, and a test or validation label outside them is an error. Each member's ``.npy`` header
is checked before its array is read: plain numbers only (no objects, strings, dates or records), and a
size that the archive really holds and that fits in memory.
How the inputs are normalised is :func:`dualprop.data.loaders.array_splits`'s business.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.lib.format as npy_format
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .errors import DataError
from .paths import regular_file

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL_KEYS = ("x_val", "y_val")
PARTS = ("train", "test", "val")
LABEL_LIMIT = 2**31
NUMERIC_KINDS = "biuf"  # numpy dtype kinds of plain numbers: bool, signed and unsigned integers, floats
PYTHON_DATA = "python"
"""The ``dataset`` a run records when its data were handed to it from Python rather than read by name."""

Describe = Callable[[str], str]  # "x_test" -> where that array came from, for error messages


def is_npz_path(name: str) -> bool:
    """Whether the dataset ``name`` is the path of an ``.npz`` file (rather than a registry name)."""
    return name.lower().endswith(".npz")


def dataset_label(name: str) -> str:
    """A short name for run directories: the file's stem for an ``.npz`` path, else ``name`` itself."""
    return Path(name).stem if is_npz_path(name) else name


@dataclass(frozen=True)
class ArrayData:
    """Checked inputs and labels per part (``train``, ``test``, optional ``val``).

    Inputs are ``float32`` (or ``uint8``) tensors of shape ``N × D`` or ``N × C × H × W``; labels are
    ``int64`` class indices in ``0 … num_classes − 1``.
    """

    name: str
    parts: dict[str, tuple[Tensor, Tensor]]
    num_classes: int

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.parts["train"][0].shape[1:])

    @property
    def is_uint8(self) -> bool:
        return self.parts["train"][0].dtype == torch.uint8


def _checked_inputs(x: Tensor, describe: Describe, key: str) -> Tensor:
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise DataError(f"{describe(key)} has dtype {x.dtype}; expected floating point or uint8 inputs")
    if not 2 <= x.dim() <= 4:
        raise DataError(f"{describe(key)} has shape {tuple(x.shape)}; expected N x D, N x H x W or N x C x H x W")
    if math.prod(x.shape[1:]) == 0:
        raise DataError(f"{describe(key)} has shape {tuple(x.shape)}: its samples have no features")
    if x.is_floating_point():
        x = x.to(torch.float32)
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"{describe(key)} holds NaN or infinite values")
    return x.unsqueeze(1) if x.dim() == 3 else x


def _checked_labels(y: Tensor, count: int, describe: Describe, key: str) -> Tensor:
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise DataError(f"{describe(key)} has dtype {y.dtype}; expected integer class indices")
    if y.dim() != 1 or len(y) != count:
        raise DataError(
            f"{describe(key)} has shape {tuple(y.shape)}; expected ({count},), one label per "
            f"sample of {describe('x' + key[1:])}"
        )
    y = y.to(torch.int64)
    if len(y) and int(y.min()) < 0:
        raise DataError(f"{describe(key)} holds the negative label {int(y.min())}; labels are class indices 0, 1, …")
    if len(y) and int(y.max()) >= LABEL_LIMIT:
        raise DataError(f"{describe(key)} holds the label {int(y.max())}; class indices must be below 2**31")
    return y


def checked_arrays(name: str, arrays: dict[str, tuple[Tensor, Tensor]], describe: Describe) -> ArrayData:
    """Check every part's inputs and labels (see the module text); ``DataError`` names the array by
    ``describe(key)``, e.g. ``describe("y_test")``."""
    parts = {}
    for part, (x, y) in arrays.items():
        x = _checked_inputs(x, describe, f"x_{part}")
        parts[part] = (x, _checked_labels(y, len(x), describe, f"y_{part}"))
    train_x, train_y = parts["train"]
    for part in parts:
        if len(parts[part][1]) == 0:
            raise DataError(f"{describe(f'x_{part}')} has no samples")
    for part, (x, _labels) in parts.items():
        if x.shape[1:] != train_x.shape[1:] or x.dtype != train_x.dtype:
            raise DataError(
                f"{describe(f'x_{part}')} holds {x.dtype} samples of shape {tuple(x.shape[1:])}, "
                f"but {describe('x_train')} holds {train_x.dtype} samples of shape "
                f"{tuple(train_x.shape[1:])}"
            )
    num_classes = int(train_y.max()) + 1
    present = torch.unique(train_y)
    if len(present) < 2:
        raise DataError(
            f"{describe('y_train')} holds only class {int(present[0])}; a classifier needs at least two classes"
        )
    for part, (_, y) in parts.items():
        if len(y) and int(y.max()) >= num_classes:
            raise DataError(
                f"{describe(f'y_{part}')} holds label {int(y.max())}, but the classes of "
                f"{describe('y_train')} are 0..{num_classes - 1}"
            )
    return ArrayData(name, parts, num_classes)


def read_npz(path: str | os.PathLike[str], limit: int | None = None) -> ArrayData:
    """The arrays of an ``.npz`` file (the first ``limit`` samples of each part), checked; ``DataError``
    naming the file and the key on anything missing, unexpected or malformed. Nothing is unpickled."""
    path = regular_file(path)
    check_npz_members(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            stored = {key: archive[key] for key in archive.files}
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    except (ValueError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(f"{path} is not a readable .npz file of plain arrays: {error}") from None
    expected = f"expected {', '.join(REQUIRED_KEYS)} and optionally {', '.join(OPTIONAL_KEYS)}"
    for key in stored:
        if key not in REQUIRED_KEYS + OPTIONAL_KEYS:
            raise DataError(f"{path}: unexpected key {key!r}; {expected}")
    for key in REQUIRED_KEYS + (OPTIONAL_KEYS if any(k in stored for k in OPTIONAL_KEYS) else ()):
        if key not in stored:
            raise DataError(f"{path}: missing key {key!r}; {expected}")
    arrays = {}
    for part in PARTS:
        if f"x_{part}" in stored:
            x, y = stored[f"x_{part}"][:limit], stored[f"y_{part}"][:limit]
            arrays[part] = (torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)))
    return checked_arrays(str(path), arrays, lambda key: f"{key} in {path}")


def check_npz_members(path: Path) -> None:
    """Check every member of the ``.npz`` archive ``path`` from its ``.npy`` header, before any array is
    read: a numeric dtype, and a declared size that equals the member's stored size; all of them together
    must fit in memory."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise DataError(
            f"{path} is not a readable .npz file (a zip of .npy arrays, as numpy.savez writes): {error}"
        ) from None
    memory, total = _physical_memory(), 0
    with archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            try:
                with archive.open(info) as member:
                    version = npy_format.read_magic(member)
                    if version not in ((1, 0), (2, 0)):
                        raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
                    read_header = (
                        npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
                    )
                    shape, _, dtype = read_header(member)
                    header_bytes = member.tell()
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as error:
                raise DataError(f"{name} in {path} is not a readable .npy array: {error}") from None
            if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
                raise DataError(f"{name} in {path} has dtype {dtype}; expected plain numbers (integers or floats)")
            declared = math.prod(shape) * dtype.itemsize
            if declared != info.file_size - header_bytes:
                raise DataError(
                    f"{name} in {path} declares shape {shape} of {dtype} ({declared} bytes) but holds "
                    f"{info.file_size - header_bytes} bytes of data"
                )
            total += declared
            if memory is not None and total > memory:
                raise DataError(
                    f"{path} holds {_size_text(total)} of arrays (up to {name}), more than this machine's "
                    f"{_size_text(memory)} of memory"
                )


def _size_text(size: int) -> str:
    """``size`` bytes in the largest unit of bytes, KiB, MiB, GiB and TiB that keeps it >= 1."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def _physical_memory() -> int | None:
    """Bytes of physical memory, where the platform tells."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _dataset_tensors(dataset: Dataset, part: str) -> tuple[Tensor, Tensor]:
    """All ``(input, label)`` items of ``dataset`` stacked into two tensors (a two-tensor
    ``TensorDataset`` is used as it is)."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1]
    inputs, labels = [], []
    try:
        for batch in DataLoader(dataset, batch_size=1024, shuffle=False):
            if not isinstance(batch, (list, tuple)) or len(batch) != 2:
                raise DataError(f"the {part} dataset's items are not (input, label) pairs")
            inputs.append(torch.as_tensor(batch[0]))
            labels.append(torch.as_tensor(batch[1]))
    except (TypeError, RuntimeError) as error:
        raise DataError(f"the {part} dataset's items cannot be stacked into batches: {error}") from None
    if not inputs:
        raise DataError(f"the {part} dataset has no samples")
    return torch.cat(inputs), torch.cat(labels)


def from_datasets(train: Dataset, test: Dataset, validation: Dataset | None = None) -> ArrayData:
    """The ``(input, label)`` items of torch ``Dataset``s as :class:`ArrayData` (the same checks as an
    ``.npz`` file; inputs must be float or uint8 tensors, labels integers)."""
    given = {"train": train, "test": test, "val": validation}
    arrays = {part: _dataset_tensors(dataset, part) for part, dataset in given.items() if dataset is not None}
    names = {"train": "train", "test": "test", "val": "validation"}

    def describe(key: str) -> str:
        kind, part = key.split("_")
        return f"the {'inputs' if kind == 'x' else 'labels'} of the {names[part]} dataset"

    return checked_arrays(PYTHON_DATA, arrays, describe)
