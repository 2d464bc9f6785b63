import pytest
import torch
from torch import nn

from dualprop import benchmark, models
from dualprop.graph import capture_graph
from dualprop.training import trainer
from dualprop.training.config import TrainConfig


def _count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize(
    "name, convs, pools, linears",
    [
        ("vgg16", 13, 5, 3),
        ("vgg_like", 4, 4, 1),
        ("cnn", 5, 5, 2),
        ("mini_cnn", 2, 2, 1),
    ],
)
def test_conv_models_have_the_papers_layout(name, convs, pools, linears):
    model = models.CONV_MODELS[name](num_classes=7, in_channels=1)
    assert (_count(model, nn.Conv2d), _count(model, nn.MaxPool2d), _count(model, nn.Linear)) == (convs, pools, linears)
    net = capture_graph(model)
    assert net.depth == convs + linears
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 7)


def test_vgg16_widths_and_pool_positions():
    model = models.vgg16(num_classes=100)
    net = capture_graph(model)
    widths = [b.parts[0].out_channels for b in net.blocks[:13]]
    assert widths == [64, 64, 128, 128, 256, 256, 256] + [512] * 6
    pooled = [k for k, b in enumerate(net.blocks[:13], start=1) if isinstance(b.parts[-1], nn.MaxPool2d)]
    assert pooled == [2, 4, 7, 10, 13]
    assert [b.parts[-1].out_features for b in net.blocks[13:]] == [4096, 4096, 100]


def test_mlp_structure_and_bad_sizes():
    model = models.mlp([5, 7, 3], activation="tanh")
    assert [type(m).__name__ for m in model] == ["Linear", "Tanh", "Linear"]
    with pytest.raises(ValueError):
        models.mlp([5])
    with pytest.raises(ValueError, match="unknown activation"):
        models.mlp([5, 3, 2], activation="swishy")


# -- patch-based nets: vit, mixer, convnext ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["vit", "mixer", "convnext"])
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_patch_based_models_run_forward_and_backward(name, channels, size):
    torch.manual_seed(0)
    model = models.CONV_MODELS[name](num_classes=7, in_channels=channels, size=size, activation="gelu")
    count = sum(p.numel() for p in model.parameters())
    assert 50_000 < count < 1_000_000
    x = torch.randn(3, channels, size, size)
    logits = model(x)
    assert logits.shape == (3, 7) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 3, 6])).backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), parameter_name
    assert _count(model, nn.GELU) > 0 and _count(model, nn.LayerNorm) > 0


def test_vit_layout_and_parameter_count():
    # width 64, 4 blocks of 4 heads, MLP ratio 2, 7x7 patches of 28x28 images: 16 tokens and a class token
    model = models.vit(num_classes=10, in_channels=1, size=28)
    assert model.patch_embed.kernel_size == (7, 7) and model.pos_embed.shape == (1, 17, 64)
    assert len(model.blocks) == 4 and model.blocks[0].attn.heads == 4
    assert model.blocks[0].mlp.fc1.out_features == 128
    block = 2 * (2 * 64) + (64 * 192 + 192) + (64 * 64 + 64) + (64 * 128 + 128) + (128 * 64 + 64)
    stem_and_head = (49 * 64 + 64) + 64 + 17 * 64 + 2 * 64 + (64 * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == 4 * block + stem_and_head
    assert models.vit(in_channels=3, size=32).patch_embed.kernel_size == (4, 4)  # 64 tokens
    assert models.vit(size=28, patch=4).pos_embed.shape == (1, 50, 64)


def test_vit_attention_equals_a_hand_written_softmax_attention():
    torch.manual_seed(1)
    attention = models.SelfAttention(8, 2).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    q, k, v = attention.qkv(x).split(8, dim=-1)
    heads = []
    for h in range(2):
        part = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(q[..., part] @ k[..., part].transpose(1, 2) / 2.0, dim=-1)  # √4 = 2
        heads.append(weights @ v[..., part])
    expected = attention.proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(attention(x), expected)


def test_mixer_mixes_tokens_and_channels():
    model = models.mixer(num_classes=10, in_channels=1, size=28)
    block = model.blocks[0]
    assert len(model.blocks) == 4
    assert (block.mlp_tokens.fc1.in_features, block.mlp_tokens.fc1.out_features) == (16, 32)
    assert (block.mlp_channels.fc1.in_features, block.mlp_channels.fc1.out_features) == (64, 256)
    # a token MLP mixes positions: changing one patch changes every token after the first block
    torch.manual_seed(2)
    x = torch.randn(1, 1, 28, 28)
    changed = x.clone()
    changed[..., :7, :7] += 1.0
    with torch.no_grad():
        tokens = model.stem(x).flatten(2).transpose(1, 2)
        moved = model.stem(changed).flatten(2).transpose(1, 2)
        difference = (block(moved) - block(tokens)).abs().amax(dim=-1)
    assert (difference > 0).all() and (moved - tokens)[:, 1:].abs().max() == 0


def test_convnext_stages_and_layer_norm_over_channels():
    model = models.convnext(num_classes=10, in_channels=3, size=32)
    blocks = [m for m in model.modules() if isinstance(m, models.ConvNeXtBlock)]
    assert [b.dwconv.in_channels for b in blocks] == [32, 32, 64, 64, 128, 128]
    assert all(b.dwconv.kernel_size == (7, 7) and b.dwconv.groups == b.dwconv.in_channels for b in blocks)
    assert float(blocks[0].gamma.detach().abs().max()) == pytest.approx(1e-6)
    with torch.no_grad():
        assert model.features(torch.zeros(2, 3, 32, 32)).shape == (2, 128, 4, 4)
    norm = models.LayerNorm2d(4).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    expected = torch.nn.functional.layer_norm(x.transpose(1, 3), (4,), norm.weight, norm.bias, norm.eps).transpose(1, 3)
    torch.testing.assert_close(norm(x), expected)


def test_patch_based_models_refuse_sizes_they_cannot_split():
    with pytest.raises(ValueError, match="patch size 5 does not divide the input size 28"):
        models.vit(size=28, patch=5)
    with pytest.raises(ValueError, match="does not divide"):
        models.mixer(size=30)
    with pytest.raises(ValueError, match="multiple of the number of heads"):
        models.vit(width=30, heads=4)
    with pytest.raises(ValueError, match="too small"):
        models.convnext(size=4)


@pytest.mark.parametrize("name", ["vit", "mixer", "convnext"])
def test_patch_based_models_are_choices_of_train_and_bench(name):
    config = TrainConfig(model=name, dataset="fashion-mnist", activation="gelu").resolved()
    assert config.model == name
    built = trainer.build_model(config, (1, 28, 28), 10)
    assert built(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert any(isinstance(m, nn.GELU) for m in built.modules())
    model, shape = benchmark.build_model(name)
    assert model(torch.zeros(2, *shape)).shape == (2, 10)
    with pytest.raises(ValueError, match="vit, mixer, convnext"):
        TrainConfig(model="vitt").resolved()
    with pytest.raises(ValueError, match="vit, mixer, convnext"):
        benchmark.build_model("vitt")
