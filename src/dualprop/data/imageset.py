"""The array pair every reader returns: images N x C x H x W and int64 labels N, checked as data."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .errors import DataError


class ImageSet(NamedTuple):
    """Images (N x C x H x W, uint8) and their class labels (N, int64), read from `source` (file names)."""

    images: np.ndarray
    labels: np.ndarray
    source: str = ""


def checked_image_set(images: np.ndarray, labels: np.ndarray, source: str) -> ImageSet:
    """Return ImageSet(images, labels as int64) after checking rank, matching counts and that the
    labels are integers (integer-valued floats pass; fractions, NaN, booleans and text do not)."""
    labels = np.asarray(labels)
    if images.ndim != 4:
        raise DataError(f"{source}: expected images of shape N x C x H x W, found shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{source}: expected {len(images)} labels (one per image), found shape {labels.shape}")
    integral = labels.dtype.kind in "iu" or (
        labels.dtype.kind == "f" and bool(np.all(np.isfinite(labels) & (labels == np.round(labels))))
    )
    if not integral:
        odd = next((v for v in labels.tolist() if not isinstance(v, int) or isinstance(v, bool)), labels.dtype)
        raise DataError(f"{source}: expected integer class labels, found {labels.dtype} values such as {odd!r}")
    return ImageSet(images, labels.astype(np.int64), source)


def uint8_pixels(images: np.ndarray, source: str) -> np.ndarray:
    """`images` as uint8, refusing values that are not integers in 0..255 instead of casting them."""
    if images.dtype == np.uint8:
        return images
    exact = images.size == 0 or (
        images.dtype.kind in "iuf"
        and bool(np.all(np.isfinite(images)))
        and images.min() >= 0
        and images.max() <= 255
        and bool(np.all(images == np.round(images)))
    )
    if not exact:
        span = f"{images.min()}..{images.max()}" if images.dtype.kind in "iuf" else "non-numbers"
        raise DataError(
            f"{source}: expected pixel values that are integers in 0..255, found {images.dtype} values {span}"
        )
    return images.astype(np.uint8)


def check_fits(image_set: ImageSet, split: str, image_shape: tuple[int, ...], num_classes: int) -> None:
    """Refuse a split whose images are not C x H x W = `image_shape` or whose labels leave 0..num_classes-1,
    naming the file, so that a misfit is found when the data is read rather than during training."""
    source = image_set.source or "the dataset"
    found = tuple(image_set.images.shape[1:])
    if found != tuple(image_shape):
        raise DataError(
            f"{source}: {split} images are {' x '.join(map(str, found))} (C x H x W), "
            f"expected {' x '.join(map(str, image_shape))}"
        )
    labels = image_set.labels
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{source}: {split} labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}"
        )


def concatenate(parts: list[ImageSet]) -> ImageSet:
    """The samples of `parts` in order, as one ImageSet naming all their sources."""
    return ImageSet(
        np.concatenate([p.images for p in parts]),
        np.concatenate([p.labels for p in parts]),
        ", ".join(p.source for p in parts if p.source),
    )


def first(image_set: ImageSet, limit: int | None) -> ImageSet:
    """Keep the first `limit` samples (all when limit is None)."""
    if limit is None:
        return image_set
    return ImageSet(image_set.images[:limit], image_set.labels[:limit], image_set.source)
