"""Derived randomness: generators seeded from integer keys, and the streams that keep draws apart.

A draw that belongs to, say, iteration ``t`` and class ``c`` comes from
``derived_generator(seed, STREAM, t, c)`` instead of a generator carried from
one call to the next. Its value then depends only on those keys, not on what
ran before it: a run resumed from a checkpoint continues bit for bit, and
per-class work can be split across processes without sharing random state.

Streams: each purpose has its own first key after the seed, so no two purposes
share draws. Streams of different methods may reuse a number (they never run
in the same distiller); the expert stream is apart from all distillers' because
MTT trains experts and distils in one run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

INIT_STREAM = 0  # the initial synthetic images
NETWORK_STREAM = 1  # the fresh network of each iteration
BATCH_STREAM = 2  # real batches and siamese DSA draws (MTT: expert, start epoch, batches)
TRAIN_STREAM = 3  # DC/DSA: the inner training of the network on the synthetic set
AUGMENT_STREAM = 3  # MTT: the DSA draw of each student step
MDT_STREAM = 4  # Masked Distillation Training's masks
EXPERT_STREAM = 10  # MTT experts: initialisation, batch order, augmentation

#: Bumped when the draws of a key change, so that cached and checkpointed work made
#: with other draws is not continued or reused (3: the key's length is mixed in and
#: the networks of an iteration or an expert are initialised from the whole state;
#: 2: the generator's whole state is seeded from the keys; 1 kept 32 bits of them).
STREAMS_VERSION = 3

#: Every key is one 32-bit word, so that a key list is mixed as exactly its words.
KEY_LIMIT = 2**32


#: torch's CPU generator state (``Generator.get_state``): the seed (uint64), ``left``
#: and ``seeded`` (int32), ``next`` (uint64), the 624 mt19937 words (each in a
#: uint64), three cached normal doubles and their flag, a cached float and its flag.
_MT_WORDS = 624
_STATE_BYTES = 5056
_WORDS_OFFSET = 24


def derived_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from integer ``keys``, each in ``[0, 2**32)``.

    E.g. ``(seed, BATCH_STREAM, iteration, class)``; distinct keys give
    independent streams: numpy's ``SeedSequence`` mixes the number of keys and
    the keys into all 624 words of the Mersenne Twister's state. (``manual_seed``
    would keep only 32 bits of any seed, and among a run's hundreds of thousands
    of keys some would share their draws.) The count is mixed in because
    ``SeedSequence`` pads a short key list with zeros (``(s, 0)`` would draw what
    ``(s, 0, 0)`` draws), and each key is one word because it splits a larger
    integer into words (``(2**32,)`` would draw what ``(0, 1)`` draws).

    Raises:
        ValueError: no keys, or a key outside ``[0, 2**32)``.
    """
    if not keys:
        raise ValueError("derived_generator needs at least one key")
    for key in keys:
        if not 0 <= int(key) < KEY_LIMIT:
            raise ValueError(f"derived_generator keys must be in [0, 2**32), got {keys}")
    entropy = np.random.SeedSequence([len(keys), *(int(k) for k in keys)])
    words = entropy.generate_state(_MT_WORDS + 2, np.uint32)
    state = np.zeros(_STATE_BYTES, dtype=np.uint8)
    header = np.array([int(words[0]) << 32 | int(words[1]), 1 | 1 << 32, 0], dtype="<u8")
    state[:_WORDS_OFFSET] = header.view(np.uint8)
    end = _WORDS_OFFSET + 8 * _MT_WORDS
    state[_WORDS_OFFSET:end] = words[2:].astype("<u8").view(np.uint8)
    generator = torch.Generator()
    generator.set_state(torch.from_numpy(state))
    return generator


@contextmanager
def derived_global_rng(*keys: int) -> Iterator[None]:
    """Within the block torch's global CPU generator draws what ``derived_generator(*keys)``
    draws; its state before the block is restored after it.

    For code that draws from the global generator only, such as a module's
    initialisation (``nn.Conv2d`` and ``nn.Linear`` take no generator).
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.set_state(derived_generator(*keys).get_state())
        yield
