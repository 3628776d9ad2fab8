"""ddcal's top-label calibration error as a ``torchmetrics.Metric``.

Needs the optional extra: ``pip install 'ddcal[torchmetrics]'``.

:class:`CalibrationError` bins exactly as :func:`ddcal.calibration_error` with
``binning="uniform"`` (the same routine), and keeps ``O(n_bins)`` state: per
bin the sample count, the sum of confidences (float64) and the number
correct, each reduced by ``dist_reduce_fx="sum"``. Under DDP, ``compute()``
therefore gives the metric of the union of every process's data, equal to
the functional metric on the concatenated data.

Where it differs from torchmetrics' own ``MulticlassCalibrationError``: that
metric keeps every confidence (``O(N)`` state), compares them with the bin
edges in float32, and drops a confidence of exactly 1.0 into a bin past the
last (its issue #3510); ddcal compares in float64 and counts 1.0 in the last
bin, ``[a, b]``. On confidences away from the edges both give the same value.
It also takes logits or probabilities without saying which; ddcal is told
(``from_logits``) and refuses rows that are not probabilities.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ddcal._validation import ArrayLike, check_bool, check_choice
from ddcal.errors import InvalidValueError
from ddcal.metrics import (
    NORMS,
    _bin_stats,
    _calibration_gap,
    _check_n_bins,
    _uniform_edges,
    _validated_top_label,
)

try:
    from torchmetrics import Metric
except ImportError as exc:
    raise ImportError(
        "ddcal.integrations.torchmetrics needs torchmetrics: pip install 'ddcal[torchmetrics]'"
    ) from exc

__all__ = ["CalibrationError"]


class CalibrationError(Metric):
    """Top-label calibration error, ECE (``l1``), ``l2`` or MCE (``max``), streamed.

    ``update(probs, labels)`` bins a batch; ``compute()`` is
    :func:`ddcal.calibration_error` (uniform bins) of everything seen, synced
    over the processes of a ``torch.distributed`` group first. The state is
    ``3 * n_bins`` numbers, summed across processes.

    Args:
        n_bins: number of equal-width bins, 1 to ``ddcal.metrics.MAX_BINS``
            (default 15; the paper used 10).
        norm: ``"l1"`` (ECE), ``"l2"`` or ``"max"`` (MCE), as in
            :func:`ddcal.calibration_error`.
        from_logits: ``update`` receives logits; the softmax is taken inside.
        **kwargs: the keyword arguments of ``torchmetrics.Metric``
            (``sync_on_compute``, ``dist_sync_on_step``, ``process_group``, ...).

    Example:
        >>> from ddcal.integrations.torchmetrics import CalibrationError
        >>> ece = CalibrationError(n_bins=15, from_logits=True)
        >>> for images, labels in test_loader:  # doctest: +SKIP
        ...     ece.update(model(images), labels)
        >>> ece.compute()  # doctest: +SKIP
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    count: Tensor
    confidence_sum: Tensor
    correct: Tensor

    def __init__(
        self, n_bins: int = 15, *, norm: str = "l1", from_logits: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.n_bins = _check_n_bins(n_bins)
        self.norm = check_choice(norm, "norm", NORMS)
        self.from_logits = check_bool(from_logits, "from_logits")
        zeros = {"count": torch.int64, "confidence_sum": torch.float64, "correct": torch.int64}
        for name, dtype in zeros.items():
            self.add_state(name, torch.zeros(self.n_bins, dtype=dtype), dist_reduce_fx="sum")

    def update(self, probs: ArrayLike, labels: ArrayLike) -> None:
        """Add a batch: ``probs`` ``(B, C)`` (logits if ``from_logits``), ``labels`` ``(B,)``.

        Validated as in :func:`ddcal.calibration_error` (torchmetrics calls
        these ``preds`` and ``target``).
        """
        _, _, top = _validated_top_label(probs, labels, self.from_logits)
        edges = _uniform_edges(self.n_bins, top.confidence.device)
        stats = _bin_stats(top.confidence, top.correct, edges)
        self.count += stats.counts.to(self.count.device)
        self.confidence_sum += stats.confidence_sum.to(self.confidence_sum.device)
        self.correct += stats.correct.to(self.correct.device)

    def compute(self) -> Tensor:
        """The calibration error of all data seen, a float64 scalar tensor in ``[0, 1]``.

        Raises:
            ValueError: if no process has added any data.
        """
        if int(self.count.sum()) == 0:
            raise InvalidValueError(
                "CalibrationError has no data: call update(probs, labels) before compute()"
            )
        return _calibration_gap(self.count, self.confidence_sum, self.correct, self.norm)
