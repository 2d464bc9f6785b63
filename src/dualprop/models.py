"""The model zoo: plain ``nn.Sequential`` builders for the networks of the dual-propagation papers.

Conv nets take ``size × size`` inputs (32 by default) and use conv → max-pool → activation blocks, so
every block is piecewise linear and every activation elementwise.
"""
from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
    "hardsigmoid": nn.Hardsigmoid, "hardtanh": nn.Hardtanh, "gelu": nn.GELU, "silu": nn.SiLU,
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


def conv_net(channels: Sequence[int], pool_after: Sequence[int], dense: Sequence[int], num_classes: int,
             in_channels: int = 3, size: int = 32, activation: str = "relu") -> nn.Sequential:
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
    return conv_net([64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512], [2, 4, 7, 10, 13],
                    [4096, 4096], num_classes, in_channels, size, activation)


def vgg_like(num_classes: int = 10, in_channels: int = 3, size: int = 32, activation: str = "relu") -> nn.Sequential:
    """Four pooled convs (128, 256, 512, 512), dense to n."""
    return conv_net([128, 256, 512, 512], [1, 2, 3, 4], [], num_classes, in_channels, size, activation)


def cnn(num_classes: int = 10, in_channels: int = 3, size: int = 32, activation: str = "relu") -> nn.Sequential:
    """Five pooled convs (64, 128, 256, 512, 512), dense 4096, n."""
    return conv_net([64, 128, 256, 512, 512], [1, 2, 3, 4, 5], [4096], num_classes, in_channels, size,
                    activation)


def mini_cnn(num_classes: int = 10, in_channels: int = 3, size: int = 32, activation: str = "relu") -> nn.Sequential:
    """Two pooled convs (64, 64), dense to n."""
    return conv_net([64, 64], [1, 2], [], num_classes, in_channels, size, activation)


CONV_MODELS: dict[str, Callable[..., nn.Sequential]] = {
    "vgg16": vgg16, "vgg_like": vgg_like, "cnn": cnn, "mini_cnn": mini_cnn,
}
