"""The functional core of temperature scaling: fit a temperature to logits, make masked logits.

The NLL of ``logits * b`` is convex in ``b = 1 / T``; its derivative is
monotone, so the optimum inside the bounds is found exactly by bracketing the
root of the derivative (Brent's method), not by a gradient method that can
stall or leave the feasible range. :func:`masked_logits` makes what Masked
Temperature Scaling fits on. :mod:`ddcal.scaling` composes the two into the
scalers; :mod:`ddcal.label_free` chooses the mask ratio.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from scipy.optimize import brentq
from torch import nn

from ddcal._validation import (
    check_bounds,
    check_labels,
    check_memory,
    check_positive_int,
    check_scores,
    check_seed,
)
from ddcal.errors import InvalidValueError
from ddcal.inference import check_images, predict_logits
from ddcal.masking import check_mask_ratio, mask_inputs
from ddcal.sampling import PerClassSampler

__all__ = [
    "DEFAULT_BOUNDS",
    "MAX_NUM_MASKS",
    "TemperatureBoundWarning",
    "fit_temperature",
    "masked_logits",
]

#: The search interval of every temperature fit.
DEFAULT_BOUNDS: tuple[float, float] = (1e-2, 1e2)

#: The most masked copies of each image: the variance of the fitted ``T`` falls as
#: ``1 / num_masks``, and long before this many copies it is below any use.
MAX_NUM_MASKS = 1000


class TemperatureBoundWarning(UserWarning):
    """The fitted temperature sits on a bound of the search interval."""


def _nll_slope(logits: torch.Tensor, labels: torch.Tensor, inverse_temperature: float) -> float:
    """d/db of the mean NLL of ``softmax(b * logits)``: mean of E_p[z] - z_y."""
    probs = torch.softmax(logits * inverse_temperature, dim=1)
    expected = (probs * logits).sum(dim=1)
    return float((expected - logits.gather(1, labels[:, None]).squeeze(1)).mean())


def mean_nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    return float(nn.functional.cross_entropy(logits / temperature, labels))


def fit_temperature(
    logits: Any,
    labels: Any,
    *,
    bounds: tuple[float, float] = (1e-2, 1e2),
) -> tuple[float, str | None]:
    """The temperature minimising the mean NLL of ``softmax(logits / T)``.

    Args:
        logits: ``(N, C)`` logits, any float dtype or device.
        labels: ``(N,)`` class indices.
        bounds: search interval ``(low, high)`` for ``T``, ``0 < low < high``.

    Returns:
        ``(T, bound)`` where ``bound`` is ``None`` for an interior optimum and
        ``"lower"``/``"upper"`` when the optimum lies on (or beyond) that bound.
        Logits that carry no information about ``T`` (every row constant)
        give ``T = 1`` (or the bound nearest to 1 when the bounds exclude it).
    """
    scores = check_scores(logits, "logits", from_logits=True)
    targets = check_labels(
        labels, "labels", num_samples=scores.shape[0], num_classes=scores.shape[1]
    )
    low, high = check_bounds(bounds)
    z = scores.detach().to("cpu", torch.float64)
    y = targets.cpu()

    def slope(inverse_temperature: float) -> float:
        value = _nll_slope(z, y, inverse_temperature)
        if math.isnan(value):
            raise InvalidValueError(
                f"logits are too large to fit a temperature in bounds {bounds}: logits / T "
                f"overflow float64 at T = {1.0 / inverse_temperature:g} (largest |logit| "
                f"{float(z.abs().amax()):.4g}); rescale the logits or narrow the bounds"
            )
        return value

    b_low, b_high = 1.0 / high, 1.0 / low
    slope_low, slope_high = slope(b_low), slope(b_high)
    if slope_low == 0.0 and slope_high == 0.0:
        return min(max(1.0, low), high), None
    if slope_low >= 0.0:
        return high, "upper"
    if slope_high <= 0.0:
        return low, "lower"
    b_star = brentq(slope, b_low, b_high, xtol=1e-14, rtol=1e-12)
    return float(1.0 / b_star), None


def masked_logits(
    model: nn.Module,
    images: Any,
    labels: Any,
    *,
    mask_ratio: float,
    num_masks: int = 10,
    per_class: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of masked copies of a per-class sample of ``images``: what MTS fits ``T`` on.

    ``n`` images are drawn per class from all of ``images`` (or all are used),
    and each is seen through ``K = num_masks`` independent masks, every input
    element zeroed with probability ``mask_ratio`` (``K = 1`` at ratio 0:
    unmasked copies would be identical). The draw and the masks come from
    ``seed`` alone (a CPU generator), whatever ``batch_size`` and ``device``.
    ``fit_temperature(*masked_logits(...))`` is the MTS temperature.

    Args:
        model: network ``(B, ...) -> (B, C)``; evaluated in eval mode without
            gradients, its mode restored afterwards.
        images: the training (e.g. distilled) images ``(N, ...)``, floating point, finite.
        labels: their class indices ``(N,)``.
        mask_ratio: probability of zeroing each input element, ``0 <= r < 1``.
        num_masks: masked copies of each image, ``1 <= K <= MAX_NUM_MASKS``; the
            copies must fit in half the memory of the device of ``images``.
        per_class: images drawn per class (seeded); ``None`` uses every image.
        seed: seed of the per-class draw and of the masks, in ``[0, 2**32)``.
        batch_size: inputs per forward pass.
        device: where to run; the model is moved there. Default: the model's device.

    Returns:
        ``(logits, labels)``: ``(K * n, C)`` logits on the device of ``images``,
        the ``K`` copies of each image adjacent, and their labels ``(K * n,)``.
    """
    ratio = check_mask_ratio(mask_ratio, "mask_ratio")
    num_masks = check_positive_int(num_masks, "num_masks", maximum=MAX_NUM_MASKS)
    per_class = None if per_class is None else check_positive_int(per_class, "per_class")
    seed = check_seed(seed)
    inputs = check_images(images)
    targets = check_labels(labels, "labels", num_samples=inputs.shape[0])
    copies = 1 if ratio == 0.0 else num_masks
    if per_class is not None:
        chosen = PerClassSampler(targets, per_class=per_class, seed=seed).indices()
        inputs, targets = inputs[chosen.to(inputs.device)], targets[chosen]
    check_memory(
        copies * inputs.numel() * inputs.element_size(),
        inputs.device,
        f"num_masks={copies} masked copies of {inputs.shape[0]} images",
        "use fewer masks (num_masks) or fewer images (per_class)",
    )
    generator = torch.Generator().manual_seed(seed)

    def mask(batch: torch.Tensor) -> torch.Tensor:
        return mask_inputs(batch, ratio, generator=generator)

    repeated = inputs.repeat_interleave(copies, dim=0) if copies > 1 else inputs
    logits = predict_logits(
        model, repeated, batch_size=batch_size, device=device, input_transform=mask
    )
    return logits, targets.repeat_interleave(copies)
