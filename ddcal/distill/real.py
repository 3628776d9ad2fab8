"""The real training set a distiller gets: validated, indexed by class, identified by a digest."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from ddcal.errors import InvalidValueError
from ddcal.inference import check_images


def class_indices(labels: Tensor, num_classes: int) -> list[Tensor]:
    """Indices of each class ``c`` in ``labels``, ``c = 0 .. num_classes - 1``."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes)
    return list(torch.split(order, counts.tolist()))


def sample_class(images: Tensor, indices: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """``count`` images of one class drawn without replacement (all of them if fewer)."""
    chosen = indices[torch.randperm(indices.numel(), generator=generator)[:count]]
    return images[chosen.to(images.device)]


def data_digest(*tensors: Tensor) -> str:
    """``"sha256:<hex>"`` over the shape, dtype and bytes of each tensor, in order."""
    digest = hashlib.sha256()
    for tensor in tensors:
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{tuple(tensor.shape)} {tensor.dtype};".encode())
        digest.update(flat.view(torch.uint8).numpy().data)
    return f"sha256:{digest.hexdigest()}"


@dataclass(frozen=True)
class RealData:
    """A real training set ready for distillation.

    Attributes:
        images: ``(N, C, H, W)`` floating, on the distillation device.
        labels: ``(N,)`` int64 class indices, on the CPU.
        num_classes: ``K = max(labels) + 1``.
        by_class: ``K`` index tensors (CPU), those of class ``c`` at position ``c``.
        digest: :func:`data_digest` of the images and labels as given (int64 labels),
            the identity a checkpoint is tied to.
    """

    images: Tensor
    labels: Tensor
    num_classes: int
    by_class: tuple[Tensor, ...]
    digest: str

    @classmethod
    def from_tensors(cls, images: Tensor, labels: Tensor, device: torch.device) -> RealData:
        """Validate ``images (N, C, H, W)`` and ``labels (N,)`` and index them by class."""
        images = check_images(images)
        if images.ndim != 4:
            raise InvalidValueError(
                f"images must have shape (N, C, H, W), got {tuple(images.shape)}"
            )
        if not isinstance(labels, Tensor) or labels.shape != images.shape[:1]:
            raise InvalidValueError(f"labels must be a tensor of shape ({images.shape[0]},)")
        if labels.is_floating_point() or labels.dtype == torch.bool or int(labels.min()) < 0:
            raise InvalidValueError("labels must be non-negative integer class indices")
        labels = labels.long().cpu()
        num_classes = int(labels.max()) + 1
        return cls(
            images=images.to(device),
            labels=labels,
            num_classes=num_classes,
            by_class=tuple(class_indices(labels, num_classes)),
            digest=data_digest(images, labels),
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        channels, height, width = self.images.shape[1:]
        return int(channels), int(height), int(width)

    def smallest_class(self) -> tuple[int, int]:
        """``(class, count)`` of the class with the fewest images."""
        counts = torch.tensor([idx.numel() for idx in self.by_class])
        smallest = int(torch.argmin(counts))
        return smallest, int(counts[smallest])

    def sample(self, c: int, count: int, generator: torch.Generator) -> Tensor:
        """``(min(count, n_c), C, H, W)`` images of class ``c`` without replacement."""
        return sample_class(self.images, self.by_class[c], count, generator)
