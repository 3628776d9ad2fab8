"""Training losses that act on calibration during training: the paper's baselines.

Each loss has a functional form and a thin ``nn.Module``; all accept hard
targets ``(N,)`` (class indices) or soft targets ``(N, K)`` (rows of
probabilities, e.g. a distilled set's soft labels or mixed-up labels).

* cross-entropy (the plain baseline),
* label smoothing on the log-softmax (the paper's authors applied it to raw
  logits, a bug),
* focal loss (Lin et al. 2017; gamma 3 as in Mukhoti et al. 2020),
* mixup (Zhang et al. 2018): inputs and targets mixed with ``Beta(alpha, alpha)``
  weights, then soft-target cross-entropy;

and, for distillation, Masked Distillation Training (:class:`MaskedDistillationTraining`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Concatenate, Generic, ParamSpec, Protocol, runtime_checkable

import torch
from scipy.special import betaincinv
from torch import Tensor, nn

from ddcal._random import MDT_STREAM, derived_generator
from ddcal._validation import check_positive_int, check_real
from ddcal.errors import InvalidTypeError, InvalidValueError
from ddcal.masking import check_mask_ratio, mask_inputs

P = ParamSpec("P")


def _soft_targets(targets: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``(N, K)`` target distribution from class indices ``(N,)`` or soft targets ``(N, K)``."""
    if targets.ndim == 1:
        return nn.functional.one_hot(targets.long(), num_classes).to(dtype)
    if targets.ndim != 2 or targets.shape[1] != num_classes:
        raise InvalidValueError(
            f"targets must have shape (N,) or (N, {num_classes}), got {tuple(targets.shape)}"
        )
    return targets.to(dtype)


def _check_epsilon(epsilon: float) -> float:
    if not 0.0 <= check_real(epsilon, "epsilon") < 1.0:
        raise InvalidValueError(f"epsilon must be in [0, 1), got {epsilon!r}")
    return float(epsilon)


def _check_gamma(gamma: float) -> float:
    if not check_real(gamma, "gamma") >= 0.0:
        raise InvalidValueError(f"gamma must be >= 0, got {gamma!r}")
    return float(gamma)


def _check_alpha(alpha: float) -> float:
    if not check_real(alpha, "alpha") > 0.0:
        raise InvalidValueError(f"alpha must be > 0, got {alpha!r}")
    return float(alpha)


