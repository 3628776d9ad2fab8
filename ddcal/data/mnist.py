"""MNIST and FashionMNIST from their IDX files (60,000 train and 10,000 test 28x28 images)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ddcal.data.dataset import ImageClassificationData, normalize_images
from ddcal.data.idx import read_idx
from ddcal.data.paths import DATA_ENV_VAR, PathLike, find_dataset_files
from ddcal.errors import InvalidValueError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IDX_FILENAMES",
    "MNIST_CLASSES",
    "MNIST_MEAN",
    "MNIST_STD",
    "load_fashion_mnist",
    "load_mnist",
]

#: The four files of an MNIST-style dataset, without the optional ``.gz``.
IDX_FILENAMES: tuple[str, str, str, str] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
#: Per-channel normalisation of the references (pixels in [0, 1]).
FASHION_MNIST_MEAN: tuple[float, ...] = (0.2861,)
FASHION_MNIST_STD: tuple[float, ...] = (0.3530,)

MNIST_CLASSES: tuple[str, ...] = tuple(str(digit) for digit in range(10))
MNIST_MEAN: tuple[float, ...] = (0.1307,)
MNIST_STD: tuple[float, ...] = (0.3081,)

# A training set whose mean pixel is this far from the dataset's own is
# probably the other dataset's files (both use the same file names).
_MEAN_TOLERANCE = 0.05


@dataclass(frozen=True)
class _IdxDataset:
    name: str
    display_name: str
    system_dir: str
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    how_to_get: str


_HOW_TO_PUT = (
    "or put the four IDX files (.gz or not) in a folder and pass root=that folder, "
    f"or set {DATA_ENV_VAR}=a folder holding them (directly or in a '{{name}}' subfolder)."
)
_FASHION_MNIST = _IdxDataset(
    name="fashion-mnist",
    display_name="FashionMNIST",
    system_dir="/usr/share/datasets/fashion-mnist",
    classes=FASHION_MNIST_CLASSES,
    mean=FASHION_MNIST_MEAN,
    std=FASHION_MNIST_STD,
    how_to_get="Get them with: apt-get install dataset-fashion-mnist (Debian; puts them in "
    "/usr/share/datasets/fashion-mnist), " + _HOW_TO_PUT.format(name="fashion-mnist"),
)
_MNIST = _IdxDataset(
    name="mnist",
    display_name="MNIST",
    system_dir="/usr/share/datasets/mnist",
    classes=MNIST_CLASSES,
    mean=MNIST_MEAN,
    std=MNIST_STD,
    how_to_get="Get the files from the MNIST distribution and put them in "
    "/usr/share/datasets/mnist, " + _HOW_TO_PUT.format(name="mnist"),
)


def _read_split(
    spec: _IdxDataset, images_path: Path, labels_path: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != torch.uint8 or images.dim() != 3:
        raise InvalidValueError(
            f"{images_path}: expected uint8 images of shape (N, H, W), "
            f"got {images.dtype} {tuple(images.shape)}"
        )
    if labels.dtype != torch.uint8 or labels.dim() != 1:
        raise InvalidValueError(
            f"{labels_path}: expected uint8 labels of shape (N,), "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    if labels.shape[0] != images.shape[0]:
        raise InvalidValueError(
            f"{labels_path} has {labels.shape[0]} labels but {images_path} has "
            f"{images.shape[0]} images"
        )
    num_classes = len(spec.classes)
    if labels.numel() and int(labels.max()) >= num_classes:
        raise InvalidValueError(
            f"{labels_path}: labels must be in [0, {num_classes}) for {spec.display_name}, "
            f"got max {int(labels.max())}"
        )
    return images.unsqueeze(1), labels.long()


def _load(spec: _IdxDataset, root: PathLike | None, normalize: bool) -> ImageClassificationData:
    paths = find_dataset_files(
        spec.name,
        IDX_FILENAMES,
        root,
        system_dirs=(spec.system_dir,),
        display_name=spec.display_name,
        how_to_get=spec.how_to_get,
    )
    train_raw, train_labels = _read_split(
        spec, paths["train-images-idx3-ubyte"], paths["train-labels-idx1-ubyte"]
    )
    test_raw, test_labels = _read_split(
        spec, paths["t10k-images-idx3-ubyte"], paths["t10k-labels-idx1-ubyte"]
    )
    if train_raw.shape[1:] != test_raw.shape[1:]:
        raise InvalidValueError(
            f"{paths['t10k-images-idx3-ubyte']}: test images are "
            f"{tuple(test_raw.shape[2:])}, train images {tuple(train_raw.shape[2:])}"
        )
    mean, std = (spec.mean, spec.std) if normalize else ((0.0,), (1.0,))
    train_images = normalize_images(train_raw, mean, std)
    test_images = normalize_images(test_raw, mean, std)
    if train_images.numel():
        pixel_mean = float(train_images.mean()) * std[0] + mean[0]
        if abs(pixel_mean - spec.mean[0]) > _MEAN_TOLERANCE:
            warnings.warn(
                f"{paths['train-images-idx3-ubyte']}: mean pixel {pixel_mean:.4f}, but "
                f"{spec.display_name}'s is {spec.mean[0]}: are these another dataset's files? "
                "(MNIST and FashionMNIST use the same file names)",
                UserWarning,
                stacklevel=3,
            )
    return ImageClassificationData(
        name=spec.name,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        classes=spec.classes,
        mean=mean,
        std=std,
    )


def load_fashion_mnist(
    root: PathLike | None = None, *, normalize: bool = True
) -> ImageClassificationData:
    """Load FashionMNIST: train ``(60000, 1, 28, 28)``, test ``(10000, 1, 28, 28)``.

    Images are float32, scaled to ``[0, 1]`` and, with ``normalize=True``,
    standardised with mean 0.2861 and std 0.3530 (the references' values);
    labels are int64 in ``[0, 10)``, named by ``classes``.

    Files (``train-images-idx3-ubyte`` etc., ``.gz`` or not) are looked for in
    ``root`` when given, and only there; otherwise in ``$DDCAL_DATA/fashion-mnist``,
    ``$DDCAL_DATA``, then ``/usr/share/datasets/fashion-mnist``.

    Raises:
        FileNotFoundError: (``DatasetNotFoundError``) the files are not there;
            the message lists the folders searched and how to get the files.
        ValueError: a corrupt or truncated file, label and image counts that
            differ, labels out of range.
    """
    return _load(_FASHION_MNIST, root, normalize)


def load_mnist(root: PathLike | None = None, *, normalize: bool = True) -> ImageClassificationData:
    """Load MNIST digits, as :func:`load_fashion_mnist` does FashionMNIST.

    Normalisation: mean 0.1307, std 0.3081. Search order: ``root`` when given,
    else ``$DDCAL_DATA/mnist``, ``$DDCAL_DATA``, ``/usr/share/datasets/mnist``.
    """
    return _load(_MNIST, root, normalize)
