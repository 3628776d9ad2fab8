"""Atomic file writes: nothing a user reads is ever half-written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


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
        raise ValueError(f"{source} has an invalid {what} version {version!r}")
    if version > current:
        raise ValueError(
            f"{source} was written by a newer ddcal ({what} version {version}); this one "
            f"reads up to version {current}: upgrade ddcal"
        )
    return version
