"""The model zoo: the networks of the dual-propagation papers, residual networks and patch-based nets.

The MLP and the conv nets are plain ``nn.Sequential`` chains: conv nets take ``size × size`` inputs (32 by
default) and use conv → max-pool → activation blocks, so every block is piecewise linear and every
activation elementwise. The residual networks (``resnet20``, CIFAR-style, and the small ``resnet8``) are
ordinary modules with skip additions and batch normalisation, captured as graphs of neurons. The
patch-based nets of today's image classifiers are written as their libraries write them: ``vit`` (a vision
transformer: patch convolution, class token, learned positions, pre-LN attention and MLP blocks), ``mixer``
(MLP-Mixer: token-mixing and channel-mixing MLPs) and ``convnext`` (a small ConvNeXt: depthwise 7×7
convolutions, channels-last LayerNorm, inverted MLP with layer scale). Their ``activation`` is the one of
their MLPs (``gelu`` in the papers).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


def _patch_size(size: int, patch: int | None) -> int:
    """``patch``, or by default 7 where it divides ``size`` (28×28 images: 4×4 patches) and else 4 (32×32: 8×8);
    ``ValueError`` unless it divides ``size``."""
    if patch is None:
        patch = 7 if size % 7 == 0 else 4
    if patch < 1 or size % patch != 0:
        raise ValueError(f"patch size {patch} does not divide the input size {size}")
    return patch


class FeedForward(nn.Module):
    """``fc2(f(fc1(x)))``: the MLP of transformer and mixer blocks, applied along the last dimension."""

    def __init__(self, width: int, hidden: int, activation: str):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = make_activation(activation)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention on tokens ``(B, N, C)``: ``proj(softmax(q kᵀ / √d) v)`` with ``q, k, v`` from
    one ``qkv`` Linear split into ``heads`` heads of ``d = C / heads`` channels, computed by
    ``F.scaled_dot_product_attention``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if heads < 1 or width % heads != 0:
            raise ValueError(f"the width {width} must be a positive multiple of the number of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class TransformerBlock(nn.Module):
    """A pre-LN transformer encoder block: ``x + attn(LN(x))``, then ``x + mlp(LN(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, activation: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = FeedForward(width, round(mlp_ratio * width), activation)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """A vision transformer: ``patch × patch`` convolution to ``width`` channels, tokens ``(B, N, C)``, a
    learned class token prepended and learned positions added, ``depth`` pre-LN blocks, a final LayerNorm and
    a linear head on the class token."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        size: int,
        patch: int,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        activation: str,
    ):
        super().__init__()
        if min(num_classes, in_channels, width, depth) < 1 or mlp_ratio <= 0:
            raise ValueError("num_classes, in_channels, width, depth and mlp_ratio must be positive")
        tokens = (size // _patch_size(size, patch)) ** 2
        self.patch_embed = nn.Conv2d(in_channels, width, patch, stride=patch)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, width))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, tokens + 1, width))
        self.blocks = nn.Sequential(*[TransformerBlock(width, heads, mlp_ratio, activation) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), tokens), dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def vit(
    num_classes: int = 10,
    in_channels: int = 1,
    size: int = 28,
    activation: str = "gelu",
    patch: int | None = None,
    width: int = 64,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 2.0,
) -> VisionTransformer:
    """A small ViT: patch 7 on 28×28 images (16 tokens) or 4 on 32×32 (64 tokens), width 64, 4 pre-LN blocks
    of 4 heads, MLP ratio 2."""
    return VisionTransformer(
        num_classes, in_channels, size, _patch_size(size, patch), width, depth, heads, mlp_ratio, activation
    )


class MixerBlock(nn.Module):
    """An MLP-Mixer block on tokens ``(B, N, C)``: ``x + token_mlp(LN(x)ᵀ)ᵀ`` mixes across the ``N`` tokens,
    then ``x + channel_mlp(LN(x))`` across the ``C`` channels."""

    def __init__(self, width: int, tokens: int, token_hidden: int, channel_hidden: int, activation: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.mlp_tokens = FeedForward(tokens, token_hidden, activation)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp_channels = FeedForward(width, channel_hidden, activation)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


class MlpMixer(nn.Module):
    """MLP-Mixer: ``patch × patch`` convolution to ``width`` channels, tokens ``(B, N, C)``, ``depth`` mixer
    blocks (token MLP hidden ``token_ratio · N``, channel MLP hidden ``channel_ratio · C``), LayerNorm, the mean
    over tokens and a linear head."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        size: int,
        patch: int,
        width: int,
        depth: int,
        token_ratio: float,
        channel_ratio: float,
        activation: str,
    ):
        super().__init__()
        if min(num_classes, in_channels, width, depth) < 1 or min(token_ratio, channel_ratio) <= 0:
            raise ValueError("num_classes, in_channels, width, depth and the MLP ratios must be positive")
        tokens = (size // _patch_size(size, patch)) ** 2
        token_hidden, channel_hidden = max(1, round(token_ratio * tokens)), max(1, round(channel_ratio * width))
        self.stem = nn.Conv2d(in_channels, width, patch, stride=patch)
        self.blocks = nn.Sequential(
            *[MixerBlock(width, tokens, token_hidden, channel_hidden, activation) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))


def mixer(
    num_classes: int = 10,
    in_channels: int = 1,
    size: int = 28,
    activation: str = "gelu",
    patch: int | None = None,
    width: int = 64,
    depth: int = 4,
    token_ratio: float = 2.0,
    channel_ratio: float = 4.0,
) -> MlpMixer:
    """A small MLP-Mixer: patch 7 on 28×28 images or 4 on 32×32, width 64, 4 blocks, token MLP 2× the tokens,
    channel MLP 4× the width."""
    return MlpMixer(
        num_classes, in_channels, size, _patch_size(size, patch), width, depth, token_ratio, channel_ratio, activation
    )


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an ``(N, C, H, W)`` tensor: permuted to channels-last and back."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """A ConvNeXt block: ``x + γ ⊙ fc2(f(fc1(LN(dwconv₇ₓ₇(x)))))``, the LayerNorm, MLP (4× the width) and
    layer scale ``γ`` (initialised to ``layer_scale``) applied channels-last, between two permutes."""

    def __init__(self, width: int, activation: str, layer_scale: float):
        super().__init__()
        self.dwconv = nn.Conv2d(width, width, 7, padding=3, groups=width)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = FeedForward(width, 4 * width, activation)
        self.gamma = nn.Parameter(torch.full((width,), float(layer_scale)))

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.mlp(self.norm(y))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """A ConvNeXt-style net: a ``stem × stem`` patchify convolution with LayerNorm, then stages of ConvNeXt
    blocks, each stage after the first opened by LayerNorm and a 2×2 stride-2 convolution to its width;
    global average pooling, LayerNorm and a linear head."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        stem: int,
        widths: Sequence[int],
        depths: Sequence[int],
        activation: str,
        layer_scale: float,
    ):
        super().__init__()
        if len(widths) != len(depths) or not widths or min(*widths, *depths, num_classes, in_channels, stem) < 1:
            raise ValueError("widths and depths must be equally long lists of positive numbers")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, widths[0], stem, stride=stem),
            LayerNorm2d(widths[0], eps=1e-6),
        ]
        for index, (width, depth) in enumerate(zip(widths, depths)):
            if index > 0:
                layers += [LayerNorm2d(widths[index - 1], eps=1e-6), nn.Conv2d(widths[index - 1], width, 2, stride=2)]
            layers += [ConvNeXtBlock(width, activation, layer_scale) for _ in range(depth)]
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(widths[-1], eps=1e-6)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.features(x).mean(dim=(2, 3))))


