"""Calibration metrics: ECE family, classwise ECE, NLL, Brier, reliability bins.

Everything here is vectorised (``bucketize`` + ``bincount``/``scatter_add``; no
Python loop over samples or bins; only the bootstrap loops, over resamples of an
arbitrary metric) and takes, for ``N`` samples and ``C`` classes:

* ``probs``: a ``(N, C)`` torch tensor (any device; float16, bfloat16, float32 or
  float64) or numpy array. Probabilities by default: every entry in ``[0, 1]``
  and every row summing to 1, or it is an error that suggests
  ``from_logits=True``. With ``from_logits=True`` the same argument holds logits
  (any finite values) and the softmax is taken inside. Nothing is guessed.
* ``labels``: a ``(N,)`` integer tensor or numpy array of class indices in
  ``[0, C)``.

float16 and bfloat16 inputs are computed in float32. Confidences are compared
with the bin edges in float64, whatever the input dtype, and the per-bin sums
are accumulated in float64.

Binning conventions (top-label metrics):

* ``binning="uniform"``: ``n_bins`` equal-width bins with edges
  ``torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)``.
* ``binning="quantile"``: equal-mass bins whose edges are the quantiles of the
  confidences at ``linspace(0, 1, n_bins + 1)``, linearly interpolated between
  the sorted confidences (numpy's default ``np.quantile`` method). Ties may
  leave some bins empty.
* Every bin is ``[a, b)`` except the last, which is closed ``[a, b]``: a
  confidence of exactly 1.0 belongs to the last bin (torchmetrics puts it in a
  phantom bin that is then dropped, its issue #3510).

The default is ``n_bins=15``; the paper (Zhu et al., ICCV 2023) used 10 bins, so
pass ``n_bins=10`` to compare with its tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ddcal import distributed
from ddcal._validation import (
    ArrayLike,
    as_tensor,
    check_bool,
    check_choice,
    check_finite_rows,
    check_labels,
    check_memory,
    check_open_interval,
    check_positive_int,
    check_probability_rows,
    check_score_matrix,
    check_scores,
    check_seed,
    data_batches,
)
from ddcal.errors import InvalidTypeError, InvalidValueError

__all__ = [
    "MAX_BINS",
    "MAX_RESAMPLES",
    "BootstrapInterval",
    "CalibrationMeter",
    "ReliabilityBins",
    "accuracy",
    "bootstrap_interval",
    "brier_score",
    "calibration_error",
    "calibration_summary",
    "classwise_calibration_error",
    "negative_log_likelihood",
    "reliability_bins",
]

NORMS = ("l1", "l2", "max")
BINNINGS = ("uniform", "quantile")

#: The most bins a metric takes: beyond it almost every bin is empty for any data
#: set that fits in memory, and a typo (``n_bins=100000000``) would exhaust it.
MAX_BINS = 10_000

#: The most bootstrap resamples: percentile intervals settle long before.
MAX_RESAMPLES = 1_000_000

_F64 = torch.float64


@dataclass(frozen=True, eq=False)
class ReliabilityBins:
    """The data of a reliability diagram: float64/int64 CPU tensors.

    Attributes:
        edges: ``(n_bins + 1,)`` bin edges; bins are ``[a, b)``, the last ``[a, b]``.
        count: ``(n_bins,)`` int64 number of samples per bin.
        confidence: ``(n_bins,)`` mean top-label confidence per bin (NaN if empty).
        accuracy: ``(n_bins,)`` fraction of correct top-label predictions per bin
            (NaN if empty).
    """

    edges: Tensor
    count: Tensor
    confidence: Tensor
    accuracy: Tensor


class BootstrapInterval(NamedTuple):
    """A point estimate with a percentile-bootstrap interval ``[low, high]``."""

    estimate: float
    low: float
    high: float


# --------------------------------------------------------------------------- #
# Shared internals: validation, top-label statistics, the one binning routine.
# --------------------------------------------------------------------------- #


def _check_n_bins(n_bins: Any) -> int:
    return check_positive_int(n_bins, "n_bins", maximum=MAX_BINS)


def _finite_nll(total: Tensor, what: str) -> Tensor:
    """``total`` (an NLL) if it did not overflow float64, which only logits beyond ~1e300 do."""
    if not bool(torch.isfinite(total)):
        raise InvalidValueError(
            f"the NLL of {what} overflows float64: the logits differ by more than float64 "
            "can hold; rescale them"
        )
    return total


def _validated(probs: Any, labels: Any, from_logits: bool) -> tuple[Tensor, Tensor]:
    """Check ``(probs, labels)``; return the scores and int64 labels on one device.

    MPS has no float64, so MPS inputs are computed on the CPU.
    """
    scores = check_scores(probs, "probs", from_logits=from_logits)
    if scores.device.type == "mps":
        scores = scores.cpu()
    targets = check_labels(
        labels, "labels", num_samples=scores.shape[0], num_classes=scores.shape[1]
    )
    return scores, targets.to(scores.device)


class _TopLabel(NamedTuple):
    confidence: Tensor  # (N,) float64 top-label probability
    correct: Tensor  # (N,) bool: argmax (first index on ties) == label
    top_score: Tensor  # (N,) max of the scores, in the scores' dtype
    log_partition: Tensor | None  # (N,) float64 log(sum_k exp(s_k - max)), logits only
    shifted_exp: Tensor | None  # (N, C) exp(s - max), logits only: the softmax, unnormalised
    partition: Tensor | None  # (N,) sum_k exp(s_k - max) in the scores' dtype, logits only


# Two entries tied for the maximum need 2 * confidence <= row sum, which check_scores keeps
# within 1e-2 of 1 for probabilities (and which is exactly 1 after a softmax): above this
# confidence the maximum is unique.
_TIES_IMPOSSIBLE_ABOVE = 0.51


def _shifted_exp(scores: Tensor, top_score: Tensor) -> tuple[Tensor, Tensor]:
    """``exp(s - max_k s_k)`` ``(N, C)`` and its row sums ``(N,)``, in the scores' dtype."""
    shifted = (scores - top_score.unsqueeze(1)).exp_()
    return shifted, shifted.sum(dim=1)


