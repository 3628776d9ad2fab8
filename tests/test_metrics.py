"""Functional calibration metrics: reference values, properties and error paths."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddcal.metrics import (
    BootstrapInterval,
    accuracy,
    bootstrap_interval,
    brier_score,
    calibration_error,
    calibration_summary,
    classwise_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)

# The 3-class example of the issue: confidences .55 (wrong), .55 (wrong), .6 (right), .9 (right).
P = [[0.25, 0.2, 0.55], [0.55, 0.05, 0.4], [0.1, 0.3, 0.6], [0.9, 0.05, 0.05]]
Y = [0, 1, 2, 0]

NORMS = ("l1", "l2", "max")
BINNINGS = ("uniform", "quantile")

seeds = st.integers(0, 2**31 - 1)


def _probs(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(P, dtype=dtype)


def _labels() -> torch.Tensor:
    return torch.tensor(Y)


def make_data(seed: int, n: int, c: int, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 logits and labels drawn from a softened softmax of them (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, c, generator=generator, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(logits / 1.5, dim=1), 1, generator=generator)
    return logits, labels.squeeze(1)


def binary_probs(positives: list[float]) -> torch.Tensor:
    """Rows ``[1 - p, p]``: hypothesis likes 0, 1/2 and 1, i.e. confidences on bin edges."""
    p = torch.tensor(positives, dtype=torch.float64)
    return torch.stack([1.0 - p, p], dim=1)


# --------------------------------------------------------------------------- #
# Reference values.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("norm", "expected"), [("l1", 0.2000), ("l2", 0.2082), ("max", 0.2333)])
def test_reference_values_three_bins(dtype: torch.dtype, norm: str, expected: float) -> None:
    value = calibration_error(_probs(dtype), _labels(), n_bins=3, norm=norm)
    assert round(value, 4) == expected


def test_reference_values_exact_in_float64() -> None:
    # Bins [0, 1/3), [1/3, 2/3), [2/3, 1]: {.55, .55, .6} with accuracy 1/3 (gap 0.7/3),
    # and {.9} with accuracy 1 (gap 0.1).
    probs, labels = _probs(), _labels()
    assert calibration_error(probs, labels, n_bins=3) == pytest.approx(0.2, abs=1e-12)
    l2 = math.sqrt(0.75 * (0.7 / 3) ** 2 + 0.25 * 0.1**2)
    assert calibration_error(probs, labels, n_bins=3, norm="l2") == pytest.approx(l2, abs=1e-12)
    mce = calibration_error(probs, labels, n_bins=3, norm="max")
    assert mce == pytest.approx(0.7 / 3, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_confidence_one_lands_in_last_bin(dtype: torch.dtype) -> None:
    # Confidences 0.95 (correct) and 1.0 (wrong) share the closed last bin [0.9, 1.0]:
    # |mean conf 0.975 - accuracy 0.5| = 0.475. torchmetrics drops the 1.0 (its #3510).
    probs = torch.tensor([[0.95, 0.05], [0.0, 1.0]], dtype=dtype)
    labels = torch.tensor([0, 0])
    assert calibration_error(probs, labels, n_bins=10) == pytest.approx(0.475, abs=1e-4)
    bins = reliability_bins(probs, labels, n_bins=10)
    assert bins.count.tolist() == [0] * 9 + [2]


def test_edges_are_compared_in_float64() -> None:
    # float32(0.7) = 0.69999998807... lies below the float64 edge 0.7, so it belongs to
    # [0.6, 0.7); comparing in float32 (edge rounded to the same float32) would give [0.7, 0.8).
    probs = torch.tensor([[0.7, 0.3], [0.3, 0.7]], dtype=torch.float32)
    bins = reliability_bins(probs, torch.tensor([0, 0]), n_bins=10)
    assert bins.count.tolist() == [0, 0, 0, 0, 0, 0, 2, 0, 0, 0]
    exact = torch.tensor([[0.7, 0.3], [0.3, 0.7]], dtype=torch.float64)  # the float64 edge
    assert reliability_bins(exact, torch.tensor([0, 0]), n_bins=10).count[7] == 2


@settings(deadline=None, max_examples=60)
@given(n_bins=st.integers(1, 10_000), seed=st.integers(0, 2**32 - 1))
def test_uniform_bins_equal_a_binary_search_over_the_edges_at_and_around_every_edge(
    n_bins: int, seed: int
) -> None:
    """The fast uniform binning (floor, then a correction) against torch.bucketize."""
    from ddcal.metrics import _bin_index, _uniform_edges

    edges = _uniform_edges(n_bins, torch.device("cpu"))
    around = torch.cat(
        [
            edges,
            torch.nextafter(edges, torch.full_like(edges, -math.inf)),
            torch.nextafter(edges, torch.full_like(edges, math.inf)),
            torch.arange(n_bins + 1, dtype=torch.float64) / n_bins,  # k / n, not linspace's
            torch.rand(1000, generator=torch.Generator().manual_seed(seed), dtype=torch.float64),
        ]
    ).clamp(0.0, 1.0)
    expected = (torch.bucketize(around, edges, right=True) - 1).clamp(0, n_bins - 1)
    assert torch.equal(_bin_index(around, edges), expected)


def test_quantile_bins_hand_derived() -> None:
    # Sorted confidences s = [.55, .55, .6, .9] (correct: no, no, yes, yes), N = 4.
    # 2 bins: quantile positions 0, 1.5, 3 -> edges .55, .55 + .5 * (.6 - .55) = .575, .9.
    #   [.55, .575): {.55, .55}, acc 0, gap .55;  [.575, .9]: {.6, .9}, acc 1, gap .25.
    #   ECE = .5 * .55 + .5 * .25 = .4; MCE = .55.
    probs, labels = _probs(), _labels()
    bins = reliability_bins(probs, labels, n_bins=2, binning="quantile")
    assert bins.edges.tolist() == pytest.approx([0.55, 0.575, 0.9], abs=1e-12)
    assert bins.count.tolist() == [2, 2]
    assert calibration_error(probs, labels, n_bins=2, binning="quantile") == pytest.approx(0.4)
    assert calibration_error(
        probs, labels, n_bins=2, binning="quantile", norm="max"
    ) == pytest.approx(0.55)
    # 3 bins: positions 0, 1, 2, 3 -> edges .55, .55, .6, .9 (a duplicate edge):
    #   [.55, .55) is empty, [.55, .6) = {.55, .55}, [.6, .9] = {.6, .9}; ECE again .4.
    bins = reliability_bins(probs, labels, n_bins=3, binning="quantile")
    assert bins.edges.tolist() == pytest.approx([0.55, 0.55, 0.6, 0.9], abs=1e-12)
    assert bins.count.tolist() == [0, 2, 2]
    assert math.isnan(bins.confidence[0])
    assert math.isnan(bins.accuracy[0])
    assert calibration_error(probs, labels, n_bins=3, binning="quantile") == pytest.approx(0.4)
    # 4 bins: positions 0, .75, 1.5, 2.25, 3 -> edges .55, .55, .575, .6 + .25 * .3 = .675, .9:
    #   {} | {.55, .55} gap .55 | {.6} gap .4 | {.9} gap .1.
    #   ECE = (2 * .55 + .4 + .1) / 4 = .4; L2 = sqrt((2 * .55^2 + .4^2 + .1^2) / 4);
    #   MCE = .55.
    bins = reliability_bins(probs, labels, n_bins=4, binning="quantile")
    assert bins.edges.tolist() == pytest.approx([0.55, 0.55, 0.575, 0.675, 0.9], abs=1e-12)
    assert bins.count.tolist() == [0, 2, 1, 1]
    l2 = calibration_error(probs, labels, n_bins=4, binning="quantile", norm="l2")
    assert l2 == pytest.approx(math.sqrt((2 * 0.55**2 + 0.4**2 + 0.1**2) / 4))


def test_quantile_bins_have_equal_mass() -> None:
    generator = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(1000, 5, generator=generator, dtype=torch.float64), 1)
    labels = torch.randint(0, 5, (1000,), generator=generator)
    counts = reliability_bins(probs, labels, n_bins=10, binning="quantile").count
    assert int(counts.sum()) == 1000
    assert int(counts.min()) >= 99
    assert int(counts.max()) <= 101
    uniform = reliability_bins(probs, labels, n_bins=10).count
    assert int(uniform.max()) > 150  # so the test above says something about quantiles


def test_classwise_hand_derived() -> None:
    # One-vs-rest per class over bins [0, .5), [.5, 1]; ECE_k = sum_b |correct_b - sum p_b| / 4.
    # class 0: p = [.25, .55, .1, .9], y==0 = [1, 0, 0, 1]
    #   bin 0 {.25 (1), .1 (0)}: |1 - .35| = .65;  bin 1 {.55 (0), .9 (1)}: |1 - 1.45| = .45
    #   ECE_0 = 1.1 / 4 = .275;  MCE_0 = max(.65, .45) / 2 = .325
    # class 1: p = [.2, .05, .3, .05], y==1 = [0, 1, 0, 0]: all in bin 0, |1 - .6| = .4
    #   ECE_1 = .1;  MCE_1 = .4 / 4 = .1
    # class 2: p = [.55, .4, .6, .05], y==2 = [0, 0, 1, 0]
    #   bin 0 {.4, .05}: |0 - .45| = .45;  bin 1 {.55, .6 (1)}: |1 - 1.15| = .15
    #   ECE_2 = .6 / 4 = .15;  MCE_2 = max(.45, .15) / 2 = .225
    # classwise ECE = (.275 + .1 + .15) / 3 = .175;  classwise MCE = (.325 + .1 + .225) / 3
    probs, labels = _probs(), _labels()
    assert classwise_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.175)
    mce = classwise_calibration_error(probs, labels, n_bins=2, norm="max")
    assert mce == pytest.approx(0.65 / 3)
    # l2, class 0: sqrt((.65^2 / 2 + .45^2 / 2) / 4); class 1: .1; class 2: sqrt((.45^2 + .15^2)/8)
    l2 = (math.sqrt((0.65**2 + 0.45**2) / 8) + 0.1 + math.sqrt((0.45**2 + 0.15**2) / 8)) / 3
    assert classwise_calibration_error(probs, labels, n_bins=2, norm="l2") == pytest.approx(l2)


def test_classwise_probability_one_in_last_bin_and_perfect_predictor() -> None:
    onehot = torch.eye(3, dtype=torch.float64)[[0, 1, 2, 1]]
    labels = torch.tensor([0, 1, 2, 1])
    assert classwise_calibration_error(onehot, labels) == 0.0
    # Always wrong with certainty: p_k = 1 exactly where the prediction is k, never where y == k.
    # Bin 0 holds the zeros with all the positives of class k (|n(y == k) - 0|), the closed
    # last bin the ones with no positive (|0 - n(pred == k)|): ECE_k = (n(y==k) + n(pred==k)) / N.
    # predictions [0, 1, 2, 1], labels [1, 2, 0, 2]: ECE = ((1 + 1) + (1 + 2) + (2 + 1)) / 4 / 3.
    wrong = torch.tensor([1, 2, 0, 2])
    expected = (2 / 4 + 3 / 4 + 3 / 4) / 3
    assert classwise_calibration_error(onehot, wrong) == pytest.approx(expected)


def test_nll_and_brier_against_numpy() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(200, 7, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 7, (200,), generator=generator)
    x, y = logits.numpy(), labels.numpy()
    log_probs = x - x.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    p = np.exp(log_probs)
    rows = np.arange(200)
    nll = -log_probs[rows, y].mean()
    brier = ((p - np.eye(7)[y]) ** 2).sum(1).mean()
    assert negative_log_likelihood(torch.from_numpy(p), labels) == pytest.approx(nll, rel=1e-12)
    assert negative_log_likelihood(logits, labels, from_logits=True) == pytest.approx(
        nll, rel=1e-12
    )
    assert brier_score(p, y) == pytest.approx(brier, rel=1e-12)
    assert brier_score(logits, labels, from_logits=True) == pytest.approx(brier, rel=1e-12)
    assert accuracy(p, y) == np.mean(p.argmax(1) == y)
    assert accuracy(logits, labels) == np.mean(p.argmax(1) == y)
    p32 = torch.from_numpy(p).float()
    assert negative_log_likelihood(p32, labels) == pytest.approx(nll, rel=1e-6)


def test_nll_from_logits_is_stable_for_huge_logits() -> None:
    logits = torch.tensor([[1000.0, 0.0], [0.0, 1000.0]])
    labels = torch.tensor([0, 0])
    assert negative_log_likelihood(logits, labels, from_logits=True) == pytest.approx(500.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_nll_clamps_zero_probability_at_tiny(dtype: torch.dtype) -> None:
    probs = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=dtype)
    labels = torch.tensor([0, 1])
    compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    expected = -math.log(torch.finfo(compute_dtype).tiny) / 2
    assert negative_log_likelihood(probs, labels) == pytest.approx(expected, rel=1e-12)


def test_brier_extremes() -> None:
    onehot = torch.eye(4)[[0, 1, 2, 3]]
    assert brier_score(onehot, torch.tensor([0, 1, 2, 3])) == 0.0
    assert brier_score(onehot, torch.tensor([1, 2, 3, 0])) == 2.0
    uniform = torch.full((3, 4), 0.25)
    # (1 - 1/4)^2 + 3 * (1/4)^2 = 12/16
    assert brier_score(uniform, torch.tensor([0, 1, 2])) == pytest.approx(0.75)


def test_accuracy_ties_go_to_the_first_index() -> None:
    probs = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    assert accuracy(probs, torch.tensor([0, 1])) == 0.5
    # and calibration_error counts the tie the same way: confidence .5, accuracy .5
    assert calibration_error(probs, torch.tensor([0, 1])) == 0.0
    assert calibration_error(probs, torch.tensor([1, 1])) == pytest.approx(0.5)


@settings(deadline=None, max_examples=40)
@given(
    counts=st.lists(
        st.lists(st.integers(0, 3), min_size=3, max_size=3).filter(lambda row: sum(row) > 0),
        min_size=1,
        max_size=40,
    ),
    data=st.data(),
    scale=st.sampled_from([None, 1.0, 5.0]),
)
def test_correctness_with_ties_matches_argmax(
    counts: list[list[int]], data: st.DataObject, scale: float | None
) -> None:
    # Rows of small integers have many ties for the maximum (and confidences <= 0.51 and
    # above); every path must call the first maximal index the prediction.
    values = torch.tensor(counts, dtype=torch.float64)
    labels = torch.tensor(
        data.draw(st.lists(st.integers(0, 2), min_size=len(counts), max_size=len(counts)))
    )
    if scale is None:
        scores, from_logits = values / values.sum(1, keepdim=True), False
    else:
        scores, from_logits = scale * values, True
    expected = (values.argmax(1) == labels).double().mean().item()
    assert accuracy(scores, labels) == pytest.approx(expected, abs=1e-15)
    bins = reliability_bins(scores, labels, n_bins=4, from_logits=from_logits)
    nonempty = bins.count > 0
    correct = (bins.accuracy * bins.count)[nonempty].sum().item()
    assert correct / len(counts) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n_bins", [1, 5, 10, 15])
@pytest.mark.parametrize("norm", NORMS)
def test_matches_torchmetrics_without_confidence_one(n_bins: int, norm: str) -> None:
    functional = pytest.importorskip("torchmetrics.functional.classification")
    generator = torch.Generator().manual_seed(n_bins)
    probs = torch.softmax(2 * torch.randn(2000, 6, generator=generator), 1)
    labels = torch.randint(0, 6, (2000,), generator=generator)
    assert float(probs.max()) < 1.0
    # torchmetrics computes in float32 (edges too): agreement to float32 rounding.
    expected = functional.multiclass_calibration_error(
        probs, labels, num_classes=6, n_bins=n_bins, norm=norm
    )
    assert calibration_error(probs, labels, n_bins=n_bins, norm=norm) == pytest.approx(
        float(expected), abs=1e-6
    )


def test_reliability_bins_uniform() -> None:
    bins = reliability_bins(_probs(torch.float32), _labels(), n_bins=3)
    assert bins.edges.dtype == torch.float64
    assert bins.edges.tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert bins.count.dtype == torch.int64
    assert bins.count.tolist() == [0, 3, 1]
    assert bins.confidence.dtype == torch.float64
    assert bins.accuracy.dtype == torch.float64
    assert math.isnan(bins.confidence[0])
    assert math.isnan(bins.accuracy[0])
    assert bins.confidence[1:].tolist() == pytest.approx([1.7 / 3, 0.9], abs=1e-7)
    assert bins.accuracy[1:].tolist() == pytest.approx([1 / 3, 1.0])
    for tensor in (bins.edges, bins.count, bins.confidence, bins.accuracy):
        assert tensor.device.type == "cpu"


@settings(deadline=None, max_examples=30)
@given(
    seed=seeds,
    n=st.integers(1, 150),
    c=st.integers(2, 6),
    n_bins=st.integers(1, 20),
    binning=st.sampled_from(BINNINGS),
)
def test_reliability_bins_reproduce_calibration_error(
    seed: int, n: int, c: int, n_bins: int, binning: str
) -> None:
    logits, labels = make_data(seed, n, c)
    bins = reliability_bins(logits, labels, n_bins=n_bins, binning=binning, from_logits=True)
    weight = bins.count.double() / n
    gap = (bins.accuracy - bins.confidence).abs()
    nonempty = bins.count > 0
    ece = calibration_error(logits, labels, n_bins=n_bins, binning=binning, from_logits=True)
    mce = calibration_error(
        logits, labels, n_bins=n_bins, binning=binning, norm="max", from_logits=True
    )
    assert int(bins.count.sum()) == n
    assert ece == pytest.approx(float((weight * gap)[nonempty].sum()), abs=1e-12)
    assert mce == pytest.approx(float(gap[nonempty].max()), abs=1e-12)


# --------------------------------------------------------------------------- #
# Properties.
# --------------------------------------------------------------------------- #


@st.composite
def score_data(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities with edge cases: random softmaxes at several sharpness levels
    (scale 60 gives confidences of exactly 1.0), or binary rows with hypothesis floats."""
    if draw(st.booleans()):
        n, c = draw(st.integers(1, 120)), draw(st.integers(2, 6))
        scale = draw(st.sampled_from([0.0, 0.3, 2.0, 8.0, 60.0]))
        logits, labels = make_data(draw(seeds), n, c, scale)
        return torch.softmax(logits, dim=1), labels
    positives = draw(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=60))
    labels = draw(st.lists(st.integers(0, 1), min_size=len(positives), max_size=len(positives)))
    return binary_probs(positives), torch.tensor(labels)


