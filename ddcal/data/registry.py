"""One entry point for every dataset reader: :func:`load_dataset`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ddcal.data.cifar import load_cifar10, load_cifar100
from ddcal.data.dataset import ImageClassificationData, Split, split_parts
from ddcal.data.image_folder import load_image_folder
from ddcal.data.imagenette import load_imagenette
from ddcal.data.mnist import load_fashion_mnist, load_mnist
from ddcal.data.paths import PathLike
from ddcal.data.tiny_imagenet import load_tiny_imagenet
from ddcal.errors import InvalidTypeError, InvalidValueError

__all__ = ["DATASET_NAMES", "canonical_name", "load_dataset"]

#: The names :func:`load_dataset` accepts (case, "-" and "_" are ignored; the
#: references' spellings "FashionMNIST", "CIFAR10", "Tiny", "ImageNette" work too).
DATASET_NAMES: tuple[str, ...] = (
    "fashion-mnist",
    "mnist",
    "cifar10",
    "cifar100",
    "tiny-imagenet",
    "imagenette",
    "folder",
)
_ALIASES = {name.replace("-", ""): name for name in DATASET_NAMES} | {"tiny": "tiny-imagenet"}


def canonical_name(name: str) -> str:
    """The entry of :data:`DATASET_NAMES` that ``name`` spells: ``"CIFAR10"`` -> ``"cifar10"``."""
    if not isinstance(name, str):
        raise InvalidTypeError(f"name must be a str, got {type(name).__name__} {name!r}")
    key = name.lower().replace("-", "").replace("_", "")
    if key not in _ALIASES:
        raise InvalidValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")
    return _ALIASES[key]


def _keep_split(data: ImageClassificationData, split: Split) -> ImageClassificationData:
    """Empty the split that ``split`` leaves out (for readers that always read both)."""
    want_train, want_test = split_parts(split)
    if want_train and want_test:
        return data
    part = "test" if want_train else "train"
    images, labels = getattr(data, f"{part}_images"), getattr(data, f"{part}_labels")
    return dataclasses.replace(data, **{f"{part}_images": images[:0], f"{part}_labels": labels[:0]})


def _idx_loader(
    load: Callable[..., ImageClassificationData],
) -> Callable[..., ImageClassificationData]:
    def loader(
        root: PathLike | None = None, *, split: Split = "both", normalize: bool = True
    ) -> ImageClassificationData:
        split_parts(split)  # check it before reading
        return _keep_split(load(root, normalize=normalize), split)

    return loader


def _folder(
    root: PathLike | None = None, *, split: Split = "both", **options: Any
) -> ImageClassificationData:
    if root is None:
        raise InvalidValueError(
            "root is required for the 'folder' dataset: the class-per-folder tree"
        )
    return load_image_folder(root, split=split, **options)


_LOADERS: dict[str, Callable[..., ImageClassificationData]] = {
    "fashion-mnist": _idx_loader(load_fashion_mnist),
    "mnist": _idx_loader(load_mnist),
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "tiny-imagenet": load_tiny_imagenet,
    "imagenette": load_imagenette,
    "folder": _folder,
}


def load_dataset(
    name: str,
    root: PathLike | None = None,
    *,
    split: Split = "both",
    normalize: bool = True,
    **options: Any,
) -> ImageClassificationData:
    """Load a dataset by name into an :class:`ImageClassificationData`.

    Args:
        name: one of :data:`DATASET_NAMES`: "fashion-mnist", "mnist" (IDX
            files), "cifar10", "cifar100" (python pickle batches),
            "tiny-imagenet" (``tiny-imagenet-200``), "imagenette"
            (``imagenette2``), or "folder" (any class-per-folder tree; ``root``
            required).
        root: the folder holding the files; ``None`` searches ``$DDCAL_DATA``
            (and the system folders of the datasets that have one).
        split: "both" (train and test), or "train" / "test": only that split is
            read, the other is left empty ``(0, C, H, W)``. The test split is
            the official test set (CIFAR, MNIST) or the validation set
            (Tiny-ImageNet, ImageNette), as the references use them.
        normalize: standardise with the dataset's mean/std (the references'
            values; a folder tree's own training statistics), which the result
            records; ``False`` leaves pixels in ``[0, 1]``.
        **options: passed to the reader: ``size`` (tiny-imagenet, imagenette
            (default 128), folder), ``center_crop`` (imagenette, folder),
            ``grayscale``/``test_root`` (folder), ``labels="coarse"`` (cifar100).

    Images are float32 ``(N, C, H, W)``, labels int64 ``(N,)``.

    Raises:
        ValueError: unknown ``name`` (the message lists the names) or ``split``.
        TypeError: an option the dataset's reader does not take.
        FileNotFoundError: the files are missing; the message says how to get them.
    """
    loader = _LOADERS[canonical_name(name)]
    return loader(root, split=split, normalize=normalize, **options)