def _top_label(
    scores: Tensor,
    targets: Tensor,
    from_logits: bool,
    top_score: Tensor | None = None,
    picked: Tensor | None = None,
) -> _TopLabel:
    """Top-label confidence and correctness of validated ``(N, C)`` scores.

    ``max(dim=1)`` with indices costs about three times ``amax`` on the CPU, so the
    prediction is not materialised: a row is correct when its label's score is the
    row maximum, and only rows where a tie for the maximum is possible (confidence
    <= 0.51, label not the first index) are settled with an ``argmax``, so that ties
    go to the first index exactly as in :func:`accuracy`. ``top_score`` (row
    maxima) and ``picked`` (the labels' scores) may come precomputed.
    """
    if top_score is None:
        top_score = scores.amax(dim=1)
    if picked is None:
        picked = scores.gather(1, targets.unsqueeze(1)).squeeze(1)
    correct = picked == top_score
    log_partition = shifted = partition = None
    if from_logits:
        # softmax at the argmax is exp(max - logsumexp) = 1 / sum_k exp(s_k - max).
        shifted, partition = _shifted_exp(scores, top_score)
        log_partition = partition.to(_F64).log()  # not in place: float64 .to() is no copy
        confidence = torch.exp(-log_partition)
    else:
        confidence = top_score.to(_F64)
    maybe_tied = (correct & (targets > 0) & (confidence <= _TIES_IMPOSSIBLE_ABOVE)).nonzero()
    if maybe_tied.numel() > 0:
        rows = maybe_tied.squeeze(1)
        correct[rows] = scores[rows].max(dim=1).indices == targets[rows]
    return _TopLabel(confidence, correct, top_score, log_partition, shifted, partition)


# Rows per block of the fused scan over probabilities: 1.6 MB at 100 float32 classes,
# so that the block is still in cache for its second, third and fourth reduction.
_SCAN_BLOCK_ROWS = 4096


def _validated_top_label(
    probs: Any, labels: Any, from_logits: bool
) -> tuple[Tensor, Tensor, _TopLabel]:
    """:func:`_validated` and :func:`_top_label` in one go.

    For probabilities the validation's row sums and extremes, the row maxima and
    the labels' scores are computed block by block in one sweep over the matrix,
    which then comes from memory once instead of four times.
    """
    if from_logits:
        scores, targets = _validated(probs, labels, from_logits)
        return scores, targets, _top_label(scores, targets, from_logits)
    scores, in_dtype = check_score_matrix(probs, "probs")
    if scores.device.type == "mps":
        scores = scores.cpu()
    targets = check_labels(
        labels, "labels", num_samples=scores.shape[0], num_classes=scores.shape[1]
    ).to(scores.device)
    n = scores.shape[0]
    row_sums = scores.new_empty(n)
    top_score = scores.new_empty(n)
    picked = scores.new_empty(n, 1)
    minima = []
    for start in range(0, n, _SCAN_BLOCK_ROWS):
        rows = slice(start, start + _SCAN_BLOCK_ROWS)
        block = scores[rows]
        torch.sum(block, dim=1, out=row_sums[rows])
        torch.amax(block, dim=1, out=top_score[rows])
        torch.gather(block, 1, targets[rows].unsqueeze(1), out=picked[rows])
        minima.append(block.amin())
    check_finite_rows(scores, row_sums, "probs")
    low, high = float(torch.stack(minima).amin()), float(top_score.amax())
    check_probability_rows(row_sums, low, high, in_dtype, "probs")
    top = _top_label(scores, targets, from_logits, top_score, picked.squeeze(1))
    return scores, targets, top