@settings(deadline=None, max_examples=60)
@given(data=score_data(), n_bins=st.integers(1, 25), binning=st.sampled_from(BINNINGS))
def test_calibration_error_in_unit_interval_and_norms_ordered(
    data: tuple[torch.Tensor, torch.Tensor], n_bins: int, binning: str
) -> None:
    probs, labels = data
    l1, l2, mce = (
        calibration_error(probs, labels, n_bins=n_bins, norm=norm, binning=binning)
        for norm in NORMS
    )
    classwise = classwise_calibration_error(probs, labels, n_bins=n_bins)
    for value in (l1, l2, mce, classwise):
        assert 0.0 <= value <= 1.0
    # power means of the bin gaps: l1 <= l2 <= max
    assert l1 <= l2 + 1e-12
    assert l2 <= mce + 1e-12


@settings(deadline=None, max_examples=40)
@given(data=score_data(), n_bins=st.integers(1, 25), seed=seeds)
def test_invariant_to_sample_order(
    data: tuple[torch.Tensor, torch.Tensor], n_bins: int, seed: int
) -> None:
    probs, labels = data
    order = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))
    for binning in BINNINGS:
        for norm in NORMS:
            before = calibration_error(probs, labels, n_bins=n_bins, norm=norm, binning=binning)
            after = calibration_error(
                probs[order], labels[order], n_bins=n_bins, norm=norm, binning=binning
            )
            assert after == pytest.approx(before, abs=1e-12)
    before = classwise_calibration_error(probs, labels, n_bins=n_bins)
    after = classwise_calibration_error(probs[order], labels[order], n_bins=n_bins)
    assert after == pytest.approx(before, abs=1e-12)


