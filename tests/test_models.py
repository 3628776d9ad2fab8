"""ConvNet: the reference layout, parameter counts, shapes, norms, errors; checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddcal.models import (
    CHECKPOINT_FORMAT,
    CONVNET_NAMES,
    NORMS,
    ConvNet,
    build_convnet,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _reference_layout(channel: int, num_classes: int, im_size: int, depth: int, norm: str):
    """The reference ConvNet's layers, written out from its description.

    Padding 3 on the first conv of 1-channel 28x28 input; shape bookkeeping as
    the reference does it (28 treated as 32).
    """
    size = 32 if im_size == 28 else im_size
    layers: list[nn.Module] = []
    in_channels = channel
    for d in range(depth):
        layers.append(nn.Conv2d(in_channels, 128, 3, padding=3 if channel == 1 and d == 0 else 1))
        if norm == "instancenorm":
            layers.append(nn.GroupNorm(128, 128, affine=True))
        elif norm == "batchnorm":
            layers.append(nn.BatchNorm2d(128))
        elif norm == "layernorm":
            layers.append(nn.LayerNorm([128, size, size]))
        layers += [nn.ReLU(inplace=True), nn.AvgPool2d(2, 2)]
        in_channels = 128
        size //= 2
    features = nn.Sequential(*layers)
    classifier = nn.Linear(128 * size * size, num_classes)
    return nn.ModuleDict({"features": features, "classifier": classifier})


@pytest.mark.parametrize(
    ("in_channels", "im_size", "expected"),
    [(1, 28, 317_706), (3, 32, 320_010)],
)
def test_d3_parameter_count_matches_reference(in_channels, im_size, expected):
    model = build_convnet("ConvNetD3", in_channels, 10, im_size)
    assert _num_params(model) == expected
    assert model.feature_dim == 2048
    assert model.feature_shape == (128, 4, 4)


@pytest.mark.parametrize(
    ("name", "in_channels", "im_size", "expected_params"),
    [
        ("ConvNet", 1, 28, 317_706),
        ("ConvNetD3", 3, 32, 320_010),
        ("ConvNetD4", 3, 64, 467_850),
        ("ConvNetD5", 3, 128, 615_690),
    ],
)
def test_forward_and_embed_shapes(name, in_channels, im_size, expected_params):
    torch.manual_seed(0)
    model = build_convnet(name, in_channels, 10, (im_size, im_size))
    assert _num_params(model) == expected_params
    x = torch.randn(2, in_channels, im_size, im_size)
    features = model.embed(x)
    logits = model(x)
    assert features.shape == (2, 2048) == (2, model.feature_dim)
    assert logits.shape == (2, 10)
    # forward is the classifier on the embedding
    torch.testing.assert_close(logits, model.classifier(features))


def test_depth_follows_name():
    assert [build_convnet(n, 3, 10, 128).depth for n in CONVNET_NAMES] == [3, 3, 4, 5]
    assert build_convnet("ConvNet", 3, 10, 64, depth=4).depth == 4
    assert build_convnet("ConvNetD4", 3, 10, 64, depth=4).depth == 4


def test_non_square_and_num_classes():
    model = build_convnet("ConvNetD3", 3, 7, (32, 64), width=16)
    assert model.feature_shape == (16, 4, 8)
    assert model(torch.randn(3, 3, 32, 64)).shape == (3, 7)


@pytest.mark.parametrize(
    ("norm", "extra_params"),
    [
        ("instancenorm", 3 * 2 * 128),
        ("batchnorm", 3 * 2 * 128),
        ("layernorm", 2 * 128 * (32 * 32 + 16 * 16 + 8 * 8)),
        ("none", 0),
    ],
)
def test_each_norm(norm, extra_params):
    torch.manual_seed(0)
    model = build_convnet("ConvNetD3", 1, 10, 28, norm=norm)
    assert _num_params(model) == 317_706 - 3 * 2 * 128 + extra_params
    out = model(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()
    norms = [m for m in model.features if not isinstance(m, (nn.Conv2d, nn.ReLU, nn.AvgPool2d))]
    if norm == "none":
        assert norms == []
        assert len(model.features) == 3 * 3
        return
    assert len(norms) == 3
    assert len(model.features) == 3 * 4
    expected_type = {
        "instancenorm": nn.GroupNorm,
        "batchnorm": nn.BatchNorm2d,
        "layernorm": nn.LayerNorm,
    }[norm]
    assert all(type(m) is expected_type for m in norms)
    if norm == "instancenorm":
        assert all(m.num_groups == m.num_channels == 128 and m.affine for m in norms)
    if norm == "layernorm":
        shapes = [m.normalized_shape for m in norms]
        assert shapes == [(128, 32, 32), (128, 16, 16), (128, 8, 8)]
        assert all(m.elementwise_affine for m in norms)


def test_instancenorm_normalises_each_channel_of_each_image():
    model = build_convnet("ConvNetD3", 3, 10, 32)
    x = torch.randn(2, 3, 32, 32) * 5 + 3
    after_norm = model.features[:2](x)  # conv -> GroupNorm(C, C), affine at init = identity
    mean = after_norm.mean(dim=(2, 3))
    std = after_norm.std(dim=(2, 3), unbiased=False)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones_like(std), atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    ("in_channels", "im_size", "first_padding"),
    [(1, 28, 3), (3, 28, 3), (3, 32, 1), (1, 32, 1), (3, 64, 1)],
)
def test_first_conv_padding(in_channels, im_size, first_padding):
    model = build_convnet("ConvNetD3", in_channels, 10, im_size)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.padding for c in convs] == [(first_padding,) * 2] + [(1, 1)] * 2
    assert all(c.kernel_size == (3, 3) for c in convs)
    # 28 is padded to a 32x32 map: the first block's output is 16x16
    first_block = model.features[:4](torch.zeros(1, in_channels, im_size, im_size))
    expected = 16 if im_size == 28 else im_size // 2
    assert first_block.shape == (1, 128, expected, expected)


def test_first_padding_override_reproduces_reference_on_1x32():
    model = ConvNet(1, 10, 32, first_padding=3)
    assert model.features[0].padding == (3, 3)
    assert model.feature_shape == (128, 4, 4)  # 34 -> 17 -> 8 -> 4
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize(("channel", "im_size"), [(1, 28), (3, 32)])
def test_matches_reference_layout_exactly(norm, channel, im_size):
    torch.manual_seed(0)
    ours = build_convnet("ConvNetD3", channel, 10, im_size, norm=norm)
    reference = _reference_layout(channel, 10, im_size, 3, norm)
    # identical parameter names and shapes: reference checkpoints load as they are
    ref_state = reference.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in ref_state.items()
    }
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(5, channel, im_size, im_size)
    expected = reference["classifier"](torch.flatten(reference["features"](x), 1))
    torch.testing.assert_close(ours(x), expected)


def test_gradients_reach_every_parameter_and_the_input():
    torch.manual_seed(0)
    model = build_convnet("ConvNetD3", 3, 10, 32)
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name
    assert x.grad is not None
    assert x.grad.abs().sum() > 0  # distillation optimises the images themselves


@pytest.mark.parametrize("norm", NORMS)
def test_channels_last_gives_the_same_output(norm):
    torch.manual_seed(0)
    model = build_convnet("ConvNetD3", 3, 10, 32, norm=norm)
    x = torch.randn(4, 3, 32, 32)
    expected_logits, expected_features = model(x), model.embed(x)
    model_cl = model.to(memory_format=torch.channels_last)
    x_cl = x.to(memory_format=torch.channels_last)
    assert x_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model_cl(x_cl), expected_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model_cl.embed(x_cl), expected_features, atol=1e-5, rtol=1e-4)


def test_width_and_depth_keywords():
    model = build_convnet("ConvNet", 3, 10, 32, width=32, depth=2)
    assert model.feature_shape == (32, 8, 8)
    assert len([m for m in model.features if isinstance(m, nn.Conv2d)]) == 2
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "ConvNetD6"}, ValueError, "name.*'ConvNetD6'"),
        ({"name": "resnet18"}, ValueError, "name"),
        ({"in_channels": 0}, ValueError, "in_channels must be >= 1, got 0"),
        ({"num_classes": -1}, ValueError, "num_classes must be >= 1, got -1"),
        ({"im_size": 0}, ValueError, "im_size must be >= 1, got 0"),
        ({"im_size": (32, 0)}, ValueError, r"im_size\[1\] must be >= 1, got 0"),
        ({"im_size": (32,)}, ValueError, r"im_size must be an int or an \(H, W\) pair"),
        ({"im_size": 32.0}, TypeError, "im_size must be an int"),
        ({"width": 0}, ValueError, "width must be >= 1, got 0"),
        ({"depth": 0}, ValueError, "depth must be >= 1, got 0"),
        ({"norm": "groupnorm"}, ValueError, "norm.*'groupnorm'"),
        ({"name": "ConvNetD4", "depth": 3}, ValueError, "depth must be 4 for name 'ConvNetD4'"),
        ({"name": "ConvNetD5", "im_size": 16}, ValueError, r"im_size \(16, 16\) is too small"),
        ({"name": "ConvNetD3", "im_size": (32, 4)}, ValueError, "im_size.*too small.*depth 3"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    args = {"name": "ConvNetD3", "in_channels": 3, "num_classes": 10, "im_size": 32} | kwargs
    with pytest.raises(error, match=match):
        build_convnet(**args)


def test_smallest_image_size_for_depth_is_accepted():
    model = build_convnet("ConvNetD3", 3, 10, 8, width=8)
    assert model.feature_shape == (8, 1, 1)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="im_size"):
        build_convnet("ConvNetD3", 3, 10, 7, width=8)


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (2, 1, 32, 32), (3, 32, 32)])
def test_wrong_input_shape_raises(shape):
    model = build_convnet("ConvNetD3", 3, 10, 32, width=8)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3, 32, 32\)"):
        model(torch.randn(*shape))


@pytest.mark.parametrize(
    ("kwargs", "arch"),
    [
        ({"in_channels": 1, "num_classes": 10, "im_size": 28}, "ConvNetD3"),
        ({"in_channels": 3, "num_classes": 4, "im_size": (16, 24), "norm": "batchnorm"},
         "ConvNetD3"),
        ({"in_channels": 3, "num_classes": 5, "im_size": 32, "depth": 4, "norm": "layernorm"},
         "ConvNetD4"),
        ({"in_channels": 1, "num_classes": 3, "im_size": 32, "first_padding": 3, "norm": "none"},
         "ConvNetD3"),
        ({"in_channels": 2, "num_classes": 3, "im_size": 8, "depth": 2}, "ConvNet"),
    ],
)  # fmt: skip
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, kwargs, arch):
    torch.manual_seed(0)
    model = ConvNet(width=8, **kwargs)
    if model.norm == "batchnorm":  # running statistics are saved too
        model(torch.randn(8, model.in_channels, *model.im_size))
    model.eval()
    path = save_checkpoint(model, tmp_path / "net.pt", extra={"dataset": "x", "acc": [0.5, 0.7]})
    assert path == tmp_path / "net.pt"
    assert [p.name for p in tmp_path.iterdir()] == ["net.pt"]  # no temporary file left

    restored = read_checkpoint(path)
    assert restored.arch == arch
    assert restored.extra == {"dataset": "x", "acc": [0.5, 0.7]}
    assert not restored.model.training
    assert restored.model.first_padding == model.first_padding
    x = torch.randn(3, model.in_channels, *model.im_size)
    assert torch.equal(restored.model(x), model(x))
    loaded = load_checkpoint(path, map_location=torch.device("cpu"))
    assert torch.equal(loaded(x), model(x))

    content = torch.load(path, weights_only=True)  # plain values and tensors only
    assert content["format"] == CHECKPOINT_FORMAT == "ddcal-convnet"
    assert content["version"] == 1
    assert content["arch"] == arch
    config = dict(content["config"], im_size=tuple(content["config"]["im_size"]))
    ConvNet(**config).load_state_dict(content["state_dict"])  # the config is complete


def test_checkpoint_without_extra_reads_back_an_empty_dict(tmp_path):
    save_checkpoint(build_convnet("ConvNetD3", 1, 10, 28, width=8), tmp_path / "net.pt")
    assert read_checkpoint(tmp_path / "net.pt").extra == {}


@pytest.fixture
def checkpoint_content(tmp_path) -> dict:
    model = build_convnet("ConvNetD3", 1, 3, 8, width=8)
    return torch.load(save_checkpoint(model, tmp_path / "good.pt"), weights_only=True)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda good: torch.zeros(3), "not a ddcal ConvNet checkpoint .*got a Tensor"),
        (
            lambda good: {"format": "ddcal.distilled", "version": 1},
            "not a ddcal ConvNet checkpoint .*format tag 'ddcal.distilled'",
        ),
        (
            lambda good: {"state_dict": good["state_dict"]},
            "not a ddcal ConvNet checkpoint .*without a format tag",
        ),
        (lambda good: {**good, "version": 2}, "newer ddcal .*upgrade"),
        (lambda good: {**good, "version": "1"}, "invalid checkpoint version '1'"),
        (lambda good: {k: v for k, v in good.items() if k != "extra"}, r"lacks keys \['extra'\]"),
        (
            lambda good: {**good, "config": {**good["config"], "colour": 1}},
            "config must be a dict with keys",
        ),
        (
            lambda good: {**good, "config": {**good["config"], "width": 0}},
            "does not build a ConvNet: width must be >= 1",
        ),
        (
            lambda good: {**good, "config": {**good["config"], "width": 16}},
            r"does not build a ConvNet: size mismatch for features\.0\.weight: .* \(and 12 more\)$",
        ),
    ],
)
def test_malformed_checkpoints_are_errors_naming_the_path(
    tmp_path, checkpoint_content, change, match
):
    path = tmp_path / "bad.pt"
    torch.save(change(checkpoint_content), path)
    with pytest.raises(ValueError, match=match) as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)


def test_unreadable_files_and_pickled_modules_are_refused_without_running_them(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"garbage\.pt is not a readable PyTorch file"):
        load_checkpoint(garbage)
    module = tmp_path / "module.pt"
    torch.save(build_convnet("ConvNetD3", 1, 3, 8, width=8), module)
    with pytest.raises(ValueError, match=r"module\.pt holds objects other than tensors .*not run"):
        load_checkpoint(module)


def test_bad_checkpoint_arguments(tmp_path):
    model = build_convnet("ConvNetD3", 1, 3, 8, width=8)
    with pytest.raises(FileNotFoundError, match=r"absent\.pt does not exist"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(FileNotFoundError, match=r"folder .* does not exist"):
        save_checkpoint(model, tmp_path / "no" / "net.pt")
    with pytest.raises(TypeError, match="model must be a ddcal ConvNet, got Sequential"):
        save_checkpoint(nn.Sequential(nn.Linear(2, 2)), tmp_path / "net.pt")
    with pytest.raises(TypeError, match=r"extra must hold only plain values .*PosixPath"):
        save_checkpoint(model, tmp_path / "net.pt", extra={"path": tmp_path})
    with pytest.raises(TypeError, match="extra must be a dict or None"):
        save_checkpoint(model, tmp_path / "net.pt", extra=[1])
    assert list(tmp_path.iterdir()) == []
