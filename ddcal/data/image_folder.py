"""Class-per-folder image trees (``root/<class>/**/*.jpg``), decoded with kornia's image I/O.

Classes are the sorted subfolder names (the order torchvision's ``ImageFolder``
gives, so labels match the references'); files are taken in sorted order,
walking each class folder recursively. JPEG and PNG files are read (any
letter case); other files and hidden entries (names starting with ".") are
skipped. The size a PNG or JPEG header declares is checked against
:data:`MAX_IMAGE_PIXELS` before the image is decoded (a few hundred bytes can
declare gigabytes of pixels).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import torch
import torch.nn.functional as F
from kornia.io import ImageLoadType, load_image

from ddcal._validation import check_bool, check_positive_int
from ddcal.data.dataset import ImageClassificationData, Split, split_parts
from ddcal.data.paths import PathLike
from ddcal.errors import InputFileNotFoundError, InvalidInputError, InvalidValueError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "channel_stats",
    "list_image_folder",
    "load_image_folder",
    "read_images",
]

#: File name endings read as images (compared in lower case).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")

#: The most pixels an image file may declare (8192 x 8192; 192 MiB decoded as RGB).
MAX_IMAGE_PIXELS = 2**26

Size = int | tuple[int, int]

_MAX_SIDE = math.isqrt(MAX_IMAGE_PIXELS)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (the ones carrying the image size): C0-CF but for
# C4 (Huffman tables), C8 (reserved) and CC (arithmetic coding conditioning).
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# JPEG markers without a length field: TEM, RST0-7, SOI.
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8), 0xD8})


def _jpeg_frame_size(handle: BinaryIO) -> tuple[int, int] | None:
    """``(height, width)`` from the first start-of-frame segment, after the SOI marker."""
    while True:
        prefix = handle.read(1)
        while prefix and prefix != b"\xff":  # bytes before a marker, which decoders skip too
            prefix = handle.read(1)
        marker = handle.read(1)
        while marker == b"\xff":  # fill bytes before a marker
            marker = handle.read(1)
        if not marker or marker[0] in (0xD9, 0xDA):  # end of image or scan before any frame
            return None
        if marker[0] in _JPEG_STANDALONE_MARKERS:
            continue
        length_bytes = handle.read(2)
        if len(length_bytes) < 2:
            return None
        (length,) = struct.unpack(">H", length_bytes)
        if length < 2:  # the length counts its own two bytes
            return None
        if marker[0] in _JPEG_FRAME_MARKERS:
            frame = handle.read(5)  # precision, height, width
            return struct.unpack(">HH", frame[1:]) if len(frame) == 5 else None
        handle.seek(length - 2, os.SEEK_CUR)


def _declared_image_size(path: Path) -> tuple[int, int] | None:
    """``(height, width)`` that a PNG or JPEG file's header declares; ``None`` for other files."""
    with path.open("rb") as handle:
        start = handle.read(24)
        if start.startswith(_PNG_SIGNATURE) and start[12:16] == b"IHDR" and len(start) == 24:
            width, height = struct.unpack(">II", start[16:24])
            return height, width
        if start.startswith(b"\xff\xd8"):
            handle.seek(2)
            return _jpeg_frame_size(handle)
    return None


def _check_image_size(path: Path) -> None:
    size = _declared_image_size(path)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise InvalidValueError(
            f"{path}: the image declares {size[1]} x {size[0]} pixels, more than ddcal's "
            f"ceiling of {MAX_IMAGE_PIXELS} ({_MAX_SIDE} x {_MAX_SIDE}): the file is corrupt, "
            "or an image far larger than a dataset's; downscale it first"
        )


def _check_size(size: Size | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, tuple):
        values: tuple[object, ...] = size
        if len(values) != 2:
            raise InvalidValueError(f"size must be an int or a pair (height, width), got {size!r}")
        return check_positive_int(values[0], "size[0]"), check_positive_int(values[1], "size[1]")
    side = check_positive_int(size, "size")
    return side, side


