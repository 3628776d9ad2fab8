"""The in-memory image-classification dataset every reader returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch.utils.data import TensorDataset

from ddcal._validation import check_choice
from ddcal.errors import InvalidValueError

__all__ = ["SPLITS", "ImageClassificationData", "Split", "normalize_images", "split_parts"]

#: Which part of a dataset a reader loads: both splits, or one (the other left empty).
Split = Literal["both", "train", "test"]
SPLITS: tuple[str, ...] = ("both", "train", "test")


def split_parts(split: str) -> tuple[bool, bool]:
    """``(load the train split, load the test split)`` for ``split`` in :data:`SPLITS`."""
    check_choice(split, "split", SPLITS)
    return split != "test", split != "train"


def normalize_images(
    images: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """uint8 images ``(N, C, H, W)`` -> float32 in ``[0, 1]``, then ``(x - mean) / std``.

    The same arithmetic as torchvision's ``ToTensor`` then ``Normalize`` (divide
    by 255, subtract, divide), in place on one new float32 tensor. ``mean`` and
    ``std`` hold one value per channel; ``None`` (or zeros and ones) leaves the
    ``[0, 1]`` scale.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise InvalidValueError(
            f"images must be uint8 of shape (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    out = images.to(torch.float32).div_(255.0)
    if mean is None and std is None:
        return out
    if mean is None or std is None:
        raise InvalidValueError("mean and std must be given together")
    channels = images.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise InvalidValueError(
            f"mean and std must have one value per channel ({channels}), "
            f"got {len(mean)} and {len(std)}"
        )
    if min(std) <= 0:
        raise InvalidValueError(f"std must be positive, got {tuple(std)}")
    if all(m == 0 for m in mean) and all(s == 1 for s in std):
        return out
    shape = (1, channels, 1, 1)
    out.sub_(torch.tensor(mean, dtype=torch.float32).view(shape))
    out.div_(torch.tensor(std, dtype=torch.float32).view(shape))
    return out


@dataclass(frozen=True, eq=False, repr=False)
class ImageClassificationData:
    """A labelled image dataset held in memory, split into train and test.

    Attributes:
        name: the dataset's name, e.g. ``"fashion-mnist"``.
        train_images: float32 ``(N, C, H, W)``, normalised with ``mean``/``std``.
        train_labels: int64 ``(N,)`` in ``[0, num_classes)``.
        test_images: float32 ``(M, C, H, W)``.
        test_labels: int64 ``(M,)``.
        classes: the class names, index = label.
        mean, std: the per-channel normalisation applied to pixel values in
            ``[0, 1]``: ``(x - mean) / std``; ``(0.0, ...)`` and ``(1.0, ...)``
            when none was applied.
        class_ids: the classes' identifiers on disk where they differ from
            ``classes`` (WordNet IDs for Tiny-ImageNet and ImageNette), index =
            label; ``None`` otherwise.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_ids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        num_classes = len(self.classes)
        if num_classes < 1:
            raise InvalidValueError("classes must name at least one class, got ()")
        if self.class_ids is not None and len(self.class_ids) != num_classes:
            raise InvalidValueError(
                f"class_ids must have one entry per class ({num_classes}), "
                f"got {len(self.class_ids)}"
            )
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if not images.is_floating_point() or images.dim() != 4:
                raise InvalidValueError(
                    f"{split}_images must be floating point of shape (N, C, H, W), "
                    f"got {images.dtype} {tuple(images.shape)}"
                )
            if labels.dtype != torch.int64 or labels.dim() != 1:
                raise InvalidValueError(
                    f"{split}_labels must be int64 of shape (N,), "
                    f"got {labels.dtype} {tuple(labels.shape)}"
                )
            if labels.shape[0] != images.shape[0]:
                raise InvalidValueError(
                    f"{split}_labels has {labels.shape[0]} entries but {split}_images has "
                    f"{images.shape[0]} images"
                )
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
                raise InvalidValueError(
                    f"{split}_labels must be in [0, {num_classes}), got values in "
                    f"[{int(labels.min())}, {int(labels.max())}]"
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise InvalidValueError(
                f"train and test images differ in shape: {tuple(self.train_images.shape[1:])} "
                f"vs {tuple(self.test_images.shape[1:])}"
            )
        channels = self.train_images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise InvalidValueError(
                f"mean and std must have one value per channel ({channels}), "
                f"got {len(self.mean)} and {len(self.std)}"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes ``K``."""
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        """Image channels ``C``."""
        return int(self.train_images.shape[1])

    @property
    def im_size(self) -> tuple[int, int]:
        """Image size ``(H, W)``."""
        return int(self.train_images.shape[2]), int(self.train_images.shape[3])

    def train_dataset(self) -> TensorDataset:
        """The training split as a ``TensorDataset`` of ``(image, label)`` pairs."""
        return TensorDataset(self.train_images, self.train_labels)

    def test_dataset(self) -> TensorDataset:
        """The test split as a ``TensorDataset`` of ``(image, label)`` pairs."""
        return TensorDataset(self.test_images, self.test_labels)

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation: ``images * std + mean``, back to ``[0, 1]`` pixels."""
        shape = (1, len(self.mean), 1, 1)
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(shape)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(shape)
        return images * std + mean

    @classmethod
    def from_uint8(
        cls,
        name: str,
        train: tuple[torch.Tensor, torch.Tensor] | None,
        test: tuple[torch.Tensor, torch.Tensor] | None,
        classes: Sequence[str],
        *,
        mean: Sequence[float],
        std: Sequence[float],
        normalize: bool = True,
        class_ids: Sequence[str] | None = None,
    ) -> ImageClassificationData:
        """Build a dataset from uint8 ``(images (N, C, H, W), labels (N,))`` splits.

        Pixels are scaled to ``[0, 1]`` and, with ``normalize=True``, standardised
        with ``mean``/``std`` (recorded as ``(0.0, ...)``/``(1.0, ...)`` otherwise).
        A split given as ``None`` (not loaded) is left empty: ``(0, C, H, W)``.
        """
        present = train if train is not None else test
        if present is None:
            raise InvalidValueError("at least one of train and test must be given, got neither")
        channels = present[0].shape[1]
        if not normalize:
            mean, std = (0.0,) * channels, (1.0,) * channels

        def prepare(part: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, ...]:
            if part is None:
                empty = torch.empty((0, *present[0].shape[1:]), dtype=torch.uint8)
                return normalize_images(empty, mean, std), torch.empty(0, dtype=torch.int64)
            return normalize_images(part[0], mean, std), part[1].to(torch.int64)

        train_images, train_labels = prepare(train)
        test_images, test_labels = prepare(test)
        return cls(
            name=name,
            train_images=train_images,
            train_labels=train_labels,
            test_images=test_images,
            test_labels=test_labels,
            classes=tuple(classes),
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) for s in std),
            class_ids=None if class_ids is None else tuple(class_ids),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, "
            f"train={tuple(self.train_images.shape)}, test={tuple(self.test_images.shape)}, "
            f"num_classes={self.num_classes}, mean={self.mean}, std={self.std})"
        )
