"""The model zoo: the networks of the dual-propagation papers and residual networks.

The MLP and the conv nets are plain ``nn.Sequential`` chains: conv nets take ``size × size`` inputs (32 by
default) and use conv → max-pool → activation blocks, so every block is piecewise linear and every
activation elementwise. The residual networks (``resnet20``, CIFAR-style, and the small ``resnet8``) are
ordinary modules with skip additions and batch normalisation, captured as graphs of neurons.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "hardsigmoid": nn.Hardsigmoid,
    "hardtanh": nn.Hardtanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (``relu``, ``tanh``, …)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(sizes: Sequence[int], activation: str = "relu") -> nn.Sequential:
    """Fully connected net ``sizes[0] → … → sizes[-1]``, activation between layers, none at the output."""
    if len(sizes) < 2 or any(int(n) < 1 for n in sizes):
        raise ValueError(f"mlp needs at least two positive layer sizes, got {list(sizes)}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(int(n_in), int(n_out)))
        if i < len(sizes) - 2:
            layers.append(make_activation(activation))
    return nn.Sequential(*layers)


def conv_net(
    channels: Sequence[int],
    pool_after: Sequence[int],
    dense: Sequence[int],
    num_classes: int,
    in_channels: int = 3,
    size: int = 32,
    activation: str = "relu",
) -> nn.Sequential:
    """3×3 convolutions (padding 1) with 2×2 max-pooling after the listed (1-based) conv layers, then
    ``Flatten`` and dense layers ending in ``num_classes`` logits."""
    if num_classes < 1 or in_channels < 1:
        raise ValueError("num_classes and in_channels must be positive")
    pooled = set(pool_after)
    if size % (2 ** len(pooled)) != 0:
        raise ValueError(f"input size {size} cannot be halved {len(pooled)} times")
    layers: list[nn.Module] = []
    previous = in_channels
    for i, width in enumerate(channels, start=1):
        layers.append(nn.Conv2d(previous, width, kernel_size=3, padding=1))
        if i in pooled:
            layers.append(nn.MaxPool2d(2))
        layers.append(make_activation(activation))
        previous = width
    side = size // (2 ** len(pooled))
    widths = [previous * side * side, *dense, num_classes]
    layers.append(nn.Flatten())
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(make_activation(activation))
    return nn.Sequential(*layers)


def vgg16(num_classes: int = 10, in_channels: int = 3, size: int = 32, activation: str = "relu") -> nn.Sequential:
    """VGG16: 13 convs (64,64,128,128,256,256,256,512×6), pools after 2,4,7,10,13; dense 4096,4096,n."""
    return conv_net(
        [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512],
        [2, 4, 7, 10, 13],
        [4096, 4096],
        num_classes,
        in_channels,
        size,
        activation,
    )


def vgg_like(num_classes: int = 10, in_channels: int = 3, size: int = 32, activation: str = "relu") -> nn.Sequential:
    """Four pooled convs (128, 256, 512, 512), dense to n."""
    return conv_net([128, 256, 512, 512], [1, 2, 3, 4], [], num_classes, in_channels, size, activation)


def cnn(num_classes: int = 10, in_channels: int = 3, size: int = 32, activation: str = "relu") -> nn.Sequential:
    """Five pooled convs (64, 128, 256, 512, 512), dense 4096, n."""
    return conv_net([64, 128, 256, 512, 512], [1, 2, 3, 4, 5], [4096], num_classes, in_channels, size, activation)


def mini_cnn(num_classes: int = 10, in_channels: int = 3, size: int = 32, activation: str = "relu") -> nn.Sequential:
    """Two pooled convs (64, 64), dense to n."""
    return conv_net([64, 64], [1, 2], [], num_classes, in_channels, size, activation)


class ResidualBlock(nn.Module):
    """``f(BN(conv(f(BN(conv(x))))) + shortcut(x))`` with 3×3 convolutions; the shortcut is the identity, or a
    strided 1×1 convolution with BN where the shape changes."""

    def __init__(self, in_channels: int, channels: int, stride: int, activation: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act2 = make_activation(activation)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR-style residual network: 3×3 conv stem with BN, three stages of residual blocks (widths
    ``width``, ``2·width``, ``4·width``; stride 2 at the start of stages 2 and 3), global average pooling and a
    linear classifier."""

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
        activation: str = "relu",
    ):
        super().__init__()
        if blocks_per_stage < 1 or num_classes < 1 or in_channels < 1 or width < 1:
            raise ValueError("blocks_per_stage, num_classes, in_channels and width must be positive")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), make_activation(activation)
        )
        stages, previous = [], width
        for stage, channels in enumerate((width, 2 * width, 4 * width)):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                stages.append(ResidualBlock(previous, channels, stride, activation))
                previous = channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(previous, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def resnet20(num_classes: int = 10, in_channels: int = 3, size: int = 32, activation: str = "relu") -> ResNet:
    """ResNet-20 of He et al. for CIFAR: 3 stages × 3 residual blocks, widths 16/32/64 (any input size)."""
    return ResNet(3, num_classes, in_channels, 16, activation)


def resnet8(num_classes: int = 10, in_channels: int = 1, size: int = 28, activation: str = "relu") -> ResNet:
    """A small residual network (3 stages × 1 block, widths 16/32/64) for 28×28 inputs such as
    Fashion-MNIST; any input size works."""
    return ResNet(1, num_classes, in_channels, 16, activation)


CONV_MODELS: dict[str, Callable[..., nn.Module]] = {
    "vgg16": vgg16,
    "vgg_like": vgg_like,
    "cnn": cnn,
    "mini_cnn": mini_cnn,
    "resnet20": resnet20,
    "resnet8": resnet8,
}
