"""Datasets from their official files or a user's own arrays: readers per format, a registry, transforms
and batch loaders."""

from .arrays import PYTHON_DATA, ArrayData, dataset_label, from_datasets, read_npz
from .cifar import load_data_pickle, read_cifar10, read_cifar100
from .digits import read_digits
from .errors import DataError
from .fetch import download, fetch_verified, file_md5, verify_dataset
from .idx import read_idx, read_mnist
from .imagenet32 import read_imagenet32
from .imageset import ImageSet
from .loaders import BatchLoader, DatasetSplits, array_splits, canonical_dataset_name, load_dataset
from .paths import data_root, data_roots, find_dataset_dir
from .registry import DATASETS, DatasetSpec, Resource, dataset_names, get_spec
from .svhn import read_svhn
from .transforms import Augmentation, channel_stats, normalize, pad_images, random_crop_flip

__all__ = [
    "DATASETS",
    "PYTHON_DATA",
    "ArrayData",
    "Augmentation",
    "BatchLoader",
    "DataError",
    "DatasetSpec",
    "DatasetSplits",
    "ImageSet",
    "Resource",
    "array_splits",
    "canonical_dataset_name",
    "channel_stats",
    "data_root",
    "data_roots",
    "dataset_label",
    "dataset_names",
    "download",
    "fetch_verified",
    "file_md5",
    "find_dataset_dir",
    "from_datasets",
    "get_spec",
    "load_data_pickle",
    "load_dataset",
    "normalize",
    "pad_images",
    "random_crop_flip",
    "read_cifar10",
    "read_cifar100",
    "read_digits",
    "read_idx",
    "read_imagenet32",
    "read_mnist",
    "read_npz",
    "read_svhn",
    "verify_dataset",
]
