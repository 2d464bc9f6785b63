"""The look-alike zoo of ``tests/zoo.py`` runs in float64, forward and backward, in ``train()`` and ``eval()``;
its building blocks compute what the blocks they imitate compute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from zoo import (
    ZOO,
    AssertAndMaskNet,
    TinyGPT,
    VisionTransformer,
    channel_shuffle,
    stochastic_depth,
    zoo_batch,
)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_runs_forward_and_backward_with_finite_gradients(name, mode):
    entry = ZOO[name]
    torch.manual_seed(0)
    model = entry.make().double()
    model.train(mode == "train")
    assert sum(p.numel() for p in model.parameters()) < 20_000  # tiny enough for float64 exactness tests
    x, y = zoo_batch(entry, batch=4)
    assert x.dtype == entry.input_dtype(torch.float64) and y.dtype == torch.long
    logits = model(x)
    expected = (4, *entry.input_shape, entry.classes) if entry.tokens else (4, entry.classes)
    assert logits.shape == expected and logits.dtype == torch.float64
    loss = F.cross_entropy(logits.reshape(-1, entry.classes), y.reshape(-1))
    loss.backward()
    assert torch.isfinite(loss)
    for parameter_name, parameter in model.named_parameters():
        unused = mode == "eval" and parameter_name.startswith(entry.unused_in_eval)
        if unused:
            assert parameter.grad is None, parameter_name
            continue
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name
    total = sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None)
    assert total > 0


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_in_eval_mode_is_deterministic(name):
    entry = ZOO[name]
    torch.manual_seed(1)
    model = entry.make().double().eval()
    x, _ = zoo_batch(entry, batch=3, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["training_branch", "efficientnet", "convnext", "mobilenet_v2"])
def test_mode_dependent_models_differ_between_train_and_eval(name):
    # dropout, drop path or an `if self.training:` branch: the mode changes the function
    entry = ZOO[name]
    torch.manual_seed(2)
    model = entry.make().double()
    x, _ = zoo_batch(entry, batch=8, seed=2)
    with torch.no_grad():
        trained = model.train()(x)
        evaluated = model.eval()(x)
    assert (trained - evaluated).abs().max() > 1e-6


def test_stochastic_depth_drops_whole_samples_and_scales_the_kept_ones():
    torch.manual_seed(3)
    x = torch.rand(400, 3, 2, 2, dtype=torch.float64) + 1.0
    out = stochastic_depth(x, 0.25, training=True)
    kept = (out != 0).flatten(1)
    assert (kept.all(dim=1) | ~kept.any(dim=1)).all()  # a sample is dropped entirely or kept entirely
    rows = kept.all(dim=1)
    torch.testing.assert_close(out[rows], x[rows] / 0.75)
    assert 0.15 < 1 - float(rows.double().mean()) < 0.35
    assert stochastic_depth(x, 0.25, training=False) is x
    assert stochastic_depth(x, 0.0, training=True) is x


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    assert channel_shuffle(x, 3).flatten().tolist() == [0.0, 2.0, 4.0, 1.0, 3.0, 5.0]


def test_three_vit_attentions_compute_the_same_function():
    torch.manual_seed(4)
    manual = VisionTransformer("manual").double().eval()
    sdpa = VisionTransformer("sdpa").double().eval()
    torch_mha = VisionTransformer("torch").double().eval()
    sdpa.load_state_dict(manual.state_dict())
    renamed = {}
    for key, value in manual.state_dict().items():
        key = key.replace("attn.qkv.weight", "attn.mha.in_proj_weight").replace(
            "attn.qkv.bias", "attn.mha.in_proj_bias"
        )
        renamed[key.replace("attn.proj.", "attn.mha.out_proj.")] = value
    torch_mha.load_state_dict(renamed)
    x, _ = zoo_batch(ZOO["vit"], batch=3, seed=4)
    with torch.no_grad():
        reference = manual(x)
        torch.testing.assert_close(sdpa(x), reference)
        torch.testing.assert_close(torch_mha(x), reference)


def test_gpt_is_causal_and_its_two_attentions_agree():
    torch.manual_seed(5)
    gpt = TinyGPT(masked=False).double().eval()
    masked = TinyGPT(masked=True).double().eval()
    result = masked.load_state_dict(gpt.state_dict(), strict=False)
    assert not result.unexpected_keys and all(key.endswith("attn.bias") for key in result.missing_keys)
    x, _ = zoo_batch(ZOO["gpt"], batch=2, seed=5)
    changed = x.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 16
    with torch.no_grad():
        out, later = gpt(x), gpt(changed)
        torch.testing.assert_close(masked(x), out)
    torch.testing.assert_close(later[:, :5], out[:, :5], rtol=0, atol=0)  # the past does not see the future
    assert (later[:, 5:] - out[:, 5:]).abs().max() > 1e-6


def test_assert_and_mask_net_checks_shapes_and_uses_its_optional_argument():
    torch.manual_seed(6)
    model = AssertAndMaskNet(3).double().eval()
    x, _ = zoo_batch(ZOO["assert_and_mask"], batch=2, seed=6)
    with torch.no_grad():
        plain = model(x)
        torch.testing.assert_close(model(x, mask=torch.ones(2, 16, dtype=torch.float64)), plain)
        assert (model(x, mask=torch.zeros(2, 16, dtype=torch.float64)) - plain).abs().max() > 1e-6
    with pytest.raises(AssertionError, match="channels"):
        model(x[:, :2])
    with pytest.raises(AssertionError, match="height"):
        model.patch_embed(x[:, :, :8])
