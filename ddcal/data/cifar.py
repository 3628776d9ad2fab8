"""CIFAR-10 and CIFAR-100 from their "python version" pickle batches.

The batches are pickles, so they are read with a restricted unpickler that
rebuilds only what a CIFAR batch holds (dicts, lists, bytes, numpy arrays)
and refuses any other global: a file carrying arbitrary objects is rejected
with :class:`UnsafePickleError`, never executed. Before unpickling, every
length the pickle declares is checked to fit in the file (the unpickler
allocates a declared length before reading it), so memory stays within the
file's size.
"""

from __future__ import annotations

import codecs
import functools
import io
import math
import pickle
import pickletools
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddcal._validation import check_choice
from ddcal.data.dataset import ImageClassificationData, Split, split_parts
from ddcal.data.paths import DATA_ENV_VAR, PathLike, find_dataset_dir
from ddcal.errors import InputFileNotFoundError, InvalidValueError

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "UnsafePickleError",
    "load_cifar10",
    "load_cifar100",
    "read_cifar_pickle",
]

#: Per-channel normalisation of the references (VICO-UoE/DatasetCondensation), pixels in [0, 1].
CIFAR10_MEAN: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, ...] = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN: tuple[float, ...] = (0.5071, 0.4866, 0.4409)
CIFAR100_STD: tuple[float, ...] = (0.2673, 0.2564, 0.2762)

_IMAGE_SHAPE = (3, 32, 32)
_PIXELS = 3 * 32 * 32