def _check_batch(logits: Tensor, targets: Tensor) -> None:
    if logits.ndim != 2:
        raise InvalidValueError(f"logits must have shape (N, K), got {tuple(logits.shape)}")
    if targets.shape[0] != logits.shape[0]:
        raise InvalidValueError(
            f"targets must have one entry per row of logits ({logits.shape[0]}), "
            f"got {targets.shape[0]}"
        )


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy; ``logits (N, K)``, ``targets (N,)`` or soft ``(N, K)``."""
    _check_batch(logits, targets)
    if targets.ndim == 1:
        return nn.functional.cross_entropy(logits, targets.long())
    soft = _soft_targets(targets, logits.shape[1], logits.dtype)
    return -(soft * logits.log_softmax(dim=1)).sum(dim=1).mean()


def label_smoothing_loss(logits: Tensor, targets: Tensor, epsilon: float = 0.1) -> Tensor:
    """Cross-entropy against ``(1 - epsilon) * target + epsilon / K``, on the log-softmax.

    Args:
        logits: ``(N, K)``.
        targets: ``(N,)`` class indices or ``(N, K)`` soft targets.
        epsilon: smoothing mass in ``[0, 1)``; 0 is plain cross-entropy.

    Returns:
        Scalar mean loss.
    """
    epsilon = _check_epsilon(epsilon)
    _check_batch(logits, targets)
    num_classes = logits.shape[1]
    smoothed = (1.0 - epsilon) * _soft_targets(targets, num_classes, logits.dtype)
    smoothed = smoothed + epsilon / num_classes
    return -(smoothed * logits.log_softmax(dim=1)).sum(dim=1).mean()


def focal_loss(logits: Tensor, targets: Tensor, gamma: float = 3.0) -> Tensor:
    """Focal loss ``-sum_k q_k (1 - p_k)^gamma log p_k``, mean over the batch.

    With hard targets this is ``-(1 - p_y)^gamma log p_y``; ``gamma = 0`` is
    cross-entropy.

    Args:
        logits: ``(N, K)``.
        targets: ``(N,)`` class indices or ``(N, K)`` soft targets.
        gamma: focusing parameter, ``>= 0`` (default 3, Mukhoti et al. 2020).
    """
    gamma = _check_gamma(gamma)
    _check_batch(logits, targets)
    log_probs = logits.log_softmax(dim=1)
    weights = (1.0 - log_probs.exp()).clamp(min=0.0).pow(gamma)
    soft = _soft_targets(targets, logits.shape[1], logits.dtype)
    return -(soft * weights * log_probs).sum(dim=1).mean()


def mixup_weight(alpha: float, *, generator: torch.Generator | None = None) -> float:
    """One draw of ``lam ~ Beta(alpha, alpha)``.

    Drawn by inverting the Beta CDF at a uniform from ``generator`` (torch's
    ``Beta`` distribution takes no generator).
    """
    alpha = _check_alpha(alpha)
    uniform = float(torch.rand((), generator=generator, dtype=torch.float64))
    return float(betaincinv(alpha, alpha, uniform))


def mixup(
    inputs: Tensor,
    targets: Tensor,
    *,
    num_classes: int,
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Mix a batch with a shuffled copy of itself.

    One weight ``lam ~ Beta(alpha, alpha)`` per batch (as in Zhang et al.);
    ``x' = lam * x + (1 - lam) * x[perm]`` and the same for the targets.

    Args:
        inputs: ``(N, ...)``.
        targets: ``(N,)`` class indices or ``(N, K)`` soft targets.
        num_classes: ``K``.
        alpha: Beta concentration, ``> 0``.
        generator: CPU generator for ``lam`` and the permutation.

    Returns:
        ``(mixed_inputs (N, ...), mixed_targets (N, K))``.
    """
    alpha = _check_alpha(alpha)
    soft = _soft_targets(targets, num_classes, inputs.dtype)
    lam = mixup_weight(alpha, generator=generator)
    perm = torch.randperm(inputs.shape[0], generator=generator).to(inputs.device)
    return lam * inputs + (1 - lam) * inputs[perm], lam * soft + (1 - lam) * soft[perm]


@runtime_checkable
class BatchMixer(Protocol):
    """A training loss that also rewrites each batch before the forward pass (e.g. mixup)."""

    def mix(
        self, inputs: Tensor, targets: Tensor, *, num_classes: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]: ...

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor: ...


class CrossEntropyLoss(nn.Module):
    """Module form of :func:`cross_entropy` (hard or soft targets)."""

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return cross_entropy(logits, targets)


class LabelSmoothingLoss(nn.Module):
    """Module form of :func:`label_smoothing_loss`: ``(N, K), (N,) | (N, K) -> ()``."""

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__()
        self.epsilon = _check_epsilon(epsilon)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return label_smoothing_loss(logits, targets, self.epsilon)


class FocalLoss(nn.Module):
    """Module form of :func:`focal_loss`: ``(N, K), (N,) | (N, K) -> ()``."""

    def __init__(self, gamma: float = 3.0) -> None:
        super().__init__()
        self.gamma = _check_gamma(gamma)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return focal_loss(logits, targets, self.gamma)


