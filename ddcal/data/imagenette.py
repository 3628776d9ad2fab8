"""ImageNette (10 easy ImageNet classes) from the fast.ai ``imagenette2`` folder layout.

Layout: ``imagenette2/train/<wnid>/*.JPEG`` and ``imagenette2/val/<wnid>/*.JPEG``
(also ``imagenette2-320`` / ``imagenette2-160``, the downsized archives). The
val folder is the test split. Images are resized to 128x128 by default, as
the references (MTT) evaluate ImageNette.
"""

from __future__ import annotations

import torch

from ddcal.data.dataset import ImageClassificationData, Split, split_parts
from ddcal.data.image_folder import Size, list_image_folder, read_images
from ddcal.data.paths import DATA_ENV_VAR, PathLike, find_dataset_dir

__all__ = [
    "IMAGENETTE_CLASSES",
    "IMAGENETTE_MEAN",
    "IMAGENETTE_STD",
    "IMAGENETTE_WNIDS",
    "load_imagenette",
]

#: WordNet IDs in label order (sorted, the ImageNet class order: indices 0, 217,
#: 482, 491, 497, 566, 569, 571, 574, 701, as in MTT's ``Config.imagenette``).
IMAGENETTE_WNIDS: tuple[str, ...] = (
    "n01440764",
    "n02102040",
    "n02979186",
    "n03000684",
    "n03028079",
    "n03394916",
    "n03417042",
    "n03425413",
    "n03445777",
    "n03888605",
)
IMAGENETTE_CLASSES: tuple[str, ...] = (
    "tench",
    "English springer",
    "cassette player",
    "chain saw",
    "church",
    "French horn",
    "garbage truck",
    "gas pump",
    "golf ball",
    "parachute",
)
#: The ImageNet statistics, as the references normalise ImageNet subsets.
IMAGENETTE_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENETTE_STD: tuple[float, ...] = (0.229, 0.224, 0.225)

_HOW_TO_GET = (
    "Get it with ddcal.data.download('imagenette', root) (the fast.ai archive "
    "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz), then pass root= the folder "
    f"holding imagenette2/, or set {DATA_ENV_VAR} to it."
)


def load_imagenette(
    root: PathLike | None = None,
    *,
    split: Split = "both",
    normalize: bool = True,
    size: Size | None = 128,
    center_crop: bool = False,
) -> ImageClassificationData:
    """Load ImageNette: train ``(9469, 3, 128, 128)``, test = val ``(3925, 3, 128, 128)``.

    ``size=128`` resizes every image straight to 128x128 (bilinear,
    antialiased), as the references' ``Resize((128, 128))`` does;
    ``center_crop=True`` keeps the aspect ratio and centre-crops instead;
    ``size=None`` requires images of one size. Labels follow the sorted
    WordNet IDs (``class_ids``); ``classes`` are the names ("tench", ...).
    Normalisation: the ImageNet mean and std. Searched: ``root``, else
    ``$DDCAL_DATA/imagenette``, ``$DDCAL_DATA``, each directly or in
    ``imagenette2/``, ``imagenette2-320/``, ``imagenette2-160/``.

    Raises:
        DatasetNotFoundError: (a ``FileNotFoundError``) the folder is not there.
        ValueError: class folders other than the 10 ImageNette ones, undecodable images.
    """
    want_train, want_test = split_parts(split)
    folder = find_dataset_dir(
        "imagenette",
        ("train", "val"),
        root,
        subdirs=("imagenette2", "imagenette2-320", "imagenette2-160"),
        display_name="ImageNette",
        how_to_get=_HOW_TO_GET,
    )

    def read(part: str) -> tuple[torch.Tensor, torch.Tensor]:
        files, labels, _ = list_image_folder(folder / part, IMAGENETTE_WNIDS)
        images = read_images(files, size=size, center_crop=center_crop, how_to_fix=_HOW_TO_GET)
        return images, labels

    return ImageClassificationData.from_uint8(
        "imagenette",
        read("train") if want_train else None,
        read("val") if want_test else None,
        IMAGENETTE_CLASSES,
        mean=IMAGENETTE_MEAN,
        std=IMAGENETTE_STD,
        normalize=normalize,
        class_ids=IMAGENETTE_WNIDS,
    )
