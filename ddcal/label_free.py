"""Temperatures without labelled real data: what a user with only a distilled set can fit.

* :func:`multi_ratio_logits`: the masked copies of the distilled images at a
  spread of mask ratios, pooled, so that one temperature fitted on them needs
  no choice of ratio (after Tomani et al., CVPR 2021, who fit one temperature
  over a spread of perturbation strengths).
* :func:`agreement_temperature`: with *unlabelled* real images and a second
  network trained on the same distilled set with another seed, the rate at
  which the two agree estimates the first one's accuracy (Jiang et al., ICLR
  2022); the temperature is the one whose mean confidence on those images
  equals it. No label of real data is read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from scipy.optimize import brentq
from torch import nn

from ddcal._validation import check_scores
from ddcal.errors import InvalidValueError
from ddcal.scaling import masked_logits

__all__ = ["MULTI_RATIOS", "agreement_temperature", "multi_ratio_logits"]

#: The mask ratios :func:`multi_ratio_logits` pools by default.
MULTI_RATIOS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def multi_ratio_logits(
    model: nn.Module,
    images: Any,
    labels: Any,
    *,
    ratios: Sequence[float] = MULTI_RATIOS,
    num_masks: int = 10,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~ddcal.scaling.masked_logits` at every ratio of ``ratios``, concatenated.

    Returns:
        ``(logits (R * K * n, C), labels (R * K * n,))``; ratio ``i`` uses seed
        ``seed + i`` so its masks are independent of the others'.
    """
    if len(ratios) == 0:
        raise InvalidValueError("ratios is empty: give at least one mask ratio")
    parts = [
        masked_logits(
            model,
            images,
            labels,
            mask_ratio=ratio,
            num_masks=num_masks,
            seed=seed + index,
            batch_size=batch_size,
            device=device,
        )
        for index, ratio in enumerate(ratios)
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _mean_confidence(logits: torch.Tensor, temperature: float) -> float:
    return float(torch.softmax(logits / temperature, dim=1).max(dim=1).values.mean())


def agreement_temperature(
    logits: Any,
    partner_logits: Any,
    *,
    bounds: tuple[float, float] = (1e-2, 1e2),
) -> tuple[float, float, str | None]:
    """The temperature whose mean confidence matches the agreement of two networks.

    Args:
        logits: ``(N, C)`` logits of the network to calibrate on unlabelled images.
        partner_logits: ``(N, C)`` logits of a second network on the same images
            (the same recipe, another seed).
        bounds: search interval for ``T``.

    Returns:
        ``(T, agreement, bound)``: the temperature, the agreement rate it
        matches, and ``None`` or ``"lower"``/``"upper"`` when the match lies on or
        beyond that bound.
    """
    scores = check_scores(logits, "logits", from_logits=True).detach().double().cpu()
    partner = check_scores(partner_logits, "partner_logits", from_logits=True)
    if partner.shape != scores.shape:
        raise InvalidValueError(
            f"partner_logits must have the shape of logits {tuple(scores.shape)}, "
            f"got {tuple(partner.shape)}"
        )
    low, high = bounds
    agreement = float((scores.argmax(dim=1) == partner.cpu().argmax(dim=1)).double().mean())
    if _mean_confidence(scores, low) <= agreement:
        return low, agreement, "lower"
    if _mean_confidence(scores, high) >= agreement:
        return high, agreement, "upper"
    # Mean confidence falls monotonically as T grows: one root in log T.
    log_t = brentq(
        lambda x: _mean_confidence(scores, math.exp(x)) - agreement,
        math.log(low),
        math.log(high),
        xtol=1e-10,
    )
    return math.exp(log_t), agreement, None
