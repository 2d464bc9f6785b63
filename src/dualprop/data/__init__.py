"""Datasets from their official files: readers per format, a registry, transforms and batch loaders."""

from .cifar import load_data_pickle, read_cifar10, read_cifar100
from .digits import read_digits
from .fetch import download, fetch_verified, file_md5, verify_dataset
from .errors import DataError
from .idx import read_idx, read_mnist
from .imagenet32 import read_imagenet32
from .imageset import ImageSet
from .loaders import BatchLoader, DatasetSplits, load_dataset
from .paths import data_root, data_roots, find_dataset_dir
from .registry import DATASETS, DatasetSpec, Resource, dataset_names, get_spec
from .svhn import read_svhn
from .transforms import Augmentation, channel_stats, normalize, pad_images, random_crop_flip

__all__ = [
    "Augmentation", "BatchLoader", "DATASETS", "DataError", "DatasetSpec", "DatasetSplits", "ImageSet",
    "Resource", "channel_stats", "data_root", "data_roots", "dataset_names", "download", "fetch_verified", "file_md5",
    "find_dataset_dir", "get_spec", "load_data_pickle", "load_dataset", "normalize", "pad_images",
    "random_crop_flip", "read_cifar10", "read_cifar100", "read_digits", "read_idx", "read_imagenet32",
    "read_mnist", "read_svhn", "verify_dataset",
]
