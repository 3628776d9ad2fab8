"""The data stage: the dataset split into the pool, the oracle slice and the test split."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from ddcal.config import ExperimentConfig
from ddcal.data import ZCA, load_dataset
from ddcal.pipeline.cache import tensor_digest
from ddcal.sampling import PerClassSampler

__all__ = ["ExperimentData", "LabelledImages", "load_experiment_data"]


@dataclass(frozen=True, eq=False)
class LabelledImages:
    """Images ``(N, C, H, W)`` with class indices ``(N,)`` or soft labels ``(N, K)``.

    ``lr`` is the learning rate a distilled set asks to be trained with (MTT), if any.
    """

    images: Tensor
    labels: Tensor
    lr: float | None = None

    @cached_property
    def digest(self) -> str:
        """A content digest (images, labels and lr): what artifacts made from it consume."""
        lr = None if self.lr is None else torch.tensor(self.lr, dtype=torch.float64)
        return tensor_digest(self.images, self.labels, lr)

    @property
    def class_labels(self) -> Tensor:
        """int64 ``(N,)``: the class indices, or the argmax of soft labels."""
        return self.labels.argmax(dim=1) if self.labels.ndim == 2 else self.labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: Tensor) -> LabelledImages:
        return LabelledImages(self.images[indices], self.labels[indices], self.lr)

    def whitened(self, zca: ZCA) -> LabelledImages:
        return LabelledImages(zca.transform(self.images), self.labels, self.lr)


@dataclass(frozen=True, eq=False)
class ExperimentData:
    """What every later stage reads.

    Attributes:
        name: the dataset's name.
        num_classes: its number of classes.
        pool: the training split minus the oracle slice: distilled, and the
            full-data network's training set.
        oracle: ``oracle_per_class`` real training images per class for the
            oracle rows only, or ``None``.
        test: the test split: metrics and analyses only, never a choice.
        distiller_real: as many images per class drawn from the pool, images the
            distiller saw (the evaluation networks never train on them), or ``None``.
    """

    name: str
    num_classes: int
    pool: LabelledImages
    oracle: LabelledImages | None
    test: LabelledImages
    distiller_real: LabelledImages | None = None

    def whitened(self, zca: ZCA) -> ExperimentData:
        """Every split through ``zca``, so each arm and analysis sees what the set saw."""
        return ExperimentData(
            self.name,
            self.num_classes,
            self.pool.whitened(zca),
            None if self.oracle is None else self.oracle.whitened(zca),
            self.test.whitened(zca),
            None if self.distiller_real is None else self.distiller_real.whitened(zca),
        )


def load_experiment_data(config: ExperimentConfig) -> ExperimentData:
    """The dataset (``dataset``, ``data_root``) with the oracle slice
    (``oracle_per_class`` per class, drawn with ``distill_seed``) held out of the pool,
    and as many of the pool's images per class as the distiller's real sample."""
    data = load_dataset(config.dataset, config.data_root or None)
    images, labels = data.train_images, data.train_labels
    oracle = None
    pool = torch.arange(labels.numel())
    if config.oracle_per_class > 0:
        held = PerClassSampler(
            labels, per_class=config.oracle_per_class, seed=config.distill_seed
        ).indices()
        keep = torch.ones(labels.numel(), dtype=torch.bool)
        keep[held] = False
        pool = pool[keep]
        oracle = LabelledImages(images[held], labels[held])
    pool_set = LabelledImages(images[pool], labels[pool])
    distiller_real = None
    if config.oracle_per_class > 0:
        seen = PerClassSampler(
            pool_set.labels, per_class=config.oracle_per_class, seed=config.distill_seed
        ).indices()
        distiller_real = pool_set.subset(seen)
    return ExperimentData(
        name=data.name,
        num_classes=len(data.classes),
        pool=pool_set,
        oracle=oracle,
        test=LabelledImages(data.test_images, data.test_labels),
        distiller_real=distiller_real,
    )