def _resize(image: torch.Tensor, size: tuple[int, int], center_crop: bool) -> torch.Tensor:
    """uint8 ``(C, H, W)`` -> uint8 ``(C, *size)``: bilinear with antialiasing.

    torch's uint8 kernel (fixed point, channels-last: many times faster than
    float32 on CPU) is within one level of the rounded float32 result.
    """
    height, width = image.shape[1:]
    target = size
    if center_crop:  # scale so the image covers size, keeping its aspect ratio
        scale = max(size[0] / height, size[1] / width)
        target = max(size[0], round(height * scale)), max(size[1], round(width * scale))
    if target != (height, width):
        batch = image.unsqueeze(0).contiguous(memory_format=torch.channels_last)
        resized = F.interpolate(
            batch, size=target, mode="bilinear", align_corners=False, antialias=True
        )
        image = resized.squeeze(0)
    top, left = (target[0] - size[0]) // 2, (target[1] - size[1]) // 2
    return image[:, top : top + size[0], left : left + size[1]]


def read_images(
    paths: Sequence[Path],
    *,
    size: Size | None = None,
    center_crop: bool = False,
    grayscale: bool = False,
    how_to_fix: str = "",
) -> torch.Tensor:
    """Decode image files into one uint8 tensor ``(N, C, H, W)`` (``C`` = 3, or 1 if ``grayscale``).

    Colour and grey files alike come out with ``C`` channels (alpha composited
    over white). ``size`` (an int for a square, or ``(H, W)``): each image is
    resized to it (bilinear, antialiased, in uint8); with
    ``center_crop=True`` it is first resized to cover ``size`` keeping its aspect
    ratio, then centre-cropped. Without ``size`` all images must share one size.
    The result is filled in place, never held twice. A PNG or JPEG declaring
    more than :data:`MAX_IMAGE_PIXELS` is refused before it is decoded.

    Raises:
        FileNotFoundError: a file is missing (named, with ``how_to_fix``).
        ValueError: a file cannot be decoded, declares more than
            :data:`MAX_IMAGE_PIXELS`, or sizes differ without ``size``.
    """
    if not paths:
        raise InvalidValueError("paths is empty: no images to read")
    target = _check_size(size)
    check_bool(center_crop, "center_crop")
    load_type = ImageLoadType.GRAY8 if check_bool(grayscale, "grayscale") else ImageLoadType.RGB8

    def decode(path: Path) -> torch.Tensor:
        try:
            _check_image_size(path)
            image = load_image(path, load_type)
        except FileNotFoundError as exc:
            raise InputFileNotFoundError(
                f"{path}: no such image file. {how_to_fix}".strip()
            ) from exc
        except InvalidInputError:
            raise
        except ValueError as exc:
            raise InvalidValueError(
                f"{path}: cannot decode the image ({exc}); the file is corrupt or truncated. "
                f"{how_to_fix}".strip()
            ) from exc
        return image if target is None else _resize(image, target, center_crop)

    first = decode(paths[0])
    out = torch.empty((len(paths), *first.shape), dtype=torch.uint8)
    out[0] = first
    for index in range(1, len(paths)):
        image = decode(paths[index])
        if image.shape != first.shape:
            raise InvalidValueError(
                f"{paths[index]}: image is {tuple(image.shape[1:])}, the first ({paths[0]}) is "
                f"{tuple(first.shape[1:])}; pass size= to resize them to one size"
            )
        out[index] = image
    return out


