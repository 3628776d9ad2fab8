"""The Bernoulli input mask: the one function that MTS and MDT share.

Masked Temperature Scaling (after training) and Masked Distillation Training
(inside distillation) both zero each input element independently with
probability ``ratio``, i.e. keep it with probability ``1 - ratio``.
"""

from __future__ import annotations

import torch
from torch import nn

from ddcal.errors import InvalidTypeError, InvalidValueError


def check_mask_ratio(ratio: float, name: str = "ratio") -> float:
    """Return ``ratio`` as a float, requiring ``0 <= ratio < 1``."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise InvalidTypeError(
            f"{name} must be a float in [0, 1), got {type(ratio).__name__} {ratio!r}"
        )
    if not 0.0 <= float(ratio) < 1.0:
        raise InvalidValueError(f"{name} must be in [0, 1), got {ratio!r}")
    return float(ratio)


def _check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InvalidTypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )


def mask_inputs(
    x: torch.Tensor, ratio: float, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero every element of ``x`` independently with probability ``ratio``.

    Args:
        x: input of any shape, e.g. images ``(N, C, H, W)``.
        ratio: probability of zeroing an element, ``0 <= ratio < 1``; 0 returns
            ``x`` itself (no random numbers are drawn).
        generator: source of randomness. The mask is drawn on the generator's
            device and moved to ``x``'s, so a CPU generator gives the same mask
            whatever device ``x`` is on.

    Returns:
        ``x * mask`` with the shape and dtype of ``x``; gradients reach only the
        kept elements. No rescaling by ``1 / (1 - ratio)``: unlike dropout the
        masked input is what the network sees at calibration time.
    """
    if not isinstance(x, torch.Tensor) or x.layout != torch.strided:
        got = f"layout {x.layout}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise InvalidTypeError(f"x must be a dense torch.Tensor, got {got}")
    _check_generator(generator)
    ratio = check_mask_ratio(ratio)
    if ratio == 0.0:
        return x
    device = generator.device if generator is not None else x.device
    keep = torch.rand(x.shape, generator=generator, device=device) >= ratio
    return x * keep.to(device=x.device, dtype=x.dtype)


class MaskInputs(nn.Module):
    """Module form of :func:`mask_inputs`: a fresh mask on every call.

    Shape: ``(*)`` -> ``(*)``. Active in both train and eval mode, since MTS
    masks inputs of a network in eval mode.
    """

    def __init__(self, ratio: float, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.ratio = check_mask_ratio(ratio)
        _check_generator(generator)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mask_inputs(x, self.ratio, generator=self.generator)

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}"
