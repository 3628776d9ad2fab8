"""Fetch datasets from their official addresses: verified, resumable, atomic, safely extracted.

Each file is streamed into ``<root>/<filename>.part`` (resumed with an HTTP
``Range`` request when a ``.part`` is already there), its digest checked, and
only then renamed to ``<root>/<filename>``: a failed check deletes the
``.part`` and leaves no final file. Archives are extracted into a temporary
folder inside ``root`` and their top-level folder moved into place, after
every member has been checked to stay inside it (no absolute paths, no
``..``, no links or devices).

The digests in :data:`RESOURCES` are SHA-256 where one is published; see the
comments there for where each came from.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from ddcal.data.paths import PathLike
from ddcal.data.registry import canonical_name
from ddcal.errors import InvalidTypeError, InvalidValueError

__all__ = ["RESOURCES", "Resource", "download"]

_CHUNK = 1 << 20
_USER_AGENT = "ddcal (https://pypi.org/project/ddcal)"


@dataclass(frozen=True)
class Resource:
    """One file to fetch.

    Attributes:
        url: where to get it (``http``/``https``).
        filename: the name it is saved under in ``root``.
        sha256: its hex SHA-256 digest; the verification used when given.
        md5: its hex MD5 digest, used only where no SHA-256 is published.
        size: its length in bytes, when known (a shorter file is resumable,
            a longer one is corrupt).
        extracts_to: for an archive, the top-level folder it extracts to
            (extraction is skipped when that folder exists); ``None``: the file
            is kept as it is.
    """

    url: str
    filename: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    extracts_to: str | None = None

    def __post_init__(self) -> None:
        if not re.match(r"https?://", self.url):
            raise InvalidValueError(f"url must start with http:// or https://, got {self.url!r}")
        if not self.filename or Path(self.filename).name != self.filename:
            raise InvalidValueError(f"filename must be a plain file name, got {self.filename!r}")
        if self.sha256 is None and self.md5 is None:
            raise InvalidValueError(
                f"{self.filename}: give sha256 (or md5 where none is published)"
            )
        for algorithm, length in (("sha256", 64), ("md5", 32)):
            value = getattr(self, algorithm)
            if value is not None and not re.fullmatch(f"[0-9a-f]{{{length}}}", value):
                raise InvalidValueError(
                    f"{algorithm} must be {length} lower-case hex digits, got {value!r}"
                )

    @property
    def digest(self) -> tuple[str, str]:
        """``(algorithm, expected hex digest)``: SHA-256 when known, else MD5."""
        return ("sha256", self.sha256) if self.sha256 is not None else ("md5", str(self.md5))


_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_S3_FASTAI = "https://s3.amazonaws.com/fast-ai-imageclas/"

#: Dataset name -> the files :func:`download` fetches. Override per call with
#: ``download(..., resources=...)`` (a local mirror, tests).
RESOURCES: dict[str, tuple[Resource, ...]] = {
    # SHA-256 and sizes: tensorflow/datasets url_checksums/fashion_mnist.txt, for these
    # URLs (the dataset's own S3 bucket, linked from zalandoresearch/fashion-mnist). The
    # files Debian's dataset-fashion-mnist installs are recompressed: other digests.
    "fashion-mnist": (
        Resource(
            _FASHION + "train-images-idx3-ubyte.gz",
            "train-images-idx3-ubyte.gz",
            sha256="3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            size=26421880,
        ),
        Resource(
            _FASHION + "train-labels-idx1-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            sha256="a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            size=29515,
        ),
        Resource(
            _FASHION + "t10k-images-idx3-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            sha256="346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            size=4422102,
        ),
        Resource(
            _FASHION + "t10k-labels-idx1-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
            sha256="67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            size=5148,
        ),
    ),
    # yann.lecun.com no longer serves the files reliably; this is Google's CVDF mirror
    # of them. SHA-256 and sizes: tensorflow/datasets url_checksums/mnist.txt (same URLs).
    "mnist": (
        Resource(
            _MNIST + "train-images-idx3-ubyte.gz",
            "train-images-idx3-ubyte.gz",
            sha256="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            size=9912422,
        ),
        Resource(
            _MNIST + "train-labels-idx1-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            sha256="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            size=28881,
        ),
        Resource(
            _MNIST + "t10k-images-idx3-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            size=1648877,
        ),
        Resource(
            _MNIST + "t10k-labels-idx1-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
            sha256="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            size=4542,
        ),
    ),
    # SHA-256: the file_hash of keras.datasets.cifar10/cifar100 for these URLs; it
    # matches the MD5 torchvision publishes (c58f3010..., eb9058c3...) in records
    # that list both. Sizes from those records.
    "cifar10": (
        Resource(
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "cifar-10-python.tar.gz",
            sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            size=170498071,
            extracts_to="cifar-10-batches-py",
        ),
    ),
    "cifar100": (
        Resource(
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            "cifar-100-python.tar.gz",
            sha256="85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
            size=169001437,
            extracts_to="cifar-100-python",
        ),
    ),
    # No SHA-256 is published for this zip (nor could one be computed offline): MD5,
    # the digest every reference implementation checks, and the size they record.
    "tiny-imagenet": (
        Resource(
            "https://cs231n.stanford.edu/tiny-imagenet-200.zip",
            "tiny-imagenet-200.zip",
            md5="90528d7ca1a48142e341f4ef8d21d0de",
            size=248100043,
            extracts_to="tiny-imagenet-200",
        ),
    ),
    # SHA-256 and sizes: tensorflow/datasets datasets/imagenette/checksums.tsv (same
    # URLs; torchvision's MD5 for the full archive is fe2fc210...). The full-size
    # archive is what the references resize from; -320/-160 are fast.ai's smaller ones.
    "imagenette": (
        Resource(
            _S3_FASTAI + "imagenette2.tgz",
            "imagenette2.tgz",
            sha256="6cbfac238434d89fe99e651496f0812ebc7a10fa62bd42d6874042bf01de4efd",
            size=1557161267,
            extracts_to="imagenette2",
        ),
    ),
    "imagenette-320": (
        Resource(
            _S3_FASTAI + "imagenette2-320.tgz",
            "imagenette2-320.tgz",
            sha256="569b4497c98db6dd29f335d1f109cf315fe127053cedf69010d047f0188e158c",
            size=341663724,
            extracts_to="imagenette2-320",
        ),
    ),
    "imagenette-160": (
        Resource(
            _S3_FASTAI + "imagenette2-160.tgz",
            "imagenette2-160.tgz",
            sha256="64d0c4859f35a461889e0147755a999a48b49bf38a7e0f9bd27003f10db02fe5",
            size=99003388,
            extracts_to="imagenette2-160",
        ),
    ),
}


def _resources_for(name: str, table: Mapping[str, Sequence[Resource]]) -> Sequence[Resource]:
    if not isinstance(name, str):
        raise InvalidTypeError(f"name must be a str, got {type(name).__name__} {name!r}")
    keys = [name, name.lower()]
    with contextlib.suppress(ValueError):
        keys.append(canonical_name(name))
    for key in keys:
        if key in table:
            return table[key]
    raise InvalidValueError(f"no download for dataset {name!r}; known: {', '.join(table)}")


def _file_digest(path: Path, algorithm: str) -> str:
    hasher = hashlib.new(algorithm, usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _content_range_start(value: str | None) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (value or "").strip())
    return int(match.group(1)) if match else None


def _fetch(resource: Resource, part: Path, *, progress: bool, timeout: float) -> None:
    """Stream ``resource.url`` into ``part``, resuming from its current length."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(resource.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing after offset: the .part is whole already
            return
        raise OSError(f"{resource.url}: HTTP {exc.code} {exc.reason}") from exc
    with response:
        if offset and response.status == 206:
            start = _content_range_start(response.headers.get("Content-Range"))
            if start != offset:
                raise OSError(
                    f"{resource.url}: asked for bytes from {offset}, the server sent "
                    f"Content-Range {response.headers.get('Content-Range')!r}"
                )
        else:  # a full response (the server ignored or was not sent a Range)
            offset = 0
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header is not None else None
        total = offset + length if length is not None else resource.size
        received = 0
        with (
            part.open("ab" if offset else "wb") as handle,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=resource.filename,
                disable=None if progress else True,
            ) as bar,
        ):
            try:
                while chunk := response.read(_CHUNK):
                    handle.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (http.client.IncompleteRead, OSError) as exc:
                raise OSError(
                    f"{resource.url}: the transfer broke off after {offset + received} bytes "
                    f"({exc}); {part} keeps them: run download again to resume"
                ) from exc
    if length is not None and received < length:
        raise OSError(
            f"{resource.url}: the transfer ended after {offset + received} of {offset + length} "
            f"bytes; {part} keeps them: run download again to resume"
        )


