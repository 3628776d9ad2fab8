"""Temperatures without labelled real data: what a user with only a distilled set can fit.

* :func:`multi_ratio_logits`: the masked copies of the distilled images at a
  spread of mask ratios, pooled, so that one temperature fitted on them needs
  no choice of ratio (after Tomani et al., CVPR 2021, who fit one temperature
  over a spread of perturbation strengths).
* :func:`target_accuracy_ratio`: the mask ratio at which the network's
  accuracy on masked copies of its own training images falls to
  :func:`target_masked_accuracy` (which grows with the images per class), and
  the temperature fitted there: the rule
  behind ``MaskedTemperatureScaler(mask_ratio="auto")``, the default.
* :func:`agreement_temperature`: with *unlabelled* real images and a second
  network trained on the same distilled set with another seed, the rate at
  which the two agree estimates the first one's accuracy (Jiang et al., ICLR
  2022); the temperature is the one whose mean confidence on those images
  equals it. No label of real data is read.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import brentq
from torch import nn

from ddcal._validation import check_bounds, check_labels, check_positive_int, check_scores
from ddcal.errors import InvalidValueError
from ddcal.inference import predict_logits
from ddcal.temperature import DEFAULT_BOUNDS, MAX_NUM_MASKS, fit_temperature, masked_logits

__all__ = [
    "MAX_AUTO_RATIO",
    "MIN_AUTO_COPIES",
    "MULTI_RATIOS",
    "TARGET_ANCHORS",
    "LabelFreeChoice",
    "UninformativeMaskingWarning",
    "agreement_temperature",
    "confidence_matched_ratio",
    "multi_ratio_logits",
    "target_accuracy_ratio",
    "target_masked_accuracy",
]

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
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
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
    low, high = check_bounds(bounds)
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


#: The masked-copy accuracy :func:`target_accuracy_ratio` aims for, as a share of the
#: way from chance (``1 / K``) to perfect, at the images per class where it was read
#: off: in each development cell of the ``dev`` study (DM on FashionMNIST, seeds 100
#: and 101), the masked-copy accuracy at which the MTS temperature equals the oracle's,
#: measured on at least :data:`MIN_AUTO_COPIES` copies, averaged over the cells of an
#: IPC (30% accuracy at IPC 1, 49% at IPC 10, 51% at IPC 50 with 10 classes; see
#: docs/label-free.md). Between anchors the share is interpolated in log IPC; beyond
#: the last one it is held, not extrapolated.
TARGET_ANCHORS: tuple[tuple[int, float], ...] = ((1, 0.227), (10, 0.437), (50, 0.459))

#: The largest mask ratio :func:`target_accuracy_ratio` tries.
MAX_AUTO_RATIO = 0.995

#: The fewest masked copies the label-free rules measure a ratio on: the masks per
#: image are raised until the copies number at least this many (10 images per class
#: with 10 masks are only 100 copies: accuracy in steps of 1%, and a bisection on a
#: curve that noisy stops at the first dip, early, with too low a temperature).
MIN_AUTO_COPIES = 1000


class UninformativeMaskingWarning(UserWarning):
    """The masked copies of the distilled set never become hard enough to tell a temperature."""


@dataclass(frozen=True)
class LabelFreeChoice:
    """What :func:`target_accuracy_ratio` chose, and why.

    Attributes:
        mask_ratio: the chosen ratio.
        temperature: the temperature fitted on masked copies at that ratio
            (or the fallback, see ``reason``).
        masked_accuracy: the network's accuracy on those masked copies.
        bound: ``None``, or the bound of the search interval the fit lies on.
        num_samples: rows of masked logits the temperature was fitted on.
        reason: ``"target"`` (the ratio where masked-copy accuracy reaches the
            target), ``"clean"`` (the network already errs that often on its
            unmasked set: plain TS), ``"fallback"`` (even at
            :data:`MAX_AUTO_RATIO` the copies are right more often than the
            target: the set cannot tell, the temperature is ``max(T, 1)`` of the
            strongest masking, never sharper than the raw network) or
            ``"floor"`` (:func:`target_accuracy_ratio` only: the copies at the
            target asked for ``T < 1``, sharper than the raw network; it uses 1).
    """

    mask_ratio: float
    temperature: float
    masked_accuracy: float
    bound: str | None
    num_samples: int
    reason: str


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels.to(logits.device)).double().mean())


def _raw_confidence(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return _mean_confidence(logits.double(), 1.0)


def _ratio_where(
    statistic: Callable[[torch.Tensor, torch.Tensor], float],
    target_of: Callable[[torch.Tensor, torch.Tensor], float],
    masked: Callable[[float], tuple[torch.Tensor, torch.Tensor]],
    bounds: tuple[float, float],
    steps: int,
    what: str,
    *,
    floor_at_one: bool = False,
) -> LabelFreeChoice:
    """The ratio where ``statistic`` of the masked copies falls to the target (bisection on
    nested masks), and the temperature fitted on the copies there. ``target_of`` gets the
    unmasked logits and labels, so a target read off them costs no second forward pass.
    With ``floor_at_one`` a temperature below 1 at the target becomes 1 (reason
    ``"floor"``), as the fallback's always does: never sharper than the raw network."""

    def at(ratio: float) -> tuple[torch.Tensor, torch.Tensor, float]:
        logits, targets = masked(ratio)
        return logits, targets, statistic(logits, targets)

    def choice(ratio: float, found: tuple[Any, Any, float], reason: str) -> LabelFreeChoice:
        temperature, bound = fit_temperature(found[0], found[1], bounds=bounds)
        if reason == "fallback":
            temperature = max(temperature, 1.0)
        accuracy = _accuracy(found[0], found[1])
        return LabelFreeChoice(ratio, temperature, accuracy, bound, len(found[1]), reason)

    clean = at(0.0)
    target = target_of(clean[0], clean[1])
    if clean[2] <= target:
        return choice(0.0, clean, "clean")
    strongest = at(MAX_AUTO_RATIO)
    if strongest[2] > target:
        warnings.warn(
            f"masked copies of the distilled set still have {what} {strongest[2]:.0%} at mask "
            f"ratio {MAX_AUTO_RATIO} (the target is {target:.0%}): the set cannot tell the "
            "temperature; using max(T, 1), never sharper than the raw network. Real held-out "
            "images (labelled or not) would do better",
            UninformativeMaskingWarning,
            stacklevel=3,
        )
        return choice(MAX_AUTO_RATIO, strongest, "fallback")
    low, high, found = 0.0, MAX_AUTO_RATIO, strongest
    for _ in range(steps):
        middle = (low + high) / 2
        trial = at(middle)
        if trial[2] > target:
            low = middle
        else:
            high, found = middle, trial
    result = choice(high, found, "target")
    if floor_at_one and result.temperature < 1.0:
        warnings.warn(
            f"masked copies of the distilled set at the target ratio {result.mask_ratio:.3g} "
            f"ask for T = {result.temperature:.3g}, sharper than the raw network: the set "
            "cannot tell the temperature of a network this unsure of its own images; using "
            "T = 1. Real held-out images (labelled or not) would do better",
            UninformativeMaskingWarning,
            stacklevel=3,
        )
        return dataclasses.replace(result, temperature=1.0, bound=None, reason="floor")
    return result