def _per_sample_nll(
    scores: Tensor,
    targets: Tensor,
    from_logits: bool,
    top_score: Tensor | None = None,
    log_partition: Tensor | None = None,
) -> Tensor:
    """``(N,)`` float64 ``-log p_y``.

    Probabilities are clamped at ``torch.finfo(dtype).tiny`` (the smallest
    positive normal number of the computation dtype) so that ``p_y = 0`` gives a
    large finite loss instead of inf. Logits use ``logsumexp - s_y`` computed as
    ``log(sum exp(s - max)) + (max - s_y)``, stable for any finite logits.
    """
    picked = scores.gather(1, targets.unsqueeze(1)).squeeze(1)
    if not from_logits:
        tiny = torch.finfo(scores.dtype).tiny
        return picked.to(_F64).clamp_(min=tiny).log_().neg_()
    if top_score is None:
        top_score = scores.amax(dim=1)
    if log_partition is None:
        log_partition = _shifted_exp(scores, top_score)[1].to(_F64).log_()
    return log_partition + (top_score.to(_F64) - picked.to(_F64))


def _probabilities(scores: Tensor, from_logits: bool, top: _TopLabel | None = None) -> Tensor:
    """The probabilities of validated scores; of logits ``exp(s - max) / sum``, from
    ``top``'s ``exp(s - max)`` when it has one (it is then normalised in place)."""
    if not from_logits:
        return scores
    if top is not None and top.shifted_exp is not None and top.partition is not None:
        shifted, partition = top.shifted_exp, top.partition
    else:
        shifted, partition = _shifted_exp(scores, scores.amax(dim=1))
    return shifted.div_(partition.unsqueeze(1))


def _uniform_edges(n_bins: int, device: torch.device) -> Tensor:
    return torch.linspace(0.0, 1.0, n_bins + 1, dtype=_F64, device=device)


def _quantile_edges(values: Tensor, n_bins: int) -> Tensor:
    """Edges at the ``linspace(0, 1, n_bins + 1)`` quantiles of float64 ``values``.

    Linear interpolation between order statistics (numpy's default method);
    the first edge is the minimum, the last exactly the maximum.
    """
    ordered = torch.sort(values).values
    last = ordered.numel() - 1
    position = torch.linspace(0.0, 1.0, n_bins + 1, dtype=_F64, device=values.device) * last
    position[-1] = last
    lower = position.floor().long().clamp_(0, last)
    upper = (lower + 1).clamp_(max=last)
    fraction = position - lower.to(_F64)
    edges = ordered[lower] + fraction * (ordered[upper] - ordered[lower])
    # Interpolation may round a hair past the next order statistic: keep edges sorted.
    return torch.cummax(edges, dim=0).values


def _bin_index(values: Tensor, edges: Tensor) -> Tensor:
    """Bin of each float64 value: ``[a, b)`` bins, the last closed; out-of-range clamped.

    With the uniform edges the bin is ``floor(n_bins * value)``, corrected by one
    where rounding put it across an edge: the same bins as a binary search over
    the edges at half its cost. Other edges are searched.
    """
    n_bins = edges.numel() - 1
    if not torch.equal(edges, _uniform_edges(n_bins, edges.device)):
        return (torch.bucketize(values, edges, right=True) - 1).clamp_(0, n_bins - 1)
    index = (values * n_bins).long().clamp_(0, n_bins - 1)
    index -= (values < edges[index]).long()
    index += ((values >= edges[index + 1]) & (index < n_bins - 1)).long()
    return index.clamp_(0, n_bins - 1)


class _BinStats(NamedTuple):
    edges: Tensor  # (n_bins + 1,) float64
    counts: Tensor  # (n_bins,) int64
    confidence_sum: Tensor  # (n_bins,) float64
    correct: Tensor  # (n_bins,) int64


def _bin_stats(confidence: Tensor, correct: Tensor, edges: Tensor) -> _BinStats:
    """Per-bin count, sum of confidence and number correct: the one binning routine.

    ``confidence`` is ``(N,)`` float64, ``correct`` ``(N,)`` bool, ``edges``
    ``(n_bins + 1,)`` float64 and sorted. ``bincount`` without weights and
    ``scatter_add_`` are deterministic on CUDA as well.
    """
    n_bins = edges.numel() - 1
    index = _bin_index(confidence, edges)
    # One bincount gives both the wrong (even slots) and correct (odd slots) counts.
    pairs = torch.bincount(index * 2 + correct.long(), minlength=2 * n_bins).view(n_bins, 2)
    confidence_sum = torch.zeros(n_bins, dtype=_F64, device=confidence.device)
    confidence_sum.scatter_add_(0, index, confidence)
    return _BinStats(edges, pairs.sum(dim=1), confidence_sum, pairs[:, 1].contiguous())


