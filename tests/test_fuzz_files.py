"""Fuzz suite for files: generated files pushed through every reader ddcal has.

Each test generates files of one format (IDX raw and gzip, ``.npz``, CIFAR pickle batches,
``.pt`` distilled sets, predictions and checkpoints, archives, PNG/JPEG images): valid ones,
ones with wrong-typed or mis-shaped contents, ones declaring huge sizes, malicious pickles
(``os.system``, ``eval``, ...), archives with traversal and links, gzip bombs; then truncated,
emptied, bit-flipped or extended. The property: the reader returns the correct result, or
raises a documented ddcal error (:class:`~ddcal.errors.InvalidInputError`) or an ``OSError``
with a filename, whose message names the file; never another exception, and never runs code.
``ddcal metrics`` and ``ddcal calibrate`` are driven the same way in-process: exit code 0 or 2
(a user's error: one line, naming the file where the reader refuses it), never 1 (a bug).

The bomb cases also run in a subprocess that measures each one's peak memory
(:func:`test_bombs_are_refused_or_read_within_bounded_memory`).

Profiles (tests/conftest.py): "ci" by default, ``DDCAL_FUZZ=deep`` for ten times the cases.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kornia_rs
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ddcal._io import read_npz
from ddcal.cli import EXIT_OK, EXIT_USER_ERROR, main
from ddcal.data import DISTILLED_FORMAT, load_distilled
from ddcal.data.cifar import load_cifar10, read_cifar_pickle
from ddcal.data.download import _extract
from ddcal.data.idx import read_idx
from ddcal.data.image_folder import read_images
from ddcal.distill.checkpoint import Checkpoint
from ddcal.distill.loop import DistillationStep
from ddcal.errors import InvalidInputError
from ddcal.models import ConvNet, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Result = TypeVar("Result")

# ------------------------------------------------------------------ the property


def read_or_refused(read: Callable[[], Result], *named: Path) -> Result | None:
    """``read()``'s result, or ``None`` where it raised a documented error naming one of ``named``.

    Any other exception propagates, and fails the test.
    """
    try:
        return read()
    except InvalidInputError as exc:
        message = str(exc)
    except OSError as exc:
        if exc.filename is None:
            raise
        message = str(exc)
    assert any(str(path) in message for path in named), message
    return None


@contextlib.contextmanager
def folder() -> Iterator[Path]:
    """A fresh temporary folder per generated case (function-scoped fixtures do not reset)."""
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


# --------------------------------------------------------------- byte corruption


def corrupted(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[tuple[bytes, bool]]:
    """``(bytes, changed)``: a valid file as it is, or truncated, emptied, with bytes
    overwritten, extended, or replaced by noise."""

    def variants(data: bytes) -> st.SearchStrategy[tuple[bytes, bool]]:
        cut = st.integers(0, max(len(data) - 1, 0)).map(lambda end: data[:end])
        flips = st.lists(
            st.tuples(st.integers(0, max(len(data) - 1, 0)), st.integers(0, 255)),
            min_size=1,
            max_size=8,
        ).map(lambda changes: _flipped(data, changes))
        extended = st.binary(min_size=1, max_size=64).map(lambda tail: data + tail)
        noise = st.binary(max_size=256)
        changed = st.one_of(cut, flips, extended, noise, st.just(b""))
        return st.one_of(st.just((data, False)), changed.map(lambda new: (new, new != data)))

    return valid.flatmap(variants)


def _flipped(data: bytes, changes: list[tuple[int, int]]) -> bytes:
    if not data:
        return data
    changed = bytearray(data)
    for position, value in changes:
        changed[position % len(data)] = value
    return bytes(changed)


# ------------------------------------------------------------------------- IDX

IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@st.composite
def idx_contents(draw: st.DrawFn) -> bytes:
    """An IDX file's uncompressed bytes: valid, or of an unknown type code, or declaring a
    huge shape, or followed by a long run of zeros (a gzip bomb once compressed)."""
    code = draw(st.sampled_from([*IDX_DTYPES, 0x00, 0x0A, 0xFF]))
    small = st.lists(st.integers(0, 5), min_size=0, max_size=3)
    huge = st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4)
    shape = draw(small | huge)
    header = bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    expected = math.prod(shape) * np.dtype(IDX_DTYPES.get(code, "u1")).itemsize
    payload = draw(
        st.binary(min_size=expected, max_size=expected)
        if expected <= 512
        else st.binary(max_size=64)
    )
    zeros = draw(st.sampled_from([0, 0, 0, 1 << 16, 1 << 21]))
    return header + payload + bytes(zeros)


def _expected_idx(data: bytes) -> np.ndarray:
    code, ndim = data[2], data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=IDX_DTYPES[code], offset=4 + 4 * ndim).reshape(shape)
    return array.astype(array.dtype.newbyteorder("="))


@given(
    content=idx_contents(),
    compress=st.booleans(),
    gz_name=st.booleans(),
    damage=st.data(),
)
def test_idx_files(content: bytes, compress: bool, gz_name: bool, damage: st.DataObject) -> None:
    packed = gzip.compress(content, compresslevel=1, mtime=0) if compress else content
    data, _ = damage.draw(corrupted(st.just(packed)))
    with folder() as root:
        path = root / ("images-idx3-ubyte.gz" if gz_name else "images-idx3-ubyte")
        path.write_bytes(data)
        tensor = read_or_refused(lambda: read_idx(path), path)
    if tensor is not None:
        raw = gzip.decompress(data) if gz_name or data[:2] == b"\x1f\x8b" else data
        expected = _expected_idx(raw)
        assert tensor.numpy().dtype == expected.dtype
        assert tensor.numpy().shape == expected.shape
        assert tensor.numpy().tobytes() == expected.tobytes()


# ------------------------------------------------------------------------- npz


def npy_member(shape: tuple[int, ...], descr: str, data: bytes) -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}".encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


plain_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_, np.complex64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
)


@st.composite
def npz_files(draw: st.DrawFn) -> bytes:
    """An ``.npz``: numpy's own (stored or deflated), one with an object (pickled) array,
    or hand-made members whose headers declare huge or mismatched shapes."""
    buffer = io.BytesIO()
    kind = draw(st.sampled_from(["numpy", "numpy", "object", "declared"]))
    if kind == "declared":
        members = draw(
            st.dictionaries(
                st.sampled_from(["logits.npy", "labels.npy", "other"]),
                st.builds(
                    npy_member,
                    st.lists(st.integers(0, 2**40), max_size=3).map(tuple),
                    st.sampled_from(["<f4", "<i8", "|u1", "|O", "<U3", "V0"]),
                    st.binary(max_size=64),
                ),
                max_size=3,
            )
        )
        method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
        with zipfile.ZipFile(buffer, "w", compression=method) as archive:
            for name, member in members.items():
                archive.writestr(name, member)
        return buffer.getvalue()
    arrays = draw(
        st.dictionaries(st.sampled_from(["logits", "labels", "x"]), plain_arrays, max_size=3)
    )
    if kind == "object":
        arrays["objects"] = np.array([{"a": 1}, None], dtype=object)
    save = draw(st.sampled_from([np.savez, np.savez_compressed]))
    save(buffer, **arrays)
    return buffer.getvalue()


@given(case=corrupted(npz_files()))
def test_npz_files(case: tuple[bytes, bool]) -> None:
    data, _ = case
    with folder() as root:
        path = root / "predictions.npz"
        path.write_bytes(data)
        arrays = read_or_refused(lambda: read_npz(path), path)
        if arrays is not None:
            with zipfile.ZipFile(path) as archive:
                members = {name[:-4] for name in archive.namelist() if name.endswith(".npy")}
            assert set(arrays) == members
            with np.load(path, allow_pickle=False) as expected:
                for name, array in arrays.items():
                    assert array.dtype == expected[name].dtype
                    assert array.shape == expected[name].shape
                    assert array.tobytes() == expected[name].tobytes()


# ---------------------------------------------------------------- CIFAR pickles


class Runs:
    """Pickles as ``function(*arguments)``: a malicious payload, refused if the reader is right."""

    def __init__(self, function: Any, *arguments: Any) -> None:
        self.function, self.arguments = function, arguments

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.function, self.arguments


def payloads(marker: Path) -> st.SearchStrategy[Runs]:
    """Objects whose unpickling would create ``marker`` (or evaluate code)."""
    return st.sampled_from(
        [
            Runs(os.system, f"touch {marker}"),
            Runs(eval, f"open({str(marker)!r}, 'w')"),
            Runs(exec, f"open({str(marker)!r}, 'w')"),
            Runs(subprocess.call, ["touch", str(marker)]),
            Runs(getattr, Runs(__import__, "os"), "system"),
            Runs(np.load, str(marker)),
            Runs(torch.load, str(marker)),
        ]
    )


plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.binary(max_size=8)
    | st.text(max_size=4)
    | plain_arrays,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def cifar_batches(draw: st.DrawFn, marker: Path) -> bytes:
    """A CIFAR batch pickle (any protocol), with wrong-typed or malicious entries, or with
    a length-prefixed opcode declaring huge sizes."""
    count = draw(st.integers(0, 3))
    batch: dict[bytes, Any] = {
        b"data": np.frombuffer(
            draw(st.binary(min_size=3072 * count, max_size=3072 * count)), np.uint8
        ).reshape(count, 3072),
        b"labels": draw(st.lists(st.integers(0, 9), min_size=count, max_size=count)),
        b"filenames": [b"x.png"] * count,
    }
    for key in draw(st.lists(st.sampled_from([b"data", b"labels", b"batch_label"]), max_size=2)):
        batch[key] = draw(plain_values | payloads(marker))
    kind = draw(st.sampled_from(["pickle", "pickle", "pickle", "declared"]))
    if kind == "declared":
        opcode, prefix = draw(
            st.sampled_from([(b"\x8e", "<Q"), (b"X", "<I"), (b"T", "<i"), (b"\x95", "<Q")])
        )
        length = draw(st.integers(0, 2**31 - 1))
        return (
            b"\x80\x04" + opcode + struct.pack(prefix, length) + draw(st.binary(max_size=16)) + b"."
        )
    return pickle.dumps(batch, protocol=draw(st.integers(0, pickle.HIGHEST_PROTOCOL)))


def _cifar_meta() -> bytes:
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    return pickle.dumps({b"label_names": names}, protocol=2)


@given(case=st.data())
def test_cifar_batches(case: st.DataObject) -> None:
    with folder() as root:
        marker = root / "ran"
        data, _ = case.draw(corrupted(cifar_batches(marker)))
        batches = root / "cifar-10-batches-py"
        batches.mkdir()
        (batches / "data_batch_1").write_bytes(data)
        (batches / "test_batch").write_bytes(data)
        (batches / "batches.meta").write_bytes(_cifar_meta())
        read_or_refused(
            lambda: read_cifar_pickle(batches / "data_batch_1"), batches / "data_batch_1"
        )
        loaded = read_or_refused(
            lambda: load_cifar10(root, split="train"), batches / "data_batch_1"
        )
        assert not marker.exists()
    if loaded is not None:
        assert loaded.train_images.shape[1:] == (3, 32, 32)
        assert loaded.train_labels.shape == (loaded.train_images.shape[0],)


# --------------------------------------------------------- .pt distilled sets


def tensors(max_side: int = 4) -> st.SearchStrategy[torch.Tensor]:
    """Small tensors of any common dtype and 0 to 5 dimensions, NaN and inf included, or
    broadcast views declaring gigabytes to terabytes over one stored element."""
    dense = hnp.arrays(
        dtype=st.sampled_from(
            [
                np.float32,
                np.float64,
                np.float16,
                np.int64,
                np.int32,
                np.uint8,
                np.bool_,
                np.complex64,
            ]
        ),
        shape=hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=max_side),
    ).map(lambda array: torch.from_numpy(array.copy()))
    # Sizes of 1 or 2 and at most one of 2**40 (4 TiB as float32): cheap, or far past the ceiling.
    shapes = st.tuples(
        st.lists(st.sampled_from([1, 2]), max_size=3), st.integers(0, 3), st.booleans()
    )
    broadcast = shapes.map(lambda drawn: _broadcast(*drawn))
    return dense | broadcast


def _broadcast(sizes: list[int], where: int, huge: bool) -> torch.Tensor:
    shape = sizes[:where] + [2**40] * huge + sizes[where:] or [1]
    return torch.zeros([1] * len(shape)).expand(*shape)


def distilled_images() -> st.SearchStrategy[torch.Tensor]:
    return hnp.arrays(np.float32, hnp.array_shapes(min_dims=4, max_dims=4, max_side=3)).map(
        lambda array: torch.from_numpy(array.copy())
    )


@st.composite
def distilled_contents(draw: st.DrawFn, marker: Path) -> tuple[str, Any, torch.Tensor | None]:
    """``(layout, content, images)``: what a distilled-set file holds, in ddcal's, DC's or
    MTT's layout, possibly with wrong-typed fields or a malicious object; ``images`` where
    they are still in the content unchanged."""
    images = draw(distilled_images() | tensors())
    count = min(images.shape[0], 8) if images.ndim else 1
    labels = draw(st.just(torch.arange(count) % 3) | tensors())
    anything = st.one_of(tensors(), plain_values, payloads(marker))
    layout = draw(st.sampled_from(["ddcal", "res", "mtt"]))
    if layout == "ddcal":
        content: Any = {
            "format": DISTILLED_FORMAT,
            "version": 1,
            "images": images,
            "labels": labels,
        }
        content |= {
            "lr": draw(st.none() | st.floats() | anything),
            "meta": draw(st.just({}) | anything),
        }
        for key in draw(st.lists(st.sampled_from(["format", "version", "meta", "lr"]), max_size=2)):
            content[key] = draw(anything)
    elif layout == "res":
        content = {
            "data": [[images, labels]],
            "accs_all_exps": draw(st.just({"ConvNet": [0.5]}) | anything),
        }
        if draw(st.booleans()):
            content["data"] = draw(anything)
            return layout, content, None
    else:
        content = (images, labels, draw(st.none() | anything))
    return layout, content, images


def _torch_bytes(content: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(content, buffer)
    return buffer.getvalue()


@given(case=st.data())
def test_distilled_set_files(case: st.DataObject) -> None:
    with folder() as root:
        marker = root / "ran"
        layout, content, images = case.draw(distilled_contents(marker))
        if layout == "mtt":
            images, labels, lr = content
            files = {"images_best.pt": images, "labels_best.pt": labels}
            if lr is not None:
                files["lr_best.pt"] = lr
            path = root
        else:
            files = {"res_DM_CIFAR10_ConvNet_1ipc.pt": content}
            path = root / "res_DM_CIFAR10_ConvNet_1ipc.pt"
        changed_any = False
        for name, value in files.items():
            data, changed = case.draw(corrupted(st.just(_torch_bytes(value))), label=name)
            (root / name).write_bytes(data)
            changed_any |= changed
        distilled = read_or_refused(
            lambda: load_distilled(path), path, *(root / name for name in files)
        )
        assert not marker.exists()
    if distilled is not None and images is not None and not changed_any:
        assert torch.equal(distilled.images, images)


# --------------------------------------------------------- distillation checkpoints


class SGDStep(DistillationStep):
    def make_optimizer(self, synthetic: torch.Tensor) -> torch.optim.Optimizer:
        return torch.optim.SGD([synthetic], lr=0.1, momentum=0.9)

    def step(self, iteration: int, synthetic: torch.Tensor, optimizer: Any) -> float:
        return 0.0


def _checkpoint_state() -> dict[str, Any]:
    synthetic = torch.arange(16.0).reshape(4, 1, 2, 2).requires_grad_(True)
    optimizer = SGDStep().make_optimizer(synthetic)
    synthetic.grad = torch.ones_like(synthetic)
    optimizer.step()
    with folder() as root:
        checkpoint = Checkpoint(root, IDENTITY)
        checkpoint.save(2, synthetic, optimizer, [0.5, 0.25], {})
        return dict(torch.load(checkpoint.path, weights_only=True))


IDENTITY = {"method": "sgd", "seed": 0, "iterations": 5}
CHECKPOINT_KEYS = [
    "format",
    "version",
    "config",
    "iteration",
    "synthetic",
    "optimizer",
    "history",
    "extra",
]
OPTIMIZER_KEYS = ["state", "param_groups", 0, "params", "momentum_buffer", "lr", "momentum", "seed"]


@st.composite
def checkpoint_states(draw: st.DrawFn, marker: Path) -> tuple[dict[str, Any], bool]:
    """``(state, changed)``: a saved checkpoint's state with up to three entries, at any
    depth, replaced by wrong-typed, mis-shaped or malicious values."""
    state = _checkpoint_state()
    mutations = draw(
        st.lists(
            st.tuples(
                st.lists(st.sampled_from(CHECKPOINT_KEYS + OPTIMIZER_KEYS), min_size=1, max_size=4),
                st.one_of(
                    tensors(), plain_values, payloads(marker), st.just(torch.zeros(4, 1, 2, 2))
                ),
            ),
            max_size=3,
        )
    )
    for keys, value in mutations:
        node: Any = state
        for key in keys[:-1]:
            if not isinstance(node, (dict, list)):
                break
            with contextlib.suppress(KeyError, IndexError, TypeError):
                node = node[key]
        if isinstance(node, dict) or (
            isinstance(node, list) and isinstance(keys[-1], int) and keys[-1] < len(node)
        ):
            node[keys[-1]] = value
    return state, bool(mutations)


@given(case=st.data())
def test_distillation_checkpoints(case: st.DataObject) -> None:
    with folder() as root:
        marker = root / "ran"
        state, mutated = case.draw(checkpoint_states(marker))
        data, changed = case.draw(corrupted(st.just(_torch_bytes(state))))
        checkpoint = Checkpoint(root, IDENTITY)
        checkpoint.path.write_bytes(data)
        synthetic = torch.zeros(4, 1, 2, 2, requires_grad=True)
        step = SGDStep()
        optimizer = step.make_optimizer(synthetic)
        restored = read_or_refused(
            lambda: checkpoint.restore(synthetic, optimizer, step, iterations=5), checkpoint.path
        )
        assert not marker.exists()
    if restored is not None and not (mutated or changed):
        assert restored == (2, [0.5, 0.25])
        assert torch.equal(synthetic.detach(), state["synthetic"])


# --------------------------------------------------------------------- archives

MEMBER_NAMES = [
    "toy/a.txt",
    "toy/sub/b.txt",
    "toy/sub",
    "toy",
    "../escape.txt",
    "toy/../../escape.txt",
    "/tmp/escape.txt",
    "\\escape.txt",
    "C:/escape.txt",
    "toy/./c.txt",
    "other/d.txt",
]
TAR_KINDS = [
    tarfile.REGTYPE,
    tarfile.DIRTYPE,
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
    tarfile.FIFOTYPE,
    tarfile.CHRTYPE,
]
LINK_TARGETS = ["/etc/passwd", "../../escape.txt", "a.txt", "toy/a.txt"]


@st.composite
def archives(draw: st.DrawFn) -> tuple[str, bytes]:
    """``(suffix, bytes)``: a tar (plain or gzip) or zip of members with safe and unsafe
    names, of every kind: files, folders, symbolic and hard links, devices, FIFOs."""
    members = draw(
        st.lists(
            st.tuples(
                st.sampled_from(MEMBER_NAMES),
                st.sampled_from(TAR_KINDS),
                st.sampled_from(LINK_TARGETS),
            ),
            min_size=1,
            max_size=5,
        )
    )
    buffer = io.BytesIO()
    if draw(st.booleans()):
        with zipfile.ZipFile(buffer, "w") as zipped:
            for name, kind, target in members:
                info = zipfile.ZipInfo(name + ("/" if kind == tarfile.DIRTYPE else ""))
                mode = 0o120777 if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else 0o100644
                info.external_attr = mode << 16
                zipped.writestr(info, target.encode() if kind == tarfile.SYMTYPE else b"x")
        return ".zip", buffer.getvalue()
    compression = draw(st.sampled_from(["", "gz"]))
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as tar:
        for name, kind, target in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            info.size = 1 if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(b"x") if kind == tarfile.REGTYPE else None)
    return ".tgz" if compression else ".tar", buffer.getvalue()


@pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")  # zipfile, on generated names
@given(case=st.data())
def test_archives(case: st.DataObject) -> None:
    suffix, valid = case.draw(archives())
    data, _ = case.draw(corrupted(st.just(valid)))
    with folder() as outside:
        root = outside / "root"
        root.mkdir()
        archive = root / f"toy{suffix}"
        archive.write_bytes(data)
        extracted = read_or_refused(lambda: _extract(archive, root, "toy"), archive)
        everything = sorted(outside.rglob("*"))
        for path in everything:
            assert not path.is_symlink(), path
            assert path.is_file() or path.is_dir(), path
        expected = {archive, root}
        if extracted is not None:
            assert extracted == root / "toy"
            expected |= {extracted}
        assert all(path in expected or extracted in path.parents for path in everything), everything


# ----------------------------------------------------------------------- images

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@st.composite
def image_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """``(suffix, bytes)``: a small PNG or JPEG, its header's size possibly rewritten to a
    small one or to one past the pixel ceiling."""
    pixels = draw(hnp.arrays(np.uint8, st.tuples(st.integers(1, 6), st.integers(1, 6), st.just(3))))
    kind = draw(st.sampled_from(["png", "jpg"]))
    with folder() as root:
        path = root / f"image.{kind}"
        if kind == "png":
            kornia_rs.io.write_image_png_u8(str(path), np.ascontiguousarray(pixels), "rgb")
        else:
            kornia_rs.io.write_image_jpeg(str(path), np.ascontiguousarray(pixels), "rgb", 90)
        data = bytearray(path.read_bytes())
    size = st.integers(0, 64) | st.integers(8193, 65535)
    if draw(st.booleans()):
        height, width = draw(size), draw(size)
        if kind == "png":
            data[16:24] = struct.pack(">II", width, height)
        else:
            frame = data.index(b"\xff\xc0") + 5
            data[frame : frame + 4] = struct.pack(">HH", height, width)
    return f".{kind}", bytes(data)


@given(case=st.data(), resize=st.sampled_from([None, 8]))
def test_image_files(case: st.DataObject, resize: int | None) -> None:
    suffix, valid = case.draw(image_files())
    data, _ = case.draw(corrupted(st.just(valid)))
    with folder() as root:
        path = root / f"image{suffix}"
        path.write_bytes(data)
        images = read_or_refused(lambda: read_images([path], size=resize), path)
    if images is not None:
        assert images.dtype == torch.uint8
        assert (images.ndim, *images.shape[:2]) == (4, 1, 3)


# -------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny ConvNet (1x8x8 images, 3 classes) and evaluation data for ``ddcal calibrate``."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    paths = {"model": save_checkpoint(ConvNet(1, 3, 8, width=4).eval(), root / "net.pt")}
    paths["eval"] = root / "eval.pt"
    torch.save(
        {"images": torch.randn(12, 1, 8, 8, generator=generator), "labels": torch.arange(12) % 3},
        paths["eval"],
    )
    return paths


def _run_cli(arguments: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(arguments)
    return code, err.getvalue()


def _error_line(code: int, err: str) -> str:
    """The one ``ddcal: error:`` line of a user's error ("" on success); fails on a bug."""
    assert code in (EXIT_OK, EXIT_USER_ERROR), err
    lines = [line for line in err.splitlines() if line.startswith("ddcal: error:")]
    assert len(lines) == (code == EXIT_USER_ERROR), err
    return "".join(lines)


