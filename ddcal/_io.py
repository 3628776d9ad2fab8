"""Files in and out: atomic writes, the one weights-only loader, and the ceiling on declared sizes.

Every file ddcal reads with ``torch.load`` goes through :func:`load_weights_only`:
only tensors and plain Python values are rebuilt, anything else is refused
without running it, and every failure is an error that names the file.

Every reader that allocates memory from a size a file declares (an IDX header,
a zip record, a pickled length, an image header) first checks that size
against what the file can hold and against :data:`MAX_DECLARED_BYTES`, so a
corrupt or hostile file is refused before anything is allocated.
"""

from __future__ import annotations

import errno
import io
import math
import os
import pickle
import re
import socket
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch

from ddcal.errors import InputFileNotFoundError, InvalidValueError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

#: The most bytes one file may declare that it holds (4 GiB); a reader refuses
#: a larger declaration before allocating anything.
MAX_DECLARED_BYTES = 4 * 2**30

#: deflate (gzip, zip) expands data at most 1032-fold (a 258-byte match in 2 bits),
#: so compressed data declaring more than that many times its size is corrupt.
DEFLATE_MAX_RATIO = 1032

# Temporary files of atomic_write: ".<target>.ddcal-<host>-<pid>-<8 random>.tmp", so
# that a later write of the target can tell which ones a killed process left behind.
_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:16] or "host"
_TEMPORARY = r"\.{name}\.ddcal-(?P<host>.*)-(?P<pid>\d+)-[a-z0-9_]{{8}}\.tmp"

# What zipfile raises on a damaged archive (NotImplementedError: a garbled version field).
_DAMAGED_ZIP = (zipfile.BadZipFile, ValueError, EOFError, NotImplementedError)

# The first bytes of a zip archive (of members, or empty), as np.load tells an .npz.
_ZIP_STARTS = (b"PK\x03\x04", b"PK\x05\x06")

# The lines torch wraps around its reason for refusing a weights-only load.
_TORCH_ADVICE = (
    "Weights only load failed",
    "In PyTorch",
    "(1)",
    "(2)",
    "Please file an issue",
    "Check the documentation",
)


def check_declared_bytes(declared: int, source: object, what: str) -> None:
    """Refuse ``declared`` bytes above :data:`MAX_DECLARED_BYTES`, naming ``source`` and ``what``.

    Raises:
        InvalidValueError: ``declared`` exceeds the ceiling.
    """
    if declared > MAX_DECLARED_BYTES:
        raise InvalidValueError(
            f"{source}: {what} declares {declared} bytes, more than ddcal's ceiling of "
            f"{MAX_DECLARED_BYTES // 2**30} GiB ({MAX_DECLARED_BYTES} bytes) for one file: the "
            "file is corrupt or not what its name says; fetch or write it again"
        )


def _is_running(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine; ``True`` where that cannot be told."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files of ``path`` that writes killed on this machine left; returns them.

    A temporary file of :func:`atomic_write` names the host and process that made
    it; it is stale when that process is no longer running. Files of live
    writes, and of other hosts (a shared folder), are kept.
    """
    target = Path(path)
    pattern = re.compile(_TEMPORARY.format(name=re.escape(target.name)))
    try:
        entries = list(os.scandir(target.parent))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and match["host"] == _HOST and not _is_running(int(match["pid"])):
            try:
                Path(entry.path).unlink(missing_ok=True)
            except OSError:  # another user's, in a shared folder: theirs to remove
                continue
            removed.append(Path(entry.path))
    return removed


class _WriteRecordingFile(io.FileIO):
    """A file keeping the first ``OSError`` of a write (torch.save reports it as a RuntimeError)."""

    write_error: OSError | None = None

    def write(self, data: ReadableBuffer, /) -> int:
        try:
            return super().write(data)
        except OSError as exc:
            if self.write_error is None:
                self.write_error = exc
            raise


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Write ``path`` through a temporary file in the same folder, renamed on success.

    The block writes to the yielded binary handle; when it ends the data is
    flushed to disk and the file renamed onto ``path`` (mode 0644). If the
    block raises, the temporary file is removed and ``path`` is untouched.
    Temporary files of ``path`` left by killed writes are removed first
    (:func:`remove_stale_temporaries`).

    Raises:
        OSError: a write failed (a full disk): with ``path`` as its filename,
            also where the writer (``torch.save``) reported it as another error.
    """
    target = Path(path)
    remove_stale_temporaries(target)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.ddcal-{_HOST}-{os.getpid()}-", suffix=".tmp", dir=target.parent
    )
    raw = _WriteRecordingFile(fd, "wb")
    try:
        with io.BufferedWriter(raw) as handle:
            yield handle
            handle.flush()
            if raw.write_error is not None:  # a writer swallowed it: the data is incomplete
                raise raw.write_error
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes it 0600
        os.replace(tmp_name, target)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        error = raw.write_error or exc
        if isinstance(exc, Exception) and isinstance(error, OSError) and error.filename is None:
            raise OSError(error.errno, error.strerror or str(error), str(target)) from exc
        raise


