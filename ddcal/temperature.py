"""The functional core of temperature scaling: fit a temperature to logits, make masked logits.

The NLL of ``logits * b`` is convex in ``b = 1 / T``, with first derivative
``mean(E_p[z] - z_y)`` and second ``mean(Var_p[z])``, both read off one pass
over the logits. :func:`fit_temperature` runs Newton's method on ``log b``
inside a bracket that every step narrows (a step that would leave it bisects
it instead), so it converges quadratically in a handful of passes, can never
leave the feasible range and settles an optimum on a bound exactly. The passes
run in the logits' dtype: in float32 the fitted ``T`` is within about 1e-6
(relative) of the float64 optimum where the NLL curves well around it (where it
is nearly flat, as for tiny logits near a large ``T``, float32 resolves ``T``
only as far as the slope's rounding allows), and its NLL equals the optimum's to
float64 precision.
:func:`masked_logits` makes what Masked Temperature Scaling fits on.
:mod:`ddcal.scaling` composes the two into the scalers; :mod:`ddcal.label_free`
chooses the mask ratio.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
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

_MAX_NEWTON_STEPS = 100
# Newton's error after a step of relative size s is about s**2: float32 stops at its
# own resolution of the slope (~1e-7 to 1e-6 in b), float64 at ~1e-14.
_DONE = {torch.float32: 1e-4, torch.float64: 1e-7}


class TemperatureBoundWarning(UserWarning):
    """The fitted temperature sits on a bound of the search interval."""


class _Shifted(NamedTuple):
    """Logits shifted by their row maximum, so that ``exp(b * d)`` never overflows."""

    moments: torch.Tensor  # (N, 2, C): d = z - max_k z_k <= 0 and d**2
    label_gap: float  # mean(max_k z_k - z_y) >= 0: the slope's constant term, float64
    weights: torch.Tensor  # (N, C) scratch for exp(b * d)


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> _Shifted:
    """The moments of finite logits ``(N, C)``, float32 or float64, written in place."""
    extremes = torch.aminmax(logits)
    if not bool(torch.isfinite(extremes.max - extremes.min)):
        top = logits.amax(dim=1, keepdim=True)
        if not bool(torch.isfinite(logits - top).all()):
            raise InvalidValueError(
                "logits are too large to fit a temperature: the differences within a row "
                f"overflow {logits.dtype} (largest |logit| {float(logits.abs().amax()):.4g}); "
                "rescale the logits"
            )
    n, c = logits.shape
    moments = torch.empty(n, 2, c, dtype=logits.dtype, device=logits.device)
    gaps = torch.sub(logits, logits.amax(dim=1, keepdim=True), out=moments[:, 0])
    torch.mul(gaps, gaps, out=moments[:, 1])
    label_gap = float(-gaps.gather(1, labels[:, None]).to(torch.float64).mean())
    return _Shifted(moments, label_gap, torch.empty_like(logits))


def _slope_and_curvature(shifted: _Shifted, inverse_temperature: float) -> tuple[float, float]:
    """First and second derivative in ``b`` of the mean NLL of ``softmax(b * z)``.

    With ``d = z - max z``: the slope is ``mean(E_p[d]) + mean(max z - z_y)`` and
    the curvature ``mean(E_p[d^2] - E_p[d]^2)``. The sums over classes run in the
    logits' dtype (one batched matrix product for both moments), the means over
    rows in float64.
    """
    weights = shifted.weights
    torch.mul(shifted.moments[:, 0], inverse_temperature, out=weights).exp_()
    total = weights.sum(dim=1).to(torch.float64)  # >= 1: the maximum contributes exp(0)
    sums = torch.bmm(shifted.moments, weights.unsqueeze(2)).squeeze(2).to(torch.float64)
    first, second = sums[:, 0] / total, sums[:, 1] / total
    slope = float(first.mean()) + shifted.label_gap
    curvature = float((second - first * first).clamp_(min=0.0).mean())
    return slope, curvature


def mean_nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    return float(nn.functional.cross_entropy(logits / temperature, labels))


def _newton(
    shifted: _Shifted, start: float, ends: tuple[float, float], done: float
) -> tuple[float, str | None]:
    """The root of the slope in ``b`` within ``ends``, or the end the optimum lies beyond.

    Every evaluated point narrows the bracket ``(low, high)`` around the root.
    A Newton step that would leave it, or one that shrinks by less than half
    after a step the same way (the slow approach to an optimum beyond an end,
    where the NLL flattens exponentially), looks at the end ahead and otherwise
    bisects the bracket in ``log b``. Stops once a step moves ``b`` by at most
    ``done * b``.
    """
    slopes_at_ends: dict[float, float] = {}
    low, high = ends
    b = min(max(start, low), high)
    previous_step = 0.0
    for _ in range(_MAX_NEWTON_STEPS):
        slope, curvature = _slope_and_curvature(shifted, b)
        if b in ends:
            slopes_at_ends[b] = slope
        if slope == 0.0:
            return b, None
        if slope < 0.0:
            low = b
        else:
            high = b
        # Newton on log b (it cannot step to b <= 0) where that is convex, else on b.
        log_curvature = slope + b * curvature
        if log_curvature > 0.0:
            proposal = b * math.exp(max(-slope / log_curvature, -700.0))
        elif curvature > 0.0:
            proposal = b - slope / curvature
        else:
            proposal = -math.inf if slope > 0.0 else math.inf
        step = math.log(proposal / b) if low < proposal < high else math.copysign(1e3, -slope)
        slow = step * previous_step > 0.0 and abs(step) > 0.5 * abs(previous_step)
        if slow or not low < proposal < high:
            end = ends[1] if step > 0.0 else ends[0]
            if end in (low, high):
                if end not in slopes_at_ends:
                    slopes_at_ends[end] = _slope_and_curvature(shifted, end)[0]
                if end == ends[1] and slopes_at_ends[end] <= 0.0:
                    return end, "lower"
                if end == ends[0] and slopes_at_ends[end] >= 0.0:
                    return end, "upper"
            proposal = math.sqrt(low * high)
        if abs(proposal - b) <= done * b:
            return proposal, None
        previous_step = math.log(proposal / b)
        b = proposal
    return b, None


def fit_temperature(
    logits: Any,
    labels: Any,
    *,
    bounds: tuple[float, float] = (1e-2, 1e2),
) -> tuple[float, str | None]:
    """The temperature minimising the mean NLL of ``softmax(logits / T)``.

    Args:
        logits: ``(N, C)`` logits, any float dtype or device (computed there;
            MPS on the CPU).
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
    z = scores.detach()
    if z.device.type == "mps":
        z = z.cpu()
    y = targets.to(z.device)
    ends = (1.0 / high, 1.0 / low)
    # Constant rows have a zero slope everywhere: the first step returns T = 1 (clamped).
    b, bound = _newton(_shifted(z, y), 1.0, ends, _DONE[z.dtype])
    if bound is not None:
        return (low if bound == "lower" else high), bound
    return float(1.0 / b), None


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
