import math

import pytest
import torch

from ddcal.masking import MaskInputs, mask_inputs


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_ratio_zero_returns_input_unchanged() -> None:
    x = torch.randn(4, 3, 8, 8)
    assert mask_inputs(x, 0.0) is x


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_kept_fraction_is_one_minus_ratio(ratio: float) -> None:
    x = torch.ones(1_000_000)
    kept = float(mask_inputs(x, ratio, generator=_generator(0)).mean())
    sigma = math.sqrt(ratio * (1 - ratio) / x.numel())
    assert abs(kept - (1 - ratio)) < 5 * sigma


def test_elements_are_either_kept_exactly_or_zeroed() -> None:
    x = torch.randn(16, 3, 8, 8) + 5.0
    out = mask_inputs(x, 0.5, generator=_generator(1))
    kept = out != 0
    assert torch.equal(out[kept], x[kept])
    assert 0 < int(kept.sum()) < x.numel()
    assert out.shape == x.shape
    assert out.dtype == x.dtype


def test_same_seed_same_mask_and_fresh_mask_on_each_call() -> None:
    x = torch.ones(64, 64)
    assert torch.equal(
        mask_inputs(x, 0.3, generator=_generator(7)), mask_inputs(x, 0.3, generator=_generator(7))
    )
    generator = _generator(7)
    assert not torch.equal(
        mask_inputs(x, 0.3, generator=generator), mask_inputs(x, 0.3, generator=generator)
    )


def test_gradient_reaches_only_kept_elements() -> None:
    x = torch.randn(8, 1, 6, 6, requires_grad=True)
    out = mask_inputs(x, 0.4, generator=_generator(2))
    out.sum().backward()
    assert x.grad is not None
    keep = (out != 0).float()
    assert torch.equal(x.grad, keep)


def test_float64_and_half_inputs_keep_their_dtype() -> None:
    for dtype in (torch.float64, torch.float16):
        x = torch.ones(10, 10, dtype=dtype)
        assert mask_inputs(x, 0.5, generator=_generator(0)).dtype == dtype


def test_module_form_matches_function() -> None:
    x = torch.randn(5, 2, 4, 4)
    module = MaskInputs(0.25, generator=_generator(3)).eval()
    assert torch.equal(module(x), mask_inputs(x, 0.25, generator=_generator(3)))
    assert "ratio=0.25" in repr(module)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_ratio_outside_unit_interval_is_rejected(ratio: float) -> None:
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\)"):
        mask_inputs(torch.ones(3), ratio)


@pytest.mark.parametrize("ratio", ["0.5", True, None])
def test_ratio_of_wrong_type_is_rejected(ratio: object) -> None:
    with pytest.raises(TypeError, match="ratio must be a float"):
        mask_inputs(torch.ones(3), ratio)  # type: ignore[arg-type]
