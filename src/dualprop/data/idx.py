"""MNIST and Fashion-MNIST: IDX files, gzip-compressed or plain.

IDX layout: two zero bytes, a data-type byte, a rank byte, `rank` big-endian uint32 dimensions,
then the big-endian data in row-major order.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError
from .imageset import ImageSet, checked_image_set, first

IDX_DATA_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
GZIP_MAGIC = b"\x1f\x8b"
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def locate_idx(directory: Path, gz_name: str) -> Path:
    """The gzip'd file `gz_name` in `directory`, else its uncompressed twin (which may not exist)."""
    compressed = directory / gz_name
    return compressed if compressed.exists() else directory / gz_name.removesuffix(".gz")


def _file_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic number."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: truncated or corrupt gzip stream ({error})") from None


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file into an array of its declared type and shape (native byte order)."""
    raw = _file_bytes(path)
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in IDX_DATA_TYPES:
        raise DataError(
            f"{path}: not an IDX file (expected magic number 0x0000TTDD with data type TT in "
            f"{sorted(hex(code) for code in IDX_DATA_TYPES)}, found 0x{raw[:4].hex()})"
        )
    rank = raw[3]
    header_bytes = 4 + 4 * rank
    if len(raw) < header_bytes:
        raise DataError(f"{path}: expected a {header_bytes}-byte IDX header, found {len(raw)} bytes")
    shape = struct.unpack(f">{rank}I", raw[4:header_bytes])
    dtype = np.dtype(IDX_DATA_TYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize
    found = len(raw) - header_bytes
    if found != expected:
        raise DataError(
            f"{path}: expected {expected} data bytes for shape {shape}, found {found} (truncated or corrupt file)"
        )
    return np.frombuffer(raw, dtype, offset=header_bytes).reshape(shape).astype(dtype.newbyteorder("="))


def _read_split(directory: Path, image_name: str, label_name: str) -> ImageSet:
    image_path, label_path = locate_idx(directory, image_name), locate_idx(directory, label_name)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{image_path}: expected uint8 images of rank 3, found {images.dtype} of shape {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(f"{label_path}: expected uint8 labels of rank 1, found {labels.dtype} of shape {labels.shape}")
    return checked_image_set(images[:, None], labels, f"{image_path} with {label_path}")


def read_mnist(directory: Path, limit: int | None = None) -> dict[str, ImageSet]:
    """Train and test sets of MNIST or Fashion-MNIST (same file names) as N x 1 x 28 x 28 uint8."""
    return {split: first(_read_split(directory, *names), limit) for split, names in MNIST_FILES.items()}
