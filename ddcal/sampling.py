"""Per-class samplers and splits.

A distilled set has a handful of images per class, so validation data for
calibration is drawn *per class*: every class present, none over-sampled.
All draws are vectorised (no loop over samples) and deterministic per seed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler

from ddcal._validation import SEED_LIMIT, check_labels, check_memory, check_positive_int, check_seed
from ddcal.errors import InvalidTypeError, InvalidValueError


def _class_layout(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(classes, counts, order)``: ``order`` sorts indices by class."""
    classes, counts = torch.unique(labels, return_counts=True)
    order = torch.argsort(labels, stable=True)
    return classes, counts, order


def _per_class_counts(
    counts: torch.Tensor, per_class: int | None, fraction: float | None
) -> torch.Tensor:
    if per_class is not None:
        return torch.full_like(counts, per_class)
    assert fraction is not None
    return torch.clamp(torch.floor(counts.double() * fraction + 0.5).long(), min=1)


def _missing(classes: torch.Tensor, num_classes: int, shown: int = 10) -> str:
    """The first ``shown`` classes of ``[0, num_classes)`` absent from the sorted ``classes``."""
    present = set(classes.tolist())
    absent = (k for k in range(num_classes) if k not in present)
    first = list(itertools.islice(absent, shown + 1))
    return f"{first[:shown]}{' and more' if len(first) > shown else ''}"


def _check_fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidTypeError(
            f"{name} must be a float in (0, 1), got {type(value).__name__} {value!r}"
        )
    if not 0.0 < float(value) < 1.0:
        raise InvalidValueError(f"{name} must be in (0, 1), got {value!r}")
    return float(value)


def _shuffle_within_classes(
    labels: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices grouped by class (ascending), random order inside each class.

    Returns ``(order, rank)``: ``rank[i]`` is the position of ``order[i]``
    inside its class.
    """
    keys = torch.rand(labels.shape[0], generator=generator, dtype=torch.float64)
    by_key = torch.argsort(keys)
    order = by_key[torch.argsort(labels[by_key], stable=True)]
    sorted_labels = labels[order]
    _, counts = torch.unique_consecutive(sorted_labels, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(labels.shape[0]) - torch.repeat_interleave(starts, counts)
    return order, rank


class PerClassSampler(Sampler[int]):
    """Draw exactly ``per_class`` indices (or a ``fraction``) of every class.

    Args:
        labels: class indices ``(N,)``.
        per_class: number of indices per class.
        fraction: share of each class, rounded half up, at least 1 per class.
            Give exactly one of ``per_class`` and ``fraction``.
        replacement: draw with replacement; required where a class has fewer
            images than ``per_class``.
        num_classes: if given, every class in ``[0, num_classes)`` must occur.
        seed: seed of the draw, in ``[0, 2**32)``. Iterating twice gives the same
            indices; call :meth:`set_epoch` for a fresh, still reproducible, draw.

    Yields indices in random order (classes interleaved). :meth:`indices`
    returns the whole draw as a tensor.
    """

    def __init__(
        self,
        labels: Any,
        per_class: int | None = None,
        fraction: float | None = None,
        *,
        replacement: bool = False,
        num_classes: int | None = None,
        seed: int = 0,
    ) -> None:
        if num_classes is not None:
            num_classes = check_positive_int(num_classes, "num_classes")
        self.labels = check_labels(labels, "labels", num_classes=num_classes).cpu()
        if (per_class is None) == (fraction is None):
            raise InvalidValueError(
                f"give exactly one of per_class and fraction, got per_class={per_class!r}, "
                f"fraction={fraction!r}"
            )
        self.per_class = None if per_class is None else check_positive_int(per_class, "per_class")
        self.fraction = None if fraction is None else _check_fraction(fraction, "fraction")
        self.replacement = bool(replacement)
        self.seed = check_seed(seed)
        self.epoch = 0
        classes, counts, _ = _class_layout(self.labels)
        if num_classes is not None and classes.numel() != num_classes:
            raise InvalidValueError(
                f"labels must contain every class, missing classes {_missing(classes, num_classes)}"
            )
        self._counts = counts
        self._wanted = _per_class_counts(counts, self.per_class, self.fraction)
        short = (self._wanted > counts).nonzero().flatten()
        if short.numel() and not self.replacement:
            c = int(short[0])
            raise InvalidValueError(
                f"per_class={int(self._wanted[c])} but class {int(classes[c])} has only "
                f"{int(counts[c])} images; pass replacement=True or ask for fewer"
            )
        # With replacement a draw can outgrow the labels: a few int64/float64 values per index.
        check_memory(
            4 * 8 * int(self._wanted.sum()),
            torch.device("cpu"),
            f"the indices of per_class={self.per_class} for {classes.numel()} classes",
            "ask for fewer per class",
        )

    def set_epoch(self, epoch: int) -> None:
        """Change the draw reproducibly (as ``DistributedSampler.set_epoch``)."""
        self.epoch = check_positive_int(epoch, "epoch", minimum=0, maximum=SEED_LIMIT - 1)

    def _generator(self) -> torch.Generator:
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        return generator

    def indices(self) -> torch.Tensor:
        """The drawn indices, ``(sum of per-class counts,)`` int64, shuffled."""
        generator = self._generator()
        if self.replacement:
            _, _, order = _class_layout(self.labels)
            starts = torch.cumsum(self._counts, 0) - self._counts
            owner = torch.repeat_interleave(torch.arange(self._counts.numel()), self._wanted)
            offsets = torch.floor(
                torch.rand(owner.numel(), generator=generator, dtype=torch.float64)
                * self._counts[owner]
            ).long()
            chosen = order[starts[owner] + offsets]
        else:
            order, rank = _shuffle_within_classes(self.labels, generator)
            class_position = torch.repeat_interleave(
                torch.arange(self._counts.numel()), self._counts
            )
            chosen = order[rank < self._wanted[class_position]]
        return chosen[torch.randperm(chosen.numel(), generator=generator)]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return int(self._wanted.sum())


def per_class_split(
    labels: Any, val_fraction: float, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices per class into ``(train_idx, val_idx)``.

    Each class puts ``round(val_fraction * n_c)`` images (at least 1, at most
    ``n_c - 1``) in validation, so both sides hold every class. Both index
    tensors are sorted. A class with a single image makes the split
    impossible and raises ``ValueError``. ``seed`` is in ``[0, 2**32)``.
    """
    label_tensor = check_labels(labels, "labels").cpu()
    fraction = _check_fraction(val_fraction, "val_fraction")
    classes, counts, _ = _class_layout(label_tensor)
    too_small = (counts < 2).nonzero().flatten()
    if too_small.numel():
        c = int(too_small[0])
        raise InvalidValueError(
            f"class {int(classes[c])} has {int(counts[c])} image; a per-class split needs at "
            "least 2 images per class (use all images for calibration instead, e.g. "
            "MaskedTemperatureScaler, which samples validation data from the whole set)"
        )
    n_val = torch.minimum(_per_class_counts(counts, None, fraction), counts - 1)
    generator = torch.Generator()
    generator.manual_seed(check_seed(seed))
    order, rank = _shuffle_within_classes(label_tensor, generator)
    class_position = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    is_val = rank < n_val[class_position]
    return torch.sort(order[~is_val]).values, torch.sort(order[is_val]).values