def check_format_version(
    content: Mapping[str, Any], source: object, *, what: str, current: int
) -> int:
    """``content["version"]`` of a ddcal file: an int from 1 to ``current``.

    Raises:
        ValueError: naming ``source`` and the ``what`` version; a newer version
            says to upgrade ddcal.
    """
    version = content.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidValueError(f"{source} has an invalid {what} version {version!r}")
    if version > current:
        raise InvalidValueError(
            f"{source} was written by a newer ddcal ({what} version {version}); this one "
            f"reads up to version {current}: upgrade ddcal"
        )
    return version


def _check_zip_records(source: Path) -> None:
    """Refuse a zip-format torch file whose records declare more bytes than it holds.

    ``torch.load`` allocates each record at its declared size before reading it.
    ``torch.save`` stores records uncompressed, one after another, so together
    they declare at most the file's size; a compressed record (which would
    expand up to 1032-fold, and which a memory-mapped load reads as raw bytes)
    is refused.
    """
    try:
        if not zipfile.is_zipfile(source):
            return  # the legacy format, or garbage: torch.load tells
        with zipfile.ZipFile(source) as archive:
            records = archive.infolist()
    except _DAMAGED_ZIP:
        return  # torch.load tells what is wrong
    for record in records:
        if record.compress_type != zipfile.ZIP_STORED:
            raise InvalidValueError(
                f"{source}: record {record.filename!r} is compressed (zip method "
                f"{record.compress_type}), which torch.save never writes; save the tensors "
                "again with torch.save"
            )
    declared = sum(record.file_size for record in records)
    file_size = source.stat().st_size
    if declared > file_size:
        raise InvalidValueError(
            f"{source}: its records declare {declared} bytes, more than the file's "
            f"{file_size}: the file is corrupt or truncated; write or fetch it again"
        )