class UnsafePickleError(InvalidValueError):
    """A pickle names a global outside the allow-list of what a CIFAR batch needs."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(text, "latin1").
    if codecs.lookup(encoding).name != "iso8859-1":
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _reconstruct(subtype: type, shape: Any, dtype: Any, *, file_size: int) -> Any:
    # numpy's own _reconstruct, for plain arrays only; the data comes in __setstate__,
    # numpy writes shape (0,), and an array this allocates can hold no more than the file.
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"refusing to rebuild an array of type {subtype!r}")
    array_dtype = np.dtype(dtype)
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    declared = math.prod(dims) * array_dtype.itemsize
    if declared > file_size:
        raise InvalidValueError(
            f"an array declares shape {dims} of {array_dtype} = {declared} bytes, more than "
            f"the {file_size}-byte file holds"
        )
    return np.ndarray.__new__(np.ndarray, dims, array_dtype)


def _frombuffer(buffer: bytes, dtype: np.dtype[Any], shape: tuple[int, ...], order: str) -> Any:
    # numpy's own _frombuffer (how arrays pickle at protocol 5). An array pickled read-only
    # comes back over immutable bytes: copied, so that tensors made from it may be written.
    array = np.frombuffer(buffer, dtype=dtype).reshape(shape, order="F" if order == "F" else "C")
    return array if array.flags.writeable else array.copy(order="K")


# (module, name) as written in the pickle -> what it may stand for. Python 2 pickles
# (the official files) name numpy.core; Python 3 ones name numpy._core and, at
# protocol 2, __builtin__ (for bytes) and _codecs.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    **{
        (f"{core}.multiarray", "_reconstruct"): _reconstruct
        for core in ("numpy.core", "numpy._core")
    },
    **{(f"{core}.numeric", "_frombuffer"): _frombuffer for core in ("numpy.core", "numpy._core")},
    **{
        (module, obj.__name__): obj
        for module in ("builtins", "__builtin__")
        for obj in (bytes, dict, list)
    },
}


_OPCODES = {opcode.code: opcode for opcode in pickletools.opcodes}
# Length-prefixed pickle arguments: pickletools' code for the prefix -> its struct format.
_LENGTH_PREFIXES = {
    pickletools.TAKEN_FROM_ARGUMENT1: "<B",
    pickletools.TAKEN_FROM_ARGUMENT4: "<i",
    pickletools.TAKEN_FROM_ARGUMENT4U: "<I",
    pickletools.TAKEN_FROM_ARGUMENT8U: "<Q",
}


def _check_declared_lengths(data: bytes) -> None:
    """Refuse a pickle whose length-prefixed arguments (or frames) declare more bytes than follow.

    Walks the opcodes without building anything; stops at ``STOP`` or at anything
    it cannot follow, which the unpickler then reports.
    """
    position, size = 0, len(data)
    while position < size:
        opcode = _OPCODES.get(chr(data[position]))
        if opcode is None or opcode.name == "STOP":
            return
        position += 1
        argument = opcode.arg
        if argument is None:
            continue
        if argument.n == pickletools.UP_TO_NEWLINE:
            lines = 2 if argument.name == "stringnl_noescape_pair" else 1
            for _ in range(lines):
                end = data.find(b"\n", position)
                if end < 0:
                    return
                position = end + 1
            continue
        prefix = _LENGTH_PREFIXES.get(argument.n)
        width = argument.n if prefix is None else struct.calcsize(prefix)
        if position + width > size:
            return
        if prefix is None and opcode.name != "FRAME":
            position += width
            continue
        (length,) = struct.unpack_from(prefix or "<Q", data, position)
        position += width
        if length < 0:
            return
        if length > size - position:
            raise InvalidValueError(
                f"its {opcode.name} at byte {position - width - 1} declares {length} bytes, but "
                f"only {size - position} follow: the file is truncated or corrupt"
            )
        if opcode.name != "FRAME":  # a frame's opcodes follow, and are walked
            position += length


class _CifarUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")
        self._file_size = len(data)

    def find_class(self, module: str, name: str) -> Any:
        try:
            found = _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load the global {module}.{name}: a CIFAR batch holds only dicts, "
                "lists, bytes and numpy arrays, so this file is not one (and may be malicious)"
            ) from None
        if found is _reconstruct:
            return functools.partial(_reconstruct, file_size=self._file_size)
        return found


def read_cifar_pickle(path: PathLike) -> dict[str, Any]:
    """Read one CIFAR batch or meta pickle into a dict with ``str`` keys.

    Only dicts, lists, bytes and numpy arrays are rebuilt (the Python 2
    originals and Python 3 re-pickles at any protocol); bytes keys are decoded.

    Raises:
        UnsafePickleError: (a ``ValueError``) the pickle names any other global.
        ValueError: the file is not a pickle of a dict (corrupt or truncated), or
            declares lengths or arrays larger than the file.
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        _check_declared_lengths(raw)
        obj = _CifarUnpickler(raw).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}; no code from the file was run") from None
    except Exception as exc:  # corrupt data surfaces as any of a dozen exception types
        raise InvalidValueError(
            f"{path}: not a readable pickle ({type(exc).__name__}: {exc}); the file is corrupt "
            "or truncated: delete it and extract the dataset again"
        ) from exc
    if not isinstance(obj, dict):
        raise InvalidValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _names(path: Path, meta: dict[str, Any], key: str) -> tuple[str, ...]:
    names = meta.get(key)
    if not isinstance(names, list) or not names:
        raise InvalidValueError(
            f"{path}: expected a non-empty list under {key!r}, got {type(names)}"
        )
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch = read_cifar_pickle(path)
    data, labels = batch.get("data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise InvalidValueError(
            f"{path}: expected 'data' as a uint8 array (N, {_PIXELS}), got {got}"
        )
    if data.shape[1] != _PIXELS:
        raise InvalidValueError(
            f"{path}: expected 'data' of shape (N, {_PIXELS}), got {data.shape}"
        )
    if labels is None:
        raise InvalidValueError(f"{path}: no {label_key!r} entry (keys: {', '.join(batch)})")
    try:
        label_array = np.asarray(labels)
    except ValueError as exc:  # nested sequences of different lengths
        raise InvalidValueError(
            f"{path}: expected {data.shape[0]} integer {label_key!r}, got ragged sequences ({exc})"
        ) from exc
    if label_array.shape != (data.shape[0],) or not np.issubdtype(label_array.dtype, np.integer):
        raise InvalidValueError(
            f"{path}: expected {data.shape[0]} integer {label_key!r}, "
            f"got {label_array.dtype} {label_array.shape}"
        )
    if label_array.size and (label_array.min() < 0 or label_array.max() >= num_classes):
        raise InvalidValueError(
            f"{path}: {label_key!r} must be in [0, {num_classes}), "
            f"got values in [{label_array.min()}, {label_array.max()}]"
        )
    # Each row is the red, green then blue 32x32 plane, row-major: already (C, H, W).
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, *_IMAGE_SHAPE))
    return images, torch.from_numpy(label_array.astype(np.int64))


