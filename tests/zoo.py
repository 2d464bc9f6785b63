"""Small look-alikes of the blocks of today's torchvision and timm classifiers, and of a GPT-style decoder.

Each factory returns a tiny ``nn.Module`` (a few channels, 16×16 images or 8 tokens, 10 classes) written the
way those libraries write the block it imitates: residual streams without an activation after the add,
squeeze-excitation as a product of signals, channel shuffles by shape arithmetic, drop path that reads
``self.training``, attention by hand, through ``F.scaled_dot_product_attention`` and through
``nn.MultiheadAttention``, shape asserts and optional ``forward`` arguments. Plain torch only: the tests
must not need torchvision or timm.

:data:`ZOO` maps a name to a :class:`ZooModel` (its factory and the batch it expects); :func:`zoo_batch`
draws such a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NUM_CLASSES = 10
IMAGE = (3, 16, 16)
GRAY = (1, 16, 16)
VOCAB = 16
CONTEXT = 8


# -- shared pieces --------------------------------------------------------------------------------------


def stochastic_depth(x: Tensor, p: float, training: bool) -> Tensor:
    """Drop the whole residual branch of each sample with probability ``p`` and scale the kept ones by
    ``1 / (1 − p)`` (a per-sample Bernoulli mask, torchvision's ``stochastic_depth`` in ``"row"`` mode)."""
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    mask = x.new_empty(shape).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    """Stochastic depth as a module (timm's ``DropPath``, torchvision's ``StochasticDepth``)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return stochastic_depth(x, self.p, self.training)


def conv_bn_act(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU
) -> nn.Sequential:
    """Conv (no bias) → BatchNorm → activation, torchvision's ``Conv2dNormActivation``."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision's ``SqueezeExcitation``: ``x * gate(fc2(act(fc1(avgpool(x)))))`` with 1×1 convolutions."""

    def __init__(self, channels: int, squeeze: int, act: type[nn.Module] = nn.ReLU, gate: type[nn.Module] = nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = act()
        self.scale_activation = gate()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * scale


class ClassifierHead(nn.Module):
    """Global average pooling, flatten and a linear classifier."""

    def __init__(self, channels: int, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


# -- pre-activation ResNet ------------------------------------------------------------------------------


class PreActBlock(nn.Module):
    """The pre-activation basic block of He et al. (2016), timm's ``PreActBasicBlock``:
    ``x + conv(relu(bn(conv(relu(bn(x))))))``, the shortcut a strided 1×1 conv of the pre-activated input
    where the shape changes; nothing follows the addition."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """A pre-activation ResNet: conv stem, a residual stream of pre-activation blocks, final BN-ReLU, head."""

    def __init__(self, in_channels: int = 3, width: int = 4, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.blocks = nn.Sequential(
            PreActBlock(width, width), PreActBlock(width, 2 * width, stride=2), PreActBlock(2 * width, 2 * width)
        )
        self.norm = nn.BatchNorm2d(2 * width)
        self.head = ClassifierHead(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.norm(self.blocks(self.stem(x)))))


# -- MobileNetV2 ----------------------------------------------------------------------------------------


class InvertedResidualV2(nn.Module):
    """torchvision's MobileNetV2 ``InvertedResidual``: expand 1×1 → depthwise 3×3 (both BN-ReLU6) → linear
    1×1 bottleneck with BN, added to the input when the stride is 1 and the widths agree."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = cin * expand_ratio
        self.use_res_connect = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            conv_bn_act(cin, hidden, 1, act=nn.ReLU6),
            conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """A tiny MobileNetV2: stem, three inverted residuals (two with a residual add), 1×1 conv, dropout, head."""

    def __init__(self, in_channels: int = 3, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_act(in_channels, 4, 3, stride=2, act=nn.ReLU6),
            InvertedResidualV2(4, 4, 1, 2),
            InvertedResidualV2(4, 6, 2, 2),
            InvertedResidualV2(6, 6, 1, 2),
            conv_bn_act(6, 16, 1, act=nn.ReLU6),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


# -- MobileNetV3 ----------------------------------------------------------------------------------------


class InvertedResidualV3(nn.Module):
    """torchvision's MobileNetV3 ``InvertedResidual``: expand 1×1 (BN, hard-swish), depthwise 3×3 (BN,
    hard-swish), squeeze-excitation gated by a hard sigmoid, linear 1×1 projection, residual add."""

    def __init__(self, cin: int, hidden: int, cout: int, stride: int):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        self.block = nn.Sequential(
            conv_bn_act(cin, hidden, 1, act=nn.Hardswish),
            conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.Hardswish),
            SqueezeExcitation(hidden, max(hidden // 4, 2), act=nn.ReLU, gate=nn.Hardsigmoid),
            conv_bn_act(hidden, cout, 1, act=None),
        )

    def forward(self, x: Tensor) -> Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


class MobileNetV3(nn.Module):
    """A tiny MobileNetV3: hard-swish stem, two SE inverted residuals, last conv, Linear-Hardswish-Dropout-Linear."""

    def __init__(self, in_channels: int = 3, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_act(in_channels, 4, 3, stride=2, act=nn.Hardswish),
            InvertedResidualV3(4, 8, 4, 1),
            InvertedResidualV3(4, 12, 6, 2),
            conv_bn_act(6, 12, 1, act=nn.Hardswish),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(12, 16), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(16, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# -- EfficientNet ---------------------------------------------------------------------------------------


class MBConv(nn.Module):
    """torchvision's EfficientNet ``MBConv``: expand 1×1 and depthwise 3×3 (BN, SiLU), squeeze-excitation
    (SiLU, sigmoid gate), linear 1×1 projection; with a residual, the branch goes through stochastic depth
    before the add."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int, drop_path: float):
        super().__init__()
        hidden = cin * expand_ratio
        self.use_res_connect = stride == 1 and cin == cout
        self.block = nn.Sequential(
            conv_bn_act(cin, hidden, 1, act=nn.SiLU),
            conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.SiLU),
            SqueezeExcitation(hidden, max(cin // 4, 1), act=nn.SiLU, gate=nn.Sigmoid),
            conv_bn_act(hidden, cout, 1, act=None),
        )
        self.stochastic_depth = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += x
        return result


class EfficientNet(nn.Module):
    """A tiny EfficientNet: SiLU stem, three MBConv blocks (drop path growing with depth), head conv, head."""

    def __init__(self, in_channels: int = 3, num_classes: int = NUM_CLASSES, drop_path: float = 0.2):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_act(in_channels, 4, 3, stride=2, act=nn.SiLU),
            MBConv(4, 4, 1, 2, drop_path * 1 / 3),
            MBConv(4, 6, 2, 3, drop_path * 2 / 3),
            MBConv(6, 6, 1, 3, drop_path),
            conv_bn_act(6, 16, 1, act=nn.SiLU),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# -- ShuffleNet v2 --------------------------------------------------------------------------------------


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` groups (ShuffleNet's channel shuffle)."""
    b, c, h, w = x.size()
    channels_per_group = c // groups
    x = x.view(b, groups, channels_per_group, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, c, h, w)


class ShuffleUnit(nn.Module):
    """torchvision's ShuffleNetV2 ``InvertedResidual``: stride 1 splits the channels with ``chunk``, transforms
    one half (1×1, depthwise 3×3, 1×1) and concatenates; stride 2 transforms the input on two branches;
    either way a channel shuffle follows the concatenation."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                conv_bn_act(cin, cin, 3, stride, groups=cin, act=None),
                conv_bn_act(cin, half, 1),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            conv_bn_act(cin if stride > 1 else half, half, 1),
            conv_bn_act(half, half, 3, stride, groups=half, act=None),
            conv_bn_act(half, half, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """A tiny ShuffleNet v2: stem with max-pool, a stride-2 unit and two stride-1 units, 1×1 conv, head."""

    def __init__(self, in_channels: int = 3, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.conv1 = conv_bn_act(in_channels, 4, 3, stride=2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.stage2 = nn.Sequential(ShuffleUnit(4, 8, 2), ShuffleUnit(8, 8, 1), ShuffleUnit(8, 8, 1))
        self.conv5 = conv_bn_act(8, 16, 1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv5(self.stage2(self.maxpool(self.conv1(x))))
        return self.fc(x.mean([2, 3]))


# -- DenseNet -------------------------------------------------------------------------------------------


class DenseLayer(nn.Module):
    """torchvision's ``_DenseLayer``: BN-ReLU-conv 1×1 (bottleneck) then BN-ReLU-conv 3×3 on the
    concatenation of all earlier features; returns only the new features."""

    def __init__(self, cin: int, growth: int, bottleneck: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, bottleneck * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bottleneck * growth)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(bottleneck * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        concatenated = torch.cat(features, 1)
        bottleneck = self.conv1(self.relu1(self.norm1(concatenated)))
        return self.conv2(self.relu2(self.norm2(bottleneck)))


class DenseBlock(nn.ModuleDict):
    """torchvision's ``_DenseBlock``: every layer reads the concatenation of the input and all earlier layers."""

    def __init__(self, layers: int, cin: int, growth: int, bottleneck: int):
        super().__init__()
        for i in range(layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(cin + i * growth, growth, bottleneck))

    def forward(self, init_features: Tensor) -> Tensor:
        features = [init_features]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    """A tiny DenseNet: stem, dense block, transition (BN-ReLU-conv 1×1-avg-pool), dense block, BN-ReLU, head."""

    def __init__(self, in_channels: int = 3, growth: int = 4, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, 1, 1, bias=False),
            DenseBlock(3, 8, growth, 2),
            nn.BatchNorm2d(8 + 3 * growth),
            nn.ReLU(),
            nn.Conv2d(8 + 3 * growth, 8, 1, bias=False),
            nn.AvgPool2d(2, 2),
            DenseBlock(2, 8, growth, 2),
            nn.BatchNorm2d(8 + 2 * growth),
        )
        self.classifier = nn.Linear(8 + 2 * growth, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.features(x))
        out = F.adaptive_avg_pool2d(out, (1, 1))
        return self.classifier(torch.flatten(out, 1))


# -- ConvNeXt -------------------------------------------------------------------------------------------


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor, by permuting to channels-last and back."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """timm's ``ConvNeXtBlock`` (channels-last MLP): depthwise 7×7 conv, permute to NHWC, LayerNorm, Linear 4×,
    GELU, Linear, layer scale ``gamma * x``, permute back, drop path, residual add."""

    def __init__(self, dim: int, drop_path: float, layer_scale: float = 1e-1):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)
        x = self.norm(x)
        x = self.pwconv2(self.act(self.pwconv1(x)))
        x = self.gamma * x
        x = x.permute(0, 3, 1, 2)
        return self.drop_path(x) + shortcut


class ConvNeXt(nn.Module):
    """A tiny ConvNeXt: 4×4 patchify stem with LayerNorm2d, a stage of blocks, LayerNorm2d + 2×2 strided conv
    downsampling, a second stage, pooled LayerNorm head."""

    def __init__(self, in_channels: int = 3, dims: tuple[int, int] = (8, 16), num_classes: int = NUM_CLASSES):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, dims[0], 4, stride=4), LayerNorm2d(dims[0], eps=1e-6))
        self.stages = nn.Sequential(
            nn.Sequential(ConvNeXtBlock(dims[0], 0.1), ConvNeXtBlock(dims[0], 0.1)),
            nn.Sequential(LayerNorm2d(dims[0], eps=1e-6), nn.Conv2d(dims[0], dims[1], 2, stride=2)),
            nn.Sequential(ConvNeXtBlock(dims[1], 0.2)),
        )
        self.norm = nn.LayerNorm(dims[1], eps=1e-6)
        self.head = nn.Linear(dims[1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        return self.head(self.norm(x.mean([-2, -1])))


# -- MLP-Mixer ------------------------------------------------------------------------------------------


class Mlp(nn.Module):
    """timm's ``Mlp``: Linear → GELU → Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MixerBlock(nn.Module):
    """timm's ``MixerBlock``: ``x + mlp_tokens(norm1(x)ᵀ)ᵀ`` then ``x + mlp_channels(norm2(x))`` on (B, N, C)."""

    def __init__(self, dim: int, tokens: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_tokens = Mlp(tokens, 2 * tokens)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_channels = Mlp(dim, 2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


class MlpMixer(nn.Module):
    """A tiny MLP-Mixer: 4×4 patch conv, tokens as (B, N, C), two mixer blocks, LayerNorm, mean over tokens."""

    def __init__(
        self, in_channels: int = 1, size: int = 16, patch: int = 4, dim: int = 8, num_classes: int = NUM_CLASSES
    ):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, dim, patch, stride=patch)
        tokens = (size // patch) ** 2
        self.blocks = nn.Sequential(MixerBlock(dim, tokens), MixerBlock(dim, tokens))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


# -- ViT ------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """timm's ViT ``Attention``: one qkv Linear, heads by reshape/permute, softmax(q kᵀ · scale) v, out Linear.

    ``fused`` computes the same through ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int, fused: bool = False):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.fused = fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = q @ k.transpose(-2, -1) * self.scale
            attn = attn.softmax(dim=-1)
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class TorchAttention(nn.Module):
    """Self-attention through ``nn.MultiheadAttention`` (torchvision's ViT ``EncoderBlock``)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.mha(x, x, x, need_weights=False)
        return out


class ViTBlock(nn.Module):
    """A pre-LN transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, attention: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = TorchAttention(dim, heads) if attention == "torch" else Attention(dim, heads, attention == "sdpa")
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """A tiny ViT (timm's ``VisionTransformer``): patch conv, ``flatten(2).transpose(1, 2)``, class token
    expanded to the batch, learned positions, pre-LN blocks, final LayerNorm, head on the class token.

    ``attention``: ``"manual"`` (hand-written), ``"sdpa"`` (``F.scaled_dot_product_attention``) or ``"torch"``
    (``nn.MultiheadAttention``)."""

    def __init__(
        self,
        attention: str = "manual",
        in_channels: int = 1,
        size: int = 16,
        patch: int = 4,
        dim: int = 8,
        depth: int = 2,
        heads: int = 2,
        num_classes: int = NUM_CLASSES,
    ):
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, (size // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, attention) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.normal_(self.cls_token, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        B = x.shape[0]
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        x = x + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


# -- GPT-style decoder ----------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x², last dim) + eps) · weight`` (LLaMA's RMSNorm, written out)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class CausalSelfAttention(nn.Module):
    """nanoGPT's ``CausalSelfAttention``: ``F.scaled_dot_product_attention(is_causal=True)``, or (``masked``)
    hand-written attention with a registered lower-triangular mask buffer."""

    def __init__(self, dim: int, heads: int, context: int, masked: bool):
        super().__init__()
        self.heads = heads
        self.masked = masked
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)
        if masked:
            self.register_buffer("bias", torch.tril(torch.ones(context, context)).view(1, 1, context, context))

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        if self.masked:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            y = F.softmax(att, dim=-1) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class SwiGLU(nn.Module):
    """LLaMA's feed-forward: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class DecoderBlock(nn.Module):
    """A pre-norm decoder block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))`` (RMSNorm)."""

    def __init__(self, dim: int, heads: int, context: int, masked: bool, swiglu: bool):
        super().__init__()
        self.ln_1 = RMSNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, context, masked)
        self.ln_2 = RMSNorm(dim)
        self.mlp = SwiGLU(dim, 2 * dim) if swiglu else Mlp(dim, 4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    """A GPT-style causal decoder on integer token ids (B, T): token and position embeddings, decoder blocks,
    RMSNorm, linear head to logits (B, T, vocab)."""

    def __init__(
        self,
        vocab: int = VOCAB,
        context: int = CONTEXT,
        dim: int = 8,
        depth: int = 2,
        heads: int = 2,
        masked: bool = False,
        swiglu: bool = True,
    ):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(context, dim)
        self.h = nn.Sequential(*[DecoderBlock(dim, heads, context, masked, swiglu) for _ in range(depth)])
        self.ln_f = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx: Tensor) -> Tensor:
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        return self.lm_head(self.ln_f(self.h(x)))


# -- mode-dependent control flow, shape asserts, optional arguments ------------------------------------------


class TrainingBranchNet(nn.Module):
    """A forward that reads ``self.training``, like timm's classifier heads: functional dropout
    ``F.dropout(x, self.p, self.training)`` and, in training only, the logits averaged with an auxiliary
    head's (DeiT's distillation head at training time)."""

    def __init__(self, in_features: int = 16, hidden: int = 12, num_classes: int = NUM_CLASSES, p: float = 0.25):
        super().__init__()
        self.p = p
        self.fc = nn.Linear(in_features, hidden)
        self.head = nn.Linear(hidden, num_classes)
        self.head_aux = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.tanh(self.fc(x))
        x = F.dropout(x, self.p, self.training)
        if self.training:
            return (self.head(x) + self.head_aux(x)) / 2
        return self.head(x)


class PatchEmbed(nn.Module):
    """timm's ``PatchEmbed``: asserts the input's channels and size with ``torch._assert``, then a patch conv
    and ``flatten(2).transpose(1, 2)``."""

    def __init__(self, in_channels: int, size: int, patch: int, dim: int):
        super().__init__()
        self.in_channels = in_channels
        self.img_size = (size, size)
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        torch._assert(C == self.in_channels, f"Input channels ({C}) don't match model ({self.in_channels}).")
        torch._assert(H == self.img_size[0], f"Input height ({H}) doesn't match model ({self.img_size[0]}).")
        torch._assert(W == self.img_size[1], f"Input width ({W}) doesn't match model ({self.img_size[1]}).")
        return self.proj(x).flatten(2).transpose(1, 2)


class AssertAndMaskNet(nn.Module):
    """A patch embedding with shape asserts and ``forward(self, x, mask=None)``: tokens are multiplied by an
    optional per-token mask, then averaged, normalised and classified."""

    def __init__(
        self, in_channels: int = 3, size: int = 16, patch: int = 4, dim: int = 8, num_classes: int = NUM_CLASSES
    ):
        super().__init__()
        self.patch_embed = PatchEmbed(in_channels, size, patch, dim)
        self.mlp = Mlp(dim, 2 * dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        torch._assert(x.shape[1] == 3, "the input must have 3 channels")
        x = self.patch_embed(x)
        if mask is not None:
            x = x * mask.unsqueeze(-1)
        x = x + self.mlp(x)
        return self.head(self.norm(x.mean(dim=1)))


# -- the registry ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooModel:
    """A zoo factory and the batch it expects: per-sample ``input_shape``; ``tokens`` when the inputs are
    integer ids below ``classes`` (targets then one class per position); ``unused_in_eval`` names the
    parameters (by prefix) that ``eval()`` does not read."""

    make: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    tokens: bool = False
    classes: int = NUM_CLASSES
    unused_in_eval: tuple[str, ...] = ()

    def input_dtype(self, dtype: torch.dtype = torch.float64) -> torch.dtype:
        """The dtype of the inputs: ``torch.long`` token ids, else floats of the model's ``dtype``."""
        return torch.long if self.tokens else dtype


ZOO: dict[str, ZooModel] = {
    "preact_resnet": ZooModel(lambda: PreActResNet(3), IMAGE),
    "mobilenet_v2": ZooModel(lambda: MobileNetV2(3), IMAGE),
    "mobilenet_v3": ZooModel(lambda: MobileNetV3(3), IMAGE),
    "efficientnet": ZooModel(lambda: EfficientNet(3), IMAGE),
    "shufflenet_v2": ZooModel(lambda: ShuffleNetV2(3), IMAGE),
    "densenet": ZooModel(lambda: DenseNet(3), IMAGE),
    "convnext": ZooModel(lambda: ConvNeXt(3), IMAGE),
    "mixer": ZooModel(lambda: MlpMixer(1), GRAY),
    "vit": ZooModel(lambda: VisionTransformer("manual"), GRAY),
    "vit_sdpa": ZooModel(lambda: VisionTransformer("sdpa"), GRAY),
    "vit_mha": ZooModel(lambda: VisionTransformer("torch"), GRAY),
    "gpt": ZooModel(lambda: TinyGPT(masked=False, swiglu=True), (CONTEXT,), tokens=True, classes=VOCAB),
    "gpt_masked": ZooModel(lambda: TinyGPT(masked=True, swiglu=False), (CONTEXT,), tokens=True, classes=VOCAB),
    "training_branch": ZooModel(lambda: TrainingBranchNet(), (16,), unused_in_eval=("head_aux.",)),
    "assert_and_mask": ZooModel(lambda: AssertAndMaskNet(3), IMAGE),
}


def zoo_batch(
    entry: ZooModel, batch: int = 4, dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """A random batch for ``entry``: inputs (float of ``dtype``, or token ids) and class-index targets, one per
    sample (``(B,)``) or, for token models, one per position (``(B, T)``)."""
    generator = torch.Generator().manual_seed(seed)
    if entry.tokens:
        x = torch.randint(0, entry.classes, (batch, *entry.input_shape), generator=generator)
        return x, torch.randint(0, entry.classes, (batch, *entry.input_shape), generator=generator)
    x = torch.randn((batch, *entry.input_shape), generator=generator, dtype=entry.input_dtype(dtype))
    return x, torch.randint(0, entry.classes, (batch,), generator=generator)
