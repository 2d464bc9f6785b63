"""Tensor transforms applied to whole datasets (padding, normalisation) or to batches (augmentation)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def pad_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad N x C x H x W images to size x size, centred (an odd remainder goes to bottom/right)."""
    height, width = images.shape[-2:]
    if size < height or size < width:
        raise ValueError(f"pad_to={size} is smaller than the {height}x{width} images")
    top, left = (size - height) // 2, (size - width) // 2
    return F.pad(images, (left, size - width - left, top, size - height - top))


def channel_stats(
    images: torch.Tensor, pixel_max: float = 1.0, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of x / pixel_max over samples and pixels
    of N x C x H x W images: std = sqrt(E[x^2] - E[x]^2), accumulated in float64 chunk by chunk."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for part in images.split(chunk):
        values = part.double().transpose(0, 1).reshape(channels, -1) / pixel_max
        total += values.sum(1)
        squares += values.square().sum(1)
    count = images.numel() // channels
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], pixel_max: float) -> torch.Tensor:
    """float32 (x / pixel_max - mean_c) / std_c for each channel c of N x C x H x W images."""
    shape = (1, len(mean), 1, 1)
    result = images.to(torch.float32, copy=True).div_(pixel_max)
    return result.sub_(torch.tensor(mean).view(shape)).div_(torch.tensor(std).view(shape))


def random_crop_flip(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random crop of the zero-padded batch back to H x W, then a mirror with probability 1/2.

    Output[n, c, i, j] = padded[n, c, dy_n + i, dx_n + j'] with j' = W - 1 - j for mirrored samples,
    dy_n, dx_n uniform in 0..2*padding; done as one gather, no loop over samples.
    """
    n, _, height, width = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(images.device)
    mirrored = (torch.rand(n, generator=generator) < 0.5).to(images.device) & flip
    padded = F.pad(images, (padding,) * 4)
    rows = offsets[0, :, None] + torch.arange(height, device=images.device)
    columns = torch.arange(width, device=images.device).expand(n, width)
    columns = offsets[1, :, None] + torch.where(mirrored[:, None], columns.flip(1), columns)
    samples = torch.arange(n, device=images.device)[:, None, None]
    crops = padded.permute(0, 2, 3, 1)[samples, rows[:, :, None], columns[:, None, :]]
    return crops.permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class Augmentation:
    """Training-batch augmentation: random crop with `crop_padding` zero pixels and optional mirror.

    Zero padding happens after normalisation, i.e. with the mean colour. Flattened batches are viewed
    as `image_shape` for the crop and flattened again.
    """

    crop_padding: int
    flip: bool
    image_shape: tuple[int, int, int]

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        images = batch.view(-1, *self.image_shape)
        augmented = random_crop_flip(images, self.crop_padding, self.flip, generator)
        return augmented.view(batch.shape)
