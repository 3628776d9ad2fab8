"""CalibrationMeter: streaming state equals the functional metrics on the whole data."""

from __future__ import annotations

import itertools
import pickle
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddcal.metrics import (
    CalibrationMeter,
    accuracy,
    calibration_error,
    negative_log_likelihood,
)

P = [[0.25, 0.2, 0.55], [0.55, 0.05, 0.4], [0.1, 0.3, 0.6], [0.9, 0.05, 0.05]]
Y = [0, 1, 2, 0]
KEYS = {"ece", "mce", "l2", "accuracy", "nll", "count"}


def make_data(seed: int, n: int, c: int, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, c, generator=generator, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(logits / 1.5, dim=1), 1, generator=generator)
    return logits, labels.squeeze(1)


def functional(scores: Any, labels: Any, n_bins: int, from_logits: bool) -> dict[str, float]:
    return {
        "ece": calibration_error(scores, labels, n_bins=n_bins, from_logits=from_logits),
        "mce": calibration_error(
            scores, labels, n_bins=n_bins, norm="max", from_logits=from_logits
        ),
        "l2": calibration_error(scores, labels, n_bins=n_bins, norm="l2", from_logits=from_logits),
        "accuracy": accuracy(scores, labels),
        "nll": negative_log_likelihood(scores, labels, from_logits=from_logits),
        "count": float(len(labels)),
    }


def assert_close(got: dict[str, float], expected: dict[str, float]) -> None:
    assert set(got) == KEYS
    for key in KEYS:
        assert got[key] == pytest.approx(expected[key], abs=1e-12, rel=1e-12), key


def test_reference_values() -> None:
    meter = CalibrationMeter(n_bins=3)
    assert meter.update(torch.tensor(P[:3]), torch.tensor(Y[:3])) is None
    meter.update(np.array(P[3:]), np.array(Y[3:]))
    result = meter.compute()
    assert round(result["ece"], 4) == 0.2
    assert round(result["l2"], 4) == 0.2082
    assert round(result["mce"], 4) == 0.2333
    assert result["accuracy"] == 0.5
    assert result["count"] == 4.0
    assert result["nll"] == pytest.approx(-np.mean(np.log([0.25, 0.05, 0.6, 0.9])), rel=1e-6)


def test_confidence_one_lands_in_last_bin() -> None:
    meter = CalibrationMeter(n_bins=10)
    meter.update(torch.tensor([[0.95, 0.05]]), torch.tensor([0]))
    meter.update(torch.tensor([[0.0, 1.0]]), torch.tensor([0]))
    assert meter.compute()["ece"] == pytest.approx(0.475, abs=1e-7)


@settings(deadline=None, max_examples=40)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 120),
    c=st.integers(2, 6),
    scale=st.sampled_from([0.3, 2.0, 60.0]),
    n_bins=st.integers(1, 20),
    from_logits=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    data=st.data(),
)
def test_equals_functional_on_any_split_into_batches(
    seed: int,
    n: int,
    c: int,
    scale: float,
    n_bins: int,
    from_logits: bool,
    dtype: torch.dtype,
    data: st.DataObject,
) -> None:
    logits, labels = make_data(seed, n, c, scale)
    scores = (logits if from_logits else torch.softmax(logits, dim=1)).to(dtype)
    cuts = sorted(data.draw(st.lists(st.integers(1, n), max_size=6), label="cuts"))
    bounds = [0, *cuts, n]
    meter = CalibrationMeter(n_bins, from_logits=from_logits)
    for start, stop in itertools.pairwise(bounds):
        if stop > start:  # the functional path refuses empty batches; so does the meter
            meter.update(scores[start:stop], labels[start:stop])
    assert meter.count == n
    assert_close(meter.compute(), functional(scores, labels, n_bins, from_logits))


@settings(deadline=None, max_examples=25)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(2, 100),
    parts=st.integers(2, 4),
    n_bins=st.integers(1, 20),
    from_logits=st.booleans(),
)
def test_merge_of_meters_on_parts_equals_one_meter(
    seed: int, n: int, parts: int, n_bins: int, from_logits: bool
) -> None:
    logits, labels = make_data(seed, n, 4)
    scores = logits if from_logits else torch.softmax(logits, dim=1)
    meters = []
    for rows in torch.arange(n).tensor_split(parts):
        meter = CalibrationMeter(n_bins, from_logits=from_logits)
        if rows.numel() > 0:
            meter.update(scores[rows], labels[rows])
        meters.append(meter)
    merged = CalibrationMeter(n_bins, from_logits=from_logits)  # starts empty
    for meter in meters:
        assert merged.merge(meter) is merged
    assert merged.count == n
    assert_close(merged.compute(), functional(scores, labels, n_bins, from_logits))


