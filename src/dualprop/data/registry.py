"""The known datasets: how to read them, their shapes, normalisation statistics and official sources."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .cifar import CIFAR10_TEST, CIFAR10_TRAIN, CIFAR100_TEST, CIFAR100_TRAIN, read_cifar10, read_cifar100
from .digits import read_digits
from .idx import MNIST_FILES, read_mnist
from .imagenet32 import IMAGENET32_TRAIN, IMAGENET32_VAL, read_imagenet32
from .imageset import ImageSet
from .svhn import SVHN_FILES, read_svhn

Reader = Callable[[Path, int | None], dict[str, ImageSet]]


@dataclass(frozen=True)
class Resource:
    """One official download: saved as `filename` in the dataset directory; `members` are extracted
    from it when it is a tar.gz archive. `md5` is the digest of the downloaded bytes; `content_md5`,
    for a gzip file, the digest of its decompressed bytes, which stays the same when a distribution
    re-compresses the file (Debian's dataset packages do)."""

    url: str
    filename: str
    md5: str | None
    members: tuple[str, ...] = ()
    content_md5: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the loaders need to know about one dataset.

    `files` are relative to the dataset directory, `<root>/<name>` in our layout or one of
    `<root>/<alias>` for `alias in torchvision_dirs` ("." is the root itself). Pixel values are
    divided by `pixel_max` before the per-channel `mean`/`std` (statistics of the training images
    on that [0, 1] scale) are applied. `files == ()` marks a dataset bundled with a package.
    `system_package` names a Debian package installing the files under /usr/share/datasets.
    """

    name: str
    reader: Reader
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_max: float
    files: tuple[str, ...]
    torchvision_dirs: tuple[str, ...]
    resources: tuple[Resource, ...]
    homepage: str
    crop_padding: int = 0
    flip: bool = False
    system_package: str = ""


def _idx_resources(
    base_url: str, md5s: tuple[str, ...], content_md5s: tuple[str | None, ...] = (None,) * 4
) -> tuple[Resource, ...]:
    names = [name for pair in MNIST_FILES.values() for name in pair]
    return tuple(
        Resource(base_url + name, name, md5, content_md5=content)
        for name, md5, content in zip(names, md5s, content_md5s, strict=True)
    )


_MNIST_FILES = tuple(name for pair in MNIST_FILES.values() for name in pair)
_CIFAR10_FILES = (*CIFAR10_TRAIN, CIFAR10_TEST)
_CIFAR100_FILES = (CIFAR100_TRAIN, CIFAR100_TEST)

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="mnist",
            reader=read_mnist,
            num_classes=10,
            input_shape=(1, 28, 28),
            mean=(0.1307,),
            std=(0.3081,),
            pixel_max=255.0,
            files=_MNIST_FILES,
            torchvision_dirs=("MNIST/raw",),
            resources=_idx_resources(
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                (
                    "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                    "d53e105ee54ea40749a09fcbcd1e9432",
                    "9fb629c4189551a2d022fa330f9573f3",
                    "ec29112dd5afa0611ce80d1b7f02629c",
                ),
            ),
            homepage="http://yann.lecun.com/exdb/mnist/",
        ),
        DatasetSpec(
            name="fashion-mnist",
            reader=read_mnist,
            num_classes=10,
            input_shape=(1, 28, 28),
            mean=(0.2860,),
            std=(0.3530,),
            pixel_max=255.0,
            files=_MNIST_FILES,
            torchvision_dirs=("FashionMNIST/raw",),
            resources=_idx_resources(
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                (
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    "25c81989df183df01b3e8a0aad5dffbe",
                    "bef4ecab320f06d8554ea6380940ec79",
                    "bb300cfdad3c16e7a12a480ee83cd310",
                ),
                # md5 of the decompressed IDX files, taken from Debian's dataset-fashion-mnist
                (
                    "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                    "9018921c3c673c538a1fc5bad174d6f9",
                    "8181f5470baa50b63fa0f6fddb340f0a",
                    "15d484375f8d13e6eb1aabb0c3f46965",
                ),
            ),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            system_package="dataset-fashion-mnist",
        ),
        DatasetSpec(
            name="cifar10",
            reader=read_cifar10,
            num_classes=10,
            input_shape=(3, 32, 32),
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            pixel_max=255.0,
            files=_CIFAR10_FILES,
            torchvision_dirs=(".",),
            resources=(
                Resource(
                    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    "cifar-10-python.tar.gz",
                    "c58f30108f718f92721af3b95e74349a",
                    _CIFAR10_FILES,
                ),
            ),
            homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
            crop_padding=4,
            flip=True,
        ),
        DatasetSpec(
            name="cifar100",
            reader=read_cifar100,
            num_classes=100,
            input_shape=(3, 32, 32),
            mean=(0.5071, 0.4865, 0.4409),
            std=(0.2673, 0.2564, 0.2762),
            pixel_max=255.0,
            files=_CIFAR100_FILES,
            torchvision_dirs=(".",),
            resources=(
                Resource(
                    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                    "cifar-100-python.tar.gz",
                    "eb9058c3a382ffc7106e4002c42a8d85",
                    _CIFAR100_FILES,
                ),
            ),
            homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
            crop_padding=4,
            flip=True,
        ),
        DatasetSpec(
            name="svhn",
            reader=read_svhn,
            num_classes=10,
            input_shape=(3, 32, 32),
            mean=(0.4377, 0.4438, 0.4728),
            std=(0.1980, 0.2010, 0.1970),
            pixel_max=255.0,
            files=tuple(SVHN_FILES.values()),
            torchvision_dirs=("SVHN", "."),
            resources=(
                Resource(
                    "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
                    "train_32x32.mat",
                    "e26dedcc434d2e4c54c9b2d4a06d8373",
                ),
                Resource(
                    "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
                    "test_32x32.mat",
                    "eb5a983be6a315427106f1b164d9cef3",
                ),
            ),
            homepage="http://ufldl.stanford.edu/housenumbers/",
            crop_padding=4,
            flip=False,
        ),
        DatasetSpec(
            name="imagenet32",
            reader=read_imagenet32,
            num_classes=1000,
            input_shape=(3, 32, 32),
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            pixel_max=255.0,
            files=(*IMAGENET32_TRAIN, IMAGENET32_VAL),
            torchvision_dirs=(),
            resources=(),
            homepage="https://image-net.org/download-images (Downsampled ImageNet 32x32, npz; needs an account)",
            crop_padding=4,
            flip=True,
        ),
        DatasetSpec(
            name="digits",
            reader=read_digits,
            num_classes=10,
            input_shape=(1, 8, 8),
            mean=(0.3053,),
            std=(0.3760,),
            pixel_max=16.0,
            files=(),
            torchvision_dirs=(),
            resources=(),
            homepage="bundled with scikit-learn (sklearn.datasets.load_digits)",
        ),
    )
}


def get_spec(name: str) -> DatasetSpec:
    """The spec registered under `name` (case-insensitive, '_' read as '-'); ValueError if unknown."""
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[key]


def dataset_names() -> tuple[str, ...]:
    """Names of all registered datasets."""
    return tuple(DATASETS)