def _check(path: Path, resource: Resource) -> str | None:
    """``None`` if ``path`` has the resource's size and digest, else what is wrong."""
    size = path.stat().st_size
    if resource.size is not None and size != resource.size:
        return f"{size} bytes, expected {resource.size}"
    algorithm, expected = resource.digest
    actual = _file_digest(path, algorithm)
    if actual != expected:
        return f"{algorithm} {actual}, expected {expected}"
    return None


def _fetch_verified(resource: Resource, root: Path, *, progress: bool, timeout: float) -> Path:
    final = root / resource.filename
    if final.exists():
        problem = _check(final, resource)
        if problem is not None:
            raise InvalidValueError(
                f"{final} exists but does not match {resource.url}: {problem}; "
                "delete it to download it again"
            )
        return final
    part = root / f"{resource.filename}.part"
    _fetch(resource, part, progress=progress, timeout=timeout)
    incomplete = resource.size is not None and part.stat().st_size < resource.size
    if incomplete:
        raise OSError(
            f"{resource.url}: {part} holds {part.stat().st_size} of {resource.size} bytes; "
            "run download again to resume"
        )
    problem = _check(part, resource)
    if problem is not None:
        part.unlink()
        raise InvalidValueError(
            f"{resource.url}: the downloaded file is corrupt ({problem}); it was deleted and "
            f"nothing was kept as {final}. Run download again; if this persists, the file "
            "on the server differs from the published one"
        )
    os.replace(part, final)
    return final


