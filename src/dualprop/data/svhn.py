"""SVHN cropped digits: the official MATLAB files train_32x32.mat and test_32x32.mat.

X is 32 x 32 x 3 x N uint8 (height, width, channel, sample); y is N x 1 with label 10 for digit 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from .errors import DataError
from .imageset import ImageSet, checked_image_set, first, uint8_pixels

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def read_svhn_mat(path: Path) -> ImageSet:
    """One SVHN .mat file as N x 3 x 32 x 32 uint8 images and labels 0..9 (10 mapped to 0)."""
    try:
        content = scipy.io.loadmat(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as error:  # scipy raises several types for corrupt or truncated files
        raise DataError(f"{path}: truncated or corrupt .mat file ({type(error).__name__}: {error})") from None
    if "X" not in content or "y" not in content:
        found = sorted(key for key in content if not key.startswith("__"))
        raise DataError(f"{path}: expected variables 'X' and 'y', found {found}")
    images, labels = content["X"], np.asarray(content["y"]).reshape(-1)
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: expected X of shape 32 x 32 x 3 x N, found {images.shape}")
    images = np.ascontiguousarray(uint8_pixels(images, f"{path}: X").transpose(3, 2, 0, 1))
    checked = checked_image_set(images, labels, str(path))
    if checked.labels.size and (checked.labels.min() < 1 or checked.labels.max() > 10):
        raise DataError(
            f"{path}: expected labels in 1..10 (10 for digit 0), found {checked.labels.min()}..{checked.labels.max()}"
        )
    return checked._replace(labels=checked.labels % 10)


def read_svhn(directory: Path, limit: int | None = None) -> dict[str, ImageSet]:
    """SVHN train and test sets."""
    return {split: first(read_svhn_mat(directory / name), limit) for split, name in SVHN_FILES.items()}
