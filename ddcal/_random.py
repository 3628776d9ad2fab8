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


def derived_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from non-negative integer ``keys``.

    E.g. ``(seed, BATCH_STREAM, iteration, class)``; distinct keys give
    independent streams (numpy's ``SeedSequence`` mixing).
    """
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
