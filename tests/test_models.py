import pytest
import torch
from torch import nn

from dualprop import models
from dualprop.graph import capture_graph


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
