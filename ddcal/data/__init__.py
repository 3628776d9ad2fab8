"""Datasets: readers behind ``load_dataset``, downloads, distilled-set files and ZCA."""

from ddcal.data.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    UnsafePickleError,
    load_cifar10,
    load_cifar100,
    read_cifar_pickle,
)
from ddcal.data.dataset import ImageClassificationData, Split, normalize_images
from ddcal.data.distilled import (
    DISTILLED_FORMAT,
    DISTILLED_FORMAT_VERSION,
    DistilledSet,
    load_distilled,
)
from ddcal.data.download import RESOURCES, Resource, download
from ddcal.data.idx import read_idx, write_idx
from ddcal.data.image_folder import channel_stats, list_image_folder, load_image_folder, read_images
from ddcal.data.imagenette import (
    IMAGENETTE_CLASSES,
    IMAGENETTE_MEAN,
    IMAGENETTE_STD,
    IMAGENETTE_WNIDS,
    load_imagenette,
)
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
    find_dataset_dir,
    find_dataset_files,
)
from ddcal.data.registry import DATASET_NAMES, load_dataset
from ddcal.data.tiny_imagenet import TINY_IMAGENET_MEAN, TINY_IMAGENET_STD, load_tiny_imagenet
from ddcal.data.zca import ZCA

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASET_NAMES",
    "DATA_ENV_VAR",
    "DISTILLED_FORMAT",
    "DISTILLED_FORMAT_VERSION",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGENETTE_CLASSES",
    "IMAGENETTE_MEAN",
    "IMAGENETTE_STD",
    "IMAGENETTE_WNIDS",
    "MNIST_CLASSES",
    "MNIST_MEAN",
    "MNIST_STD",
    "RESOURCES",
    "TINY_IMAGENET_MEAN",
    "TINY_IMAGENET_STD",
    "ZCA",
    "DatasetNotFoundError",
    "DistilledSet",
    "ImageClassificationData",
    "Resource",
    "Split",
    "UnsafePickleError",
    "channel_stats",
    "dataset_search_dirs",
    "download",
    "find_dataset_dir",
    "find_dataset_files",
    "list_image_folder",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_distilled",
    "load_fashion_mnist",
    "load_image_folder",
    "load_imagenette",
    "load_mnist",
    "load_tiny_imagenet",
    "normalize_images",
    "read_cifar_pickle",
    "read_idx",
    "read_images",
    "write_idx",
]
