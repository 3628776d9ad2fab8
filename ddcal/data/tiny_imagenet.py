"""Tiny-ImageNet (200 classes, 64x64) from the ``tiny-imagenet-200`` folder of the official zip.

Layout: ``wnids.txt`` (the 200 WordNet IDs), ``words.txt`` (ID -> names),
``train/<wnid>/images/*.JPEG`` (500 per class), ``val/images/*.JPEG`` with
``val/val_annotations.txt`` (file, wnid, box; 50 per class). The test folder
has no labels, so, as in the references, the validation set is the test split.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ddcal.data.dataset import ImageClassificationData, Split, split_parts
from ddcal.data.image_folder import Size, list_image_folder, read_images
from ddcal.data.paths import DATA_ENV_VAR, PathLike, find_dataset_dir
from ddcal.errors import InvalidValueError

__all__ = ["TINY_IMAGENET_MEAN", "TINY_IMAGENET_STD", "load_tiny_imagenet"]

#: The ImageNet statistics, as the references normalise Tiny-ImageNet.
TINY_IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
TINY_IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)

_HOW_TO_GET = (
    "Get it with ddcal.data.download('tiny-imagenet', root) (the official zip from "
    "http://cs231n.stanford.edu/tiny-imagenet-200.zip), then pass root= the folder holding "
    f"tiny-imagenet-200/, or set {DATA_ENV_VAR} to it."
)


def _read_lines(path: Path) -> list[list[str]]:
    """Non-empty lines of a text file, split on tabs (fields stripped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidValueError(f"{path}: not UTF-8 text ({exc}); the file is corrupt") from exc
    return [[f.strip() for f in line.split("\t")] for line in text.splitlines() if line.strip()]


def _class_names(folder: Path, wnids: list[str]) -> tuple[str, ...]:
    """Names from ``words.txt`` (e.g. ``"goldfish, Carassius auratus"``); the wnid where absent."""
    words_path = folder / "words.txt"
    words = {}
    if words_path.is_file():
        words = {fields[0]: fields[1] for fields in _read_lines(words_path) if len(fields) >= 2}
    return tuple(words.get(wnid, wnid) for wnid in wnids)


def _val_split(folder: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    path = folder / "val" / "val_annotations.txt"
    index = {wnid: i for i, wnid in enumerate(wnids)}
    files, labels = [], []
    for number, fields in enumerate(_read_lines(path), start=1):
        if len(fields) < 2 or fields[1] not in index:
            raise InvalidValueError(
                f"{path}, line {number}: expected '<file>\\t<wnid>\\t...' with a wnid from "
                f"wnids.txt, got {fields[:2]}. {_HOW_TO_GET}"
            )
        files.append(folder / "val" / "images" / fields[0])
        labels.append(index[fields[1]])
    if not files:
        raise InvalidValueError(f"{path}: no annotations. {_HOW_TO_GET}")
    return files, labels


def load_tiny_imagenet(
    root: PathLike | None = None,
    *,
    split: Split = "both",
    normalize: bool = True,
    size: Size | None = None,
) -> ImageClassificationData:
    """Load Tiny-ImageNet: train ``(100000, 3, 64, 64)``, test = val ``(10000, 3, 64, 64)``.

    Labels follow the sorted WordNet IDs (the order torchvision's
    ``ImageFolder`` gives, as the references load it), recorded in
    ``class_ids``; ``classes`` are their ``words.txt`` names. Grey JPEGs come
    out with 3 channels. Normalisation: the ImageNet mean (0.485, 0.456,
    0.406) and std (0.229, 0.224, 0.225). ``size`` resizes (see
    :func:`~ddcal.data.image_folder.read_images`). Searched: ``root``, else
    ``$DDCAL_DATA/tiny-imagenet``, ``$DDCAL_DATA``, each directly or in
    ``tiny-imagenet-200/``.

    Raises:
        DatasetNotFoundError: (a ``FileNotFoundError``) the folder is not there.
        FileNotFoundError: an image named by the annotations is missing.
        ValueError: corrupt images or annotation files, wrong class folders.
    """
    want_train, want_test = split_parts(split)
    folder = find_dataset_dir(
        "tiny-imagenet",
        ("wnids.txt", "train", "val/images", "val/val_annotations.txt"),
        root,
        subdirs=("tiny-imagenet-200",),
        display_name="Tiny-ImageNet",
        how_to_get=_HOW_TO_GET,
    )
    wnids = sorted(fields[0] for fields in _read_lines(folder / "wnids.txt"))
    if not wnids or len(set(wnids)) != len(wnids):
        raise InvalidValueError(
            f"{folder / 'wnids.txt'}: expected distinct WordNet IDs, got {wnids}"
        )
    train = test = None
    if want_train:
        files, labels, _ = list_image_folder(folder / "train", wnids)
        train = read_images(files, size=size, how_to_fix=_HOW_TO_GET), labels
    if want_test:
        val_files, val_labels = _val_split(folder, wnids)
        images = read_images(val_files, size=size, how_to_fix=_HOW_TO_GET)
        test = images, torch.tensor(val_labels, dtype=torch.int64)
    return ImageClassificationData.from_uint8(
        "tiny-imagenet",
        train,
        test,
        _class_names(folder, wnids),
        mean=TINY_IMAGENET_MEAN,
        std=TINY_IMAGENET_STD,
        normalize=normalize,
        class_ids=wnids,
    )
