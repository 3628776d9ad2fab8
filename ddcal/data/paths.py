"""Where dataset files are looked for: one search order shared by every reader.

Order: ``root`` when given (and only there); otherwise, for each folder listed
in ``$DDCAL_DATA`` (``os.pathsep``-separated), ``<folder>/<name>`` then
``<folder>``; then the reader's system folders (such as
``/usr/share/datasets/fashion-mnist``, where Debian's packages put data).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ddcal.errors import InputFileNotFoundError

__all__ = [
    "DATA_ENV_VAR",
    "DatasetNotFoundError",
    "dataset_search_dirs",
    "find_dataset_dir",
    "find_dataset_files",
]

#: Environment variable naming the folder(s) that hold ddcal's datasets.
DATA_ENV_VAR = "DDCAL_DATA"

PathLike = str | os.PathLike[str]


class DatasetNotFoundError(InputFileNotFoundError):
    """A dataset's files are in none of the folders searched.

    Attributes:
        dataset: the dataset's display name.
        searched: the folders looked in, in order.
        filenames: the files needed (all in one folder).
    """

    def __init__(
        self, message: str, *, dataset: str, searched: Sequence[Path], filenames: Sequence[str]
    ) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.searched = tuple(searched)
        self.filenames = tuple(filenames)


def dataset_search_dirs(
    name: str, root: PathLike | None = None, *, system_dirs: Sequence[PathLike] = ()
) -> tuple[Path, ...]:
    """The folders to look in for dataset ``name``, in order, without duplicates.

    ``root`` given: just ``root``. Otherwise ``$DDCAL_DATA/<name>`` and
    ``$DDCAL_DATA`` for each entry of ``$DDCAL_DATA``, then ``system_dirs``.
    """
    if root is not None:
        return (Path(root).expanduser(),)
    dirs: list[Path] = []
    for entry in os.environ.get(DATA_ENV_VAR, "").split(os.pathsep):
        if entry.strip():
            base = Path(entry.strip()).expanduser()
            dirs += [base / name, base]
    dirs += [Path(d) for d in system_dirs]
    return tuple(dict.fromkeys(dirs))


def _find_in(folder: Path, filename: str, suffixes: Sequence[str]) -> Path | None:
    for suffix in suffixes:
        candidate = folder / (filename + suffix)
        if candidate.is_file():
            return candidate
    return None


def find_dataset_files(
    name: str,
    filenames: Sequence[str],
    root: PathLike | None = None,
    *,
    system_dirs: Sequence[PathLike] = (),
    suffixes: Sequence[str] = ("", ".gz"),
    display_name: str | None = None,
    how_to_get: str = "",
) -> dict[str, Path]:
    """Find all of ``filenames`` in the first folder that holds every one of them.

    Each file may carry any of ``suffixes`` (tried in order: by default the
    uncompressed file first, as it reads faster, then ``.gz``). Files are never
    mixed across folders. Returns ``{filename: path}``.

    Raises:
        DatasetNotFoundError: (a ``FileNotFoundError``) no folder holds them
            all; the message lists the folders searched, what each lacked, and
            ``how_to_get``.
    """
    dirs = dataset_search_dirs(name, root, system_dirs=system_dirs)
    notes: list[str] = []
    for folder in dirs:
        found = {f: _find_in(folder, f, suffixes) for f in filenames}
        if all(path is not None for path in found.values()):
            return {f: path for f, path in found.items() if path is not None}
        if not folder.is_dir():
            notes.append(f"{folder} (no such folder)")
        else:
            lacking = [f for f, path in found.items() if path is None]
            notes.append(f"{folder} (lacks {', '.join(lacking)})")
    display = display_name or name
    wanted = ", ".join(_pattern(f, suffixes) for f in filenames)
    raise _not_found(
        f"{display} files",
        dirs,
        display,
        needed=wanted,
        notes=notes,
        how_to_get=how_to_get,
        searched=dirs,
        filenames=filenames,
    )


def find_dataset_dir(
    name: str,
    required: Sequence[str],
    root: PathLike | None = None,
    *,
    subdirs: Sequence[str] = (),
    system_dirs: Sequence[PathLike] = (),
    display_name: str | None = None,
    how_to_get: str = "",
) -> Path:
    """The first folder that holds every one of ``required`` (relative paths, files or folders).

    Each folder of :func:`dataset_search_dirs` is tried through each of its
    ``subdirs`` first (such as ``cifar-10-batches-py``, the folder an archive
    extracts to), then itself.

    Raises:
        DatasetNotFoundError: (a ``FileNotFoundError``) no folder holds them
            all; the message lists the folders searched, what each lacked, and
            ``how_to_get``.
    """
    dirs = dataset_search_dirs(name, root, system_dirs=system_dirs)
    candidates = tuple(dict.fromkeys(c for d in dirs for c in (*(d / s for s in subdirs), d)))
    notes: list[str] = []
    for folder in candidates:
        lacking = [r for r in required if not (folder / r).exists()]
        if not lacking:
            return folder
        if folder.is_dir():
            notes.append(f"{folder} (lacks {', '.join(lacking)})")
    display = display_name or name
    inside = f" (or in a {' or '.join(subdirs)} subfolder)" if subdirs else ""
    needed = ", ".join(required)
    raise _not_found(
        display,
        dirs,
        display,
        inside=inside,
        needed=needed,
        notes=notes,
        how_to_get=how_to_get,
        searched=candidates,
        filenames=required,
    )


def _not_found(
    what: str,
    dirs: Sequence[Path],
    display: str,
    *,
    inside: str = "",
    needed: str,
    notes: Sequence[str],
    how_to_get: str,
    searched: Sequence[Path],
    filenames: Sequence[str],
) -> DatasetNotFoundError:
    """The error both finders raise: where it looked, what each folder lacked, how to get it."""
    where = ", ".join(map(str, dirs)) if dirs else f"no folder (pass root= or set {DATA_ENV_VAR})"
    message = f"{what} not found in {where}{inside}. Needed in one folder: {needed}."
    if notes:
        message += f" Searched: {'; '.join(notes)}."
    if how_to_get:
        message += f" {how_to_get}"
    return DatasetNotFoundError(message, dataset=display, searched=searched, filenames=filenames)


def _pattern(filename: str, suffixes: Sequence[str]) -> str:
    """``name[.gz]`` for suffixes ("", ".gz"); ``name(.a|.b)`` where a suffix is required."""
    alternatives = "|".join(s for s in suffixes if s)
    if not alternatives:
        return filename
    return f"{filename}[{alternatives}]" if "" in suffixes else f"{filename}({alternatives})"