def _calibration_gap(count: Tensor, confidence_sum: Tensor, correct: Tensor, norm: str) -> Tensor:
    """Calibration error of binned statistics of shape ``(..., n_bins)``; returns ``(...)``.

    With ``w_b = n_b / N`` and ``gap_b = |acc_b - conf_b|``: ``l1 = sum_b w_b gap_b``,
    ``l2 = sqrt(sum_b w_b gap_b^2)``, ``max = max_b gap_b`` over non-empty bins.
    Empty bins have zero sums and hence a zero gap, so they add nothing to any
    norm (all gaps are >= 0 and at least one bin is non-empty).
    """
    n = count.to(_F64)
    total = n.sum(dim=-1)
    diff = (correct.to(_F64) - confidence_sum).abs()
    if norm == "l1":
        return diff.sum(dim=-1) / total
    gap = diff / n.clamp(min=1.0)
    if norm == "l2":
        return torch.sqrt((diff * gap).sum(dim=-1) / total)
    return gap.amax(dim=-1)


def _top_label_bin_stats(
    probs: Any, labels: Any, n_bins: int, binning: str, from_logits: bool
) -> _BinStats:
    _, _, top = _validated_top_label(probs, labels, from_logits)
    if binning == "uniform":
        edges = _uniform_edges(n_bins, top.confidence.device)
    else:
        edges = _quantile_edges(top.confidence, n_bins)
    return _bin_stats(top.confidence, top.correct, edges)


# --------------------------------------------------------------------------- #
# Public functional API.
# --------------------------------------------------------------------------- #


def calibration_error(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    n_bins: int = 15,
    norm: str = "l1",
    binning: str = "uniform",
    from_logits: bool = False,
) -> float:
    """Top-label calibration error: ECE (``l1``), ``l2`` or MCE (``max``).

    Confidence is the largest probability of each row, the prediction its argmax
    (first index on ties). See the module docstring for the bins.

    Args:
        probs: ``(N, C)`` probabilities, or logits with ``from_logits=True``.
        labels: ``(N,)`` class indices in ``[0, C)``.
        n_bins: number of bins, 1 to ``MAX_BINS`` (default 15; the paper used 10).
        norm: ``"l1"`` (ECE, ``sum_b w_b |acc_b - conf_b|``), ``"l2"``
            (``sqrt(sum_b w_b (acc_b - conf_b)^2)``) or ``"max"`` (MCE: the largest
            gap over non-empty bins); ``w_b`` is the fraction of samples in bin ``b``.
        binning: ``"uniform"`` (equal width) or ``"quantile"`` (equal mass).
        from_logits: ``probs`` holds logits; the softmax is taken inside.

    Returns:
        The calibration error, a float in ``[0, 1]``.
    """
    n_bins = _check_n_bins(n_bins)
    norm = check_choice(norm, "norm", NORMS)
    binning = check_choice(binning, "binning", BINNINGS)
    from_logits = check_bool(from_logits, "from_logits")
    stats = _top_label_bin_stats(probs, labels, n_bins, binning, from_logits)
    return float(_calibration_gap(stats.counts, stats.confidence_sum, stats.correct, norm))


def reliability_bins(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    n_bins: int = 15,
    binning: str = "uniform",
    from_logits: bool = False,
) -> ReliabilityBins:
    """Per-bin count, mean confidence and accuracy: the data of a reliability diagram.

    Uses exactly the binning of :func:`calibration_error` (same arguments).

    Returns:
        :class:`ReliabilityBins` of CPU tensors: ``edges (n_bins + 1,)`` float64,
        ``count (n_bins,)`` int64, ``confidence (n_bins,)`` and ``accuracy
        (n_bins,)`` float64, NaN in empty bins (no data, not zero).
    """
    n_bins = _check_n_bins(n_bins)
    binning = check_choice(binning, "binning", BINNINGS)
    from_logits = check_bool(from_logits, "from_logits")
    stats = _top_label_bin_stats(probs, labels, n_bins, binning, from_logits)
    count = stats.counts.cpu()
    n = count.to(_F64)
    nan = torch.tensor(float("nan"), dtype=_F64)
    mean_confidence = torch.where(count > 0, stats.confidence_sum.cpu() / n, nan)
    mean_accuracy = torch.where(count > 0, stats.correct.cpu().to(_F64) / n, nan)
    return ReliabilityBins(stats.edges.cpu(), count, mean_confidence, mean_accuracy)