def convnext(
    num_classes: int = 10,
    in_channels: int = 3,
    size: int = 32,
    activation: str = "gelu",
    widths: Sequence[int] = (32, 64, 128),
    depths: Sequence[int] = (2, 2, 2),
    layer_scale: float = 1e-6,
) -> ConvNeXt:
    """A small ConvNeXt: 2×2 patchify stem, three stages (widths 32/64/128, two blocks each; 32×32 inputs
    become 16, 8 and 4 pixels wide, 28×28 ones 14, 7 and 3), layer scale initialised to 1e-6."""
    if size < 2 ** len(widths):
        raise ValueError(f"input size {size} is too small for {len(widths)} stages of 2x downsampling")
    return ConvNeXt(num_classes, in_channels, 2, widths, depths, activation, layer_scale)


# The image models by name, each built as ``make(num_classes=, in_channels=, size=, activation=)`` for square
# ``in_channels × size × size`` inputs.
CONV_MODELS: dict[str, Callable[..., nn.Module]] = {
    "vgg16": vgg16,
    "vgg_like": vgg_like,
    "cnn": cnn,
    "mini_cnn": mini_cnn,
    "resnet20": resnet20,
    "resnet8": resnet8,
    "vit": vit,
    "mixer": mixer,
    "convnext": convnext,
}