def _masks_per_image(labels: Any, num_masks: int, per_class: int | None, min_copies: int) -> int:
    """``num_masks``, raised so that the copies of the (per-class sample of the) set number
    at least ``min_copies`` (and at most ``MAX_NUM_MASKS`` per image)."""
    num_masks = check_positive_int(num_masks, "num_masks", maximum=MAX_NUM_MASKS)
    min_copies = check_positive_int(min_copies, "min_copies")
    targets = check_labels(labels, "labels")
    images = len(targets)
    if per_class is not None:
        counts = torch.bincount(targets)
        images = int(counts.clamp(max=check_positive_int(per_class, "per_class")).sum())
    return min(MAX_NUM_MASKS, max(num_masks, math.ceil(min_copies / images)))


def _masked(
    model: nn.Module,
    images: Any,
    labels: Any,
    num_masks: int,
    per_class: int | None,
    seed: int,
    batch_size: int,
    device: str | torch.device | None,
    min_copies: int,
) -> Callable[[float], tuple[torch.Tensor, torch.Tensor]]:
    """``masked(ratio)``: the masked logits and labels at ``ratio``, the same masks' seed
    (at least ``min_copies`` copies)."""
    num_masks = _masks_per_image(labels, num_masks, per_class, min_copies)

    def masked(ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
        return masked_logits(
            model,
            images,
            labels,
            mask_ratio=ratio,
            num_masks=num_masks,
            per_class=per_class,
            seed=seed,
            batch_size=batch_size,
            device=device,
        )

    return masked


def target_masked_accuracy(images_per_class: float, num_classes: int) -> float:
    """The masked-copy accuracy the default rule aims for, in ``(1 / K, 1)``.

    ``1/K + (1 - 1/K) * share``, the share read off :data:`TARGET_ANCHORS`:
    interpolated in ``log10(images_per_class)`` between them, the first or the
    last one outside them. It grows with the images per class: a network that
    saw more of them is closer to real images, so the copies it calibrates on
    need to be less hard (by less from IPC 10 to 50 than from 1 to 10).
    """
    if images_per_class <= 0 or num_classes < 2:
        raise InvalidValueError(
            f"need images_per_class > 0 and num_classes >= 2, got {images_per_class!r} and "
            f"{num_classes!r}"
        )
    share = float(
        np.interp(
            math.log10(images_per_class),
            [math.log10(ipc) for ipc, _ in TARGET_ANCHORS],
            [anchor for _, anchor in TARGET_ANCHORS],
        )
    )
    chance = 1.0 / num_classes
    return chance + (1.0 - chance) * share


def target_accuracy_ratio(
    model: nn.Module,
    images: Any,
    labels: Any,
    *,
    target: float | None = None,
    num_masks: int = 10,
    per_class: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
    steps: int = 9,
    min_copies: int = MIN_AUTO_COPIES,
) -> LabelFreeChoice:
    """The label-free MTS ratio: where the network's accuracy on masked copies of its own
    training images falls to ``target`` (default :func:`target_masked_accuracy` of the
    set's images per class and the network's classes), and the temperature fitted there.

    Every ratio is tried with the same seed, so the masks are nested (a larger
    ratio zeroes a superset of the elements) and the accuracy falls with the
    ratio; the crossing is found by bisection over ``[0, MAX_AUTO_RATIO]``
    (``steps`` halvings). Each image gets ``num_masks`` masks, or more where that
    makes fewer than ``min_copies`` copies (:data:`MIN_AUTO_COPIES`). Only the
    distilled images and their labels are read.

    The temperature is never below 1 (reason ``"floor"``): a network trained on
    a distilled set is over-confident on real images (the oracle's ``T`` was
    above 1 in every study cell), so copies that ask for a sharper network say
    that the set cannot tell, not that the network is too unsure.

    Returns:
        A :class:`LabelFreeChoice`; a fallback or a floor also issues an
        :class:`UninformativeMaskingWarning`.
    """
    if target is not None and not 0.0 < target < 1.0:
        raise InvalidValueError(f"target must be in (0, 1), got {target!r}")
    masked = _masked(
        model, images, labels, num_masks, per_class, seed, batch_size, device, min_copies
    )

    def target_of(clean: torch.Tensor, targets: torch.Tensor) -> float:
        if target is not None:
            return target
        present = int(torch.unique(targets).numel())
        return target_masked_accuracy(len(targets) / present, int(clean.shape[1]))

    return _ratio_where(_accuracy, target_of, masked, bounds, steps, "accuracy", floor_at_one=True)


def confidence_matched_ratio(
    model: nn.Module,
    images: Any,
    labels: Any,
    unlabelled: Any,
    *,
    num_masks: int = 10,
    per_class: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
    steps: int = 9,
    min_copies: int = MIN_AUTO_COPIES,
) -> LabelFreeChoice:
    """MTS at the ratio where masked copies look to the network like real images do.

    The network's mean confidence (at T = 1) on the ``unlabelled`` real images
    ``(M, ...)`` is the target; the ratio is where its mean confidence on masked
    copies of its training images falls to it, so the copies are as far from
    what it learned as the real images are, and the temperature fitted on those
    copies (with the distilled labels) is the one for inputs of that difficulty.
    No label of the real images is read.
    """
    target = _mean_confidence(
        predict_logits(model, unlabelled, batch_size=batch_size, device=device).double(), 1.0
    )
    masked = _masked(
        model, images, labels, num_masks, per_class, seed, batch_size, device, min_copies
    )
    return _ratio_where(
        _raw_confidence, lambda *_: target, masked, bounds, steps, "mean confidence"
    )
