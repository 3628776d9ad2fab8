"""Derived random streams (ddcal/_random.py): a generator per key, no two keys alike."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddcal._random import BATCH_STREAM, derived_generator

#: Two keys of one DM run whose SeedSequence words differ but share the low 32 bits
#: torch's ``manual_seed`` keeps: seeded that way, they drew the same batches.
ALIASED_UNDER_32_BITS = ((0, BATCH_STREAM, 8374, 7), (0, BATCH_STREAM, 13314, 9))

keys = st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=5)


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
@given(st.integers(1, 5).flatmap(lambda n: st.tuples(*[st.integers(0, 2**63 - 1)] * n)), keys)
def test_different_keys_of_one_length_give_different_draws(
    first: tuple[int, ...], other: list[int]
) -> None:
    """Keys of one length, as every purpose's keys are (a shorter key is padded with zeros)."""
    second = (list(other) + [0] * len(first))[: len(first)]
    if list(first) == second:
        return
    one = torch.randint(2**62, (4,), generator=derived_generator(*first))
    two = torch.randint(2**62, (4,), generator=derived_generator(*second))
    assert not torch.equal(one, two)


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