@settings(deadline=None, max_examples=40)
@given(
    groups=st.lists(st.tuples(st.integers(1, 12), st.integers(0, 12)), min_size=1, max_size=8).map(
        lambda gs: [(m, min(j, m)) for m, j in gs]
    ),
    c=st.integers(2, 5),
    n_bins=st.integers(1, 20),
    seed=seeds,
)
def test_zero_for_a_predictor_whose_confidence_equals_its_accuracy(
    groups: list[tuple[int, int]], c: int, n_bins: int, seed: int
) -> None:
    # Group g: m samples of confidence j/m, exactly j of them correct. Equal confidences
    # always share a bin, so in every bin sum(confidence) == number correct whatever the
    # bins: ECE, L2 and MCE are 0 for both binnings.
    generator = torch.Generator().manual_seed(seed)
    rows, labels = [], []
    for m, j in groups:
        conf = j / m
        if conf <= 1 / c:  # the top label must be the unique argmax
            continue
        predicted = int(torch.randint(0, c, (1,), generator=generator))
        row = torch.full((c,), (1.0 - conf) / (c - 1), dtype=torch.float64)
        row[predicted] = conf
        wrong = (predicted + 1) % c
        rows.append(row.expand(m, c))
        labels.append(torch.tensor([predicted] * j + [wrong] * (m - j)))
    if not rows:
        rows, labels = [torch.eye(c, dtype=torch.float64)], [torch.arange(c)]
    probs, targets = torch.cat(rows), torch.cat(labels)
    order = torch.randperm(targets.numel(), generator=generator)
    probs, targets = probs[order], targets[order]
    for binning in BINNINGS:
        for norm in NORMS:
            value = calibration_error(probs, targets, n_bins=n_bins, norm=norm, binning=binning)
            assert value == pytest.approx(0.0, abs=1e-12)


