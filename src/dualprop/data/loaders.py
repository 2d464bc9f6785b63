"""Build normalised train/validation/test TensorDatasets and iterate them in (augmented) batches."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .arrays import PYTHON_DATA, ArrayData, is_npz_path, read_npz
from .fingerprint import dataset_files
from .imageset import ImageSet, check_fits
from .paths import find_dataset_dir
from .registry import get_spec
from .transforms import Augmentation, channel_stats, normalize, pad_images

NORMALIZATIONS = ("registry", "train")


class BatchLoader:
    """Mini-batches (inputs, labels) of a TensorDataset, sliced from tensors without per-sample work.

    Epoch e (set_epoch, else counted up per pass) uses the permutation seeded by (seed, e), so runs
    and resumed runs see the same order. With world_size > 1 each rank takes every world_size-th
    index of that permutation, after dropping the tail so that all ranks get equally many samples.
    `augmentation`, when given, is applied to every batch with a generator seeded by (seed, e, rank).
    """

    def __init__(
        self,
        dataset: TensorDataset,
        batch_size: int,
        shuffle: bool = False,
        augmentation: Augmentation | None = None,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..world_size-1 = 0..{world_size - 1}, got {rank}")
        self.inputs, self.labels = (t.to(device) if device is not None else t for t in dataset.tensors)
        self.batch_size, self.shuffle, self.augmentation = batch_size, shuffle, augmentation
        self.seed, self.drop_last, self.rank, self.world_size = seed, drop_last, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass use the order and augmentation of `epoch`."""
        self.epoch = epoch

    def _samples_per_rank(self) -> int:
        return len(self.labels) // self.world_size if self.world_size > 1 else len(self.labels)

    def __len__(self) -> int:
        per_rank = self._samples_per_rank()
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def _generator(self, *keys: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, *keys]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(state))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        count = len(self.labels)
        order = torch.randperm(count, generator=self._generator(epoch)) if self.shuffle else torch.arange(count)
        order = order[: self._samples_per_rank() * self.world_size][self.rank :: self.world_size]
        order = order.to(self.labels.device)
        augment_generator = self._generator(epoch, self.rank, 1)
        for batch in range(len(self)):
            index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            inputs = self.inputs[index]
            if self.augmentation is not None:
                inputs = self.augmentation(inputs, augment_generator)
            yield inputs, self.labels[index]


@dataclass
class DatasetSplits:
    """Normalised float32 inputs and int64 labels for training, validation (None when 0 %) and test.

    An input ``x`` was ``(v / pixel_max − mean_c) / std_c`` of its raw value ``v`` in channel ``c``."""

    name: str
    train: TensorDataset
    validation: TensorDataset | None
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: Augmentation | None
    value_range: tuple[float, float] = (0.0, 1.0)
    """The range of the inputs before normalisation (the pixel scale [0, 1] for images)."""

    def loaders(
        self,
        batch_size: int,
        seed: int = 0,
        eval_batch_size: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
    ) -> tuple[BatchLoader, BatchLoader | None, BatchLoader]:
        """(train, validation, test) loaders: only the training one shuffles, augments and is sharded
        across `world_size` ranks; every rank evaluates the whole validation and test sets."""
        eval_size = eval_batch_size or batch_size

        def evaluation(dataset: TensorDataset) -> BatchLoader:
            return BatchLoader(dataset, eval_size, device=device)

        train = BatchLoader(
            self.train,
            batch_size,
            shuffle=True,
            augmentation=self.augmentation,
            seed=seed,
            rank=rank,
            world_size=world_size,
            device=device,
        )
        validation = evaluation(self.validation) if self.validation is not None else None
        return train, validation, evaluation(self.test)


