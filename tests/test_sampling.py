import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from ddcal.sampling import PerClassSampler, per_class_split

class_sizes = st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=8)


def _labels(sizes: list[int], seed: int) -> torch.Tensor:
    labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))]


@settings(deadline=None, max_examples=60)
@given(sizes=class_sizes, data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_exactly_k_distinct_indices_per_class(
    sizes: list[int], data: st.DataObject, seed: int
) -> None:
    labels = _labels(sizes, seed)
    k = data.draw(st.integers(1, min(sizes)))
    indices = PerClassSampler(labels, per_class=k, seed=seed).indices()
    assert torch.equal(
        torch.bincount(labels[indices], minlength=len(sizes)), torch.full((len(sizes),), k)
    )
    assert indices.unique().numel() == indices.numel()
    assert int(indices.min()) >= 0
    assert int(indices.max()) < labels.numel()


@settings(deadline=None, max_examples=60)
@given(sizes=class_sizes, k=st.integers(1, 20), seed=st.integers(0, 2**31 - 1))
def test_with_replacement_any_k_is_exact(sizes: list[int], k: int, seed: int) -> None:
    labels = _labels(sizes, seed)
    indices = PerClassSampler(labels, per_class=k, replacement=True, seed=seed).indices()
    assert torch.equal(
        torch.bincount(labels[indices], minlength=len(sizes)), torch.full((len(sizes),), k)
    )


@settings(deadline=None, max_examples=60)
@given(sizes=class_sizes, fraction=st.floats(0.01, 0.99), seed=st.integers(0, 1000))
def test_fraction_gives_rounded_share_of_each_class(
    sizes: list[int], fraction: float, seed: int
) -> None:
    labels = _labels(sizes, seed)
    sampler = PerClassSampler(labels, fraction=fraction, seed=seed)
    expected = [max(1, math.floor(n * fraction + 0.5)) for n in sizes]
    assert torch.bincount(labels[sampler.indices()], minlength=len(sizes)).tolist() == expected
    assert len(sampler) == sum(expected)


@settings(deadline=None, max_examples=40)
@given(sizes=class_sizes, seed=st.integers(0, 2**31 - 1))
def test_sampler_is_deterministic_per_seed(sizes: list[int], seed: int) -> None:
    labels = _labels(sizes, 0)
    first = PerClassSampler(labels, per_class=1, seed=seed)
    second = PerClassSampler(labels, per_class=1, seed=seed)
    assert list(first) == list(second)
    assert list(first) == list(first)


def test_set_epoch_and_seed_change_the_draw() -> None:
    labels = torch.arange(1000) % 10
    sampler = PerClassSampler(labels, per_class=5, seed=0)
    first = sampler.indices()
    sampler.set_epoch(1)
    assert not torch.equal(first, sampler.indices())
    assert not torch.equal(first, PerClassSampler(labels, per_class=5, seed=1).indices())


def test_draw_is_uniform_within_a_class() -> None:
    labels = torch.zeros(4, dtype=torch.long)
    hits = torch.zeros(4)
    for seed in range(2000):
        hits[PerClassSampler(labels, per_class=1, seed=seed).indices()] += 1
    assert torch.all((hits - 500).abs() < 5 * math.sqrt(2000 * 0.25 * 0.75))


def test_sampler_drives_a_dataloader_and_accepts_numpy() -> None:
    labels = np.repeat(np.arange(3), 4)
    dataset = TensorDataset(torch.arange(12), torch.from_numpy(labels))
    sampler = PerClassSampler(labels, per_class=2, seed=0)
    loader = DataLoader(dataset, batch_size=100, sampler=sampler)
    ((_, batch_labels),) = list(loader)
    assert torch.bincount(batch_labels).tolist() == [2, 2, 2]
    assert len(sampler) == 6


def test_too_few_images_without_replacement_names_the_class() -> None:
    labels = torch.tensor([0, 0, 0, 1, 2, 2, 2])
    with pytest.raises(ValueError, match=r"per_class=2 but class 1 has only 1 images.*replacement"):
        PerClassSampler(labels, per_class=2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, "exactly one of per_class and fraction"),
        ({"per_class": 1, "fraction": 0.5}, ValueError, "exactly one of per_class and fraction"),
        ({"per_class": 0}, ValueError, "per_class must be >= 1, got 0"),
        ({"per_class": 1.5}, TypeError, "per_class must be an int"),
        ({"fraction": 1.0}, ValueError, r"fraction must be in \(0, 1\), got 1.0"),
        ({"fraction": 0.0}, ValueError, r"fraction must be in \(0, 1\), got 0.0"),
        ({"per_class": 1, "num_classes": 4}, ValueError, r"missing classes \[3\]"),
        ({"per_class": 1, "num_classes": 2}, ValueError, r"labels must be in \[0, 2\), got max 2"),
    ],
)
def test_sampler_rejects_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        PerClassSampler(torch.tensor([0, 1, 2, 0, 1, 2]), **kwargs)


@pytest.mark.parametrize(
    ("labels", "error", "match"),
    [
        (torch.zeros(2, 2, dtype=torch.long), ValueError, r"labels must have shape \(N,\)"),
        (torch.tensor([0.0, 1.0]), TypeError, "labels must hold integer class indices"),
        (
            torch.tensor([0, -1]),
            ValueError,
            "labels must be non-negative class indices, got min -1",
        ),
        (torch.tensor([], dtype=torch.long), ValueError, "labels is empty"),
        ([0, 1], TypeError, "labels must be a torch.Tensor or numpy.ndarray, got list"),
    ],
)
def test_sampler_rejects_bad_labels(labels: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        PerClassSampler(labels, per_class=1)


@settings(deadline=None, max_examples=60)
@given(
    sizes=st.lists(st.integers(2, 15), min_size=1, max_size=8),
    fraction=st.floats(0.01, 0.99),
    seed=st.integers(0, 1000),
)
def test_split_is_a_per_class_partition(sizes: list[int], fraction: float, seed: int) -> None:
    labels = _labels(sizes, seed)
    train, val = per_class_split(labels, fraction, seed=seed)
    assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(labels.numel()))
    expected_val = [min(n - 1, max(1, math.floor(n * fraction + 0.5))) for n in sizes]
    assert torch.bincount(labels[val], minlength=len(sizes)).tolist() == expected_val
    assert torch.bincount(labels[train], minlength=len(sizes)).tolist() == [
        n - v for n, v in zip(sizes, expected_val, strict=True)
    ]
    again = per_class_split(labels, fraction, seed=seed)
    assert torch.equal(again[0], train)
    assert torch.equal(again[1], val)


def test_split_of_ten_per_class_at_ten_percent_holds_one_out_per_class() -> None:
    labels = torch.arange(100) % 10
    train, val = per_class_split(labels, 0.1, seed=3)
    assert torch.bincount(labels[val]).tolist() == [1] * 10
    assert train.numel() == 90


def test_split_with_one_image_per_class_is_impossible() -> None:
    with pytest.raises(ValueError, match="class 1 has 1 image; a per-class split needs at least 2"):
        per_class_split(torch.tensor([0, 0, 1, 2, 2]), 0.1)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 2])
def test_split_rejects_fraction_outside_open_unit_interval(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
        per_class_split(torch.tensor([0, 0, 1, 1]), fraction)