def _how_to_get(name: str, folder: str) -> str:
    return (
        f"Get it with ddcal.data.download({name!r}, root) (the official archive from "
        f"https://www.cs.toronto.edu/~kriz/cifar.html), then pass root= the folder holding "
        f"{folder}/, or set {DATA_ENV_VAR} to it."
    )


def load_cifar10(
    root: PathLike | None = None, *, split: Split = "both", normalize: bool = True
) -> ImageClassificationData:
    """Load CIFAR-10: train ``(50000, 3, 32, 32)``, test ``(10000, 3, 32, 32)``.

    Reads every ``data_batch_<n>`` present (the official set has 5), ``test_batch``
    and ``batches.meta`` (class names) from ``cifar-10-batches-py`` (or a folder
    holding those files directly) in ``root``, else ``$DDCAL_DATA/cifar10``,
    ``$DDCAL_DATA``. Normalisation: mean (0.4914, 0.4822, 0.4465), std (0.2023,
    0.1994, 0.2010). ``split="train"``/``"test"`` reads only that split and
    leaves the other empty.

    Raises:
        DatasetNotFoundError: (a ``FileNotFoundError``) the files are not there.
        UnsafePickleError: a batch carries globals a CIFAR batch never holds.
        ValueError: a corrupt or malformed batch.
    """
    want_train, want_test = split_parts(split)
    how = _how_to_get("cifar10", "cifar-10-batches-py")
    folder = find_dataset_dir(
        "cifar10",
        ("data_batch_1", "test_batch", "batches.meta"),
        root,
        subdirs=("cifar-10-batches-py",),
        display_name="CIFAR-10",
        how_to_get=how,
    )
    classes = _names(
        folder / "batches.meta", read_cifar_pickle(folder / "batches.meta"), "label_names"
    )
    train = test = None
    if want_train:
        numbers = sorted(
            int(m.group(1))
            for p in folder.iterdir()
            if (m := re.fullmatch(r"data_batch_(\d+)", p.name))
        )
        if numbers != list(range(1, len(numbers) + 1)):
            missing = sorted(set(range(1, max(numbers) + 1)) - set(numbers))
            raise InputFileNotFoundError(
                f"{folder}: data_batch_{missing[0]} is missing (found {numbers}). {how}"
            )
        parts = [_read_batch(folder / f"data_batch_{n}", "labels", len(classes)) for n in numbers]
        train = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    if want_test:
        test = _read_batch(folder / "test_batch", "labels", len(classes))
    return ImageClassificationData.from_uint8(
        "cifar10",
        train,
        test,
        classes,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        normalize=normalize,
    )


def load_cifar100(
    root: PathLike | None = None,
    *,
    split: Split = "both",
    normalize: bool = True,
    labels: str = "fine",
) -> ImageClassificationData:
    """Load CIFAR-100: train ``(50000, 3, 32, 32)``, test ``(10000, 3, 32, 32)``.

    Reads ``train``, ``test`` and ``meta`` from ``cifar-100-python`` (or a
    folder holding them directly) in ``root``, else ``$DDCAL_DATA/cifar100``,
    ``$DDCAL_DATA``. ``labels="fine"`` (100 classes, what the references use)
    or ``"coarse"`` (the 20 superclasses). Normalisation: mean (0.5071, 0.4866,
    0.4409), std (0.2673, 0.2564, 0.2762).

    Raises:
        DatasetNotFoundError: (a ``FileNotFoundError``) the files are not there.
        UnsafePickleError: a batch carries globals a CIFAR batch never holds.
        ValueError: a corrupt or malformed batch, or an unknown ``labels``.
    """
    want_train, want_test = split_parts(split)
    check_choice(labels, "labels", ("fine", "coarse"))
    folder = find_dataset_dir(
        "cifar100",
        ("train", "test", "meta"),
        root,
        subdirs=("cifar-100-python",),
        display_name="CIFAR-100",
        how_to_get=_how_to_get("cifar100", "cifar-100-python"),
    )
    classes = _names(folder / "meta", read_cifar_pickle(folder / "meta"), f"{labels}_label_names")
    key = f"{labels}_labels"
    train = _read_batch(folder / "train", key, len(classes)) if want_train else None
    test = _read_batch(folder / "test", key, len(classes)) if want_test else None
    return ImageClassificationData.from_uint8(
        "cifar100",
        train,
        test,
        classes,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        normalize=normalize,
    )