@settings(deadline=None, max_examples=30)
@given(
    seed=seeds,
    n=st.integers(1, 150),
    c=st.integers(2, 6),
    scale=st.sampled_from([0.1, 1.0, 4.0, 40.0]),
    n_bins=st.integers(1, 20),
)
def test_from_logits_equals_softmax_probabilities(
    seed: int, n: int, c: int, scale: float, n_bins: int
) -> None:
    logits, labels = make_data(seed, n, c, scale)
    probs = torch.softmax(logits, dim=1)
    for binning in BINNINGS:
        for norm in NORMS:
            kwargs: dict[str, Any] = {"n_bins": n_bins, "norm": norm, "binning": binning}
            expected = calibration_error(probs, labels, **kwargs)
            got = calibration_error(logits, labels, from_logits=True, **kwargs)
            assert got == pytest.approx(expected, abs=1e-9)
    assert classwise_calibration_error(
        logits, labels, n_bins=n_bins, from_logits=True
    ) == pytest.approx(classwise_calibration_error(probs, labels, n_bins=n_bins), abs=1e-9)
    assert brier_score(logits, labels, from_logits=True) == pytest.approx(
        brier_score(probs, labels), abs=1e-9
    )
    assert accuracy(logits, labels) == accuracy(probs, labels)
    if scale < 40.0:  # at scale 40 softmax underflows to 0 and the probability NLL is clamped
        assert negative_log_likelihood(logits, labels, from_logits=True) == pytest.approx(
            negative_log_likelihood(probs, labels), rel=1e-9
        )


