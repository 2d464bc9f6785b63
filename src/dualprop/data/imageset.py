"""The array pair every reader returns: images N x C x H x W and int64 labels N."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .errors import DataError


class ImageSet(NamedTuple):
    """Images (N x C x H x W, uint8) and their class labels (N, int64)."""

    images: np.ndarray
    labels: np.ndarray


def checked_image_set(images: np.ndarray, labels: np.ndarray, source: str) -> ImageSet:
    """Return ImageSet(images, labels as int64) after checking rank and matching counts."""
    labels = np.asarray(labels)
    if images.ndim != 4:
        raise DataError(f"{source}: expected images of shape N x C x H x W, found shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{source}: expected {len(images)} labels (one per image), found shape {labels.shape}"
        )
    return ImageSet(images, labels.astype(np.int64))


def first(image_set: ImageSet, limit: int | None) -> ImageSet:
    """Keep the first `limit` samples (all when limit is None)."""
    if limit is None:
        return image_set
    return ImageSet(image_set.images[:limit], image_set.labels[:limit])