def _check_broadcast_tensors(content: Any, source: Path) -> None:
    """Refuse a tensor that repeats its storage (stride 0, overlaps) past the ceiling.

    Such a view declares more elements than the file holds, and the first
    operation that materialises it allocates all of them.
    """
    pending, seen = [content], set()
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor) and item.layout == torch.strided:
            declared = item.numel() * item.element_size()
            stored = item.untyped_storage().nbytes()
            if declared > stored:
                check_declared_bytes(
                    declared, source, f"a tensor of shape {tuple(item.shape)} over {stored} bytes"
                )
        elif isinstance(item, Mapping):
            pending += [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            pending += list(item)


def _torch_reason(message: str) -> str:
    """What a ``torch.load`` error says it refused, without the advice torch wraps around it."""
    for line in message.splitlines():
        head, marker, tail = line.partition("WeightsUnpickler error:")
        text = (tail if marker else head).strip()
        if text and not text.startswith(_TORCH_ADVICE):
            return text.split(". ", 1)[0].rstrip(".")
    return message.strip().split("\n", 1)[0]


def load_weights_only(
    path: str | os.PathLike[str],
    *,
    mmap: bool = False,
    allowed_globals: Sequence[Any] = (),
) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name the file.

    Before loading, the records of a zip-format file are checked to declare no
    more bytes than the file holds; after it, a tensor that repeats its storage
    (a broadcast view) may declare at most :data:`MAX_DECLARED_BYTES`.

    Args:
        path: the file.
        mmap: map the file instead of reading it (tensors are paged in on use).
        allowed_globals: extra constructors a weights-only load may call
            (``torch.serialization.safe_globals``), e.g. numpy's scalar types.

    Raises:
        InputFileNotFoundError: ``path`` is not a file.
        InvalidValueError: the file is not a readable PyTorch file (empty,
            truncated, corrupt, declaring more than it holds), or it holds pickled
            objects other than tensors and plain values (refused, never run; the
            message keeps torch's reason).
        OSError: the file cannot be read (permissions, I/O), with its filename.
    """
    source = Path(path)
    if not source.is_file():
        raise InputFileNotFoundError(f"{source} does not exist or is not a file")
    unreadable = (
        f"{source} is not a readable PyTorch file: it is empty, truncated, corrupt or not "
        "written by torch.save; write or fetch it again"
    )
    _check_zip_records(source)
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            content = torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except OSError as exc:
        if exc.filename is not None:
            raise
        if exc.errno in (None, errno.EINVAL):  # torch's zip reader on a cut-short file
            raise InvalidValueError(f"{unreadable} ({exc})") from exc
        raise OSError(exc.errno, exc.strerror or str(exc), str(source)) from exc
    except pickle.UnpicklingError as exc:
        message = str(exc)
        reason = _torch_reason(message)
        if "Weights only load failed" not in message:
            raise InvalidValueError(f"{unreadable} ({reason})") from exc
        if reason.startswith("Unsupported operand"):
            # Garbage, or a plain pickle whose opcodes only build objects.
            raise InvalidValueError(
                f"{source} is not a readable PyTorch file, or it holds objects other than "
                f"tensors and plain values ({reason}); not run. If torch.save wrote it, it is "
                "truncated or corrupt: write or fetch it again"
            ) from exc
        raise InvalidValueError(
            f"{source} holds objects other than tensors and plain values ({reason}); refused by "
            "torch.load(weights_only=True) and not run. If you trust the file, load it yourself "
            "and pass its tensors to ddcal"
        ) from exc
    except Exception as exc:
        raise InvalidValueError(
            f"{unreadable} ({type(exc).__name__}: {_torch_reason(str(exc))})"
        ) from exc
    _check_broadcast_tensors(content, source)
    return content


def _npy_header(member: IO[bytes]) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """The shape and dtype an ``.npy`` header declares, read from the start of ``member``."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
    elif version in ((2, 0), (3, 0)):
        # 3.0 differs from 2.0 only in encoding field names as UTF-8, not the sizes.
        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return shape, dtype


def read_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of a numpy ``.npz`` archive, ``{name: array}`` (its ``name.npy`` members).

    Pickled (object) arrays are refused, as ``np.load(allow_pickle=False)`` does.
    Each member's header is read before its data: the shape and dtype it
    declares must fit in the bytes the member holds, which must fit in the
    archive (at most 1032-fold for a deflated member), and all of them
    together in :data:`MAX_DECLARED_BYTES`.

    Raises:
        InputFileNotFoundError: ``path`` is not a file.
        InvalidValueError: naming the file (and the member): not a zip archive of
            ``.npy`` arrays, truncated or corrupt, object arrays, or declared sizes
            the file cannot hold.
        OSError: the file cannot be read (permissions, I/O), with its filename.
    """
    source = Path(path)
    if not source.is_file():
        raise InputFileNotFoundError(f"{source} does not exist or is not a file")
    file_size = source.stat().st_size
    arrays: dict[str, np.ndarray] = {}
    member_name = ""
    try:
        with source.open("rb") as handle:
            if handle.read(4) not in _ZIP_STARTS:  # as np.load tells an .npz
                raise ValueError("it does not start as a zip archive")
        with zipfile.ZipFile(source) as archive:
            members = [info for info in archive.infolist() if info.filename.endswith(".npy")]
            total = 0
            for info in members:
                member_name = info.filename
                if info.compress_type == zipfile.ZIP_STORED:
                    holds = info.compress_size
                elif info.compress_type == zipfile.ZIP_DEFLATED:
                    holds = DEFLATE_MAX_RATIO * info.compress_size
                else:
                    raise ValueError(
                        f"compressed with zip method {info.compress_type}; numpy writes "
                        "stored or deflated members"
                    )
                with archive.open(info) as member:
                    shape, dtype = _npy_header(member)
                    payload = info.file_size - member.tell()
                if dtype.hasobject:
                    raise ValueError(f"holds Python objects ({dtype}), which are pickles: refused")
                declared = math.prod(shape) * dtype.itemsize
                if info.compress_size > file_size or info.file_size > holds or declared > payload:
                    raise ValueError(
                        f"declares shape {shape} of {dtype} = {declared} bytes; the member holds "
                        f"{payload} after its header ({info.compress_size} in the archive): "
                        "truncated or corrupt"
                    )
                total += declared
                check_declared_bytes(total, source, "its arrays")
            for info in members:
                member_name = info.filename
                with archive.open(info) as member:
                    arrays[info.filename[:-4]] = np.lib.format.read_array(
                        member, allow_pickle=False
                    )
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise InvalidValueError(_npz_problem(source, member_name, exc)) from exc
    except (*_DAMAGED_ZIP, zlib.error) as exc:
        if isinstance(exc, InvalidValueError):
            raise
        raise InvalidValueError(_npz_problem(source, member_name, exc)) from exc
    return arrays


def _npz_problem(source: Path, member: str, exc: BaseException) -> str:
    where = f"member {member!r}: " if member else ""
    return (
        f"{source} is not a readable .npz archive of plain arrays ({where}"
        f"{type(exc).__name__}: {exc}); write it again with numpy.savez"
    )