def _split_indices(count: int, validation_percent: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices in original order; validation is round(count * percent / 100)
    samples chosen by a permutation from torch.Generator().manual_seed(seed)."""
    n_validation = round(count * validation_percent / 100)
    if n_validation >= count:
        raise ValueError(f"validation_percent={validation_percent} leaves no training samples out of {count}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[n_validation:].sort().values, order[:n_validation].sort().values


def array_splits(
    data: ArrayData,
    validation_percent: float = 10.0,
    seed: int = 0,
    flatten: bool = False,
    pad_to: int | None = None,
) -> DatasetSplits:
    """Training, validation and test sets of a user's arrays.

    Validation is the ``val`` part when the data have one, else validation_percent % of the training
    part (seeded, as for the registry's datasets). ``uint8`` inputs are divided by 255 and standardised
    per channel (axis 1 of ``N × C × H × W``; one channel otherwise) with the mean and standard deviation
    of the training split (a constant channel keeps std 1); floating-point inputs are used exactly as
    given. There is no augmentation. ``pad_to`` zero-pads images, flatten makes vectors.
    """
    if not 0 <= validation_percent < 100:
        raise ValueError(f"validation_percent must be in [0, 100), got {validation_percent}")
    parts = data.parts
    if pad_to is not None:
        if len(data.sample_shape) != 3:
            raise ValueError(
                f"pad_to needs images N x C x H x W; {data.name} holds samples of shape {data.sample_shape}"
            )
        parts = {part: (pad_images(x, pad_to), y) for part, (x, y) in parts.items()}
    train_x, train_y = parts["train"]
    if "val" in parts:
        train_index, validation_index = torch.arange(len(train_y)), None
    else:
        train_index, validation_index = _split_indices(len(train_y), validation_percent, seed)
    sample_shape = tuple(train_x.shape[1:])
    channels = sample_shape[0] if len(sample_shape) == 3 else 1

    def by_channel(inputs: torch.Tensor) -> torch.Tensor:  # N x C x 1 x (features per channel)
        return inputs.reshape(len(inputs), channels, 1, -1)

    if data.is_uint8:
        pixel_max, value_range = 255.0, (0.0, 1.0)
        mean, std = channel_stats(by_channel(train_x[train_index]), pixel_max)
        std = tuple(s if s > 0 else 1.0 for s in std)
    else:
        pixel_max, mean, std = 1.0, (0.0,) * channels, (1.0,) * channels
        value_range = (float(train_x[train_index].min()), float(train_x[train_index].max()))

    def dataset(inputs: torch.Tensor, labels: torch.Tensor) -> TensorDataset:
        if data.is_uint8:
            inputs = normalize(by_channel(inputs), mean, std, pixel_max).reshape(inputs.shape)
        return TensorDataset(inputs.flatten(1) if flatten else inputs, labels)

    if validation_index is None:
        validation: TensorDataset | None = dataset(*parts["val"])
    elif len(validation_index):
        validation = dataset(train_x[validation_index], train_y[validation_index])
    else:
        validation = None
    return DatasetSplits(
        name=data.name,
        train=dataset(train_x[train_index], train_y[train_index]),
        validation=validation,
        test=dataset(*parts["test"]),
        num_classes=data.num_classes,
        input_shape=(math.prod(sample_shape),) if flatten else sample_shape,
        mean=tuple(mean),
        std=tuple(std),
        augmentation=None,
        value_range=value_range,
    )


def canonical_dataset_name(name: str) -> str:
    """The form of a dataset name that runs record: a registry name (canonical spelling), the absolute path
    of an ``.npz`` file (so a run resumes from any directory), or :data:`PYTHON_DATA`; ``ValueError`` for
    an unknown name."""
    if is_npz_path(name):
        return os.path.abspath(os.path.expanduser(name))
    if name == PYTHON_DATA:
        return name
    return get_spec(name).name


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    validation_percent: float = 10.0,
    seed: int = 0,
    flatten: bool = False,
    pad_to: int | None = None,
    augment: bool = True,
    normalization: str = "registry",
    limit: int | None = None,
) -> DatasetSplits:
    """Read dataset `name` from the data directory and prepare it for training.

    Pipeline: read the official files (keeping the first `limit` samples of the official train and
    test sets), zero-pad images to pad_to x pad_to, carve validation_percent % of the training set
    off as validation (seeded), normalise per channel with the registry statistics or with those of
    the training split (normalization="train"), flatten to vectors if asked. Augmentation (random
    crop and flip where the registry allows it) is returned for BatchLoader to apply to training
    batches; it is off when augment=False.

    A `name` ending in ".npz" is the path of the user's own arrays (:mod:`dualprop.data.arrays`),
    prepared by :func:`array_splits`; `normalization` and `augment` apply to registry datasets only.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of samples, got {limit}")
    if name == PYTHON_DATA:
        raise ValueError(
            f"dataset {PYTHON_DATA!r} stands for data handed over from Python "
            f"(dualprop.training.train(config, data=...)); hand the same data over again, or name "
            f"a registered dataset or an .npz file"
        )
    if is_npz_path(name):
        return array_splits(read_npz(name, limit), validation_percent, seed, flatten, pad_to)
    spec = get_spec(name)
    if not 0 <= validation_percent < 100:
        raise ValueError(f"validation_percent must be in [0, 100), got {validation_percent}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    directory = find_dataset_dir(spec, root)
    dataset_files(spec.name, root)  # each a regular file: a named pipe would block the reader
    raw = spec.reader(directory, limit)
    for split in ("train", "test"):
        check_fits(raw[split], split, spec.input_shape, spec.num_classes)

    def images_of(part: ImageSet) -> torch.Tensor:
        images = torch.from_numpy(np.ascontiguousarray(part.images))
        return pad_images(images, pad_to) if pad_to is not None else images

    train_images, test_images = images_of(raw["train"]), images_of(raw["test"])
    train_labels, test_labels = torch.from_numpy(raw["train"].labels), torch.from_numpy(raw["test"].labels)
    train_index, validation_index = _split_indices(len(train_labels), validation_percent, seed)
    if normalization == "train":
        mean, std = channel_stats(train_images[train_index], spec.pixel_max)
    else:
        mean, std = spec.mean, spec.std
    image_shape = tuple(train_images.shape[1:])

    def dataset(images: torch.Tensor, labels: torch.Tensor) -> TensorDataset:
        inputs = normalize(images, mean, std, spec.pixel_max)
        return TensorDataset(inputs.flatten(1) if flatten else inputs, labels)

    use_augmentation = augment and (spec.crop_padding > 0 or spec.flip)
    return DatasetSplits(
        name=spec.name,
        train=dataset(train_images[train_index], train_labels[train_index]),
        validation=dataset(train_images[validation_index], train_labels[validation_index])
        if len(validation_index)
        else None,
        test=dataset(test_images, test_labels),
        num_classes=spec.num_classes,
        input_shape=(math.prod(image_shape),) if flatten else image_shape,
        mean=tuple(mean),
        std=tuple(std),
        augmentation=Augmentation(spec.crop_padding, spec.flip, image_shape) if use_augmentation else None,
    )
