"""Reader and writer for the IDX format of MNIST-style datasets.

An IDX file is a 4-byte magic number ``00 00 TT NN`` (``TT`` the element type,
``NN`` the number of dimensions), ``NN`` big-endian uint32 dimension sizes, then
the elements in C order, big-endian. Files may be gzip-compressed.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddcal._io import DEFLATE_MAX_RATIO, atomic_write, check_declared_bytes
from ddcal.errors import InvalidTypeError, InvalidValueError

__all__ = ["read_idx", "write_idx"]

# IDX type code -> big-endian numpy dtype of the elements on disk.
_CODE_TO_DTYPE: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_NATIVE_TO_CODE: dict[np.dtype[Any], int] = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


@contextmanager
def _decompressing(path: Path) -> Iterator[None]:
    """Turn the errors of reading gzip data from ``path`` into one naming it."""
    try:
        yield
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise InvalidValueError(
            f"{path}: corrupt or truncated gzip data ({exc}); delete the file and fetch it again"
        ) from exc


def _read_up_to(stream: io.BufferedIOBase, size: int) -> bytes:
    """Up to ``size`` bytes of ``stream``: fewer only at its end."""
    parts = []
    while size > 0 and (part := stream.read(min(size, _CHUNK))):
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _read_header(path: Path, stream: io.BufferedIOBase) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """The shape and on-disk dtype declared by the IDX header at the start of ``stream``."""
    magic = _read_up_to(stream, 4)
    if len(magic) < 4:
        raise InvalidValueError(
            f"{path}: truncated IDX header: {len(magic)} bytes, need at least 4"
        )
    code, ndim = magic[2], magic[3]
    if magic[0] != 0 or magic[1] != 0 or code not in _CODE_TO_DTYPE:
        codes = "/".join(f"{c:02x}" for c in _CODE_TO_DTYPE)
        raise InvalidValueError(
            f"{path}: not an IDX file: magic number 0x{magic.hex()}, expected 00 00, "
            f"a type code ({codes}) and the number of dimensions"
        )
    if ndim == 0:
        raise InvalidValueError(f"{path}: IDX header declares 0 dimensions")
    sizes = _read_up_to(stream, 4 * ndim)
    if len(sizes) < 4 * ndim:
        raise InvalidValueError(
            f"{path}: truncated IDX header: {ndim} dimensions need {4 + 4 * ndim} bytes, "
            f"the file has {4 + len(sizes)}"
        )
    return struct.unpack(f">{ndim}I", sizes), _CODE_TO_DTYPE[code]


def _check_payload_size(path: Path, declared: str, expected: int, available: int) -> None:
    """An uncompressed file must hold exactly the ``expected`` bytes after its header."""
    if available < expected:
        raise InvalidValueError(
            f"{path}: truncated IDX data: the header declares {declared}, the file has {available}"
        )
    if available > expected:
        raise InvalidValueError(
            f"{path}: {available - expected} unexpected trailing bytes after the "
            f"{expected} bytes of data the header declares ({declared})"
        )


def _fill(path: Path, stream: io.BufferedIOBase, array: np.ndarray, declared: str) -> None:
    """Fill ``array`` from ``stream`` chunk by chunk, then check that nothing follows."""
    target = array.reshape(-1).view(np.uint8).data
    filled = 0
    while filled < array.nbytes and (count := stream.readinto(target[filled : filled + _CHUNK])):
        filled += count
    if filled < array.nbytes:
        raise InvalidValueError(
            f"{path}: truncated IDX data: the header declares {declared}, the file has {filled}"
        )
    trailing = _read_up_to(stream, _CHUNK)
    if trailing:
        count_text = f"{len(trailing)}" if len(trailing) < _CHUNK else f"at least {_CHUNK}"
        raise InvalidValueError(
            f"{path}: {count_text} unexpected trailing bytes after the {array.nbytes} bytes "
            f"of data the header declares ({declared})"
        )


def _read_array(
    path: Path, stream: io.BufferedIOBase, file_size: int, compressed: bool
) -> np.ndarray:
    """The array an IDX stream holds, in its on-disk (big-endian) dtype; sizes checked first."""
    shape, dtype = _read_header(path, stream)
    expected = math.prod(shape) * dtype.itemsize
    declared = f"shape {shape} of {dtype.name} = {expected} bytes"
    check_declared_bytes(expected, path, f"the IDX header ({declared})")
    if not compressed:
        _check_payload_size(path, declared, expected, file_size - 4 - 4 * len(shape))
    elif expected > DEFLATE_MAX_RATIO * file_size:
        raise InvalidValueError(
            f"{path}: corrupt or truncated gzip data: the IDX header declares {declared}, more "
            f"than {file_size} bytes of gzip can hold (deflate expands at most "
            f"{DEFLATE_MAX_RATIO}-fold); delete the file and fetch it again"
        )
    try:
        array = np.empty(shape, dtype=dtype)
    except ValueError as exc:  # no data, but sizes whose product numpy cannot index
        raise InvalidValueError(f"{path}: the IDX header declares {declared}: {exc}") from exc
    _fill(path, stream, array, declared)
    return array


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an IDX file, gzip-compressed or not, into a tensor.

    Compression is recognised by a ``.gz`` name or the gzip magic bytes. The
    element type maps to ``torch.uint8``, ``int8``, ``int16``, ``int32``,
    ``float32`` or ``float64``; the shape is the one in the header.

    The file is streamed: the header is read first and the size it declares
    checked (against the file's size, or for gzip data against what deflate
    can expand that to, and against :data:`~ddcal._io.MAX_DECLARED_BYTES`)
    before the one array of that size is allocated and filled in place.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: naming ``path``, for a corrupt or truncated gzip stream, a
            wrong magic number, a truncated header, a payload shorter than the
            header declares, bytes after it, or a declared size above the ceiling.
    """
    path = Path(path)
    with path.open("rb") as raw:
        file_size = os.fstat(raw.fileno()).st_size
        compressed = path.name.endswith(".gz") or raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if compressed:
            with _decompressing(path), gzip.GzipFile(fileobj=raw) as stream:
                array = _read_array(path, stream, file_size, compressed=True)
        else:
            array = _read_array(path, raw, file_size, compressed=False)
    if array.dtype.byteorder == ">":  # swapped in place: the data is never held twice
        array = array.byteswap(inplace=True).view(array.dtype.newbyteorder("="))
    return torch.from_numpy(array)


def write_idx(path: str | os.PathLike[str], array: torch.Tensor | np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``.

    The dtype must be uint8, int8, int16, int32, float32 or float64, with 1 to
    255 dimensions. The file is written to a temporary name and renamed, so a
    failed write leaves nothing half-written. Returns the path.
    """
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    if not isinstance(array, np.ndarray):
        raise InvalidTypeError(f"array must be a torch.Tensor or numpy.ndarray, got {type(array)}")
    native = array.dtype.newbyteorder("=")
    if native not in _NATIVE_TO_CODE:
        names = ", ".join(d.name for d in _NATIVE_TO_CODE)
        raise InvalidTypeError(f"array dtype must be one of {names}, got {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise InvalidValueError(f"array must have 1 to 255 dimensions, got {array.ndim}")
    if any(size >= 2**32 for size in array.shape):
        raise InvalidValueError(f"array dimensions must be < 2**32, got shape {array.shape}")
    code = _NATIVE_TO_CODE[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = np.ascontiguousarray(array, dtype=_CODE_TO_DTYPE[code]).tobytes()
    data = header + payload
    path = Path(path)
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    with atomic_write(path) as handle:
        handle.write(data)
    return path