def classwise_calibration_error(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    n_bins: int = 15,
    norm: str = "l1",
    from_logits: bool = False,
) -> float:
    """Classwise calibration error (Kull et al., 2019).

    For each class ``k``, the one-vs-rest calibration error of ``p_k`` against
    ``labels == k`` over ``n_bins`` equal-width bins of ``[0, 1]`` (``[a, b)``,
    last closed; every sample counts in every class); the result is the mean over
    the ``C`` classes. Computed for all classes at once (one ``bincount`` over the
    flat index ``k * n_bins + bin``); memory is a few ``(N, C)`` float64/int64 arrays.

    Args:
        probs: ``(N, C)`` probabilities, or logits with ``from_logits=True``.
        labels: ``(N,)`` class indices in ``[0, C)``.
        n_bins: number of bins, 1 to ``MAX_BINS`` (default 15; the paper used 10).
        norm: ``"l1"``, ``"l2"`` or ``"max"``, per class as in :func:`calibration_error`.
        from_logits: ``probs`` holds logits; the softmax is taken inside.

    Returns:
        The mean over classes, a float in ``[0, 1]``.
    """
    n_bins = _check_n_bins(n_bins)
    norm = check_choice(norm, "norm", NORMS)
    from_logits = check_bool(from_logits, "from_logits")
    scores, targets = _validated(probs, labels, from_logits)
    return _classwise_error(_probabilities(scores, from_logits), targets, n_bins, norm)


def _classwise_error(probs: Tensor, targets: Tensor, n_bins: int, norm: str) -> float:
    num_classes = probs.shape[1]
    size = num_classes * n_bins
    # Per class and bin: a count, a confidence sum and a correct count, 8 bytes each.
    check_memory(
        3 * 8 * size,
        probs.device,
        f"the classwise bins of {num_classes} classes with n_bins={n_bins}",
        "use fewer bins (n_bins)",
    )
    p = probs.to(_F64).contiguous()
    index = _bin_index(p, _uniform_edges(n_bins, p.device))  # (N, C)
    offset = torch.arange(num_classes, device=p.device) * n_bins
    flat = (index + offset).reshape(-1)
    count = torch.bincount(flat, minlength=size)
    confidence_sum = torch.zeros(size, dtype=_F64, device=p.device).scatter_add_(
        0, flat, p.reshape(-1)
    )
    # Only the true class of each sample has a positive one-vs-rest label.
    label_bin = index.gather(1, targets.unsqueeze(1)).squeeze(1)
    correct = torch.bincount(targets * n_bins + label_bin, minlength=size)
    shape = (num_classes, n_bins)
    per_class = _calibration_gap(
        count.view(shape), confidence_sum.view(shape), correct.view(shape), norm
    )
    return float(per_class.mean())


def negative_log_likelihood(
    probs: ArrayLike, labels: ArrayLike, *, from_logits: bool = False
) -> float:
    """Mean negative log-likelihood ``-log p_y`` (natural log).

    With probabilities, ``p_y`` is clamped at ``torch.finfo(dtype).tiny`` (about
    1.2e-38 in float32, the computation dtype for float16/bfloat16/float32 inputs;
    2.2e-308 in float64), so a zero probability on the true class costs about 87.3
    (float32) instead of inf. With ``from_logits=True`` it is ``logsumexp(s) - s_y``,
    computed stably; prefer logits when you have them.

    Args:
        probs: ``(N, C)`` probabilities, or logits with ``from_logits=True``.
        labels: ``(N,)`` class indices in ``[0, C)``.
    """
    from_logits = check_bool(from_logits, "from_logits")
    scores, targets = _validated(probs, labels, from_logits)
    return float(_finite_nll(_per_sample_nll(scores, targets, from_logits).mean(), "probs"))


def brier_score(probs: ArrayLike, labels: ArrayLike, *, from_logits: bool = False) -> float:
    """Multiclass Brier score: ``mean_i sum_k (p_ik - [y_i == k])^2``.

    The original (Brier 1950) multiclass convention: summed over classes, not
    averaged, so it lies in ``[0, 2]`` (0 for a confident correct prediction, 2
    for a confident wrong one). Divide by ``C`` for the per-class mean.

    Args:
        probs: ``(N, C)`` probabilities, or logits with ``from_logits=True``.
        labels: ``(N,)`` class indices in ``[0, C)``.
    """
    from_logits = check_bool(from_logits, "from_logits")
    scores, targets = _validated(probs, labels, from_logits)
    return _brier(_probabilities(scores, from_logits), targets)


# Rows per float64 block of the Brier score: 8 MB at 100 classes.
_BRIER_BLOCK_ROWS = 10_000


