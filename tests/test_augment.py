"""DSA augmentation: determinism, siamese parameter sharing, gradients, each op's formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ddcal.augment import (
    DEFAULT_STRATEGY,
    DSA,
    GROUPS,
    ColorParams,
    CropParams,
    CutoutParams,
    DSAConfig,
    DSAParams,
    FlipParams,
    RotateParams,
    ScaleParams,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int, c: int = 3, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=_gen(seed))


def test_defaults_match_reference() -> None:
    cfg = DSA().config
    assert DSA().strategy == DEFAULT_STRATEGY == "color_crop_cutout_flip_scale_rotate"
    assert (cfg.prob_flip, cfg.ratio_scale, cfg.ratio_rotate, cfg.ratio_crop_pad) == (
        0.5,
        1.2,
        15.0,
        0.125,
    )
    assert (cfg.ratio_cutout, cfg.brightness, cfg.saturation, cfg.contrast) == (0.5, 1.0, 2.0, 0.5)
    assert cfg.mode == "S"


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("group", GROUPS)
def test_same_seed_same_output(group: str, shared: bool) -> None:
    dsa, x = DSA(group), _images(6)
    first = dsa(x, dsa.sample_params(6, generator=_gen(3), shared=shared))
    second = dsa(x.clone(), dsa.sample_params(6, generator=_gen(3), shared=shared))
    assert torch.equal(first, second)
    assert torch.equal(dsa(x, generator=_gen(4)), dsa(x, generator=_gen(4)))


@pytest.mark.parametrize("group", GROUPS)
def test_siamese_params_apply_same_transform_to_batches_of_different_sizes(group: str) -> None:
    dsa = DSA(group)
    real = _images(8)
    syn = real[[2, 5, 0]].clone()  # a smaller batch holding copies of some real images
    for seed in range(5):
        params = dsa.sample_params(8, generator=_gen(seed))
        assert params.batch_size is None
        out_real, out_syn = dsa(real, params), dsa(syn, params)
        torch.testing.assert_close(out_syn, out_real[[2, 5, 0]], rtol=0, atol=1e-6)


def test_siamese_full_strategy_mode_s_and_m() -> None:
    real = _images(7, seed=1)
    syn = real[:2].clone()
    for mode in ("S", "M"):
        dsa = DSA(mode=mode)
        for seed in range(12):
            params = dsa.sample_params(1, generator=_gen(seed))
            torch.testing.assert_close(dsa(syn, params), dsa(real, params)[:2], rtol=0, atol=1e-6)


@pytest.mark.parametrize("group", ["color", "crop", "cutout", "scale", "rotate"])
def test_per_sample_draws_differ_across_samples(group: str) -> None:
    dsa = DSA(group)
    x = _images(1).expand(16, -1, -1, -1)
    out = dsa(x, generator=_gen(1))
    distinct = {tuple(row.tolist()) for row in out.flatten(1).round(decimals=5)}
    assert len(distinct) > 8


def test_per_sample_flip_draws_both_outcomes() -> None:
    params = DSA("flip").sample_params(64, generator=_gen(0), shared=False)
    (flip,) = params.groups
    assert isinstance(flip, FlipParams)
    assert flip.flip.shape == (64,)
    assert 0 < int(flip.flip.sum()) < 64


@pytest.mark.parametrize("group", GROUPS)
def test_gradients_reach_the_input(group: str) -> None:
    dsa = DSA(group)
    x = _images(4).requires_grad_(True)
    weights = torch.randn(4, 3, 16, 16, generator=_gen(9))
    (dsa(x, dsa.sample_params(4, generator=_gen(2))) * weights).sum().backward()
    assert x.grad is not None
    assert bool(torch.isfinite(x.grad).all())
    assert bool((x.grad != 0).any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("group", GROUPS)
def test_shape_dtype_device_kept(group: str, dtype: torch.dtype) -> None:
    x = torch.randn(5, 2, 12, 9, generator=_gen(0), dtype=dtype)
    out = DSA(group)(x, generator=_gen(1))
    assert out.shape == x.shape
    assert out.dtype == dtype
    assert out.device == x.device


def test_channels_last_input_gives_same_values() -> None:
    dsa, x = DSA(mode="M"), _images(4)
    params = dsa.sample_params(4, generator=_gen(0), shared=False)
    out = dsa(x.contiguous(memory_format=torch.channels_last), params)
    torch.testing.assert_close(out, dsa(x, params))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    dsa, x = DSA(mode="M"), _images(4)
    params = dsa.sample_params(4, generator=_gen(0), shared=False)
    on_gpu = dsa(x.cuda(), params)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), dsa(x, params), rtol=1e-4, atol=1e-4)


def test_flip_probability_one_and_zero() -> None:
    x = _images(5)
    torch.testing.assert_close(DSA("flip", prob_flip=1.0)(x), torch.flip(x, dims=[3]))
    torch.testing.assert_close(DSA("flip", prob_flip=0.0)(x), x)


def test_color_formula_against_drawn_values() -> None:
    x = _images(6)
    params = DSA("color").sample_params(6, generator=_gen(5), shared=False)
    (color,) = params.groups
    assert isinstance(color, ColorParams)
    b, s, c = (v.view(-1, 1, 1, 1) for v in (color.brightness, color.saturation, color.contrast))
    assert bool(((b >= -0.5) & (b < 0.5)).all())
    assert bool(((s >= 0.0) & (s < 2.0)).all())
    assert bool(((c >= 0.5) & (c < 1.5)).all())
    y = x + b
    y = (y - y.mean(1, keepdim=True)) * s + y.mean(1, keepdim=True)
    y = (y - y.mean((1, 2, 3), keepdim=True)) * c + y.mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(params.apply(x), y)


def test_brightness_alone_adds_the_value() -> None:
    x = _images(3)
    offsets = torch.tensor([0.3, -0.2, 0.0])
    ones = torch.ones(3)
    torch.testing.assert_close(
        ColorParams(offsets, ones, ones).apply(x), x + offsets.view(-1, 1, 1, 1)
    )


def test_saturation_is_identity_on_one_channel() -> None:
    x = _images(3, c=1)
    ones = torch.ones(3)
    torch.testing.assert_close(ColorParams(ones * 0, ones * 1.7, ones).apply(x), x)


def test_scale_one_and_rotate_zero_are_identity() -> None:
    x = _images(4, h=14, w=11)
    ones, zeros = torch.ones(1), torch.zeros(1)
    torch.testing.assert_close(ScaleParams(ones, ones).apply(x), x, rtol=0, atol=1e-5)
    torch.testing.assert_close(RotateParams(zeros).apply(x), x, rtol=0, atol=1e-5)


def test_rotate_90_degrees_is_anticlockwise_rot90() -> None:
    x = _images(2, h=10, w=10)
    out = RotateParams(torch.tensor([math.pi / 2])).apply(x)
    torch.testing.assert_close(out, torch.rot90(x, 1, dims=(2, 3)), rtol=0, atol=1e-5)


def test_scale_two_shrinks_the_content_by_half() -> None:
    # sx = sy = 2 samples twice as far from the centre: output pixel i reads input 2i - c.
    x = _images(1, c=1, h=8, w=8)
    out = ScaleParams(torch.tensor([2.0]), torch.tensor([2.0])).apply(x)
    expected = F.avg_pool2d(x, 2)  # bilinear at the midpoints of 2x2 blocks
    torch.testing.assert_close(out[..., 2:6, 2:6], expected, rtol=0, atol=1e-5)
    assert bool((out[..., :2, :] == 0).all())


def test_drawn_scale_and_angle_ranges() -> None:
    dsa = DSA("scale_rotate", mode="M")
    scale, rotate = dsa.sample_params(500, generator=_gen(0), shared=False).groups
    assert isinstance(scale, ScaleParams)
    assert isinstance(rotate, RotateParams)
    for s in (scale.sx, scale.sy):
        assert float(s.min()) >= 1 / 1.2
        assert float(s.max()) <= 1.2
    limit = math.radians(15.0)
    assert float(rotate.angle.abs().max()) <= limit
    assert float(rotate.angle.min()) < -0.8 * limit
    assert float(rotate.angle.max()) > 0.8 * limit


def _translate(image: torch.Tensor, dh: int, dw: int) -> torch.Tensor:
    """out[i, j] = image[i + dh, j + dw], zero outside (one image, by slicing)."""
    _, h, w = image.shape
    out = torch.zeros_like(image)
    rows_out = slice(max(0, -dh), min(h, h - dh))
    cols_out = slice(max(0, -dw), min(w, w - dw))
    rows_in = slice(max(0, dh), min(h, h + dh))
    cols_in = slice(max(0, dw), min(w, w + dw))
    out[:, rows_out, cols_out] = image[:, rows_in, cols_in]
    return out


def test_crop_is_a_translation_with_zero_fill() -> None:
    x = _images(64, h=28, w=20)
    params = DSA("crop").sample_params(64, generator=_gen(0), shared=False)
    (crop,) = params.groups
    assert isinstance(crop, CropParams)
    dh, dw = crop.shifts(28, 20)
    # s = int(28 * 0.125 + 0.5) = 4 vertically, int(20 * 0.125 + 0.5) = 3 horizontally.
    assert set(dh.tolist()) == set(range(-4, 5))
    assert set(dw.tolist()) == set(range(-3, 4))
    out = params.apply(x)
    for i in range(64):
        assert torch.equal(out[i], _translate(x[i], int(dh[i]), int(dw[i])))


def test_cutout_zeroes_the_drawn_rectangle() -> None:
    h, w = 28, 21
    x = torch.ones(64, 1, h, w)
    params = DSA("cutout").sample_params(64, generator=_gen(0), shared=False)
    (cutout,) = params.groups
    assert isinstance(cutout, CutoutParams)
    top, left, size_h, size_w = cutout.box(h, w)
    assert (size_h, size_w) == (14, 11)  # int(side * 0.5 + 0.5)
    out = params.apply(x)
    for i in range(64):
        expected = torch.ones(1, h, w)
        t, lft = int(top[i]), int(left[i])
        expected[:, max(t, 0) : t + size_h, max(lft, 0) : lft + size_w] = 0
        assert torch.equal(out[i], expected)


def test_cutout_mean_area_fraction() -> None:
    side, size = 28, 14
    # The centre is uniform in [0, side] (size even); the cut rows are clipped at the border.
    centres = torch.arange(side + 1)
    lengths = (centres - size // 2 + size).clamp(max=side) - (centres - size // 2).clamp(min=0)
    expected = (lengths.double().mean() / side) ** 2
    out = DSA("cutout")(torch.ones(4000, 1, side, side), generator=_gen(1))
    fraction = float((out == 0).double().mean())
    assert abs(fraction - float(expected)) < 0.01
    central = CutoutParams(0.5, torch.tensor([0.5]), torch.tensor([0.5])).apply(
        torch.ones(1, 1, side, side)
    )
    assert float((central == 0).double().mean()) == 0.25


def test_mode_s_picks_one_group_each_call_and_all_over_calls() -> None:
    dsa, g = DSA(), _gen(0)
    chosen = [dsa.sample_params(1, generator=g).names for _ in range(120)]
    assert all(len(names) == 1 for names in chosen)
    assert {names[0] for names in chosen} == set(GROUPS)


def test_mode_m_applies_every_group_in_order() -> None:
    params = DSA("flip_scale_crop", mode="M").sample_params(3, generator=_gen(0))
    assert params.names == ("flip", "scale", "crop")


def test_sample_params_device_and_to() -> None:
    params = DSA(mode="M").sample_params(2, generator=_gen(0), shared=False, device="cpu")
    moved = params.to(torch.device("cpu"))
    assert moved.names == params.names
    assert moved.batch_size == 2


def test_per_sample_params_refuse_another_batch_size() -> None:
    dsa = DSA("crop")
    params = dsa.sample_params(4, generator=_gen(0), shared=False)
    with pytest.raises(ValueError, match="batch_size=4"):
        dsa(_images(3), params)


@pytest.mark.parametrize(
    ("strategy", "match"),
    [("color_blur", "'blur'"), ("crop_crop", "repeats"), ("", "unknown group")],
)
def test_bad_strategy_raises(strategy: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DSA(strategy)


def test_bad_overrides_raise() -> None:
    with pytest.raises(ValueError, match="ratio_rotation"):
        DSA(ratio_rotation=10.0)
    with pytest.raises(ValueError, match="prob_flip"):
        DSA(prob_flip=1.5)
    with pytest.raises(ValueError, match="ratio_scale"):
        DSA(ratio_scale=0.8)
    with pytest.raises(ValueError, match="mode"):
        DSA(mode="X")
    with pytest.raises(TypeError, match="brightness"):
        DSA(brightness="high")
    with pytest.raises(TypeError, match="strategy"):
        DSA(3)  # type: ignore[arg-type]


def test_bad_inputs_raise() -> None:
    dsa = DSA()
    with pytest.raises(ValueError, match="shape"):
        dsa(torch.zeros(3, 8, 8))
    with pytest.raises(TypeError, match="dtype"):
        dsa(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        dsa.sample_params(0)
    with pytest.raises(ValueError, match="not both"):
        dsa(_images(2), dsa.sample_params(2), generator=_gen(0))


def test_config_is_the_override_target() -> None:
    cfg = DSA("scale", ratio_scale=2, mode="M").config
    assert cfg == DSAConfig(ratio_scale=2.0, mode="M")
    assert isinstance(cfg.ratio_scale, float)
    assert isinstance(DSA("scale").sample_params(1), DSAParams)
