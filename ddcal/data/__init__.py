"""Dataset readers, the shared search path, and the in-memory dataset type."""

from ddcal.data.dataset import ImageClassificationData, normalize_images
from ddcal.data.idx import read_idx, write_idx
from ddcal.data.mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    MNIST_CLASSES,
    MNIST_MEAN,
    MNIST_STD,
    load_fashion_mnist,
    load_mnist,
)
from ddcal.data.paths import (
    DATA_ENV_VAR,
    DatasetNotFoundError,
    dataset_search_dirs,
    find_dataset_files,
)

__all__ = [
    "DATA_ENV_VAR",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "MNIST_CLASSES",
    "MNIST_MEAN",
    "MNIST_STD",
    "DatasetNotFoundError",
    "ImageClassificationData",
    "dataset_search_dirs",
    "find_dataset_files",
    "load_fashion_mnist",
    "load_mnist",
    "normalize_images",
    "read_idx",
    "write_idx",
]