@st.composite
def predictions(draw: st.DrawFn, marker: Path) -> Any:
    count = draw(st.integers(1, 6))
    logits = draw(st.just(torch.randn(count, 3)) | tensors())
    labels = draw(st.just(torch.arange(count) % 3) | tensors())
    content = {
        "format": "ddcal-predictions",
        "version": 1,
        "logits": logits,
        "labels": labels,
        "extra": {},
    }
    for key in draw(
        st.lists(st.sampled_from(["format", "version", "extra", "logits"]), max_size=2)
    ):
        content[key] = draw(st.one_of(tensors(), plain_values, payloads(marker)))
    return content


@given(case=st.data())
def test_cli_metrics_on_predictions_files(case: st.DataObject) -> None:
    with folder() as root:
        marker = root / "ran"
        data, _ = case.draw(corrupted(st.just(_torch_bytes(case.draw(predictions(marker))))))
        path = root / "predictions.pt"
        path.write_bytes(data)
        code, err = _run_cli(["metrics", str(path)])
        assert not marker.exists()
    line = _error_line(code, err)
    assert not line or str(path) in line, line


@given(case=st.data())
def test_cli_calibrate_on_distilled_set_files(
    cli_files: dict[str, Path], case: st.DataObject
) -> None:
    with folder() as root:
        marker = root / "ran"
        images = case.draw(st.just(torch.randn(6, 1, 8, 8)) | distilled_images() | tensors())
        content = {
            "format": DISTILLED_FORMAT,
            "version": 1,
            "images": images,
            "labels": torch.arange(6) % 3,
        }
        content |= {"lr": None, "meta": case.draw(st.just({}) | plain_values | payloads(marker))}
        data, _ = case.draw(corrupted(st.just(_torch_bytes(content))))
        path = root / "distilled.pt"
        path.write_bytes(data)
        arguments = ["calibrate", "--model", str(cli_files["model"]), "--distilled", str(path)]
        arguments += ["--eval-data", str(cli_files["eval"]), "--device", "cpu", "--num-masks", "2"]
        code, err = _run_cli(arguments)
        refused = read_or_refused(lambda: load_distilled(path), path) is None
        assert not marker.exists()
    line = _error_line(code, err)
    assert not refused or str(path) in line, line  # a file the reader refuses is named


