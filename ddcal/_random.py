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
#: with other draws is not continued or reused (2: the generator's whole state is
#: seeded from the keys; 1 kept 32 bits of them).
STREAMS_VERSION = 2


#: torch's CPU generator state (``Generator.get_state``): the seed (uint64), ``left``
#: and ``seeded`` (int32), ``next`` (uint64), the 624 mt19937 words (each in a
#: uint64), three cached normal doubles and their flag, a cached float and its flag.
_MT_WORDS = 624
_STATE_BYTES = 5056
_WORDS_OFFSET = 24


def derived_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from non-negative integer ``keys``.

    E.g. ``(seed, BATCH_STREAM, iteration, class)``; distinct keys give
    independent streams: numpy's ``SeedSequence`` mixes the keys into all 624
    words of the Mersenne Twister's state. (``manual_seed`` would keep only 32
    bits of any seed, and among a run's hundreds of thousands of keys some would
    share their draws.) The keys of one purpose must have one length:
    ``SeedSequence`` pads a shorter key with zeros, so ``(s, 0)`` draws what
    ``(s, 0, 0)`` draws.
    """
    words = np.random.SeedSequence([int(k) for k in keys]).generate_state(_MT_WORDS + 2, np.uint32)
    state = np.zeros(_STATE_BYTES, dtype=np.uint8)
    header = np.array([int(words[0]) << 32 | int(words[1]), 1 | 1 << 32, 0], dtype="<u8")
    state[:_WORDS_OFFSET] = header.view(np.uint8)
    end = _WORDS_OFFSET + 8 * _MT_WORDS
    state[_WORDS_OFFSET:end] = words[2:].astype("<u8").view(np.uint8)
    generator = torch.Generator()
    generator.set_state(torch.from_numpy(state))
    return generator