def test_merge_leaves_other_unchanged_and_accepts_empty() -> None:
    logits, labels = make_data(0, 50, 3)
    a = CalibrationMeter(5, from_logits=True)
    b = CalibrationMeter(5, from_logits=True)
    a.update(logits[:20], labels[:20])
    b.update(logits[20:], labels[20:])
    before = b.compute()
    a.merge(b).merge(CalibrationMeter(5, from_logits=True))
    assert b.compute() == before
    assert_close(a.compute(), functional(logits, labels, 5, True))


def test_reset_and_compute_before_update() -> None:
    meter = CalibrationMeter()
    with pytest.raises(ValueError, match=r"no data: call update\(\) before compute\(\)"):
        meter.compute()
    logits, labels = make_data(1, 30, 3)
    meter = CalibrationMeter(from_logits=True)
    meter.update(logits, labels)
    meter.reset()
    assert meter.count == 0
    with pytest.raises(ValueError, match="no data"):
        meter.compute()
    meter.update(logits[:10], labels[:10])
    assert_close(meter.compute(), functional(logits[:10], labels[:10], 15, True))


def test_state_is_o_bins_and_pickles() -> None:
    logits, labels = make_data(2, 500, 10)
    meter = CalibrationMeter(n_bins=7, from_logits=True)
    meter.update(logits, labels)
    sizes = {name: value.numel() for name, value in vars(meter).items() if torch.is_tensor(value)}
    assert sizes
    assert max(sizes.values()) == 7
    copy = pickle.loads(pickle.dumps(meter))
    assert copy.compute() == meter.compute()
    assert "n_bins=7" in repr(meter)
    assert "count=500" in repr(meter)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_updates_and_merge_with_cpu() -> None:
    logits, labels = make_data(3, 400, 5)
    on_gpu = CalibrationMeter(from_logits=True)
    on_gpu.update(logits[:200].cuda(), labels[:200].cuda())
    on_cpu = CalibrationMeter(from_logits=True)
    on_cpu.update(logits[200:], labels[200:])
    assert_close(on_gpu.merge(on_cpu).compute(), functional(logits, labels, 15, True))


def test_errors() -> None:
    with pytest.raises(ValueError, match="n_bins must be >= 1, got 0"):
        CalibrationMeter(0)
    with pytest.raises(TypeError, match="n_bins must be an int"):
        CalibrationMeter(2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="from_logits must be a bool"):
        CalibrationMeter(from_logits="yes")  # type: ignore[arg-type]
    meter = CalibrationMeter(n_bins=3)
    with pytest.raises(ValueError, match=r"probs rows must sum to 1.*from_logits=True"):
        meter.update(torch.tensor([[0.7, 0.6]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got max 7"):
        meter.update(torch.tensor(P), torch.tensor([0, 1, 2, 7]))
    with pytest.raises(ValueError, match="probs must be finite"):
        meter.update(torch.tensor([[float("nan"), 1.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="probs is empty"):
        meter.update(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    assert meter.count == 0  # failed updates leave no trace
    meter.update(torch.tensor(P), torch.tensor(Y))
    with pytest.raises(
        ValueError, match="probs must have 3 classes like the data seen so far, got 2"
    ):
        meter.update(torch.tensor([[0.5, 0.5]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="same n_bins and from_logits"):
        meter.merge(CalibrationMeter(n_bins=4))
    with pytest.raises(ValueError, match="same n_bins and from_logits"):
        meter.merge(CalibrationMeter(n_bins=3, from_logits=True))
    other = CalibrationMeter(n_bins=3)
    other.update(torch.tensor([[0.5, 0.5]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="other must have 3 classes"):
        meter.merge(other)
    with pytest.raises(TypeError, match="other must be a CalibrationMeter, got dict"):
        meter.merge({})  # type: ignore[arg-type]
    assert meter.count == 4