# ------------------------------------------------------------------ memory bounds

# Run in a fresh interpreter: each bomb is read in a forked child, which reports how far its
# peak resident memory rose above the memory it started with.
_BOMBS = r"""
import gzip, json, os, resource, struct, sys, zipfile, zlib
from pathlib import Path
import numpy as np
import torch
from ddcal._io import load_weights_only, read_npz
from ddcal.data import load_distilled
from ddcal.data.cifar import read_cifar_pickle
from ddcal.data.idx import read_idx
from ddcal.data.image_folder import read_images
from ddcal.errors import InvalidInputError

root = Path(sys.argv[1])
MIB = 1 << 20


def idx_header(shape):
    return bytes([0, 0, 8, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def gzip_of_zeros(path, header, zero_mib):
    # A valid gzip of header + zero_mib MiB of zeros, one deflated MiB repeated.
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(bytes(MIB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(header)
    for _ in range(zero_mib):
        crc = zlib.crc32(bytes(MIB), crc)
    with open(path, "wb") as out:
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + head)
        for _ in range(zero_mib):
            out.write(block)
        size = (len(header) + zero_mib * MIB) % 2**32
        out.write(compressor.flush() + struct.pack("<II", crc, size))
    return path


def npy(shape, descr="<f4"):
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}".encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def deflated_member_of_zeros(path, name, header, zero_mib):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open(name, "w", force_zip64=True) as member:
            member.write(header)
            for _ in range(zero_mib):
                member.write(bytes(MIB))
    return path


def png(path, height, width):
    body = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + body + struct.pack(">I", zlib.crc32(b"IHDR" + body))
    data = zlib.compress(bytes(1000))
    crc = struct.pack(">I", zlib.crc32(b"IDAT" + data))
    idat = struct.pack(">I", len(data)) + b"IDAT" + data + crc
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk + idat)
    return path


def write(path, data):
    path.write_bytes(data)
    return path


def deflated_pt(path, zero_mib):
    # A torch.save file repacked with its tensor's record deflated and grown to zero_mib MiB.
    torch.save({"x": torch.zeros(10)}, root / "template.pt")
    with zipfile.ZipFile(root / "template.pt") as template:
        records = {info.filename: template.read(info) for info in template.infolist()}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as out:
        for name, data in records.items():
            with out.open(name, "w", force_zip64=True) as record:
                if name.endswith("data/0"):
                    for _ in range(zero_mib):
                        record.write(bytes(MIB))
                else:
                    record.write(data)
    return path


def broadcast_res(path):
    images = torch.zeros(1, 1, 1, 1).expand(2**16, 3, 2**10, 2**10)  # 768 GiB over 4 bytes
    torch.save({"data": [[images, torch.zeros(2**16)]]}, path)
    return path


def npz_declaring(path, shape):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("logits.npy", npy(shape))
    return path


HUGE_ARRAY_PICKLE = (
    b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
    + b"\x8a\x05" + (2**36).to_bytes(5, "little") + b"\x85U\x01b\x87R."
)
CASES = {
    "idx.gz declaring 10 bytes, then 256 MiB of zeros":
        (read_idx, gzip_of_zeros(root / "a-idx1-ubyte.gz", idx_header((10,)), 256)),
    "idx.gz declaring 1 GiB in a few bytes":
        (read_idx, write(root / "b-idx3-ubyte.gz", gzip.compress(idx_header((2**15, 2**15))))),
    "idx.gz declaring 8 GiB (past the ceiling)":
        (read_idx, write(root / "c-idx3-ubyte.gz", gzip.compress(idx_header((2**16, 2**16, 2))))),
    "idx declaring (2**32-1)**3 bytes":
        (read_idx, write(root / "d-idx3-ubyte", idx_header((2**32 - 1,) * 3))),
    "npz member declaring 4 TiB": (read_npz, npz_declaring(root / "e.npz", (2**20, 2**20))),
    "npz deflated member of 40 bytes, then 256 MiB numpy ignores":
        (read_npz, deflated_member_of_zeros(root / "f.npz", "x.npy", npy((10,)), 256)),
    "cifar pickle with a BINBYTES8 of 1 TiB":
        (read_cifar_pickle, write(root / "g", b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b".")),
    "cifar pickle with an array of shape (2**36,)":
        (read_cifar_pickle, write(root / "h", HUGE_ARRAY_PICKLE)),
    ".pt with a deflated 256 MiB record": (load_weights_only, deflated_pt(root / "i.pt", 256)),
    ".pt with a broadcast tensor of 768 GiB":
        (load_distilled, broadcast_res(root / "res_DM_CIFAR10_ConvNet_1ipc.pt")),
    "png declaring 30000 x 30000 pixels":
        (lambda path: read_images([path]), png(root / "j.png", 30000, 30000)),
    "idx.gz honestly declaring and holding 64 MiB":
        (read_idx, gzip_of_zeros(root / "k-idx1-ubyte.gz", idx_header((64 * MIB,)), 64)),
}


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


results = {}
for name, (read, path) in CASES.items():
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(reading)
        start = peak_mib()
        try:
            read(path)
            outcome = "read"
        except InvalidInputError as exc:
            outcome = "refused: " + str(exc)[:100]
        with os.fdopen(writing, "w") as report:
            json.dump([outcome, peak_mib() - start], report)
        os._exit(0)
    os.close(writing)
    with os.fdopen(reading) as report:
        results[name] = json.load(report)
    os.waitpid(child, 0)
print(json.dumps(results))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB and fork: Linux")
def test_bombs_are_refused_or_read_within_bounded_memory() -> None:
    with folder() as root:
        result = subprocess.run(
            [sys.executable, "-c", _BOMBS, str(root)], capture_output=True, text=True, timeout=300
        )
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    report = "\n".join(
        f"{name}: {outcome}, +{growth:.1f} MiB" for name, (outcome, growth) in measured.items()
    )
    honest_outcome, honest_growth = measured.pop("idx.gz honestly declaring and holding 64 MiB")
    assert honest_outcome == "read", report
    assert honest_growth < 64 + 32, report  # the data once, not twice
    trailing_outcome, trailing_growth = measured.pop(
        "npz deflated member of 40 bytes, then 256 MiB numpy ignores"
    )
    assert trailing_outcome == "read", report
    assert trailing_growth < 32, report
    for outcome, growth in measured.values():
        assert outcome.startswith("refused"), report
        assert growth < 32, report