class MixupLoss(nn.Module):
    """Mixup: :meth:`mix` rewrites a batch, ``forward`` is soft-target cross-entropy.

    ``train_network`` calls :meth:`mix` on every batch before the forward pass.
    """

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = _check_alpha(alpha)

    def mix(
        self, inputs: Tensor, targets: Tensor, *, num_classes: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        return mixup(
            inputs, targets, num_classes=num_classes, alpha=self.alpha, generator=generator
        )

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return cross_entropy(logits, targets)


class MaskedDistillationTraining(Generic[P]):
    """MDT: mask the synthetic batch before a distillation matching objective sees it.

    ``mdt = MaskedDistillationTraining(loss_fn, mask_ratio, seed=s)``; then
    ``mdt(keys, synthetic, *args)`` is ``loss_fn(mask_inputs(synthetic, mask_ratio), *args)``
    with the Bernoulli(1 - mask_ratio) mask drawn from
    ``derived_generator(s, MDT_STREAM, *keys)``: the mask is a function of the
    seed and the keys (e.g. ``(iteration, class)``) alone, not of which calls
    came before, so nothing random is carried between calls and the work for
    different keys can run in any order or process. Gradients reach only the
    kept synthetic elements. It uses the same :func:`~ddcal.masking.mask_inputs`
    as Masked Temperature Scaling. With ``mask_ratio == 0`` it is ``loss_fn``
    itself (no draws).

    With ``mask_real=True`` the real batch (the objective's second argument) is
    masked as well, by the next draws of the same generator: the objective then
    compares masked synthetic images with masked real ones, like with like. With
    the synthetic side alone, the synthetic images can only match the real
    statistics by overshooting them (a copy with a fraction ``r`` of its
    elements zeroed carries ``1 - r`` of the image), so the unmasked set the
    networks train on drifts from the real images.

    Args:
        loss_fn: a matching objective whose first argument is the synthetic batch
            (and, with ``mask_real``, whose second is the real batch).
        mask_ratio: probability of zeroing each synthetic element, ``[0, 1)``.
        seed: seed of the masks.
        mask_real: mask the real batch too.
    """

    def __init__(
        self,
        loss_fn: Callable[Concatenate[Tensor, P], Tensor],
        mask_ratio: float,
        *,
        seed: int = 0,
        mask_real: bool = False,
    ) -> None:
        if not callable(loss_fn):
            raise InvalidTypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if not isinstance(mask_real, bool):
            raise InvalidTypeError(f"mask_real must be True or False, got {mask_real!r}")
        self.loss_fn = loss_fn
        self.mask_ratio = check_mask_ratio(mask_ratio, "mask_ratio")
        self.seed = check_positive_int(seed, "seed", minimum=0)
        self.mask_real = mask_real

    def mask_generator(self, keys: Sequence[int]) -> torch.Generator:
        """The mask generator of ``keys``: ``derived_generator(seed, MDT_STREAM, *keys)``."""
        return derived_generator(self.seed, MDT_STREAM, *keys)

    def __call__(
        self, keys: Sequence[int], synthetic: Tensor, /, *args: P.args, **kwargs: P.kwargs
    ) -> Tensor:
        """``loss_fn`` on ``synthetic`` masked with the mask of ``keys`` (any shape)."""
        if self.mask_ratio == 0.0:
            return self.loss_fn(synthetic, *args, **kwargs)
        generator = self.mask_generator(keys)
        synthetic = mask_inputs(synthetic, self.mask_ratio, generator=generator)
        if self.mask_real:
            if not args or not isinstance(args[0], Tensor):
                raise InvalidTypeError(
                    "mask_real=True needs the real batch as the objective's second argument"
                )
            real = mask_inputs(args[0], self.mask_ratio, generator=generator)
            return self.loss_fn(synthetic, real, *args[1:], **kwargs)  # type: ignore[arg-type]
        return self.loss_fn(synthetic, *args, **kwargs)

    def __repr__(self) -> str:
        return (
            f"MaskedDistillationTraining({self.loss_fn!r}, mask_ratio={self.mask_ratio}, "
            f"seed={self.seed}, mask_real={self.mask_real})"
        )


LOSSES = ("ce", "mixup", "label_smoothing", "focal")


def get_loss(name: str) -> nn.Module:
    """The training loss called ``name`` (one of :data:`LOSSES`) with its default settings."""
    losses: dict[str, nn.Module] = {
        "ce": CrossEntropyLoss(),
        "mixup": MixupLoss(),
        "label_smoothing": LabelSmoothingLoss(),
        "focal": FocalLoss(),
    }
    if name not in losses:
        raise InvalidValueError(
            f"loss must be one of {', '.join(map(repr, LOSSES))} or a callable, got {name!r}"
        )
    return losses[name]