def _check_member(archive: Path, name: str, kind: str) -> None:
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or ".." in parts or re.match(r"[A-Za-z]:", name):
        raise InvalidValueError(
            f"{archive}: refusing to extract {name!r}: it points outside the destination folder"
        )
    if kind not in ("file", "dir"):
        raise InvalidValueError(
            f"{archive}: refusing to extract {name!r}: a {kind}, not a plain file"
        )


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if (mode & 0o170000) == 0o120000:
        return "symbolic link"
    return "dir" if info.is_dir() else "file"


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.isfile():
        return "file"
    if info.isdir():
        return "dir"
    return "link" if info.issym() or info.islnk() else "device or special file"


# What reading a damaged archive raises, besides OSErrors (a bad gzip, a seek out of the file).
_DAMAGED_ARCHIVE = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, NotImplementedError)
# OSErrors of the disk, not of the archive, while extracting: these stay OSErrors. Any other
# (a file and a folder of one name, a seek before the start) means a damaged archive.
_DISK_ERRORS = frozenset(
    {errno.ENOSPC, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM}
    | {getattr(errno, "EDQUOT", errno.ENOSPC)}  # disk quota: not on every platform
)


def _extract(archive: Path, root: Path, folder: str) -> Path:
    """Extract ``archive`` (zip or tar, any compression) so that ``root/folder`` appears.

    Raises:
        InvalidValueError: naming ``archive``: an unsafe member (see
            :func:`_check_member`), a damaged archive, members in each other's way,
            or no top-level ``folder``.
        OSError: the disk failed or filled up (see ``_DISK_ERRORS``).
    """
    target = root / folder
    if target.exists():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".extract", dir=root))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zipped:
                for info in zipped.infolist():
                    _check_member(archive, info.filename, _zip_kind(info))
                zipped.extractall(tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(archive, member.name, _tar_kind(member))
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.10.12
                    tar.extractall(tmp, members=members, filter="data")
                else:
                    tar.extractall(tmp, members=members)
        else:
            raise InvalidValueError(f"{archive}: neither a zip nor a tar archive")
        if not (tmp / folder).is_dir():
            raise InvalidValueError(f"{archive}: has no top-level folder {folder!r}")
        os.replace(tmp / folder, target)
    except _DAMAGED_ARCHIVE as exc:
        raise InvalidValueError(
            f"{archive}: damaged or truncated archive ({type(exc).__name__}: {exc}); delete it "
            "and download it again"
        ) from exc
    except OSError as exc:
        if exc.errno in _DISK_ERRORS:
            raise
        raise InvalidValueError(
            f"{archive}: cannot be extracted ({exc}): it is damaged, or members are in each "
            "other's way; delete it and download it again"
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def download(
    name: str,
    root: PathLike,
    *,
    progress: bool = True,
    resources: Mapping[str, Sequence[Resource]] | None = None,
    timeout: float = 60.0,
) -> tuple[Path, ...]:
    """Download dataset ``name`` into ``root`` and extract it where it is an archive.

    Names: "fashion-mnist", "mnist" (the four IDX ``.gz`` files, into ``root``
    itself), "cifar10", "cifar100", "tiny-imagenet", "imagenette" (and
    "imagenette-320", "imagenette-160"): the archive is kept in ``root`` and
    extracted to ``root/<its folder>``, where :func:`~ddcal.data.load_dataset`
    then finds it with ``root=root``. Files already there and verified are not
    fetched again; an extracted folder already there is not extracted again.

    Args:
        progress: show a progress bar (on a terminal).
        resources: the table to use instead of :data:`RESOURCES`.
        timeout: seconds to wait on the connection before giving up.

    Returns:
        Where the data now is: the IDX files, or each archive's extracted folder.

    Raises:
        ValueError: unknown ``name``; a digest mismatch (the ``.part`` is
            deleted, no final file is left); an unsafe or unexpected archive.
        OSError: a network error or a transfer cut short (the ``.part`` is kept:
            calling again resumes it).
    """
    table = RESOURCES if resources is None else resources
    entries = _resources_for(name, table)
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    places = []
    for resource in entries:
        folder = resource.extracts_to
        if folder is None:
            places.append(_fetch_verified(resource, root, progress=progress, timeout=timeout))
        elif (root / folder).exists() and not (root / resource.filename).exists():
            places.append(root / folder)  # extracted earlier, the archive since removed
        else:
            archive = _fetch_verified(resource, root, progress=progress, timeout=timeout)
            places.append(_extract(archive, root, folder))
    return tuple(places)