def _image_files(folder: Path) -> list[Path]:
    files: list[Path] = []
    for dirpath, _, filenames in sorted(os.walk(folder, followlinks=True)):
        relative = Path(dirpath).relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        files += [
            Path(dirpath, name)
            for name in sorted(filenames)
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return files


def list_image_folder(
    root: PathLike, classes: Sequence[str] | None = None
) -> tuple[list[Path], torch.Tensor, tuple[str, ...]]:
    """The image files of a class-per-folder tree, their int64 labels ``(N,)`` and the classes.

    ``classes`` (folder names in label order) defaults to the sorted
    subfolders of ``root``; when given, ``root`` must hold exactly those
    folders (the test split of a tree uses the training split's classes).

    Raises:
        FileNotFoundError: ``root`` is not a folder, or a class folder is missing.
        ValueError: ``root`` has no class folders or no images, or folders not in ``classes``.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputFileNotFoundError(f"{root}: no such folder (expected one subfolder per class)")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = found
    if not classes:
        raise InvalidValueError(
            f"{root}: no class subfolders (expected root/<class>/<image files>)"
        )
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise InvalidValueError(
            f"{root}: folders {unknown} are not among the classes {list(classes)}"
        )
    missing = [c for c in classes if c not in found]
    if missing:
        raise InputFileNotFoundError(f"{root}: no folder for classes {missing}")
    per_class = [_image_files(root / c) for c in classes]
    files = [f for group in per_class for f in group]
    if not files:
        raise InvalidValueError(
            f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in its class folders"
        )
    counts = torch.tensor([len(group) for group in per_class])
    labels = torch.repeat_interleave(torch.arange(len(classes)), counts)
    return files, labels, tuple(classes)


def channel_stats(images: torch.Tensor, *, chunk: int = 1024) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean and std of uint8 images ``(N, C, H, W)`` as pixels in ``[0, 1]``.

    Sums are accumulated in float64 over chunks of ``chunk`` images (no
    full-size float copy). The std is the population one (divide by the count).
    Returns ``(mean, std)``, each a tuple of ``C`` floats.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[0] == 0:
        raise InvalidValueError(
            f"images must be non-empty uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        block = images[start : start + chunk].to(torch.float64).div_(255.0)
        total += block.sum(dim=(0, 2, 3))
        squares += block.square_().sum(dim=(0, 2, 3))
    count = images.numel() // channels
    mean = total / count
    std = (squares / count - mean.square()).clamp_(min=0.0).sqrt_()
    return tuple(mean.tolist()), tuple(std.tolist())


def _split_dirs(root: Path) -> tuple[Path, Path | None]:
    """``(train folder, test folder or None)``: ``root/train`` + ``test``|``val`` when that
    is all ``root`` holds, else ``root`` itself as the training split."""
    subdirs = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if "train" in subdirs and subdirs <= {"train", "val", "test"}:
        test = "test" if "test" in subdirs else "val" if "val" in subdirs else None
        return root / "train", None if test is None else root / test
    return root, None


def load_image_folder(
    root: PathLike,
    *,
    test_root: PathLike | None = None,
    split: Split = "both",
    normalize: bool = True,
    size: Size | None = None,
    center_crop: bool = False,
    grayscale: bool = False,
    name: str = "folder",
) -> ImageClassificationData:
    """Load a class-per-folder image tree into float images ``(N, C, H, W)``.

    Layout: ``root/train/<class>/...`` with ``root/test/<class>/...`` (or
    ``root/val/...``) when ``root`` holds only such split folders; otherwise
    ``root/<class>/...`` is the training split and there is no test split
    unless ``test_root`` names one. Classes are the training split's sorted
    folder names; a test split must have the same folders.

    ``normalize=True`` standardises with the training images' own per-channel
    mean and std (:func:`channel_stats`), which the result records; the
    training split is read for them even with ``split="test"``. ``size``,
    ``center_crop`` and ``grayscale`` are as in :func:`read_images`.

    Raises:
        FileNotFoundError: a folder is missing, or ``split`` asks for a test split
            that the tree does not have.
        ValueError: no images, undecodable files, sizes that differ without ``size``.
    """
    want_train, want_test = split_parts(split)
    root = Path(root)
    if not root.is_dir():
        raise InputFileNotFoundError(f"{root}: no such folder (expected one subfolder per class)")
    train_dir, test_dir = _split_dirs(root)
    if test_root is not None:
        test_dir = Path(test_root)
    if want_test and test_dir is None:
        raise InputFileNotFoundError(
            f"{root}: no test split (expected root/train/<class> with root/test/<class> "
            "or root/val/<class>, or test_root=); pass split='train' for the training split"
        )

    def read(files: list[Path]) -> torch.Tensor:
        return read_images(files, size=size, center_crop=center_crop, grayscale=grayscale)

    train_files, train_labels, classes = list_image_folder(train_dir)
    train_images = read(train_files) if want_train or normalize else None
    test = None
    if want_test and test_dir is not None:
        test_files, test_labels, _ = list_image_folder(test_dir, classes)
        test = read(test_files), test_labels
    mean, std = channel_stats(train_images) if normalize and train_images is not None else ((), ())
    return ImageClassificationData.from_uint8(
        name,
        (train_images, train_labels) if want_train and train_images is not None else None,
        test,
        classes,
        mean=mean,
        std=std,
        normalize=normalize,
    )
