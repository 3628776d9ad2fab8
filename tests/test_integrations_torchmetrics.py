"""torchmetrics out: ddcal.integrations.torchmetrics.CalibrationError.

Against ddcal's functional metric (the same bins: equal to float64 rounding)
and torchmetrics' own ``MulticlassCalibrationError`` (where their bin edges
agree: confidences away from the edges and below 1.0). The 2-process run is in
tests/test_distributed.py.
"""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

from ddcal import calibration_error
from ddcal.errors import InvalidTypeError, InvalidValueError

pytest.importorskip("torchmetrics")

from torchmetrics.classification import MulticlassCalibrationError

from ddcal.integrations.torchmetrics import CalibrationError

NORMS = ("l1", "l2", "max")


def _logits(n: int = 1000, classes: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=generator, dtype=torch.float64) * 2.5
    labels = torch.multinomial(torch.softmax(logits / 1.4, dim=1), 1, generator=generator)
    return logits, labels.squeeze(1)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("from_logits", [True, False])
def test_batches_give_the_functional_metric_of_the_whole(norm: str, from_logits: bool) -> None:
    logits, labels = _logits()
    scores = logits if from_logits else torch.softmax(logits, dim=1)
    metric = CalibrationError(n_bins=12, norm=norm, from_logits=from_logits)
    for rows in torch.split(torch.arange(len(labels)), 128):
        metric.update(scores[rows], labels[rows])
    expected = calibration_error(scores, labels, n_bins=12, norm=norm, from_logits=from_logits)
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert metric.count.shape == (12,)  # O(n_bins) state
    assert int(metric.count.sum()) == len(labels)


@pytest.mark.parametrize("norm", NORMS)
def test_it_equals_torchmetrics_where_their_bins_agree(norm: str) -> None:
    logits, labels = _logits(n=2000, classes=10, seed=1)
    probs = torch.softmax(logits, dim=1).float()
    assert float(probs.amax()) < 1.0  # torchmetrics drops a confidence of exactly 1.0
    ours = CalibrationError(n_bins=10, norm=norm)
    theirs = MulticlassCalibrationError(num_classes=10, n_bins=10, norm=norm)
    for rows in torch.split(torch.arange(len(labels)), 300):
        ours.update(probs[rows], labels[rows])
        theirs.update(probs[rows], labels[rows])
    assert float(ours.compute()) == pytest.approx(float(theirs.compute()), abs=1e-6)


def test_a_confidence_of_one_counts_in_the_last_bin() -> None:
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.3]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0])
    metric = CalibrationError(n_bins=5)
    metric.update(probs, labels)
    assert int(metric.count[-1]) == 2
    assert float(metric.compute()) == pytest.approx(calibration_error(probs, labels, n_bins=5))


def test_forward_gives_the_batch_value_and_keeps_the_whole() -> None:
    logits, labels = _logits(n=300)
    metric = CalibrationError(from_logits=True)
    first = metric(logits[:100], labels[:100])
    assert float(first) == pytest.approx(
        calibration_error(logits[:100], labels[:100], from_logits=True), rel=1e-12
    )
    metric(logits[100:], labels[100:])
    assert float(metric.compute()) == pytest.approx(
        calibration_error(logits, labels, from_logits=True), rel=1e-12
    )
    metric.reset()
    assert int(metric.count.sum()) == 0


def test_bad_settings_and_inputs_are_refused_by_name() -> None:
    with pytest.raises(InvalidValueError, match="norm must be one of 'l1', 'l2', 'max'"):
        CalibrationError(norm="l3")
    with pytest.raises(InvalidValueError, match="n_bins must be >= 1"):
        CalibrationError(n_bins=0)
    with pytest.raises(InvalidTypeError, match="from_logits must be a bool"):
        CalibrationError(from_logits=1)
    metric = CalibrationError()
    with pytest.raises(InvalidValueError, match=r"probs rows must sum to 1.*from_logits=True"):
        metric.update(torch.tensor([[0.2, 0.3]]), torch.tensor([0]))
    with pytest.raises(InvalidValueError, match=r"labels must be in \[0, 2\)"):
        metric.update(torch.tensor([[0.5, 0.5]]), torch.tensor([2]))
    with (
        pytest.warns(UserWarning, match="called before the ``update``"),  # torchmetrics' own
        pytest.raises(InvalidValueError, match="CalibrationError has no data"),
    ):
        CalibrationError().compute()


def test_without_torchmetrics_the_import_error_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torchmetrics", None)  # `import torchmetrics` fails
    monkeypatch.delitem(sys.modules, "ddcal.integrations.torchmetrics")
    with pytest.raises(ImportError, match=r"pip install 'ddcal\[torchmetrics\]'"):
        importlib.import_module("ddcal.integrations.torchmetrics")
