"""ImageNet 32 x 32 (downsampled ImageNet): the official npz batches.

Each file holds 'data' (N x 3072 uint8, channel-major 3 x 32 x 32 rows) and 'labels' (1..1000).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .errors import DataError
from .imageset import ImageSet, checked_image_set, concatenate, first

IMAGENET32_TRAIN = tuple(f"train_data_batch_{index}.npz" for index in range(1, 11))
IMAGENET32_VAL = "val_data.npz"


def read_imagenet32_batch(path: Path) -> ImageSet:
    """One npz batch as N x 3 x 32 x 32 uint8 images and 0-based int64 labels."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "data" not in archive or "labels" not in archive:
                raise DataError(f"{path}: expected arrays 'data' and 'labels', found {sorted(archive.files)}")
            data, labels = archive["data"], np.asarray(archive["labels"]).reshape(-1)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: truncated or corrupt npz file ({type(error).__name__}: {error})") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: expected 'data' as an N x 3072 uint8 array, found {data.dtype} {data.shape}")
    if labels.size and (labels.min() < 1 or labels.max() > 1000):
        raise DataError(f"{path}: expected labels in 1..1000, found {labels.min()}..{labels.max()}")
    return checked_image_set(data.reshape(-1, 3, 32, 32), labels.astype(np.int64) - 1, str(path))


def read_imagenet32(directory: Path, limit: int | None = None) -> dict[str, ImageSet]:
    """Train (train_data_batch_1..10) and validation-as-test (val_data); stops reading at `limit`."""
    parts: list[ImageSet] = []
    for name in IMAGENET32_TRAIN:
        parts.append(read_imagenet32_batch(directory / name))
        if limit is not None and sum(len(p.labels) for p in parts) >= limit:
            break
    test = read_imagenet32_batch(directory / IMAGENET32_VAL)
    return {"train": first(concatenate(parts), limit), "test": first(test, limit)}