def _same_values_in_other_containers(p16: torch.Tensor) -> list[Any]:
    return [p16, p16.float(), p16.double(), p16.float().numpy(), p16.double().numpy()]


@settings(deadline=None, max_examples=30)
@given(seed=seeds, n=st.integers(1, 150), c=st.integers(2, 6), n_bins=st.integers(1, 20))
def test_dtypes_and_numpy_give_the_float32_result(seed: int, n: int, c: int, n_bins: int) -> None:
    logits, labels = make_data(seed, n, c)
    # Values exactly representable in float16, so every container holds the same numbers.
    p16 = torch.softmax(logits, dim=1).half()
    p32 = p16.float()
    label_containers: list[Any] = [
        labels,
        labels.int(),
        labels.numpy(),
        labels.numpy().astype(np.int32),
    ]
    metrics: list[Callable[[Any, Any], float]] = [
        functools.partial(calibration_error, n_bins=n_bins),
        functools.partial(calibration_error, n_bins=n_bins, norm="max"),
        functools.partial(calibration_error, n_bins=n_bins, binning="quantile"),
        functools.partial(classwise_calibration_error, n_bins=n_bins),
        negative_log_likelihood,
        brier_score,
        accuracy,
    ]
    if bool((p16.gather(1, labels.unsqueeze(1)) == 0).any()):
        # float16 underflow to 0 on a true class: NLL is then the clamp of the computation
        # dtype, which differs between float32 and float64 on purpose (tested elsewhere).
        metrics.remove(negative_log_likelihood)
    for metric in metrics:
        expected = metric(p32, labels)
        for probs in _same_values_in_other_containers(p16):
            assert metric(probs, labels) == pytest.approx(expected, abs=1e-12, rel=1e-12)
        for targets in label_containers:
            assert metric(p32, targets) == expected


