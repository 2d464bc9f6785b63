"""scikit-learn's bundled 8 x 8 handwritten digits (values 0..16), with a fixed train/test split.

The digits have no official test set: a permutation drawn from numpy's default_rng(DIGITS_SPLIT_SEED)
puts the first 20 % (359 of 1797 images) in the test set, the same for every run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .imageset import ImageSet, first

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


def read_digits(directory: Path | None = None, limit: int | None = None) -> dict[str, ImageSet]:
    """Train and test sets as N x 1 x 8 x 8 uint8 images with values 0..16; `directory` is unused."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    n_test = round(DIGITS_TEST_FRACTION * len(labels))
    test, train = order[:n_test], order[n_test:]
    return {
        "train": first(ImageSet(images[train], labels[train], "scikit-learn's digits"), limit),
        "test": first(ImageSet(images[test], labels[test], "scikit-learn's digits"), limit),
    }
