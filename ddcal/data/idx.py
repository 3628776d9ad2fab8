"""Reader and writer for the IDX format of MNIST-style datasets.

An IDX file is a 4-byte magic number ``00 00 TT NN`` (``TT`` the element type,
``NN`` the number of dimensions), ``NN`` big-endian uint32 dimension sizes, then
the elements in C order, big-endian. Files may be gzip-compressed.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddcal._io import atomic_write
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


def _is_gzip(path: Path, raw: bytes) -> bool:
    return path.name.endswith(".gz") or raw[:2] == _GZIP_MAGIC


def _decompress(path: Path, raw: bytes) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise InvalidValueError(
            f"{path}: corrupt or truncated gzip data ({exc}); delete the file and fetch it again"
        ) from exc


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an IDX file, gzip-compressed or not, into a tensor.

    Compression is recognised by a ``.gz`` name or the gzip magic bytes. The
    element type maps to ``torch.uint8``, ``int8``, ``int16``, ``int32``,
    ``float32`` or ``float64``; the shape is the one in the header.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: naming ``path``, for a corrupt or truncated gzip stream, a
            wrong magic number, a truncated header, a payload shorter than the
            header declares, or bytes after it.
    """
    path = Path(path)
    raw = path.read_bytes()
    data = _decompress(path, raw) if _is_gzip(path, raw) else raw

    if len(data) < 4:
        raise InvalidValueError(f"{path}: truncated IDX header: {len(data)} bytes, need at least 4")
    code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or code not in _CODE_TO_DTYPE:
        codes = "/".join(f"{c:02x}" for c in _CODE_TO_DTYPE)
        raise InvalidValueError(
            f"{path}: not an IDX file: magic number 0x{data[:4].hex()}, expected 00 00, "
            f"a type code ({codes}) and the number of dimensions"
        )
    if ndim == 0:
        raise InvalidValueError(f"{path}: IDX header declares 0 dimensions")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise InvalidValueError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header_size} bytes, "
            f"the file has {len(data)}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = _CODE_TO_DTYPE[code]
    count = math.prod(shape)
    expected = count * dtype.itemsize
    payload = len(data) - header_size
    if payload < expected:
        raise InvalidValueError(
            f"{path}: truncated IDX data: the header declares shape {shape} of "
            f"{dtype.name} = {expected} bytes, the file has {payload}"
        )
    if payload > expected:
        raise InvalidValueError(
            f"{path}: {payload - expected} unexpected trailing bytes after the {expected} bytes "
            f"of data the header declares (shape {shape}, {dtype.name})"
        )
    native = dtype.newbyteorder("=")
    if count == 0:
        array = np.empty(shape, dtype=native)
    else:
        # One vectorised conversion; the copy makes the array writable and native-endian.
        array = np.frombuffer(data, dtype=dtype, count=count, offset=header_size)
        array = array.astype(native, copy=True).reshape(shape)
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