def test_float16_rounding_stays_close_to_float32() -> None:
    logits, labels = make_data(11, 4000, 10)
    probs = torch.softmax(logits, dim=1).float()
    for norm in NORMS:
        full = calibration_error(probs, labels, norm=norm)
        half = calibration_error(probs.half(), labels, norm=norm)
        assert half == pytest.approx(full, abs=5e-3)
    assert negative_log_likelihood(probs.half(), labels) == pytest.approx(
        negative_log_likelihood(probs, labels), rel=1e-2
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    logits, labels = make_data(5, 3000, 10)
    cuda_logits, cuda_labels = logits.float().cuda(), labels.cuda()
    for binning in BINNINGS:
        expected = calibration_error(logits.float(), labels, binning=binning, from_logits=True)
        got = calibration_error(cuda_logits, cuda_labels, binning=binning, from_logits=True)
        assert got == pytest.approx(expected, abs=1e-6)
    assert classwise_calibration_error(cuda_logits, labels, from_logits=True) == pytest.approx(
        classwise_calibration_error(logits.float(), labels, from_logits=True), abs=1e-6
    )
    assert negative_log_likelihood(cuda_logits, cuda_labels, from_logits=True) == pytest.approx(
        negative_log_likelihood(logits, labels, from_logits=True), rel=1e-5
    )
    bins = reliability_bins(cuda_logits, cuda_labels, from_logits=True)
    assert bins.count.device.type == "cpu"


# --------------------------------------------------------------------------- #
# Bootstrap.
# --------------------------------------------------------------------------- #


def test_bootstrap_matches_a_manual_percentile_bootstrap() -> None:
    logits, labels = make_data(1, 300, 4)
    metric = functools.partial(calibration_error, n_bins=10, from_logits=True)
    result = bootstrap_interval(metric, logits, labels, n_resamples=50, confidence=0.9, seed=7)
    assert isinstance(result, BootstrapInterval)
    generator = torch.Generator().manual_seed(7)
    values = []
    for _ in range(50):
        rows = torch.randint(300, (300,), generator=generator)
        values.append(metric(logits[rows], labels[rows]))
    low, high = np.quantile(values, [0.05, 0.95])
    assert result.estimate == metric(logits, labels)
    assert result.low == pytest.approx(low, abs=1e-15)
    assert result.high == pytest.approx(high, abs=1e-15)
    assert result.low < result.high


def test_bootstrap_is_seeded_and_keeps_the_input_kind() -> None:
    logits, labels = make_data(2, 200, 3)
    x, y = logits.numpy(), labels.numpy()
    seen: list[tuple[type, type, int]] = []

    def spy(probs: Any, targets: Any) -> float:
        seen.append((type(probs), type(targets), len(targets)))
        return accuracy(probs, targets)

    first = bootstrap_interval(spy, x, y, n_resamples=20, seed=3)
    assert {kind for kind in seen} == {(np.ndarray, np.ndarray, 200)}
    assert bootstrap_interval(accuracy, x, y, n_resamples=20, seed=3) == first
    assert bootstrap_interval(accuracy, logits, labels, n_resamples=20, seed=3) == first
    assert bootstrap_interval(accuracy, x, y, n_resamples=20, seed=4) != first


def test_bootstrap_interval_of_accuracy_has_the_binomial_width() -> None:
    generator = torch.Generator().manual_seed(0)
    n = 2000
    labels = torch.randint(0, 2, (n,), generator=generator)
    correct = torch.rand(n, generator=generator) < 0.8
    predicted = torch.where(correct, labels, 1 - labels)
    probs = torch.nn.functional.one_hot(predicted, 2).double()
    result = bootstrap_interval(accuracy, probs, labels, n_resamples=400, seed=0)
    p = result.estimate
    expected_width = 2 * 1.96 * math.sqrt(p * (1 - p) / n)
    assert result.low < p < result.high
    assert result.high - result.low == pytest.approx(expected_width, rel=0.2)


def test_bootstrap_single_resample() -> None:
    probs, labels = _probs(), _labels()
    result = bootstrap_interval(accuracy, probs, labels, n_resamples=1, seed=0)
    assert result.low == result.high


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_resamples": 0}, ValueError, "n_resamples must be >= 1, got 0"),
        ({"n_resamples": 2.5}, TypeError, "n_resamples must be an int"),
        ({"confidence": 0.0}, ValueError, r"confidence must be in \(0, 1\), got 0.0"),
        ({"confidence": 1.0}, ValueError, r"confidence must be in \(0, 1\), got 1.0"),
        ({"confidence": 95}, ValueError, r"confidence must be in \(0, 1\), got 95"),
        ({"confidence": "high"}, TypeError, "confidence must be a real number"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
    ],
)
def test_bootstrap_argument_errors(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        bootstrap_interval(accuracy, _probs(), _labels(), **kwargs)


def test_bootstrap_input_errors() -> None:
    with pytest.raises(TypeError, match="metric must be callable"):
        bootstrap_interval("ece", _probs(), _labels())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"labels must have one entry per row of probs \(4\)"):
        bootstrap_interval(accuracy, _probs(), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="probs must have at least one row"):
        bootstrap_interval(accuracy, torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(TypeError, match=r"probs must be a torch\.Tensor or numpy\.ndarray"):
        bootstrap_interval(accuracy, P, _labels())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# Error paths of the functional metrics.
# --------------------------------------------------------------------------- #

ALL_FUNCTIONS: list[Callable[..., Any]] = [
    calibration_error,
    classwise_calibration_error,
    reliability_bins,
    negative_log_likelihood,
    brier_score,
]

BAD_INPUTS: list[tuple[Any, Any, type[Exception], str]] = [
    (P, Y, TypeError, "probs must be a torch.Tensor or numpy.ndarray, got list"),
    (torch.tensor(P), Y, TypeError, "labels must be a torch.Tensor or numpy.ndarray, got list"),
    (torch.tensor(P[0]), torch.tensor([0]), ValueError, r"probs must have shape \(N, C\)"),
    (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), ValueError, "probs is empty"),
    (torch.ones(4, 1), torch.zeros(4, dtype=torch.long), ValueError, "at least 2 classes"),
    (
        torch.tensor([[0.5, float("nan")], [0.5, 0.5]]),
        torch.tensor([0, 1]),
        ValueError,
        "probs must be finite, got NaN or inf in row 0",
    ),
    (
        torch.tensor([[0.5, 0.5], [0.5, float("inf")]]),
        torch.tensor([0, 1]),
        ValueError,
        "probs must be finite, got NaN or inf in row 1",
    ),
    (
        torch.tensor([[0.5, 0.6], [0.5, 0.5]]),
        torch.tensor([0, 1]),
        ValueError,
        r"probs rows must sum to 1, got 1\.1 in row 0; pass from_logits=True",
    ),
    (
        torch.tensor([[2.0, -1.0], [0.5, 0.5]]),
        torch.tensor([0, 1]),
        ValueError,
        r"probs must be probabilities in \[0, 1\].*from_logits=True",
    ),
    (
        torch.tensor(P),
        torch.tensor([0, 1, 2, 5]),
        ValueError,
        r"labels must be in \[0, 3\), got max 5",
    ),
    (torch.tensor(P), torch.tensor([0, -1, 2, 0]), ValueError, "labels must be non-negative"),
    (
        torch.tensor(P),
        torch.tensor([0, 1, 2]),
        ValueError,
        r"labels must have one entry per sample \(4\), got 3",
    ),
    (torch.tensor(P), torch.tensor([[0, 1, 2, 0]]), ValueError, r"labels must have shape \(N,\)"),
    (
        torch.tensor(P),
        torch.tensor([0.0, 1.0, 2.0, 0.0]),
        TypeError,
        "labels must hold integer class indices",
    ),
    (np.array(P), np.array(Y) + 10, ValueError, r"labels must be in \[0, 3\), got max 12"),
]


