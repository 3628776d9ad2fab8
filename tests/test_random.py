"""Derived random streams (ddcal/_random.py): a generator per key, no two keys alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddcal._random import (
    BATCH_STREAM,
    EXPERT_STREAM,
    NETWORK_STREAM,
    derived_generator,
    derived_global_rng,
)
from ddcal.distill.base import DistillationContext
from ddcal.distill.experts import build_expert_network
from ddcal.distill.real import RealData
from ddcal.models import build_convnet

#: Two keys of one DM run whose SeedSequence words differ but share the low 32 bits
#: torch's ``manual_seed`` keeps: seeded that way, they drew the same batches.
ALIASED_UNDER_32_BITS = ((0, BATCH_STREAM, 8374, 7), (0, BATCH_STREAM, 13314, 9))

#: Two iterations of seed 0 whose wide draw ``randint(2**62)`` from their network key
#: shares its low 32 bits: had that draw been passed to ``manual_seed`` (as streams
#: version 2 did), both iterations would have started from the same network.
NETWORK_ITERATIONS_ALIASED_UNDER_32_BITS = (27537, 60623)

keys = st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=5)


def test_keys_that_share_32_bits_of_their_mix_draw_differently() -> None:
    first, second = ALIASED_UNDER_32_BITS
    low_words = [
        np.random.SeedSequence(list(k)).generate_state(2, np.uint32)[1] for k in (first, second)
    ]
    assert low_words[0] == low_words[1]
    draws = [torch.rand(8, generator=derived_generator(*k)) for k in (first, second)]
    assert not torch.equal(draws[0], draws[1])


@settings(max_examples=50, deadline=None)
@given(keys)
def test_the_same_keys_give_the_same_draws_of_every_kind(key: list[int]) -> None:
    one, two = derived_generator(*key), derived_generator(*key)
    for draw in (
        lambda g: torch.rand(5, generator=g),
        lambda g: torch.randn(5, generator=g),
        lambda g: torch.randint(1000, (5,), generator=g),
        lambda g: torch.randperm(7, generator=g),
    ):
        assert torch.equal(draw(one), draw(two))


@settings(max_examples=50, deadline=None)
@given(keys, keys)
def test_different_keys_give_different_draws(first: list[int], second: list[int]) -> None:
    if first == second:
        return
    one = torch.randint(2**62, (4,), generator=derived_generator(*first))
    two = torch.randint(2**62, (4,), generator=derived_generator(*second))
    assert not torch.equal(one, two)


def test_a_key_list_and_its_zero_padded_extension_draw_differently() -> None:
    """``SeedSequence`` pads a short entropy list with zeros; the key count keeps them apart."""
    short, padded = (5, BATCH_STREAM, 3), (5, BATCH_STREAM, 3, 0)
    draws = [torch.rand(8, generator=derived_generator(*k)) for k in (short, padded)]
    assert not torch.equal(draws[0], draws[1])


@pytest.mark.parametrize("bad", [(), (2**32,), (0, -1), (1, 2**40, 3)])
def test_keys_outside_one_word_are_refused(bad: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="derived_generator"):
        derived_generator(*bad)


def test_the_derived_global_rng_draws_the_derived_stream_and_restores_the_global_one() -> None:
    torch.manual_seed(123)
    expected_after = torch.rand(3)
    torch.manual_seed(123)
    with derived_global_rng(7, 1, 2):
        inside = torch.rand(5)
    assert torch.equal(inside, torch.rand(5, generator=derived_generator(7, 1, 2)))
    assert torch.equal(torch.rand(3), expected_after)


def _context(seed: int) -> DistillationContext:
    images, labels = torch.zeros(4, 1, 28, 28), torch.tensor([0, 0, 1, 1])
    real = RealData.from_tensors(images, labels, torch.device("cpu"))
    return DistillationContext(real, 1, "ConvNetD3", seed, 0.0, torch.device("cpu"))


def _first_weight(network: torch.nn.Module) -> torch.Tensor:
    return next(network.parameters()).detach()


def test_iterations_whose_wide_draws_share_32_bits_start_from_different_networks() -> None:
    first, second = NETWORK_ITERATIONS_ALIASED_UNDER_32_BITS
    low = [
        int(torch.randint(2**62, (), generator=derived_generator(0, NETWORK_STREAM, t))) % 2**32
        for t in (first, second)
    ]
    assert low[0] == low[1]
    context = _context(seed=0)
    weights = [_first_weight(context.network(t, width=8)) for t in (first, second)]
    assert not torch.equal(weights[0], weights[1])
    assert torch.equal(weights[0], _first_weight(context.network(first, width=8)))


def test_an_experts_initial_network_is_its_keys_own() -> None:
    def expert(seed: int, index: int) -> torch.Tensor:
        network = build_expert_network("ConvNetD3", 1, 2, (28, 28), width=8, seed=seed, index=index)
        return _first_weight(network)

    with derived_global_rng(0, EXPERT_STREAM, 3, 0):
        expected = _first_weight(build_convnet("ConvNetD3", 1, 2, (28, 28), width=8))
    assert torch.equal(expert(0, 3), expected)
    assert not torch.equal(expert(0, 3), expert(0, 4))
    assert not torch.equal(expert(0, 3), expert(1, 3))


def test_the_draws_are_uniform_and_normal() -> None:
    uniform = torch.rand(200_000, generator=derived_generator(3, 1))
    normal = torch.randn(200_000, generator=derived_generator(3, 2))
    assert abs(float(uniform.mean()) - 0.5) < 0.005
    assert abs(float(uniform.var()) - 1 / 12) < 0.002
    assert abs(float(normal.mean())) < 0.01
    assert abs(float(normal.std()) - 1.0) < 0.01
    counts = torch.bincount(torch.randint(10, (100_000,), generator=derived_generator(3, 3)))
    assert int(counts.min()) > 9_500
    assert int(counts.max()) < 10_500