def _brier(p: Tensor, targets: Tensor) -> float:
    """Brier score of ``(N, C)`` probabilities, in float64 whatever their dtype (so equal
    values in any container give equal scores), a block of rows at a time."""
    squares = torch.empty(p.shape[0], dtype=_F64, device=p.device)
    for start in range(0, p.shape[0], _BRIER_BLOCK_ROWS):
        block = p[start : start + _BRIER_BLOCK_ROWS].to(_F64)
        rows = torch.bmm(block.unsqueeze(1), block.unsqueeze(2))
        squares[start : start + _BRIER_BLOCK_ROWS] = rows.reshape(-1)
    picked = p.gather(1, targets.unsqueeze(1)).squeeze(1).to(_F64)
    return float((squares - 2.0 * picked + 1.0).clamp_(min=0.0).mean())


def accuracy(probs: ArrayLike, labels: ArrayLike) -> float:
    """Top-1 accuracy: fraction of rows whose argmax equals the label.

    ``probs`` may hold probabilities or logits (the argmax is the same); it only
    has to be a finite ``(N, C)`` array. Ties go to the first index.
    """
    scores, targets = _validated(probs, labels, True)
    correct = int((scores.max(dim=1).indices == targets).sum())
    return correct / scores.shape[0]


def bootstrap_interval(
    metric: Callable[[Any, Any], float],
    probs: ArrayLike,
    labels: ArrayLike,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapInterval:
    """Percentile-bootstrap interval of ``metric(probs, labels)``.

    Each resample draws ``N`` rows with replacement (a CPU ``torch.Generator``
    seeded with ``seed``: same seed, same interval) and evaluates ``metric`` on
    them, passing the same kind of object it was given (numpy stays numpy, a
    tensor stays on its device). ``low``/``high`` are the ``(1 - confidence) / 2``
    and ``(1 + confidence) / 2`` quantiles of the resampled values (linear
    interpolation).

    Args:
        metric: any ``callable(probs, labels) -> float``, e.g.
            ``functools.partial(calibration_error, from_logits=True)``.
        probs: ``(N, ...)`` first argument of ``metric``.
        labels: ``(N, ...)`` second argument of ``metric``.
        n_resamples: number of bootstrap resamples, 1 to ``MAX_RESAMPLES``.
        confidence: coverage of the interval, in ``(0, 1)``.
        seed: seed of the resampling generator, in ``[0, 2**32)``.

    Returns:
        ``BootstrapInterval(estimate, low, high)``; ``estimate`` is the metric on
        the full data.
    """
    if not callable(metric):
        raise InvalidTypeError(f"metric must be callable, got {type(metric).__name__}")
    n_resamples = check_positive_int(n_resamples, "n_resamples", maximum=MAX_RESAMPLES)
    confidence = check_open_interval(confidence, "confidence", 0.0, 1.0)
    seed = check_seed(seed)
    x, y = as_tensor(probs, "probs"), as_tensor(labels, "labels")
    if x.ndim == 0 or x.shape[0] == 0:
        raise InvalidValueError(f"probs must have at least one row, got shape {tuple(x.shape)}")
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise InvalidValueError(
            f"labels must have one entry per row of probs ({x.shape[0]}), "
            f"got shape {tuple(y.shape)}"
        )
    n = x.shape[0]
    estimate = float(metric(probs, labels))
    generator = torch.Generator().manual_seed(seed)
    values = np.empty(n_resamples, dtype=np.float64)
    for r in range(n_resamples):  # one metric call per resample: `metric` is opaque
        rows = torch.randint(n, (n,), generator=generator)
        values[r] = float(metric(_take(probs, rows), _take(labels, rows)))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return BootstrapInterval(estimate, float(low), float(high))


def _take(x: ArrayLike, rows: Tensor) -> ArrayLike:
    if isinstance(x, np.ndarray):
        taken: np.ndarray = x[rows.numpy()]
        return taken
    return x[rows.to(x.device)]


def calibration_summary(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    n_bins: int = 15,
    from_logits: bool = False,
    classwise: bool = False,
) -> dict[str, float]:
    """Accuracy, ECE, MCE, NLL and Brier of one set of predictions (and classwise ECE).

    The columns of ddcal's tables: ``{"accuracy", "ece", "mce", "nll", "brier"}``,
    plus ``"classwise_ece"`` with ``classwise=True``; ECE and MCE with ``n_bins``
    equal-width bins. Inputs as :func:`calibration_error`. Each value equals its
    functional metric; the inputs are validated, and the softmax, top label and
    bins computed, once for all of them.
    """
    n_bins = _check_n_bins(n_bins)
    from_logits = check_bool(from_logits, "from_logits")
    classwise = check_bool(classwise, "classwise")
    scores, targets, top = _validated_top_label(probs, labels, from_logits)
    stats = _bin_stats(top.confidence, top.correct, _uniform_edges(n_bins, scores.device))
    nll = _per_sample_nll(scores, targets, from_logits, top.top_score, top.log_partition)
    p = _probabilities(scores, from_logits, top)
    summary = {
        "accuracy": int(top.correct.sum()) / scores.shape[0],
        "ece": float(_calibration_gap(stats.counts, stats.confidence_sum, stats.correct, "l1")),
        "mce": float(_calibration_gap(stats.counts, stats.confidence_sum, stats.correct, "max")),
        "nll": float(_finite_nll(nll.mean(), "probs")),
        "brier": _brier(p, targets),
    }
    if classwise:
        summary["classwise_ece"] = _classwise_error(p, targets, n_bins, "l1")
    return summary


# --------------------------------------------------------------------------- #
# Streaming meter.
# --------------------------------------------------------------------------- #


class CalibrationMeter:
    """Streaming top-label ECE/MCE/L2, accuracy and NLL with ``O(n_bins)`` state.

    Equal-width bins as in :func:`calibration_error` (``[a, b)``, last closed).
    The state is, per bin, the sample count (int64), the sum of confidences
    (float64) and the number correct (int64), plus the total NLL (float64):
    ``compute()`` on the state of several batches equals the functional metrics on
    the concatenated data (up to float64 rounding of the sums), and ``merge``
    combines meters exactly (e.g. from several processes; a meter pickles);
    ``all_reduce`` does it in place over a ``torch.distributed`` group.

    The state lives on the device of the first ``update``; ``compute`` returns
    Python floats.

    Example:
        >>> meter = CalibrationMeter(n_bins=15, from_logits=True)
        >>> for logits, labels in batches:  # doctest: +SKIP
        ...     meter.update(logits, labels)
        >>> meter.compute()["ece"]  # doctest: +SKIP
        >>> meter.update_from(DataLoader(TensorDataset(logits, labels)))  # doctest: +SKIP

    Args:
        n_bins: number of equal-width bins, 1 to ``MAX_BINS`` (default 15; the paper used 10).
        from_logits: ``update`` receives logits instead of probabilities.
    """

    def __init__(self, n_bins: int = 15, *, from_logits: bool = False) -> None:
        self.n_bins = _check_n_bins(n_bins)
        self.from_logits = check_bool(from_logits, "from_logits")
        self.reset()

    def reset(self) -> None:
        """Forget all data seen so far."""
        self._count = torch.zeros(self.n_bins, dtype=torch.int64)
        self._confidence_sum = torch.zeros(self.n_bins, dtype=_F64)
        self._correct = torch.zeros(self.n_bins, dtype=torch.int64)
        self._nll_sum = torch.zeros((), dtype=_F64)
        self._num_classes: int | None = None
        self._seen = 0  # == self._count.sum(), kept on the host to avoid a device sync

    @property
    def count(self) -> int:
        """Number of samples seen."""
        return self._seen

    def update(self, probs: ArrayLike, labels: ArrayLike) -> None:
        """Add a batch: ``probs`` ``(B, C)`` (logits if ``from_logits``), ``labels`` ``(B,)``."""
        scores, targets, top = _validated_top_label(probs, labels, self.from_logits)
        self._check_num_classes(scores.shape[1], "probs")
        stats = _bin_stats(
            top.confidence,
            top.correct,
            _uniform_edges(self.n_bins, scores.device),
        )
        nll = _per_sample_nll(
            scores, targets, self.from_logits, top.top_score, top.log_partition
        ).sum()
        if self.count == 0:
            self._to(scores.device)
        device = self._count.device
        nll_sum = _finite_nll(self._nll_sum + nll.to(device), "the data seen so far and probs")
        self._count += stats.counts.to(device)
        self._confidence_sum += stats.confidence_sum.to(device)
        self._correct += stats.correct.to(device)
        self._nll_sum = nll_sum
        self._num_classes = scores.shape[1]
        self._seen += scores.shape[0]

    def update_from(self, data: Any, *, batch_size: int = 1024) -> CalibrationMeter:
        """Add every batch of a Dataset or DataLoader of ``(probs, labels)``; returns ``self``.

        All or nothing: a bad batch raises (naming it) and adds none of them. For
        a network's predictions on a loader of images,
        ``meter.update(*predict_logits(model, loader, return_labels=True))``
        streams the images through the network and keeps only the logits.

        Args:
            data: a ``DataLoader`` yielding ``(probs, labels)`` batches ``(B, C)``
                and ``(B,)`` (logits if ``from_logits``), read as it is; or a
                ``Dataset`` of ``(probs, label)`` rows, e.g. a ``TensorDataset``
                of saved predictions, read ``batch_size`` rows at a time.
            batch_size: rows per read of a Dataset; unused for a DataLoader.
        """
        batch_size = check_positive_int(batch_size, "batch_size")
        staged = CalibrationMeter(self.n_bins, from_logits=self.from_logits)
        batches = data_batches(data, "data", batch_size=batch_size, pair="(probs, label)")
        for index, (probs, labels) in enumerate(batches):
            try:
                staged.update(probs, labels)
            except (InvalidTypeError, InvalidValueError) as exc:
                raise type(exc)(f"batch {index} of data: {exc}") from exc
        if staged._num_classes is not None:
            self._check_num_classes(staged._num_classes, "data")
        return self.merge(staged)

    def merge(self, other: CalibrationMeter) -> CalibrationMeter:
        """Add the state of ``other`` (same ``n_bins`` and ``from_logits``); returns ``self``."""
        if not isinstance(other, CalibrationMeter):
            raise InvalidTypeError(f"other must be a CalibrationMeter, got {type(other).__name__}")
        if other.n_bins != self.n_bins or other.from_logits != self.from_logits:
            raise InvalidValueError(
                "other must have the same n_bins and from_logits, got "
                f"n_bins={other.n_bins}, from_logits={other.from_logits} "
                f"(this meter: n_bins={self.n_bins}, from_logits={self.from_logits})"
            )
        if other.count == 0:
            return self
        assert other._num_classes is not None
        self._check_num_classes(other._num_classes, "other")
        if self.count == 0:
            self._to(other._count.device)
        device = self._count.device
        nll_sum = _finite_nll(self._nll_sum + other._nll_sum.to(device), "the merged meters")
        self._count += other._count.to(device)
        self._confidence_sum += other._confidence_sum.to(device)
        self._correct += other._correct.to(device)
        self._nll_sum = nll_sum
        self._num_classes = other._num_classes
        self._seen += other._seen
        return self

    def all_reduce(self) -> CalibrationMeter:
        """Sum the state over the processes of a ``torch.distributed`` group; returns ``self``.

        Every process must call it (a collective); afterwards each holds the state
        of all the data every process saw, so ``compute()`` gives the metrics of
        the union. Two all-reduces of ``2 * n_bins + 1`` numbers each; alone, a no-op.

        Raises:
            ValueError: the processes saw different numbers of classes.
        """
        if not distributed.is_distributed():
            return self
        classes = {c for c in distributed.gather_objects(self._num_classes) if c is not None}
        if len(classes) > 1:
            raise InvalidValueError(
                f"the processes' meters saw different numbers of classes {sorted(classes)}"
            )
        device = self._count.device
        integers = torch.cat(
            [self._count, self._correct, torch.tensor([self._seen], device=device)]
        )
        sums = torch.cat([self._confidence_sum, self._nll_sum.reshape(1).to(device)])
        distributed.all_reduce_sum(integers)
        distributed.all_reduce_sum(sums)
        nll_sum = _finite_nll(sums[-1], "the meters of all processes")
        n = self.n_bins
        self._count, self._correct = integers[:n].clone(), integers[n : 2 * n].clone()
        self._seen = int(integers[-1])
        self._confidence_sum, self._nll_sum = sums[:n].clone(), nll_sum
        self._num_classes = next(iter(classes), None)
        return self

    def compute(self) -> dict[str, float]:
        """Metrics of all data seen.

        Returns:
            ``{"ece", "mce", "l2", "accuracy", "nll", "count"}``: equal to
            :func:`calibration_error` (norms ``l1``, ``max``, ``l2``, uniform
            bins), :func:`accuracy` and :func:`negative_log_likelihood` on the
            concatenated batches; ``count`` is the number of samples.

        Raises:
            ValueError: if nothing has been added yet.
        """
        total = self.count
        if total == 0:
            raise InvalidValueError("CalibrationMeter has no data: call update() before compute()")
        count, confidence_sum, correct = self._count, self._confidence_sum, self._correct
        return {
            "ece": float(_calibration_gap(count, confidence_sum, correct, "l1")),
            "mce": float(_calibration_gap(count, confidence_sum, correct, "max")),
            "l2": float(_calibration_gap(count, confidence_sum, correct, "l2")),
            "accuracy": int(correct.sum()) / total,
            "nll": float(self._nll_sum) / total,
            "count": float(total),
        }

    def __repr__(self) -> str:
        return (
            f"CalibrationMeter(n_bins={self.n_bins}, from_logits={self.from_logits}, "
            f"count={self.count})"
        )

    def _check_num_classes(self, num_classes: int, name: str) -> None:
        if self._num_classes is not None and num_classes != self._num_classes:
            raise InvalidValueError(
                f"{name} must have {self._num_classes} classes like the data seen so far, "
                f"got {num_classes}"
            )

    def _to(self, device: torch.device) -> None:
        self._count = self._count.to(device)
        self._confidence_sum = self._confidence_sum.to(device)
        self._correct = self._correct.to(device)
        self._nll_sum = self._nll_sum.to(device)