@pytest.mark.parametrize("function", ALL_FUNCTIONS)
@pytest.mark.parametrize(("probs", "labels", "error", "match"), BAD_INPUTS)
def test_bad_inputs_raise_naming_the_argument(
    function: Callable[..., Any], probs: Any, labels: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        function(probs, labels)


@pytest.mark.parametrize("function", [*ALL_FUNCTIONS, accuracy])
def test_nonfinite_logits_are_an_error(function: Callable[..., Any]) -> None:
    logits = torch.tensor([[1.0, 2.0], [float("nan"), 0.0]])
    kwargs = {} if function is accuracy else {"from_logits": True}
    with pytest.raises(ValueError, match="probs must be finite, got NaN or inf in row 1"):
        function(logits, torch.tensor([0, 1]), **kwargs)


def test_accuracy_accepts_logits_but_checks_labels() -> None:
    logits = torch.tensor([[3.0, -1.0], [0.0, 5.0]])
    assert accuracy(logits, torch.tensor([0, 1])) == 1.0
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\), got max 2"):
        accuracy(logits, torch.tensor([0, 2]))


@pytest.mark.parametrize(
    ("function", "kwargs", "error", "match"),
    [
        (calibration_error, {"n_bins": 0}, ValueError, "n_bins must be >= 1, got 0"),
        (calibration_error, {"n_bins": 2.5}, TypeError, "n_bins must be an int, got float 2.5"),
        (calibration_error, {"n_bins": True}, TypeError, "n_bins must be an int"),
        (
            calibration_error,
            {"norm": "l3"},
            ValueError,
            "norm must be one of 'l1', 'l2', 'max'; got 'l3'",
        ),
        (
            calibration_error,
            {"binning": "adaptive"},
            ValueError,
            "binning must be one of 'uniform', 'quantile'; got 'adaptive'",
        ),
        (calibration_error, {"from_logits": 1}, TypeError, "from_logits must be a bool, got int 1"),
        (reliability_bins, {"n_bins": -3}, ValueError, "n_bins must be >= 1, got -3"),
        (reliability_bins, {"binning": "equal"}, ValueError, "binning must be one of"),
        (classwise_calibration_error, {"n_bins": 0}, ValueError, "n_bins must be >= 1, got 0"),
        (classwise_calibration_error, {"norm": "L1"}, ValueError, "norm must be one of"),
        (negative_log_likelihood, {"from_logits": "yes"}, TypeError, "from_logits must be a bool"),
        (brier_score, {"from_logits": None}, TypeError, "from_logits must be a bool"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(
    function: Callable[..., Any], kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        function(_probs(), _labels(), **kwargs)


@settings(deadline=None, max_examples=40)
@given(
    seed=seeds,
    n=st.integers(1, 300),
    c=st.integers(2, 12),
    n_bins=st.integers(1, 20),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    from_logits=st.booleans(),
)
def test_the_summary_computed_once_equals_each_functional_metric(
    seed: int, n: int, c: int, n_bins: int, dtype: torch.dtype, from_logits: bool
) -> None:
    logits, labels = make_data(seed, n, c)
    scores = (logits if from_logits else torch.softmax(logits, dim=1)).to(dtype)
    summary = calibration_summary(
        scores, labels, n_bins=n_bins, from_logits=from_logits, classwise=True
    )
    kwargs = {"from_logits": from_logits}
    expected = {
        "accuracy": accuracy(scores, labels),
        "ece": calibration_error(scores, labels, n_bins=n_bins, **kwargs),
        "mce": calibration_error(scores, labels, n_bins=n_bins, norm="max", **kwargs),
        "nll": negative_log_likelihood(scores, labels, **kwargs),
        "brier": brier_score(scores, labels, **kwargs),
        "classwise_ece": classwise_calibration_error(scores, labels, n_bins=n_bins, **kwargs),
    }
    assert summary == expected


def test_calibration_summary_is_the_table_columns() -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(300, 4, generator=generator, dtype=torch.float64) * 2
    labels = torch.randint(4, (300,), generator=generator)
    summary = calibration_summary(logits, labels, n_bins=10, from_logits=True, classwise=True)
    probs = torch.softmax(logits, dim=1)
    expected = {
        "accuracy": accuracy(probs, labels),
        "ece": calibration_error(probs, labels, n_bins=10),
        "mce": calibration_error(probs, labels, n_bins=10, norm="max"),
        "nll": negative_log_likelihood(logits, labels, from_logits=True),
        "brier": brier_score(probs, labels),
        "classwise_ece": classwise_calibration_error(probs, labels, n_bins=10),
    }
    assert summary == {key: pytest.approx(value, abs=1e-12) for key, value in expected.items()}
    assert summary["ece"] > 0.01
    assert set(calibration_summary(probs, labels)) == {"accuracy", "ece", "mce", "nll", "brier"}
