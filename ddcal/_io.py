"""Files in and out: atomic writes (nothing is ever half-written) and the one weights-only loader.

Every file ddcal reads with ``torch.load`` goes through :func:`load_weights_only`:
only tensors and plain Python values are rebuilt, anything else is refused
without running it, and every failure is an error that names the file.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ddcal.errors import InputFileNotFoundError, InvalidValueError


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Write ``path`` through a temporary file in the same folder, renamed on success.

    The block writes to the yielded binary handle; when it ends the data is
    flushed to disk and the file renamed onto ``path`` (mode 0644). If the
    block raises, the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes it 0600
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
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


def load_weights_only(
    path: str | os.PathLike[str],
    *,
    mmap: bool = False,
    allowed_globals: Sequence[Any] = (),
) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name the file.

    Args:
        path: the file.
        mmap: map the file instead of reading it (tensors are paged in on use).
        allowed_globals: extra constructors a weights-only load may call
            (``torch.serialization.safe_globals``), e.g. numpy's scalar types.

    Raises:
        InputFileNotFoundError: ``path`` is not a file.
        InvalidValueError: the file is not a readable PyTorch file, or it holds
            pickled objects other than tensors and plain values (refused, never run).
        OSError: the file cannot be read (permissions, I/O).
    """
    source = Path(path)
    if not source.is_file():
        raise InputFileNotFoundError(f"{source} does not exist or is not a file")
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except OSError:
        raise
    except pickle.UnpicklingError as exc:
        message = str(exc)
        detail = message.partition("WeightsUnpickler error:")[2].strip()
        reason = detail.split("\n", 1)[0].split(". ", 1)[0]
        if "Weights only load failed" not in message:
            raise InvalidValueError(f"{source} is not a readable PyTorch file") from exc
        if reason.startswith("Unsupported operand"):
            # Garbage, or a plain pickle whose opcodes only build objects.
            raise InvalidValueError(
                f"{source} is not a readable PyTorch file, or it holds objects other than "
                f"tensors and plain values ({reason}); not run"
            ) from exc
        raise InvalidValueError(
            f"{source} holds objects other than tensors and plain values ({reason}); refused by "
            "torch.load(weights_only=True) and not run. If you trust the file, load it yourself "
            "and pass its tensors to ddcal"
        ) from exc
    except Exception as exc:
        raise InvalidValueError(
            f"{source} is not a readable PyTorch file ({type(exc).__name__}: {exc})"
        ) from exc
